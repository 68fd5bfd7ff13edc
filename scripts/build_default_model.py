"""Rebuild lantern_edge/default_model/ (the shipped artifacts) from the default checkpoint.

    python scripts/build_default_model.py CHECKPOINT [--out lantern_edge/default_model]

Exports fp32 graphs (parity-checked), quantizes them (dynamic INT8, quality report), and writes
MODEL_CARD.md with the training facts plus the notes below. The checkpoint itself is not
shipped (its weights are the fp32 graphs'); it is reproduced by the two commands in NOTES.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lantern_edge.export.api import export_checkpoint
from lantern_edge.export.manifest import read_manifest, write_manifest
from lantern_edge.export.model_card import write_model_card
from lantern_edge.quantization.api import quantize_artifacts

REPO = Path(__file__).resolve().parents[1]
NOTES = """\
## How this model was made

Corpus: `lantern-edge corpus -o corpus/` on Python 3.11.7 (the interpreter's standard library,
tests, vendored code and generated tables excluded; 5% of files held out, by a hash of the
path). Trained on one NVIDIA H200 shared by four candidate runs, with the schedule following a
wall-clock budget, in two stages:

```
lantern-edge train --preset small --corpus corpus --max-position 3072 --batch-size 128 \\
  --max-steps 6400 --warmup-steps 200 --eval-interval 250 --eval-batches 16 --threads 2 \\
  --max-minutes 6 -o stage1.pt                       # 919 steps, then the budget ended
lantern-edge train --resume stage1.pt --max-minutes 10.4 --max-steps 20000 --eval-interval 500 \\
  -o lantern-small-stdlib.pt                         # to step 3370 (warm restart of the cosine)
python scripts/build_default_model.py lantern-small-stdlib.pt
```

Stage 1 ran four candidates side by side (warm-up 100/150/200/200 steps, 800/1600/3200/6400
planned steps); the time budget, not the step count, drove every cosine, and they reached
validation loss 3.98 / 3.61 / 3.18 / 3.18 at depth 3: the shorter warm-ups hurt at batch 128.
One of the two best was continued. `lantern-edge train --preset small` is the same recipe with
a step-based cosine over 3370 steps (hours on a GPU, days on 2 CPU cores).

## Known limits

- A 3.5M-parameter model that saw 2.7M distinct training tokens (110M with repetition): it
  writes plausible, locally consistent Python (indentation, names, idioms of the stdlib) but
  not correct programs; it knows nothing outside the stdlib's style.
- Attention reaches 128 tokens back plus the global tokens (position 0 and THINK tokens):
  anything defined earlier is forgotten unless a global token carries it.
- Recursion pays up to depth 3 (validation loss 2.97 / 2.77 / 2.73 / 2.74 at depths 1-4);
  depth 4, which the very-high band uses, is no better than 3.
- The halting heads learned only the base rate (accuracy equals the target rate), so learned
  halting (`use_halting=True`) saves iterations only by stopping almost everywhere.
- Positions beyond 3072 do not exist: generation stops there (`stop_reason="max_position"`).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--out", default=str(REPO / "lantern_edge" / "default_model"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    export_checkpoint(args.checkpoint, out, force=True, progress=print)
    quantize_artifacts(out, force=True, progress=print)
    manifest = read_manifest(out)
    write_model_card(out, manifest, NOTES)
    write_manifest(out, manifest)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
