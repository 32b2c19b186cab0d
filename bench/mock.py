"""One mock upstream for one scenario: `python -m bench.mock --port P --latency-ms 50 ...`.

The mock provider's own CLI has no `--chunks` and keeps the last 100 requests for tests; a benchmark
wants neither the bookkeeping nor per-request headers (LiteLLM does not forward `x-mock-*`), so each
scenario gets its own mock process with fixed settings.
"""

from __future__ import annotations

import argparse

from tollway.mockprovider import MockSettings, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=None)
    parser.add_argument("--completion-tokens", type=int, default=20)
    args = parser.parse_args()
    settings = MockSettings(
        host="127.0.0.1",
        port=args.port,
        latency_ms=args.latency_ms,
        ttft_ms=args.ttft_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        chunks=args.chunks,
        completion_tokens=args.completion_tokens,
        record_limit=0,
    )
    run("127.0.0.1", args.port, settings)


if __name__ == "__main__":
    main()
