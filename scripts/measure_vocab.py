"""Which BPE vocabulary size for a corpus: tokens per byte on held-out files vs embedding cost.

Trains the project's byte-level BPE tokenizer (lantern_edge.model.tokenizer) at each size on
the training split of a prepared corpus (`lantern-edge corpus ... -o DIR`), then counts the
tokens it gives the validation split and the standard library's validation files (the files
`lantern-edge eval` holds out by default), next to the shipped model's tokenizer. The
embedding is tied to the output projection, so it costs vocab x hidden parameters once;
shipped as fp32 + int8 that is 5 bytes per parameter. The whole model's parameters are counted
for the `small` preset's shape at each hidden size (SwiGLU width 3 x hidden).

    python scripts/measure_vocab.py --corpus DIR --vocab 4096 8192 16384 --out vocab.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer

from lantern_edge.model.corpus import count_tokens, load_corpus
from lantern_edge.model.corpus_cli import SHIPPED_TOKENIZER
from lantern_edge.model.tokenizer import train_bpe_tokenizer

SHIPPED_BYTES_PER_PARAMETER = 4 + 1          # fp32 graphs + int8 graphs


def tokens_per_byte(tokenizer: Tokenizer, texts: list[str]) -> float:
    return count_tokens(tokenizer, texts) / sum(len(t.encode("utf-8")) for t in texts)


def measure(tokenizer: Tokenizer, held_out: dict[str, list[str]], hidden: list[int]) -> dict:
    vocab = tokenizer.get_vocab_size()
    row = {"vocab_size": vocab}
    row.update({f"tokens_per_byte_{name}": round(tokens_per_byte(tokenizer, texts), 4)
                for name, texts in held_out.items()})
    for h in hidden:
        row[f"embedding_parameters_h{h}"] = vocab * h
        row[f"embedding_shipped_mb_h{h}"] = round(vocab * h * SHIPPED_BYTES_PER_PARAMETER / 1e6, 2)
        row[f"model_parameters_h{h}"] = model_parameters(vocab, h)
        row[f"model_shipped_mb_h{h}"] = round(
            row[f"model_parameters_h{h}"] * SHIPPED_BYTES_PER_PARAMETER / 1e6, 2)
    return row


def model_parameters(vocab: int, hidden: int) -> int:
    """Parameters of the `small` preset's model at this vocabulary and hidden size."""
    from lantern_edge.model.modeling import LanternModel
    from lantern_edge.model.training import PRESETS, TrainConfig
    cfg = TrainConfig(**{**PRESETS["small"], "vocab_size": vocab, "hidden_size": hidden,
                         "intermediate_size": 3 * hidden})
    special = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2, "think_token_id": 3}
    return LanternModel(cfg.model_config(special)).num_parameters()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="a directory from lantern-edge corpus -o")
    parser.add_argument("--vocab", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    try:
        corpus = load_corpus([args.corpus])
        stdlib = load_corpus(val_fraction=float(
            corpus.description.get("prepared_from", {}).get("val_fraction", 0.05)))
    except (ValueError, OSError) as e:
        print(f"measure_vocab: {e}", file=sys.stderr)
        return 2
    held_out = {"val": corpus.val, "stdlib_val": stdlib.val}
    train_bytes = sum(len(t.encode("utf-8")) for t in corpus.train)
    print(f"training split {train_bytes / 1e6:.1f} MB in {len(corpus.train)} files; held out "
          f"{len(corpus.val)} files (all) and {len(stdlib.val)} (stdlib)")
    rows = [{"tokenizer": f"shipped ({SHIPPED_TOKENIZER.parent.name}, trained on the stdlib)",
             **measure(Tokenizer.from_file(str(SHIPPED_TOKENIZER)), held_out, args.hidden)}]
    for vocab in args.vocab:
        started = time.perf_counter()
        tokenizer = train_bpe_tokenizer(corpus.train, vocab)
        seconds = round(time.perf_counter() - started, 1)
        rows.append({"tokenizer": f"BPE on {Path(args.corpus).name} train", **measure(
            tokenizer, held_out, args.hidden), "train_seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(rows[0]))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
