"""Issue 7's speed-and-memory benchmark from a checkout: the same as `lantern-edge bench`.

    python benchmarks/bench_suite.py --model artifacts/tiny --checkpoint tiny.pt
    python benchmarks/bench_suite.py --help

Everything lives in lantern_edge/benchmark/ (so an installed package can run it too); this
script only makes it runnable without the console script.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lantern_edge.benchmark.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
