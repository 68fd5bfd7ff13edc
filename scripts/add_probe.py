"""The probe phase on an existing checkpoint: train a depth probe on the frozen model and
calibrate tau_probe (lantern_edge/model/probe_training.py).

    python scripts/add_probe.py CHECKPOINT OUTPUT [--probe-hidden 64] [--probe-steps 300]
        [--deep-budget 0.1] [--probe-label either] [--probe-gamma 0.1]
"""

from __future__ import annotations

import argparse
import json
import sys

from lantern_edge.errors import LanternError
from lantern_edge.model.probe_training import LABELS, add_probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--probe-hidden", type=int, default=64)
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--deep-budget", type=float, default=0.1)
    parser.add_argument("--probe-label", choices=LABELS, default="either")
    parser.add_argument("--probe-gamma", type=float, default=0.1)
    args = vars(parser.parse_args(argv))
    checkpoint, output = args.pop("checkpoint"), args.pop("output")
    try:
        report = add_probe(checkpoint, output, **args)
    except (ValueError, LanternError, OSError) as e:
        print(f"add_probe: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
