"""`python -m gateway` from benchmarks/: the same as `python benchmarks/bench_gateway.py`."""

import sys

from .cli import main

sys.exit(main())
