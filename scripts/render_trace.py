"""Render `lantern-edge generate PROMPT --adaptive --trace` as a terminal-style PNG (the README's picture).

    python scripts/render_trace.py -o docs/trace.png           # needs matplotlib (dev extra)

Runs the shipped model as `lantern-edge generate "def read_config(path):" --adaptive --trace`
does (greedy, the adaptive controller, the CLI's repetition controls, 64 new tokens) and
draws what the terminal shows: each new token in its band's colour, then the per-band summary
(without its tok/s line, which varies).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lantern_edge import Runtime  # noqa: E402
from lantern_edge.runtime.cli import NO_REPEAT_NGRAM_SIZE, REPETITION_PENALTY, _summary  # noqa: E402

# the terminal colours of lantern-edge generate --trace (green, cyan, yellow, magenta)
COLOURS = {"confident": "#4ec94e", "moderate": "#3fc6d6", "high": "#e5c33c",
           "very_high": "#d35fd3", None: "#d0d0d0"}
BACKGROUND, PLAIN = "#1e1e1e", "#d0d0d0"


def cells(prompt: str, pieces: list[tuple[str, str | None]], summary: str):
    """(row, column, character, colour) of every visible character, as a terminal lays them out."""
    out, row, col = [], 0, 0
    chunks = [(f"$ lantern-edge generate {prompt!r} --adaptive --trace\n", PLAIN)]
    chunks += [(text, COLOURS[band]) for text, band in pieces] + [("\n" + summary, PLAIN)]
    for text, colour in chunks:
        for ch in text:
            if ch == "\n":
                row, col = row + 1, 0
                continue
            if ch != " ":
                out.append((row, col, ch, colour))
            col += 1
    return out, row + 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", default="docs/trace.png", help="PNG to write (default: docs/trace.png)")
    p.add_argument("--prompt", default="def read_config(path):", help="prompt (default: the quick start's)")
    args = p.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = Runtime().generate(args.prompt, max_new_tokens=64, adaptive=True,
                                repetition_penalty=REPETITION_PENALTY,
                                no_repeat_ngram_size=NO_REPEAT_NGRAM_SIZE)
    pieces = [(t.text, t.band) for t in result.trace]
    summary = _summary(result.trace, colour=False).lstrip("\n")
    summary = "\n".join(line for line in summary.splitlines() if "tok/s" not in line)  # timing varies
    chars, rows = cells(args.prompt, pieces, "\n" + summary)
    columns = max(c for _, c, _, _ in chars) + 2
    cw, rh = 0.095, 0.2                                   # inches per column / row
    fig = plt.figure(figsize=(columns * cw + 0.4, rows * rh + 0.4), dpi=110)
    fig.patch.set_facecolor(BACKGROUND)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_axis_off()
    ax.set_xlim(-1, columns + 1)
    ax.set_ylim(rows + 1, -1)
    for row, col, ch, colour in chars:
        ax.text(col, row, ch, color=colour, family="monospace", fontsize=10, va="top")
    fig.savefig(args.output, facecolor=BACKGROUND)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
