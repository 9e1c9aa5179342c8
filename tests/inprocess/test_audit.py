"""The audit lines a gateway in process writes for its calls: never a tool's arguments, whether
the call is allowed, denied, failed downstream or refused."""

from __future__ import annotations

from mcp import MCPError

from agent_mcp_gateway.observe.audit import verify

from conftest import AUDIT_SPEC_FIELDS, GatewayFiles, fixture_server, memory_gateway
from unit.observe.test_audit import EXTRA_FIELDS

SECRET = "s3cr3t-argument-5f0e"


async def test_tool_call_arguments_never_reach_the_audit_log(gateway_files: GatewayFiles) -> None:
    gateway_files.write_servers({"echo": fixture_server("echo")})
    gateway_files.write_rules(
        {"agents": {"builder": {"allow": {"servers": ["echo"]}, "deny": {"tools": {"echo": ["drop_*"]}}}}}
    )
    calls = [  # (tool, arguments, how the call ends: a result, an error result, or an MCP error code)
        ("echo", {"text": SECRET}, "result"),  # allowed
        ("drop_table", {"table": SECRET}, -32000),  # denied by policy
        ("fail", {"message": SECRET}, "error result"),  # the downstream tool fails with the argument
        ("add", {"a": SECRET, "b": 1}, "error result"),  # the downstream server rejects the arguments
        ("no_such_tool", {"anything": SECRET}, -32002),
    ]
    outcomes: list[str | int] = []
    async with memory_gateway(gateway_files) as gateway, gateway.client() as client:
        for tool, args, _ in calls:
            arguments = {"agent_id": "builder", "server": "echo", "tool": tool, "args": args}
            try:
                result = await client.call_tool_mcp("execute_tool", arguments)
            except MCPError as error:
                outcomes.append(error.code)
            else:
                outcomes.append("error result" if result.is_error else "result")
    assert outcomes == [expected for _, _, expected in calls]

    raw = gateway_files.audit.read_bytes()
    assert SECRET.encode() not in raw
    executed = [line for line in gateway_files.audit_lines() if line["operation"] == "execute_tool"]
    assert [line["tool"] for line in executed] == [tool for tool, _, _ in calls]
    assert [line["decision"] for line in executed] == ["ALLOW", "DENY", "ALLOW", "ALLOW", "ERROR"]
    assert all(set(line) == AUDIT_SPEC_FIELDS | EXTRA_FIELDS for line in executed)
    assert verify([gateway_files.audit]).problem is None
