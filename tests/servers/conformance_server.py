"""Conformance fixture: the tools, prompts and resources the official MCP conformance suite's
server scenarios call (`@modelcontextprotocol/conformance`), with the names and results its
scenario descriptions and reference server specify.

FastMCP expresses most of it. Three things go below it, to the SDK objects FastMCP exposes:
the elicitation tools send their exact JSON schemas (defaults, titled and legacy enums, which
`ctx.elicit`'s generated schemas cannot carry), the sampling tool sends `sampling/createMessage`
itself (FastMCP 4 has no sampling helper), and `resources/subscribe`/`unsubscribe` and their
2026-07-28 form, `subscriptions/listen`, are served by handlers on the low-level server (FastMCP
has neither a decorator for the first nor the second at all): a subscription is honored in both
eras, as a dual-era server on the SDK's own `MCPServer` honors it.

Started by `_common.run`; over HTTP (`--http PORT`) with an event store, so a tool can close its
SSE stream mid-call and the client resumes (SEP-1699).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
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
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from _common import run

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


def modern(ctx: Context) -> bool:
    """Whether the caller speaks 2026-07-28, where a question is an InputRequiredResult (the
    gateway in front of this fixture speaks whichever era the fixture supports)."""
    request = ctx.request_context
    return request is not None and request.protocol_version in MODERN_PROTOCOL_VERSIONS


@mcp.tool
async def test_sampling(prompt: str, ctx: Context) -> Any:
    """Tests server-initiated sampling (LLM completion request)"""
    messages = [mcp_types.SamplingMessage(role="user", content=text(prompt))]
    if modern(ctx):
        result = (ctx.input_responses or {}).get("sampling")
        if not isinstance(result, mcp_types.CreateMessageResult):
            params = mcp_types.CreateMessageRequestParams(messages=messages, max_tokens=100)
            request = mcp_types.CreateMessageRequest(params=params)
            return mcp_types.InputRequiredResult(input_requests={"sampling": request}, request_state="asked")
    else:
        result = await ctx.session.create_message(messages, max_tokens=100, related_request_id=ctx.request_id)
    content = result.content
    reply = content.text if isinstance(content, mcp_types.TextContent) else "No response"
    return f"LLM response: {reply}"


async def elicit(ctx: Context, message: str, schema: dict[str, Any], prefix: str) -> Any:
    """The answer as the scenarios expect it after `prefix`, or (2026-07-28) the question."""
    if modern(ctx):
        result = (ctx.input_responses or {}).get("elicitation")
        if not isinstance(result, mcp_types.ElicitResult):
            params = mcp_types.ElicitRequestFormParams(message=message, requested_schema=schema)
            request = mcp_types.ElicitRequest(params=params)
            return mcp_types.InputRequiredResult(
                input_requests={"elicitation": request}, request_state="asked"
            )
    else:
        result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
    return f"{prefix}action={result.action}, content={json.dumps(result.content or {})}"


@mcp.tool
async def test_elicitation(message: str, ctx: Context) -> Any:
    """Tests server-initiated elicitation (user input request)"""
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }
    return await elicit(ctx, message, schema, "User response: ")


@mcp.tool
async def test_elicitation_sep1034_defaults(ctx: Context) -> Any:
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
    return await elicit(ctx, message, schema, "Elicitation completed: ")


@mcp.tool
async def test_elicitation_sep1330_enums(ctx: Context) -> Any:
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
    return await elicit(ctx, message, schema, "Elicitation completed: ")


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
# The same subscriptions on 2026-07-28, where they are a `subscriptions/listen` stream's filter:
# the SDK's own handler (its MCPServer registers it; FastMCP 4.1.2 does not), over a bus nothing
# publishes to, for the same reason.
mcp._mcp_server.add_request_handler(
    "subscriptions/listen",
    mcp_types.SubscriptionsListenRequestParams,
    ListenHandler(InMemorySubscriptionBus()),
)


# --- prompts --------------------------------------------------------------------------------------


# --- 2026-07-28 multi-round-trip requests (SEP-2322): the guard pattern, one tool per scenario.
# Each asks by returning an InputRequiredResult and reads the answers from the retry; FastMCP
# seals the requestState (a tampered one is refused with -32602 before the tool runs).


def _form(message: str, field: str, kind: str = "string") -> mcp_types.ElicitRequest:
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return mcp_types.ElicitRequest(
        params=mcp_types.ElicitRequestFormParams(message=message, requested_schema=schema)
    )


def _sample(text: str, max_tokens: int = 50) -> mcp_types.CreateMessageRequest:
    content = mcp_types.TextContent(type="text", text=text)
    message = mcp_types.SamplingMessage(role="user", content=content)
    return mcp_types.CreateMessageRequest(
        params=mcp_types.CreateMessageRequestParams(messages=[message], max_tokens=max_tokens)
    )


def _asked(
    ctx: Context, requests: dict[str, Any], reply: Callable[[dict[str, Any]], str], state: str | None = None
) -> Any:
    """`reply(answers)` as the result once every one of `requests` is answered; until then the
    questions (again) for what is missing."""
    responses = ctx.input_responses or {}
    if all(key in responses for key in requests):
        return _done(reply(responses))
    return mcp_types.InputRequiredResult(input_requests=requests, request_state=state)


def _said(answer: Any) -> str:
    if isinstance(answer, mcp_types.ElicitResult):
        return json.dumps(answer.content or {}, sort_keys=True)
    if isinstance(answer, mcp_types.ListRootsResult):
        return ",".join(str(root.uri) for root in answer.roots)
    content = getattr(answer, "content", None)
    return content.text if isinstance(content, mcp_types.TextContent) else "answered"


def _done(text: str) -> ToolResult:
    return ToolResult(content=[mcp_types.TextContent(type="text", text=text)])


@mcp.tool
def test_input_required_result_elicitation(ctx: Context) -> Any:
    """MRTR: asks for the user's name (elicitation), then greets them."""
    requests = {"user_name": _form("What is your name?", "name")}
    return _asked(ctx, requests, lambda answers: f"Hello, {_said(answers['user_name'])}")


