"""End-to-end benchmark of the HTTP gateway against the milestone targets: the entry point.

The benchmark lives in benchmarks/gateway/ (stack.py starts the processes, load.py holds the
clients, phases.py, paths.py and footprint.py the phases, report.py the targets and tables,
cli.py the options and the run); `--help` lists the options.

    python benchmarks/bench_gateway.py            # 5+ minutes, plus 100,000 calls for the RSS run
    python benchmarks/bench_gateway.py --quick    # 2+ minutes, plus 10,000 calls
    python benchmarks/bench_gateway.py --json     # the summary as JSON
"""

from __future__ import annotations

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
