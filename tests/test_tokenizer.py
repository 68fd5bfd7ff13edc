"""Tokenizers: byte-level BPE round-trips any UTF-8 text; upstream's char vocabulary wraps alike."""

import json

import pytest

from lantern_edge.model.corpus import load_corpus
from lantern_edge.model.tokenizer import (SPECIAL_TOKENS, char_tokenizer, special_token_ids,
                                          train_bpe_tokenizer)


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(load_corpus(max_chars=200_000).train, vocab_size=600)


@pytest.mark.parametrize("text", [
    "def f(x):\n\treturn x  # ünïcödé, 日本語, emoji 🎉\n",
    "    \n\n\t\t  mixed   whitespace\r\n\x0b\x0c trailing   ",
    "class A:\n    '''docstring with \\u00e9 and \u00e9'''\n    pass\n",
    "",
    "<think> is text here, not a special token when encoded as text",
])
def test_bpe_round_trips_exactly(bpe, text):
    ids = bpe.encode(text, add_special_tokens=False).ids
    assert bpe.decode(ids, skip_special_tokens=False) == text


def test_bpe_round_trips_held_out_source_files(bpe):
    held_out = load_corpus(max_chars=100_000).val       # files the tokenizer never saw
    for text in held_out:
        ids = bpe.encode(text, add_special_tokens=False).ids
        assert bpe.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_encode_as_single_ids(bpe):
    ids = special_token_ids(bpe)
    encoded = bpe.encode("x<think>y<eos>", add_special_tokens=False).ids
    assert ids["think_token_id"] in encoded and ids["eos_token_id"] in encoded


def test_bpe_has_distinct_special_tokens_and_merges(bpe):
    ids = special_token_ids(bpe)
    assert sorted(ids.values()) == [0, 1, 2, 3]
    assert [bpe.id_to_token(i) for i in range(4)] == list(SPECIAL_TOKENS)
    assert bpe.get_vocab_size() == 600
    # merges learned from code: a common keyword (with its leading space) is one token
    assert len(bpe.encode(" return", add_special_tokens=False).ids) == 1


def test_vocab_size_out_of_range():
    with pytest.raises(ValueError, match="vocab_size must be in"):
        train_bpe_tokenizer(["x"], vocab_size=100)


def test_char_tokenizer_matches_upstream_mapping(upstream_dir):
    vocab = json.loads((upstream_dir / "vocab.json").read_text())["id_to_char"]
    tok = char_tokenizer(vocab)
    text = " License, each Contributor\nhereby"
    ids = tok.encode(text).ids
    assert ids == [vocab.index(ch) for ch in text]
    assert tok.decode(ids) == text
