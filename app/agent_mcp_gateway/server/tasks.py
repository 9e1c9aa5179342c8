"""The tasks extension (`io.modelcontextprotocol/tasks`, and 2025-11-25's core `tasks`) is not
relayed, and says so.

A task outlives the call that created it: `tasks/get`, `tasks/update`, `tasks/result` and
`tasks/cancel` come later, on any connection, naming only a task id the downstream minted. To
relay them the gateway would need a store of its own mapping each id (namespaced per downstream
and per agent) to the downstream session that holds the task, kept across replicas, and a client
for the extension's methods and `CreateTaskResult`: the MCP SDK (2.3.0) has neither, and fastmcp
4.1.2 serves tasks only through its separate `fastmcp-tasks` package. So the gateway declares no
task support in either era, keeps a downstream's declaration of the extension out of what it
advertises and a caller's out of what it declares downstream (a task-augmented call runs to its
result, as the extension asks of a server that did not negotiate it), and answers the task
methods with this refusal rather than a bare "method not found".
"""

from __future__ import annotations

from typing import Any

import mcp_types as mt
from fastmcp import FastMCP
from mcp import MCPError

from agent_mcp_gateway import compat
from agent_mcp_gateway.protocol import METHOD_NOT_FOUND, TASKS_EXTENSION

# Both eras' task methods: 2025-11-25's core ones and the extension's (`tasks/update`).
METHODS = ("tasks/get", "tasks/result", "tasks/list", "tasks/cancel", "tasks/update")


def refusal(method: str) -> MCPError:
    return MCPError(
        METHOD_NOT_FOUND,
        f"{method}: the gateway does not relay tasks ({TASKS_EXTENSION}); "
        "call the tool without a task and it returns its result",
    )


def register(mcp: FastMCP) -> None:
    """Answer every task method with the refusal, in both eras."""
    for method in METHODS:

        async def refuse(ctx: Any, params: Any, method: str = method) -> Any:
            raise refusal(method)

        compat.add_request_handler(mcp, method, mt.RequestParams, refuse)


def without_tasks(capabilities: dict[str, Any] | None) -> dict[str, Any] | None:
    """A caller's declared capabilities as the gateway passes them downstream: without the tasks
    extension, so no downstream answers a call with a task the gateway cannot follow."""
    if not capabilities:
        return capabilities
    extensions = capabilities.get("extensions")
    declared = {key: value for key, value in capabilities.items() if key != "tasks"}
    if isinstance(extensions, dict) and TASKS_EXTENSION in extensions:
        declared["extensions"] = {key: value for key, value in extensions.items() if key != TASKS_EXTENSION}
    return declared
