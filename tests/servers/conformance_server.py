"""Conformance fixture: the tools, prompts and resources the official MCP conformance suite's
server scenarios call (`@modelcontextprotocol/conformance`), with the names and results its
scenario descriptions and reference server specify.

FastMCP expresses most of it. Three things go below it, to the SDK objects FastMCP exposes:
the elicitation tools send their exact JSON schemas (defaults, titled and legacy enums, which
`ctx.elicit`'s generated schemas cannot carry), the sampling tool sends `sampling/createMessage`
itself (FastMCP 4 has no sampling helper), and `resources/subscribe`/`unsubscribe` are served by
handlers on the low-level server (FastMCP has no decorator for them).

stdio by default; `--http PORT` serves Streamable HTTP on 127.0.0.1:PORT at /mcp with an event
store, so a tool can close its SSE stream mid-call and the client resumes (SEP-1699).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import warnings
from typing import Any

# Quiet start-up before fastmcp is imported, as _common does: stdout is the stdio protocol channel.
os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.setdefault("FASTMCP_LOG_LEVEL", "WARNING")

import anyio
import mcp_types
import uvicorn
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.prompts import Message
from fastmcp.server.event_store import EventStore
from fastmcp.tools import Tool, ToolResult
from mcp import MCPDeprecationWarning

warnings.filterwarnings("ignore", category=MCPDeprecationWarning)

# A 1x1 red PNG and a minimal WAV, as the conformance reference server sends them.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

# dereference_schemas=False: FastMCP would otherwise inline `$ref`s and drop `$defs` from listed
# schemas, and the SEP-1613 scenario checks that they arrive as written.
mcp = FastMCP("conformance", dereference_schemas=False)


def text(value: str) -> mcp_types.TextContent:
    return mcp_types.TextContent(type="text", text=value)


def image() -> mcp_types.ImageContent:
    return mcp_types.ImageContent(type="image", data=PNG, mime_type="image/png")


def embedded(uri: str, mime_type: str, value: str) -> mcp_types.EmbeddedResource:
    return mcp_types.EmbeddedResource(
        type="resource", resource=mcp_types.TextResourceContents(uri=uri, mime_type=mime_type, text=value)
    )


# --- tools ----------------------------------------------------------------------------------------


@mcp.tool
def test_simple_text() -> ToolResult:
    """Tests simple text content response"""
    return ToolResult(content=[text("This is a simple text response for testing.")])


@mcp.tool
def test_image_content() -> ToolResult:
    """Tests image content response"""
    return ToolResult(content=[image()])


@mcp.tool
def test_audio_content() -> ToolResult:
    """Tests audio content response"""
    return ToolResult(content=[mcp_types.AudioContent(type="audio", data=WAV, mime_type="audio/wav")])


@mcp.tool
def test_embedded_resource() -> ToolResult:
    """Tests embedded resource content response"""
    return ToolResult(
        content=[embedded("test://embedded-resource", "text/plain", "This is an embedded resource content.")]
    )


@mcp.tool
def test_multiple_content_types() -> ToolResult:
    """Tests response with multiple content types (text, image, resource)"""
    data = json.dumps({"test": "data", "value": 123})
    return ToolResult(
        content=[
            text("Multiple content types test:"),
            image(),
            embedded("test://mixed-content-resource", "application/json", data),
        ]
    )


@mcp.tool
async def test_tool_with_logging(ctx: Context) -> str:
    """Tests tool that emits log messages during execution"""
    await ctx.info("Tool execution started")
    await anyio.sleep(0.05)
    await ctx.info("Tool processing data")
    await anyio.sleep(0.05)
    await ctx.info("Tool execution completed")
    return "Tool with logging executed successfully"


@mcp.tool
async def test_tool_with_progress(ctx: Context) -> str:
    """Tests tool that reports progress notifications"""
    for step in (0, 50, 100):
        if step:
            await anyio.sleep(0.05)
        await ctx.report_progress(step, 100, f"Completed step {step} of 100")
    return "Progress reported: 0, 50, 100 of 100"


@mcp.tool
def test_error_handling() -> str:
    """Tests error response handling"""
    raise ToolError("This tool intentionally returns an error for testing")


@mcp.tool
async def test_reconnection(ctx: Context) -> str:
    """Tests SSE stream disconnection and client reconnection (SEP-1699): the server closes the
    stream mid-call and sends the result after the client reconnects."""
    await ctx.close_sse_stream()
    await anyio.sleep(0.1)
    return (
        "Reconnection test completed successfully. If you received this, "
        "the client properly reconnected after stream closure."
    )


@mcp.tool
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Tests server-initiated sampling (LLM completion request)"""
    result = await ctx.session.create_message(
        [mcp_types.SamplingMessage(role="user", content=text(prompt))],
        max_tokens=100,
        related_request_id=ctx.request_id,
    )
    content = result.content
    reply = content.text if isinstance(content, mcp_types.TextContent) else "No response"
    return f"LLM response: {reply}"


async def elicit(ctx: Context, message: str, schema: dict[str, Any]) -> str:
    result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    return f"action={result.action}, content={json.dumps(result.content or {})}"


@mcp.tool
async def test_elicitation(message: str, ctx: Context) -> str:
    """Tests server-initiated elicitation (user input request)"""
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }
    return "User response: " + await elicit(ctx, message, schema)


