"""Benchmarks of the gateway's own cost per request (see docs/performance.md).

Not tests: ``python -m benchmarks.overhead`` (or ``benchmarks/run.sh``) starts the
upstreams, the pass-through floor and the gateway, measures them and prints figures.
"""
