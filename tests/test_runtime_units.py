"""Runtime pieces without a model: sampling, options, the KV bookkeeping, incremental text."""

import dataclasses

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lantern_edge import GenerationOptions
from lantern_edge.model.config import ModelConfig
from lantern_edge.runtime.controller import band_of, dropout_masks
from lantern_edge.runtime.sessions import special_ids
from lantern_edge.runtime.stream import _TextOut
from lantern_edge.runtime.kv_state import KVState
from lantern_edge.runtime.sampling import (choose, entropy, filter_logits, mc_summary, probability,
                                          softmax)

# --- sampling -----------------------------------------------------------------------------------


def test_greedy_is_argmax_and_never_the_suppressed_id():
    logits = np.array([0.1, 3.0, 2.5, -1.0], np.float32)
    rng = np.random.default_rng(0)
    assert choose(logits, False, 1.0, None, None, rng) == 1
    assert choose(logits, False, 1.0, None, None, rng, suppress=1) == 2
    assert logits[1] == 3.0                                    # the caller's array is untouched


def test_sampling_never_draws_the_suppressed_id():
    logits = np.array([5.0, 5.0, -20.0], np.float32)
    rng = np.random.default_rng(0)
    draws = {choose(logits, True, 1.0, None, None, rng, suppress=0) for _ in range(200)}
    assert draws == {1}


def test_top_k_and_top_p_keep_the_expected_sets():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    assert np.isfinite(filter_logits(logits, 2, None)).tolist() == [True, True, False, False]
    # nucleus 0.7: 0.5 alone is short, 0.5 + 0.3 reaches it
    assert np.isfinite(filter_logits(logits, None, 0.7)).tolist() == [True, True, False, False]
    # a tiny top_p still keeps the most likely token
    assert np.isfinite(filter_logits(logits, None, 1e-6)).tolist() == [True, False, False, False]


def test_seeded_sampling_follows_the_distribution():
    logits = np.log(np.array([0.7, 0.2, 0.1], np.float32))
    draws = [choose(logits, True, 1.0, None, None, np.random.default_rng(s)) for s in range(2000)]
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.allclose(freq, [0.7, 0.2, 0.1], atol=0.04)
    again = [choose(logits, True, 1.0, None, None, np.random.default_rng(s)) for s in range(50)]
    assert again == draws[:50]


def test_probability_of_one_token_is_the_softmax_entry_bit_for_bit():
    """The controller's trace reads one token's probability without the full softmax; it must
    be the very float the softmax gives (traces are compared exactly)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        logits = (rng.standard_normal(4096) * rng.uniform(0.1, 30)).astype(np.float32)
        token = int(rng.integers(4096))
        assert probability(logits, token) == float(softmax(logits[None])[0, token])
    assert probability(np.array([0.0, -np.inf], np.float32), 1) == 0.0


def test_entropy_and_softmax():
    assert entropy(softmax(np.zeros(8))) == pytest.approx(np.log(8))
    assert entropy(np.array([1.0, 0.0, 0.0])) == 0.0


# --- options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, fragment", [
    ("top_p", "0.9", "top_p must be None or in (0, 1]"),
    ("weight_entropy", float("nan"), "weight_entropy must be a finite number"),
    ("tau_mid", float("nan"), "tau_mid must be a number"),
    ("lambda_epistemic", -1.0, "lambda_epistemic must be a finite number >= 0"),
    ("do_sample", 1, "do_sample must be True or False"),
    ("halting_threshold", 0.0, "halting_threshold must be in (0, 1]"),
    ("stop", ["x"], "stop must be a tuple of non-empty strings"),
    ("seed", -1, "seed must be None or an int >= 0"),
])
def test_options_reject_bad_values_by_name(field, value, fragment):
    with pytest.raises(ValueError) as info:
        GenerationOptions(**{field: value})
    assert fragment in str(info.value)


def test_infinite_thresholds_switch_bands_off():
    options = GenerationOptions(tau_low=-np.inf, tau_mid=-np.inf, tau_high=np.inf)
    assert band_of(-1e30, options) == "high" and band_of(1e30, options) == "high"
    options = dataclasses.replace(options, tau_high=-np.inf)
    assert band_of(0.0, options) == "very_high"


def test_band_edges_belong_to_the_upper_band():
    options = GenerationOptions(tau_low=1.0, tau_mid=2.0, tau_high=3.0)
    assert [band_of(u, options) for u in (0.99, 1.0, 2.0, 3.0)] == [
        "confident", "moderate", "high", "very_high"]


def test_dropout_masks_are_scaled_keep_masks_seeded_by_position():
    cfg = ModelConfig(vocab_size=16, hidden_size=8, num_heads=2, dropout=0.25)
    a = dropout_masks(cfg, 4, 12, seed=3, position=7)
    assert a["mask_attn_probs"].shape == (4, 2, 1, 13)
    assert a["mask_attn_out"].shape == a["mask_mlp_out"].shape == (4, 1, 8)
    values = np.unique(np.concatenate([m.ravel() for m in a.values()]))
    assert np.allclose(values, [0.0, 1 / 0.75])
    b = dropout_masks(cfg, 4, 12, seed=3, position=7)
    c = dropout_masks(cfg, 4, 12, seed=3, position=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["mask_mlp_out"], c["mask_mlp_out"])
    # the draws: one generator seeded [seed, position], the three masks drawn in this order
    rng = np.random.default_rng([3, 7])
    for name, mask in a.items():
        expected = ((rng.random(mask.shape) >= 0.25) * (1.0 / 0.75)).astype(np.float32)
        assert mask.dtype == np.float32 and np.array_equal(mask, expected), name


# --- KV bookkeeping ---------------------------------------------------------------------------------

def _kv(window=4, globals_=3):
    cfg = ModelConfig(vocab_size=16, hidden_size=8, num_heads=2, window_size=window,
                      max_global_tokens=globals_, steps_base=1, steps_reasoning=2)
    return KVState(cfg)


def _feed(kv, count, think_at=()):
    """Commit `count` tokens one at a time; positions in think_at (and 0) are global."""
    for _ in range(count):
        p = kv.length
        glob = p == 0 or p in think_at
        kv.commit_slot(p, kv.slot_for(p, glob), glob)


def test_decode_bias_equals_the_general_rule():
    kv = _kv()
    row = np.empty(kv.slot_pos.shape[0] + 1, np.float32)
    for step in range(14):
        p = kv.length
        for glob in (False, True):
            expected = kv.attn_bias(np.array([p]), np.array([glob]))[0]
            kv.decode_bias(p, row)
            assert np.array_equal(row, expected), (step, glob)
        _feed(kv, 1, think_at=(5, 9))
    visible = np.flatnonzero(row[:-1] == 0)
    # the last row (query at 13) sees ring positions 10, 11, 12 (window 4: itself and 3
    # earlier) and the global tokens 0, 5, 9
    assert sorted(kv.slot_pos[visible].tolist()) == [0, 5, 9, 10, 11, 12]


def test_decode_bias_kept_up_to_date_equals_the_general_rule_through_every_kv_edit():
    """decode_bias answers from a row that commit_slot updates in two slots per token; after any
    other edit (a prompt chunk, a rewind, a reset) it computes the row again. Random edits, the
    row checked against attn_bias before every one-token step."""
    rng = np.random.default_rng(0)
    kv = _kv(window=5, globals_=4)
    think = 3
    row = np.empty(kv.slot_pos.shape[0] + 1, np.float32)
    for step in range(3000):
        op = rng.random()
        if op < 0.02:
            kv.reset()
        elif op < 0.06 and kv.length:
            kv.rewind()
        elif op < 0.10:                              # a prompt chunk of 1-7 tokens
            n = int(rng.integers(1, 8))
            positions = np.arange(kv.length, kv.length + n)
            new_global = positions == 0
            try:
                tokens, slots = kv.slots_for(positions, new_global)
            except ValueError:
                kv.reset()
                continue
            kv.commit(positions, tokens, slots, new_global)
        else:                                        # one token, THINK now and then
            token = think if rng.random() < 0.05 and kv.globals_free > 1 else 7
            position, is_global, slot = kv.begin_token(token, think, row)
            expected = kv.attn_bias(np.array([position]), np.array([is_global]))[0]
            assert np.array_equal(row, expected), step
            kv.commit_slot(position, slot, is_global)
            if kv.globals_free == 0:
                kv.reset()


def test_ring_slots_wrap_and_globals_fill_in_arrival_order():
    kv = _kv()
    _feed(kv, 10, think_at=(3,))
    assert kv.slot_pos[:4].tolist() == [8, 9, 6, 7]            # ring: slot = position % 4
    assert kv.slot_pos[4:].tolist() == [0, 3, -1]               # globals: 0, then THINK at 3
    assert kv.globals_free == 1
    _feed(kv, 1, think_at=(10,))
    with pytest.raises(ValueError, match="global KV buffer is full"):
        kv.slot_for(11, True)


def test_rewind_forgets_the_newest_token_only():
    kv = _kv()
    _feed(kv, 6, think_at=(5,))
    kv.rewind()
    assert kv.length == 5 and kv.global_count == 1 and 5 not in kv.slot_pos
    kv.rewind()
    assert kv.length == 4 and 4 not in kv.slot_pos and 3 in kv.slot_pos


# --- incremental text -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def byte_bpe():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(["def f(x):\n    return x + 1\n"] * 20, trainer=trainer)
    return tokenizer


def test_text_stream_pieces_join_to_the_full_decode(byte_bpe):
    text = "déf naïve(ß): return '🚀' + \"ok\"\n"
    ids = byte_bpe.encode(text).ids + [byte_bpe.token_to_id("<eos>")]
    stream = _TextOut(byte_bpe, special_ids(byte_bpe), ())
    pieces = [stream.push(i, last=False) for i in ids]
    assert "".join(pieces) == text == stream.text                # <eos> adds no text
    assert "\ufffd" not in "".join(pieces)
    assert "" in pieces[:-1]                   # a multi-byte character was held back at least once


def test_special_tokens_never_reach_the_incremental_decoder(byte_bpe):
    """A run of special tokens (an EOS repeated under ignore_eos) adds no text and is not held
    by the decoder, which would re-decode all it holds at every step; even in the middle of a
    multi-byte character the text is the full decode's."""
    eos = byte_bpe.token_to_id("<eos>")
    ids = byte_bpe.encode("naïve 🚀 ok").ids
    split = next(k for k in range(1, len(ids))
                 if "\ufffd" in byte_bpe.decode(ids[:k]))       # inside a character
    stream = _TextOut(byte_bpe, special_ids(byte_bpe), ())
    seen = []
    decoder = stream.detok

    class Recording:
        def step(self, tokenizer, token):
            seen.append(token)
            return decoder.step(tokenizer, token)
    stream.detok = Recording()
    sequence = ids[:split] + [eos] * 500 + ids[split:] + [eos] * 3
    text = "".join(stream.push(i, last=False) for i in sequence)
    assert text == byte_bpe.decode(sequence, skip_special_tokens=True) == "naïve 🚀 ok"
    assert seen == ids and stream.silent == {eos, byte_bpe.token_to_id("<bos>")}


def test_stop_strings_are_cut_and_their_prefixes_held_back(byte_bpe):
    ids = byte_bpe.encode("x = 1 + 1\nreturn x\n").ids
    stream = _TextOut(byte_bpe, special_ids(byte_bpe), ("\nret", "1 -"))
    pieces = []
    for i in ids:
        pieces.append(stream.push(i, last=False))
        if stream.stopped:
            break
    # "1 " might begin "1 -" until "+" shows it does not; "\nret" ends the text
    assert "".join(pieces) == stream.text == "x = 1 + 1" and stream.stopped
    assert all("\n" not in p for p in pieces)
    flushed = _TextOut(byte_bpe, special_ids(byte_bpe), ("zzz",))
    assert "".join(flushed.push(i, last=i == ids[-1]) for i in ids) == "x = 1 + 1\nreturn x\n"


def test_mc_summary_is_the_mutual_information():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((5, 300)) * 3).astype(np.float32)
    mean, information = mc_summary(softmax(logits))
    probs = softmax(logits.astype(np.float64))
    assert np.allclose(mean, probs.mean(0), atol=1e-7) and mean.sum() == pytest.approx(1.0)
    expected = entropy(probs.mean(0)) - entropy(probs).mean()
    assert information == pytest.approx(expected, abs=1e-5) and information > 0.1
    same = np.repeat(logits[:1], 5, axis=0)                      # identical samples: no MI
    assert mc_summary(softmax(same))[1] == pytest.approx(0.0, abs=1e-6)
    zeros = softmax(logits * 100)                 # underflowed probabilities count 0 * log 0 = 0
    assert (zeros == 0).any() and np.isfinite(mc_summary(zeros)[1])
