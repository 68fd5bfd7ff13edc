"""Token healing (runtime/healing.py) on the shipped model's byte-level BPE tokenizer."""

import numpy as np
import pytest

from lantern_edge import Runtime
from lantern_edge.runtime.healing import heal


@pytest.fixture(scope="module")
def rt():
    return Runtime()


def test_trailing_whitespace_tokens_are_backed_up_and_regenerated(rt):
    ids = rt.encode("def f(x):\n")
    trimmed, healing = heal(ids, rt.tokenizer.decode, rt.config.vocab_size)
    assert trimmed.tolist() == rt.encode("def f(x):").tolist()
    assert healing.removed == "\n"
    vocab = rt.tokenizer.get_vocab()
    allowed = healing.allowed()
    # the newline merged with the body's indentation, and the bare newline itself: allowed;
    # anything that does not start with a newline (a comment, a new `def`): not
    assert allowed[vocab["ĊĠĠĠĠ"]] and allowed[vocab["Ċ"]]
    assert not allowed[vocab["#"]] and not allowed[vocab["def"]]
    assert not allowed[rt.config.eos_token_id]             # special tokens have no text
    logits = np.zeros(rt.config.vocab_size, np.float32)
    assert np.isneginf(healing.constrain(logits)[vocab["#"]])
    assert healing.accept(vocab["ĊĠĠĠĠ"], "\n    ") == "    "  # the prompt's "\n" is not repeated
    assert healing.pending == "" and healing.constrain(logits) is logits


def test_a_prefix_of_the_removed_text_keeps_the_rest_pending(rt):
    _, healing = heal(rt.encode("x = 1\n\n"), rt.tokenizer.decode, rt.config.vocab_size)
    assert healing.removed == "\n\n"
    newline = rt.tokenizer.get_vocab()["Ċ"]
    assert healing.accept(newline, "\n") == "" and healing.pending == "\n"
    assert healing.allowed()[rt.tokenizer.get_vocab()["ĊĠĠĠĠ"]]


def test_prompts_not_ending_in_whitespace_are_untouched(rt):
    for prompt in ("def f(x):", "x = 1", ""):
        ids = rt.encode(prompt)
        trimmed, healing = heal(ids, rt.tokenizer.decode, rt.config.vocab_size)
        assert healing is None and trimmed is ids
    only_space = rt.encode("\n\n")                           # BOS stays
    trimmed, healing = heal(only_space, rt.tokenizer.decode, rt.config.vocab_size)
    assert trimmed.tolist() == [rt.config.bos_token_id] and healing.removed == "\n\n"


def test_a_newline_prompt_gets_the_body_the_unbroken_prompt_gets(rt):
    options = dict(max_new_tokens=12, adaptive=False)
    plain = rt.generate("def f(x):", **options)
    healed = rt.generate("def f(x):\n", **options)
    broken = rt.generate("def f(x):\n", token_healing=False, **options)
    assert plain.text.startswith("\n    ")
    assert healed.token_ids == plain.token_ids and healed.text == plain.text[1:]
    assert not broken.text.startswith(" ")          # unhealed: no body (a new top-level line)
    streamed = "".join(t.text for t in rt.stream("def f(x):\n", **options))
    assert streamed == healed.text
    as_ids = rt.generate(rt.encode("def f(x):\n").tolist(), **options)   # ids: taken as given
    assert as_ids.token_ids == broken.token_ids


def test_the_option_is_validated(rt):
    with pytest.raises(ValueError, match="token_healing must be True or False"):
        rt.generate("x", token_healing="yes")
