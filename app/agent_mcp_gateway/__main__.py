"""`python -m agent_mcp_gateway` runs the same command line as the `agent-mcp-gateway` script."""

from agent_mcp_gateway.cli import main

raise SystemExit(main())
