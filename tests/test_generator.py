"""Runtime.generator: step by step, with the KV state kept across turns."""

import numpy as np
import pytest

from lantern_edge import Runtime


@pytest.fixture(scope="module")
def tiny(tiny_artifacts):
    return Runtime(tiny_artifacts)


def test_steps_equal_generate_and_turns_continue_the_same_state(tiny):
    # confident band: no THINK token enters the KV, so one prefill of the whole conversation
    # holds the same state as the turns did
    kw = dict(ignore_eos=True, tau_low=1e9, tau_mid=1e9, tau_high=1e9)
    with tiny.generator("def f(x):", **kw) as gen:
        first = [gen.step() for _ in range(12)]
        alone = tiny.generate("def f(x):", max_new_tokens=12, **kw)
        assert [t.token_id for t in first] == alone.token_ids
        assert "".join(t.text for t in first) == alone.text == gen.text
        gen.append(" = 1\n")                                  # a turn of the app's own text
        turn = tiny.encode(" = 1\n", bos=False).tolist()
        assert gen.ids == tiny.encode("def f(x):").tolist() + alone.token_ids + turn
        second = [gen.step().token_id for _ in range(8)]
        # greedy: the same tokens as one generate() over the whole conversation so far
        context = gen.ids[:-8]
        assert second == tiny.generate(context, max_new_tokens=8, **kw).token_ids


def test_logits_and_signals_belong_to_the_next_token(tiny):
    with tiny.generator("x = [", adaptive=False) as gen:
        logits = gen.logits
        token = gen.step()
        assert token.token_id == int(np.argmax(logits))
        signals = gen.signals
        assert set(signals) == {"entropy", "p_max", "dispersion", "score"}
        probs = np.exp(gen.logits - gen.logits.max())
        assert signals["p_max"] == pytest.approx(probs.max() / probs.sum(), rel=1e-4)


def test_a_generator_needs_a_prompt_and_stays_closed(tiny):
    gen = tiny.generator()
    with pytest.raises(ValueError, match="append a prompt first"):
        gen.step()
    gen.append([5, 6, 7])
    gen.close()
    with pytest.raises(ValueError, match="closed"):
        gen.step()
