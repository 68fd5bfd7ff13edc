"""`lantern-edge COMMAND ...`: dispatches to each command's own module.

Commands are imported only when used, so `lantern-edge generate` works without torch while
`lantern-edge train` says which extra to install when torch is missing.
"""

from __future__ import annotations

import importlib
import sys

from .extras import missing_message
from .version import __version__

# command -> (module with main(argv) -> int, one-line help)
COMMANDS = {
    "train": ("lantern_edge.model.train_cli", "train a tokenizer and a LANTERN model on a corpus"),
    "corpus": ("lantern_edge.model.corpus_cli", "assemble the training corpus (default: Python stdlib)"),
    "generate": ("lantern_edge.runtime.cli", "generate text with an artifacts directory"),
    "quantize": ("lantern_edge.quantization.cli", "write INT8 graphs beside the fp32 ones"),
    "eval": ("lantern_edge.evaluation.cli", "is the uncertainty signal a good compute controller?"),
    "bench": ("lantern_edge.benchmark.cli", "decode speed, latency and memory vs PyTorch"),
    "serve": ("lantern_edge.serve.cli", "an OpenAI-compatible HTTP server (/v1/completions)"),
}

USAGE = "usage: lantern-edge [--version] COMMAND [options]\n\ncommands:\n" + "".join(
    f"  {name:<10} {help_}\n" for name, (_, help_) in COMMANDS.items()) + \
    "\nRun `lantern-edge COMMAND --help` for a command's options."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"lantern-edge {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lantern-edge: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return importlib.import_module(COMMANDS[name][0]).main(rest)
    except ModuleNotFoundError as e:      # an optional dependency, imported where it is used
        message = missing_message(f"lantern-edge {name}", e, name)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
