"""`python -m app` runs the same command line as the `agent-mcp-gateway` script."""

from .cli import main

raise SystemExit(main())
