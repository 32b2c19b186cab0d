"""`make bench`: Tollway side by side with a direct call, bare Envoy and the LiteLLM proxy.

Run `python -m bench --help` from the repository root. Everything is measured in one run on one
machine, against the same mock upstreams, and reported as differences and ratios (bench/REPORT.md).
"""
