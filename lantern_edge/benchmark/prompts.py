"""Prompt token ids of exact lengths, from real text when the model's tokenizer covers it.

The text is Python source from the standard library (what the default model is trained on, so
the adaptive rows see a realistic band mix); a tokenizer that cannot encode it (e.g. an upstream
char vocabulary) gets deterministic pseudo-random ids instead. No torch.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

logger = logging.getLogger(__name__)
# a long, stable stdlib module: ~100k characters, more than any prompt length here needs
SOURCE = Path(argparse.__file__)


def text_ids(tokenizer_path: Path, special_ids: set[int], count: int) -> tuple[list[int], str]:
    """At least `count` ids of ordinary tokens, and where they came from.

    Args:
        tokenizer_path: the artifacts' tokenizer.json.
        special_ids: ids never to put in a prompt (BOS, EOS, PAD, THINK).
        count: how many ids are needed.

    Returns:
        (ids, source): source names the text, or says the ids are synthetic and why.
    """
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    vocab = tokenizer.get_vocab_size()
    try:
        text = SOURCE.read_text(encoding="utf-8")
        ids = [i for i in tokenizer.encode(text, add_special_tokens=False).ids
               if i not in special_ids]
    except Exception as e:  # tokenizers raises plain Exception on characters it lacks
        logger.info("the tokenizer cannot encode %s (%s): synthetic prompt ids", SOURCE, e)
        ids, reason = [], "the tokenizer cannot encode it"
    else:
        reason = f"it encodes to only {len(ids)} tokens"
    if len(ids) >= count:
        return ids, f"{SOURCE.name} from the Python standard library"
    rng = np.random.default_rng(0)
    ordinary = np.setdiff1d(np.arange(vocab), sorted(special_ids))
    return (rng.choice(ordinary, size=count).tolist(),
            f"seeded random ids ({SOURCE.name}: {reason})")


def prompt_of_length(ids: list[int], length: int, bos: int | None) -> list[int]:
    """A prompt of exactly `length` positions: BOS (when the model has one) then text ids."""
    if bos is None:
        return ids[:length]
    return [bos] + ids[:length - 1]
