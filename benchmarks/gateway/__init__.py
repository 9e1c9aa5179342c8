"""The gateway benchmark, by part: stack (the processes), load (the clients), phases, paths and
footprint (what is measured), report (targets and tables), cli (options and the run).

Run it as `python benchmarks/bench_gateway.py` (or `python -m gateway` from benchmarks/)."""
