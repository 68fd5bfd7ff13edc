"""Tokenizers: byte-level BPE trained on a corpus, and upstream's char vocabulary wrapped alike.

Both are `tokenizers.Tokenizer` objects serialised as tokenizer.json, so the runtime treats
them the same way. Our BPE tokenizer carries the special tokens <bos>, <eos>, <pad>, <think>.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ("<bos>", "<eos>", "<pad>", "<think>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Byte-level BPE over texts; any UTF-8 text round-trips exactly (no normalisation)."""
    if not 256 + len(SPECIAL_TOKENS) < vocab_size <= 65536:
        raise ValueError(f"vocab_size must be in (260, 65536] for byte-level BPE, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int | None]:
    """Ids of bos/eos/pad/think in this tokenizer, None for those it lacks."""
    ids = {name: tokenizer.token_to_id(f"<{name}>") for name in ("bos", "eos", "pad", "think")}
    return {f"{name}_token_id": value for name, value in ids.items()}


def char_tokenizer(id_to_char: Sequence[str]) -> Tokenizer:
    """Upstream LANTERN's char-level vocabulary (id = index) as a `tokenizers` Tokenizer.

    Every character is its own token; decoding concatenates. Upstream has no unknown token,
    so a character outside the vocabulary cannot be encoded (the runtime reports which).
    """
    if len(set(id_to_char)) != len(id_to_char) or any(len(ch) != 1 for ch in id_to_char):
        raise ValueError("id_to_char must list distinct single characters")
    vocab = {ch: i for i, ch in enumerate(id_to_char)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer
