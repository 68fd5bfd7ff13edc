"""lantern-edge eval: metrics on cases with known answers, the teacher-forced passes against the
incremental reference (the runtime's oracle), and the CLI end to end on the tiny model."""

import json

import numpy as np
import pytest
import torch

from lantern_edge.evaluation import compute, passes
from lantern_edge.evaluation.metrics import (auroc, average_ranks, cluster_bootstrap_ci,
                                             prediction_rejection_ratio, rejection_curve,
                                             reliability)
from lantern_edge.model.incremental import IncrementalDecoder

# --- metrics --------------------------------------------------------------------------------


def test_auroc_known_cases():
    labels = np.array([0, 0, 1, 1])
    assert auroc([1, 2, 3, 4], labels) == 1.0
    assert auroc([4, 3, 2, 1], labels) == 0.0
    assert auroc([7, 7, 7, 7], labels) == 0.5                  # ties count one half
    assert auroc([0.1, 0.4, 0.35, 0.8], labels) == 0.75        # one of four pairs misordered
    assert np.isnan(auroc([1, 2, 3], [1, 1, 1]))               # one class: undefined
    rng = np.random.default_rng(0)
    assert abs(auroc(rng.random(20000), rng.random(20000) < 0.3) - 0.5) < 0.02


def test_average_ranks_share_ties():
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])


def test_ece_of_calibrated_and_overconfident_sets():
    confidence, correct = [], []
    for k in range(10):                            # bin k: confidence 0.05 + 0.1 k, that share right
        c = 0.05 + 0.1 * k
        confidence += [c] * 100
        correct += [True] * int(round(c * 100)) + [False] * (100 - int(round(c * 100)))
    calibrated = reliability(np.array(confidence), np.array(correct), bins=10)
    assert calibrated.ece == pytest.approx(0.0, abs=1e-12)
    assert calibrated.counts.tolist() == [100] * 10
    overconfident = reliability(np.full(50, 0.9), np.zeros(50, bool), bins=15)
    assert overconfident.ece == pytest.approx(0.9)
    assert reliability(np.array([1.0]), np.array([True]), bins=4).counts.tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="confidence"):
        reliability(np.array([1.5]), np.array([True]))


def test_prr_random_is_zero_oracle_is_one():
    rng = np.random.default_rng(1)
    errors = (rng.random(5000) < 0.4).astype(float)
    assert prediction_rejection_ratio(np.zeros(5000), errors) == pytest.approx(0.0, abs=1e-12)
    assert prediction_rejection_ratio(errors, errors) == pytest.approx(1.0)
    assert prediction_rejection_ratio(-errors, errors) < -0.9
    assert abs(prediction_rejection_ratio(rng.random(5000), errors)) < 0.1
    assert np.isnan(prediction_rejection_ratio(rng.random(10), np.ones(10)))


def test_rejection_curve_with_ties():
    # scores 3 > 2 = 2: after one rejection loss 1 is gone; the tied pair goes in random order
    curve = rejection_curve(np.array([3.0, 2.0, 2.0]), np.array([1.0, 1.0, 0.0]))
    np.testing.assert_allclose(curve, [2 / 3, 1 / 3, 1 / 6, 0.0])


def test_cluster_bootstrap_interval():
    mean, low, high = cluster_bootstrap_ci(np.full(40, 0.25), np.arange(40) // 4)
    assert mean == low == high == 0.25
    values = np.r_[np.ones(50), np.zeros(50)]
    mean, low, high = cluster_bootstrap_ci(values, np.arange(100) // 10, seed=3)
    assert low < mean == 0.5 < high


# --- passes against the incremental reference ----------------------------------------------


@pytest.fixture(scope="module")
def window(random_model):
    torch.manual_seed(1)
    ids = torch.randint(4, random_model.config.vocab_size, (2, 21))
    ids[:, 0] = random_model.config.bos_token_id
    return ids[:, :-1], ids[:, 1:]


def _reference_nll(model, ids, target, t, think):
    """The runtime's very-high action on token t through IncrementalDecoder (batch 1)."""
    cfg = model.config
    decoder = IncrementalDecoder(model)
    decoder.forward(ids[:t + 1], cfg.steps_base)
    if think:
        logits = decoder.forward(torch.tensor([cfg.think_token_id]), cfg.steps_reasoning).logits
    else:
        decoder.rewind()
        logits = decoder.forward(ids[t:t + 1], cfg.steps_reasoning).logits
    return -torch.log_softmax(logits[0, -1].double(), -1)[target].item(), decoder


@pytest.mark.parametrize("think", [False, True])
def test_isolated_and_joint_passes_match_the_incremental_decoder(random_model, window, think):
    inputs, targets = window
    cfg = random_model.config
    isolated = passes.isolated_deep(random_model, inputs, targets, think=think)
    base = passes.uniform(random_model, inputs, targets, cfg.steps_base)
    for t in (0, 5, 14):                                   # 14: past the window of 8
        deep = np.zeros(inputs.shape, bool)
        deep[:, t] = True
        joint, plan, _ = passes.adaptive(random_model, inputs, targets, deep, use_think=think)
        assert plan.thinks == (2 if think else 0) and plan.deepened == (0 if think else 2)
        np.testing.assert_allclose(joint.nll[:, t], isolated.nll[:, t], atol=1e-5)
        np.testing.assert_allclose(joint.nll[:, :t], base.nll[:, :t], atol=1e-5)
        for row in range(2):
            reference, decoder = _reference_nll(random_model, inputs[row], int(targets[row, t]),
                                                t, think)
            assert joint.nll[row, t] == pytest.approx(reference, abs=1e-4)
        # the next token runs cheap over the deep token's KV, as in the runtime
        logits = decoder.forward(inputs[1, t + 1:t + 2], cfg.steps_base).logits[0, -1]
        expected = -torch.log_softmax(logits.double(), -1)[targets[1, t + 1]].item()
        assert joint.nll[1, t + 1] == pytest.approx(expected, abs=1e-4)
    assert "finish" not in random_model.blocks[0].__dict__       # capture cleaned up


def test_layout_respects_the_global_buffer(random_model, window):
    inputs, _ = window
    cfg = random_model.config                               # max_global_tokens 8: BOS + 7 THINKs
    deep = np.zeros(inputs.shape, bool)
    deep[0, 1:11] = True
    plan = passes.layout(random_model, inputs, deep, use_think=True)
    assert plan.thinks == cfg.max_global_tokens - 1 and plan.deepened == 3
    assert int(plan.think[0].sum()) == 7 and int(plan.think[1].sum()) == 0
    think_reads = plan.read[0, 1:8]
    assert bool((plan.ids[0, think_reads] == cfg.think_token_id).all())
    assert plan.depth[0, plan.read[0, 8]] == cfg.steps_reasoning   # no slot left: re-run deep
    assert plan.depth[1].max() == cfg.steps_base


def test_monte_carlo_is_seeded_and_nonnegative(random_model, window):
    inputs, targets = window
    first, info = passes.monte_carlo(random_model, inputs, targets, 4, seed=3)
    again, info_again = passes.monte_carlo(random_model, inputs, targets, 4, seed=3)
    other, info_other = passes.monte_carlo(random_model, inputs, targets, 4, seed=4)
    np.testing.assert_array_equal(info, info_again)
    np.testing.assert_array_equal(first.nll, again.nll)
    assert (info >= 0).all() and info.max() > 0 and not np.array_equal(info, info_other)


def test_choose_deep_strategies():
    columns = {"composite": np.array([0.1, 0.9, 0.5, 0.7]), "entropy": np.array([4.0, 3, 2, 1])}
    helped = np.array([False, False, True, False])
    rng = np.random.default_rng(0)
    chosen, threshold = compute.choose_deep("composite", 0.5, columns, helped, rng)
    assert chosen.tolist() == [False, True, False, True] and threshold == 0.7
    chosen = compute.choose_deep("entropy", 0.25, columns, helped, rng)[0]
    assert chosen.tolist() == [True, False, False, False]
    assert compute.choose_deep("oracle", 0.75, columns, helped, rng)[0].tolist() == helped.tolist()
    assert compute.choose_deep("random", 0.5, columns, helped, rng)[0].sum() == 2
    assert compute.default_fractions(2, 4, 4.0) == [0.02, 0.05, 0.1, 0.2, 0.25, 0.5]
    # continuing instead of re-running: 3 more iterations per block (2 + 4 over 2 blocks)
    assert compute.default_fractions(2, 4, 3.0) == [0.02, 0.05, 0.1, 0.2, 0.333333, 0.666667]


def test_deep_cost_counts_the_iterations_the_runtime_runs():
    from lantern_edge.model.config import ModelConfig
    seq = ModelConfig(vocab_size=16, hidden_size=8, num_heads=2, steps_base=2, steps_reasoning=4)
    cyc = ModelConfig.from_dict({**seq.to_dict(), "recursion_order": "cycle"})
    assert seq.continuation_iterations() == [2, 4] and cyc.continuation_iterations() == [2, 2]
    assert compute.deep_cost(seq, "deepened") == 3.0 and compute.deep_cost(cyc, "deepened") == 2.0
    assert compute.deep_cost(seq, "think") == compute.deep_cost(cyc, "think") == 4.0


# --- the CLI on the tiny model --------------------------------------------------------------

ARGS = ["--tokens", "256", "--seq-len", "64", "--mc-samples", "3", "--retrieval-examples", "4",
        "--fractions", "0.05", "0.25", "-q"]


def _numbers(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, float):
        yield value


def test_eval_cli_end_to_end(tiny_checkpoint, tmp_path):
    from lantern_edge.cli import main as lantern_main
    out = tmp_path / "eval"
    assert lantern_main(["eval", "--checkpoint", str(tiny_checkpoint), "-o", str(out), *ARGS]) == 0
    figures = ["reliability", "risk_coverage", "compute", "think", "retrieval"]
    for name in figures:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 100_000
    results = json.loads((out / "eval.json").read_text())
    assert set(results["sections"]) == {"signals", "compute", "think", "retrieval"}
    signals = results["sections"]["signals"]
    assert signals["tokens"] == 256
    assert set(signals["auroc"]) >= {"entropy", "one_minus_p_max", "dispersion",
                                     "mutual_information", "composite", "halting"}
    for table in signals["auroc"].values():
        assert all(v is None or 0.0 <= v <= 1.0 for v in table.values())
    assert 0.0 <= signals["ece"] <= 1.0 and 0.0 <= signals["accuracy_base"] <= 1.0
    points = results["sections"]["compute"]["points"]
    assert {p["strategy"] for p in points} == {"fixed", "composite", "entropy", "random",
                                              "oracle", "composite_mc", "shipped"}
    for p in points:
        assert 1.0 <= p["cost"] <= 2 + 4 + 3 / 2 and 0.0 <= p["accuracy"] <= 1.0 and p["loss"] > 0
    fixed = {p["setting"]: p for p in points if p["strategy"] == "fixed"}
    composite = {p["setting"]: p for p in points if p["strategy"] == "composite"}
    # the cheap pass plus 4 per THINK token and 2 + 4 over two blocks per continued token
    point = composite[0.25]
    assert point["cost"] == pytest.approx(2 + (4 * point["thinks"] + 3 * point["deepened"]) / 256)
    assert fixed[3]["cost"] == 3
    assert any(c["versus"] == ["fixed", 3] for c in results["sections"]["compute"]["comparisons"])
    retrieval = results["sections"]["retrieval"]
    assert set(retrieval["conditions"]) == {"plain", "think_after_definition", "no_definition",
                                            "no_definition_think"}
    assert retrieval["receptive_field"] == 2 * 2 * (16 - 1)           # tiny: window 16
    rows = retrieval["conditions"]["plain"]
    assert rows[-1]["beyond_field"] == 1.0
    far = [r for r, c in zip(rows, retrieval["conditions"]["no_definition"]) if r["beyond_field"] == 1]
    assert far and all(r["value_loss"] == pytest.approx(c["value_loss"], abs=1e-6)   # invisible
                       for r, c in zip(far, retrieval["conditions"]["no_definition"][-len(far):]))
    report = (out / "EVAL.md").read_text()
    for heading in ("## Is the uncertainty signal", "## Accuracy vs compute", "## THINK utility",
                    "## Sliding-window retrieval", "Plainly:", "--figure compute"):
        assert heading in report
    assert all(np.isfinite(v) for v in _numbers(results["sections"]))

    # one figure again: same numbers (seeded), the other sections kept
    (out / "retrieval.png").unlink()
    assert lantern_main(["eval", "--checkpoint", str(tiny_checkpoint), "-o", str(out),
                         "--figure", "compute", *ARGS]) == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["sections"] == results["sections"]
    assert not (out / "retrieval.png").exists()
    assert f"--checkpoint {tiny_checkpoint} --output {out} --tokens 256" in report

    # inject_think=False: the very-high action re-runs the token, no THINK anywhere
    other = tmp_path / "no_think"
    assert lantern_main(["eval", "--checkpoint", str(tiny_checkpoint), "-o", str(other),
                         "--figure", "compute", "--no-think", *ARGS]) == 0
    section = json.loads((other / "eval.json").read_text())["sections"]["compute"]
    assert section["deep_action"] == "deepened"
    assert all(p.get("thinks", 0) == 0 for p in section["points"])
    assert sum(p.get("deepened", 0) for p in section["points"]) > 0
    composite = {p["setting"]: p for p in section["points"] if p["strategy"] == "composite"}
    assert composite[0.25]["cost"] == pytest.approx(2 + 0.25 * 3)       # continued, not re-run


def test_eval_cli_errors(tmp_path, capsys, monkeypatch):
    from lantern_edge.evaluation import cli, heldout
    assert cli.main(["--checkpoint", str(tmp_path / "missing.pt"), "-o", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    monkeypatch.setattr(heldout, "DEFAULT_MODEL_DIR", tmp_path)      # no lantern.json there
    assert cli.main(["-o", str(tmp_path / "out")]) == 2
    assert "not a LANTERN artifacts directory" in capsys.readouterr().err
    assert cli.main(["--tokens", "0"]) == 2
    assert "--tokens must be >= 1" in capsys.readouterr().err
    assert cli.main(["--figure", "nope"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_retrieval_examples_place_the_value(tiny_checkpoint):
    from lantern_edge.evaluation.heldout import load_evaluated
    from lantern_edge.evaluation.retrieval import VALUE_WORDS, build_examples
    from tokenizers import Tokenizer
    evaluated = load_evaluated(tiny_checkpoint)
    tokenizer = Tokenizer.from_str(evaluated.tokenizer_json)
    stream = np.arange(10, 400)                 # filler ids, distinct from the statement's
    ids, value_at, definition_end, distance = build_examples(
        tokenizer, evaluated.model, stream, gap=7, count=6, seed=0)
    control = build_examples(tokenizer, evaluated.model, stream, 7, 6, 0, with_definition=False)
    for row in range(6):
        index = value_at[row][value_at[row] >= 0]
        use = ids[row, index + 1]                             # targets[t] = ids[t + 1]
        definition = ids[row, index + 1 - int(distance[row])]
        assert torch.equal(use, definition)                   # the same value, `distance` back
        assert tokenizer.decode(use.tolist()) in VALUE_WORDS
        start = index[-1] + 2 - int(distance[row])
        closing = tokenizer.decode(ids[row, start:definition_end[row] + 1].tolist())
        assert closing == '"\n'                              # the definition ends at definition_end
        assert torch.equal(control[0][row, index + 1], use)   # same key and value in the control
        assert not torch.equal(control[0][row, index + 1 - int(distance[row])], definition)


def test_eval_runs_on_an_artifacts_directory_as_on_its_checkpoint(tmp_path, tiny_checkpoint,
                                                                   tiny_artifacts):
    """The shipped model has no checkpoint: the reference is rebuilt from its graphs."""
    from lantern_edge.cli import main as lantern_main
    for name, source in (("ckpt", tiny_checkpoint), ("art", tiny_artifacts)):
        assert lantern_main(["eval", "--model", str(source), "-o", str(tmp_path / name),
                             "--figure", "reliability", "--no-figures", *ARGS]) == 0
    a, b = (json.loads((tmp_path / n / "eval.json").read_text()) for n in ("ckpt", "art"))
    assert a["sections"]["signals"] == b["sections"]["signals"]
    assert a["run"]["sha256"] == b["run"]["sha256"]              # the checkpoint the graphs came from