@mcp.tool
def test_input_required_result_sampling(ctx: Context) -> Any:
    """MRTR: asks the client's model for a greeting (sampling)."""
    requests = {"greeting": _sample("Generate a greeting")}
    return _asked(ctx, requests, lambda answers: f"Sampled: {_said(answers['greeting'])}")


@mcp.tool
def test_input_required_result_list_roots(ctx: Context) -> Any:
    """MRTR: asks for the client's roots."""
    requests = {"client_roots": mcp_types.ListRootsRequest()}
    return _asked(ctx, requests, lambda answers: f"Roots: {_said(answers['client_roots'])}")


@mcp.tool
def test_input_required_result_request_state(ctx: Context) -> Any:
    """MRTR: asks for a confirmation with a requestState, completing only when it comes back."""
    if ctx.request_state != "confirm-pending":
        return mcp_types.InputRequiredResult(
            input_requests={"confirm": _form("Please confirm", "ok", "boolean")},
            request_state="confirm-pending",
        )
    requests = {"confirm": _form("Please confirm", "ok", "boolean")}
    return _asked(ctx, requests, lambda answers: f"Confirmed: {_said(answers['confirm'])}", "confirm-pending")


@mcp.tool
def test_input_required_result_multiple_inputs(ctx: Context) -> Any:
    """MRTR: asks for a name, a greeting and the roots at once."""
    requests = {
        "user_name": _form("What is your name?", "name"),
        "greeting": _sample("Generate a greeting"),
        "client_roots": mcp_types.ListRootsRequest(),
    }
    return _asked(
        ctx,
        requests,
        lambda answers: "All inputs received: " + " | ".join(_said(answers[key]) for key in requests),
        "multiple-inputs",
    )


@mcp.tool
def test_input_required_result_multi_round(ctx: Context) -> Any:
    """MRTR: two elicitation rounds with evolving requestState before completing."""
    responses = ctx.input_responses or {}
    if ctx.request_state == "round-2" and "step2" in responses:
        return _done(f"Completed: {_said(responses['step2'])}")
    if (ctx.request_state == "round-1" and "step1" in responses) or ctx.request_state == "round-2":
        return mcp_types.InputRequiredResult(
            input_requests={"step2": _form("Step 2: What is your favorite color?", "color")},
            request_state="round-2",
        )
    return mcp_types.InputRequiredResult(
        input_requests={"step1": _form("Step 1: What is your name?", "name")}, request_state="round-1"
    )


@mcp.tool
def test_input_required_result_tampered_state(ctx: Context) -> Any:
    """MRTR: a sealed requestState; a tampered one never reaches this tool."""
    requests = {"confirm": _form("Please confirm", "ok", "boolean")}
    return _asked(ctx, requests, lambda _: "State verified", "tamper-proof")


@mcp.tool
def test_input_required_result_capabilities(ctx: Context) -> Any:
    """MRTR: asks only for what the client declared it can answer."""
    requests: dict[str, Any] = {}
    if ctx.session.check_client_capability(
        mcp_types.ClientCapabilities(elicitation=mcp_types.ElicitationCapability())
    ):
        requests["user_name"] = _form("What is your name?", "name")
    if ctx.session.check_client_capability(
        mcp_types.ClientCapabilities(sampling=mcp_types.SamplingCapability())
    ):
        requests["greeting"] = _sample("Generate a greeting")
    if not requests:
        return _done("Nothing the client can answer")
    return _asked(ctx, requests, lambda _: "Capabilities respected", "capabilities")


@mcp.prompt
def test_input_required_result_prompt(ctx: Context) -> Any:
    """MRTR on a request other than a tool call: asks what context to use, then writes the prompt."""
    responses = ctx.input_responses or {}
    if "user_context" not in responses:
        requests = {"user_context": _form("What context should the prompt use?", "context")}
        return mcp_types.InputRequiredResult(input_requests=requests)
    return [Message(f"Write with this context: {_said(responses['user_context'])}")]


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


if __name__ == "__main__":
    run(mcp, serve_http=serve_http)