@mcp.tool
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Tests elicitation with default values per SEP-1034"""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
            },
            "verified": {"type": "boolean", "description": "Verification status", "default": True},
        },
        "required": [],
    }
    message = "Please review and update the form fields with defaults"
    return "Elicitation completed: " + await elicit(ctx, message, schema)


@mcp.tool
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Tests elicitation with enum schema improvements per SEP-1330"""
    options = ["option1", "option2", "option3"]
    schema = {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "description": "Select one option", "enum": options},
            "titledSingle": {
                "type": "string",
                "description": "Select one option with titles",
                "oneOf": [
                    {"const": "value1", "title": "First Option"},
                    {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"},
                ],
            },
            "legacyEnum": {
                "type": "string",
                "description": "Select one option (legacy)",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {
                "type": "array",
                "description": "Select multiple options",
                "minItems": 1,
                "maxItems": 3,
                "items": {"type": "string", "enum": options},
            },
            "titledMulti": {
                "type": "array",
                "description": "Select multiple options with titles",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "anyOf": [
                        {"const": "value1", "title": "First Choice"},
                        {"const": "value2", "title": "Second Choice"},
                        {"const": "value3", "title": "Third Choice"},
                    ]
                },
            },
        },
        "required": [],
    }
    message = "Please select options from the enum fields"
    return "Elicitation completed: " + await elicit(ctx, message, schema)


def json_schema_2020_12_tool(name: str | None = None, address: dict[str, str] | None = None) -> str:
    """Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)"""
    return f"JSON Schema 2020-12 tool called with: {json.dumps({'name': name, 'address': address})}"


# SEP-1613: the listed input schema keeps $schema, $defs and additionalProperties, which a schema
# generated from the signature would not have; calls are still validated against the signature.
mcp.add_tool(
    Tool.from_function(json_schema_2020_12_tool).model_copy(
        update={
            "parameters": {
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {
                    "address": {
                        "type": "object",
                        "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                    }
                },
                "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                "additionalProperties": False,
            }
        }
    )
)


# --- resources ------------------------------------------------------------------------------------


@mcp.resource(
    "test://static-text",
    name="static-text",
    title="Static Text Resource",
    description="A static text resource for testing",
    mime_type="text/plain",
)
def static_text() -> str:
    return "This is the content of the static text resource."


@mcp.resource(
    "test://static-binary",
    name="static-binary",
    title="Static Binary Resource",
    description="A static binary resource (image) for testing",
    mime_type="image/png",
)
def static_binary() -> bytes:
    return base64.b64decode(PNG)


@mcp.resource(
    "test://template/{id}/data",
    name="template",
    title="Resource Template",
    description="A resource template with parameter substitution",
    mime_type="application/json",
)
def template(id: str) -> str:
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@mcp.resource(
    "test://watched-resource",
    name="watched-resource",
    title="Watched Resource",
    description="A resource clients may subscribe to",
    mime_type="text/plain",
)
def watched_resource() -> str:
    return "Watched resource content"


# The watched resource never changes, so a subscription is acknowledged and no update is ever due.
async def acknowledge(ctx: Any, params: Any) -> mcp_types.EmptyResult:
    return mcp_types.EmptyResult()


mcp._mcp_server.add_request_handler("resources/subscribe", mcp_types.SubscribeRequestParams, acknowledge)
mcp._mcp_server.add_request_handler("resources/unsubscribe", mcp_types.UnsubscribeRequestParams, acknowledge)


# --- prompts --------------------------------------------------------------------------------------


@mcp.prompt(title="Simple Test Prompt")
def test_simple_prompt() -> list[Message]:
    """A simple prompt without arguments"""
    return [Message("This is a simple prompt for testing.")]


@mcp.prompt(title="Prompt With Arguments")
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[Message]:
    """A prompt with required arguments"""
    return [Message(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]


@mcp.prompt(title="Prompt With Embedded Resource")
def test_prompt_with_embedded_resource(resourceUri: str) -> list[Message]:  # noqa: N803 - the scenario's name
    """A prompt that includes an embedded resource"""
    return [
        Message(embedded(resourceUri, "text/plain", "Embedded resource content for testing.")),
        Message("Please process the embedded resource above."),
    ]


@mcp.prompt(title="Prompt With Image")
def test_prompt_with_image() -> list[Message]:
    """A prompt that includes image content"""
    return [Message(image()), Message("Please analyze the image above.")]


@mcp.completion
def complete(ref: Any, argument: mcp_types.CompletionArgument, context: Any) -> list[str]:
    """Suggestions for test_prompt_with_arguments' arguments: the typed prefix completed."""
    if isinstance(ref, mcp_types.PromptReference) and ref.name == "test_prompt_with_arguments":
        return [value for value in ("paris", "park", "party") if value.startswith(argument.value)]
    return []


# --- start-up -------------------------------------------------------------------------------------


def serve_http(port: int) -> None:
    """Streamable HTTP with an in-memory event store: `mcp.run` takes no event store."""
    app = mcp.http_app(event_store=EventStore(), retry_interval=500, host_origin_protection="auto")
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2)


def main() -> None:
    parser = argparse.ArgumentParser(description="MCP conformance fixture server")
    parser.add_argument(
        "--http", type=int, metavar="PORT", help="serve Streamable HTTP on 127.0.0.1:PORT at /mcp"
    )
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    if args.http:
        serve_http(args.http)
    else:
        mcp.run(transport="stdio", show_banner=False)


if __name__ == "__main__":
    main()
