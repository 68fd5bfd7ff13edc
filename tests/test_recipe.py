"""The training recipe: deep supervision, THINK at hard positions, the error-corrector phase,
the probe phase (on-policy labels, class-balanced BCE, tau_probe at the budget), and the
eval's answers (on-policy decisions, gain decomposition, summary.adaptive_vs_fixed)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from depth_models import VARIANTS, depth_model

from lantern_edge.evaluation import gains, onpolicy, passes
from lantern_edge.model import probe_training, recipe
from lantern_edge.model.checkpoint import load_checkpoint
from lantern_edge.model.config import ControllerConfig
from lantern_edge.model.counterfactual import solo
from lantern_edge.model.train_cli import main as train_main
from lantern_edge.model.training import MC_OFF, PRESETS, TrainConfig

# recipe-tiny cut to seconds: every phase runs
QUICK = dict(PRESETS["recipe-tiny"], hidden_size=32, intermediate_size=64, seq_len=32,
             batch_size=4, max_steps=12, eval_interval=6, eval_batches=2,
             corpus_max_chars=60_000, warmup_steps=2, corrector_steps=4, probe_steps=6,
             probe_hidden=8)


def _batch(model, seed=0, length=24, rows=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, model.config.vocab_size, (rows, length + 1), generator=g)
    ids[:, 0] = model.config.bos_token_id
    return ids[:, :-1], ids[:, 1:]


def _fit(loss_fn, params, steps=15, lr=1e-2):
    optimizer = torch.optim.Adam(params, lr=lr)
    first = None
    for _ in range(steps):
        loss = loss_fn()
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return first, loss_fn().item()


# --- deep supervision -------------------------------------------------------------------------

def test_depth_weights_rise_with_depth_and_sum_to_one():
    weights = recipe.depth_weights(4)
    assert weights == pytest.approx([0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("order,injection", VARIANTS)
def test_deep_supervision_is_the_weighted_loss_of_every_depth_and_decreases(order, injection):
    model = depth_model(order, injection)
    inputs, targets = _batch(model)
    loss, per_depth = recipe.deep_supervision_loss(model, inputs, targets)
    expected = [F.cross_entropy(model(inputs, d).logits.flatten(0, 1), targets.flatten())
                for d in range(1, 5)]
    np.testing.assert_allclose([x.item() for x in per_depth], [x.item() for x in expected],
                               atol=1e-5)
    assert loss.item() == pytest.approx(sum(w * x.item() for w, x in
                                            zip([0.1, 0.2, 0.3, 0.4], expected)), abs=1e-5)
    first, last = _fit(lambda: recipe.deep_supervision_loss(model, inputs, targets)[0],
                       model.parameters(), lr=3e-3)
    assert last < first - 0.1


# --- THINK at hard positions -------------------------------------------------------------

def test_think_goes_after_the_worst_predicted_tokens():
    inputs = torch.tensor([[0, 10, 11, 12, 13, 14, 15, 16]])
    targets = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]])
    losses = torch.tensor([[0.1, 0.2, 5.0, 0.3, 0.2, 4.0, 0.1, 0.1]])
    new_inputs, new_targets = recipe.insert_think_at_hard(inputs, targets, losses, think=3,
                                                          rate=0.25, max_count=5)
    # position 2 (predicting 12) and 5 (predicting 15) were worst: THINK before 12 and 15
    assert new_inputs.tolist() == [[0, 10, 11, 3, 12, 13, 14, 3]]
    assert new_targets.tolist() == [[10, 11, -100, 12, 13, 14, -100, 15]]
    capped = recipe.insert_think_at_hard(inputs, targets, losses, 3, rate=0.25, max_count=1)[0]
    assert capped.tolist() == [[0, 10, 11, 3, 12, 13, 14, 15]]


# --- the error-corrector phase ---------------------------------------------------------------

def test_corrector_loss_weights_cheap_wrong_tokens_and_trains_through_the_continuation():
    model = depth_model("cycle", True)
    model.train()
    model.config.__dict__["dropout"] = 0.0          # deterministic for the exact check
    inputs, targets = _batch(model)
    with torch.no_grad():
        cheap = model(inputs, 2).logits
        deep = passes.isolated_deep(model, inputs, targets, think=False).nll
    cheap_nll = F.cross_entropy(cheap.transpose(1, 2), targets, reduction="none")
    wrong = (cheap.argmax(-1) != targets).numpy()
    w = np.where(wrong, 4.0, 1.0)
    loss, stats = recipe.corrector_loss(model, inputs, targets, weight=4.0)
    expected = cheap_nll.mean().item() + float((w * deep).sum() / w.sum())
    assert loss.item() == pytest.approx(expected, abs=1e-4)
    assert stats["cheap_wrong"] == pytest.approx(wrong.mean())
    first, last = _fit(lambda: recipe.corrector_loss(model, inputs, targets, 4.0)[0],
                       model.parameters(), lr=3e-3)
    assert last < first - 0.1


# --- the probe phase -------------------------------------------------------------------------

def test_probe_labels_are_the_runtime_deep_action_against_the_cheap_pass():
    model = depth_model("sequence", True, probe=8)
    inputs, targets = _batch(model)
    cheap = passes.uniform(model, inputs, targets, 2)
    deep = passes.isolated_deep(model, inputs, targets, think=False)
    gain = (cheap.nll - deep.nll).ravel() > 0.1
    fix = (~cheap.correct & deep.correct).ravel()
    for kind, expected in (("gain", gain), ("fix", fix), ("either", gain | fix)):
        batch = probe_training.label_batch(model, inputs, targets, 0.1, kind)
        assert np.array_equal(batch["label"].numpy(), expected)
    assert gain.any() and not gain.all()
    with pytest.raises(ValueError, match="probe label must be one of"):
        probe_training.label_batch(model, inputs, targets, 0.1, "both")


def test_balanced_bce_gives_each_class_half():
    p = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    label = torch.tensor([1, 0, 0, 0, 0])
    expected = 0.5 * -np.log(0.9) + 0.5 * np.mean(-np.log([0.2, 0.3, 0.4, 0.5]))
    assert probe_training.balanced_bce(p, label).item() == pytest.approx(expected, rel=1e-5)
    assert probe_training.balanced_bce(torch.full((4,), 0.5), torch.zeros(4)).item() == \
        pytest.approx(np.log(2), rel=1e-5)


def test_tau_probe_sends_the_budget_deep():
    scores = np.random.default_rng(0).random(1000)
    for budget in (0.05, 0.1, 0.3):
        tau = probe_training.calibrate_tau(scores, budget)
        assert (scores >= tau).mean() == pytest.approx(budget, abs=1e-9)
    with pytest.raises(ValueError, match="deep_budget must be in"):
        probe_training.calibrate_tau(scores, 1.0)


def test_probe_phase_trains_only_the_probe_and_calibrates_to_the_budget():
    model = depth_model("cycle", True).train()
    cfg = TrainConfig(**{**QUICK, "probe_hidden": 16, "probe_steps": 40, "probe_lr": 1e-2,
                         "deep_budget": 0.2})
    batches = [_batch(model, seed=s, rows=4) for s in range(4)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = iter(range(10**6))
    probed, report = probe_training.run_probe_phase(
        model, cfg, lambda: batches[next(step) % 3], batches[3:], torch.device("cpu"))
    for key, value in before.items():                        # the model is frozen
        assert torch.equal(probed.state_dict()[key], value), key
    assert probed.config.depth_probe_hidden == 16 and report["steps"] == 40
    assert report["train_loss_last"] < report["train_loss_first"]
    assert report["deep_share"] == pytest.approx(0.2, abs=0.02)
    assert 0.0 <= report["tau_probe"] <= 1.0 and 0 < report["label_rate"] < 1


# --- on-policy decisions and the eval's answers -----------------------------------------------

@pytest.mark.parametrize("order", ["sequence", "cycle"])
def test_cheap_signals_in_the_adaptive_context_match_the_joint_pass(order):
    """solo at steps_base over a mixed-depth context gives every cheap token exactly what the
    joint pass (model.forward with that per-token depth) gives it."""
    model = depth_model(order, True, probe=8)
    inputs, targets = _batch(model, length=20)
    deep = np.zeros(inputs.shape, bool)
    deep[:, [3, 9, 15]] = True
    grid = torch.from_numpy(np.where(deep, 4, 2))[None].expand(2, -1, -1)
    _, logits, _ = solo(model, inputs, 2, context_depth=grid)
    joint = model(inputs, grid).logits
    cheap = torch.from_numpy(~deep)
    torch.testing.assert_close(logits[cheap], joint[cheap], atol=1e-5, rtol=0)
    if order == "cycle":                    # a cheap pass never sees past steps_base
        torch.testing.assert_close(logits, model(inputs, 2).logits, atol=1e-5, rtol=0)


def test_on_policy_decisions_reach_a_fixed_point():
    model = depth_model("sequence", True, probe=8)
    inputs, _ = _batch(model, length=20)
    controller = ControllerConfig(deep_trigger="probe", tau_probe=0.5, tau_low=0, tau_mid=50,
                                  tau_high=60)
    signals = onpolicy.cheap_signals(model, controller, inputs, None)
    controller = ControllerConfig(deep_trigger="probe", tau_low=0, tau_mid=50, tau_high=60,
                                  tau_probe=float(np.quantile(signals["p_benefit"], 0.7)))
    decision = onpolicy.decide(model, controller, inputs, np.zeros(inputs.shape))
    assert decision["converged"]
    again = onpolicy.cheap_signals(model, controller, inputs, decision["deep"])
    assert np.array_equal(again["p_benefit"] >= controller.tau_probe, decision["deep"])
    assert not decision["mc"].any()                          # U never reaches tau_mid here


def test_gain_decomposition_is_exact():
    rng = np.random.default_rng(0)
    n = 2000
    base_top1, deep_top1, target = (rng.integers(0, 3, n) for _ in range(3))
    deep = rng.random(n) < 0.3
    result = gains.decomposition(deep, base_top1 == target, base_top1, deep_top1,
                                 deep_top1 == target)
    after = np.where(deep, deep_top1 == target, base_top1 == target)
    assert result["gain"] == pytest.approx(after.mean() - (base_top1 == target).mean())
    assert result["gain"] == pytest.approx(result["measured_gain"])
    assert result["share_deep"] == pytest.approx(deep.mean())


def test_adaptive_vs_fixed_interpolates_between_neighbouring_depths():
    rng = np.random.default_rng(1)
    n = 400
    columns = {"window": np.arange(n) // 40}
    for d in range(1, 5):
        columns[f"correct_d{d}"] = rng.random(n) < 0.2 + 0.1 * d
        columns[f"nll_d{d}"] = rng.random(n) + 3 - 0.2 * d
    correct, nll = rng.random(n) < 0.45, rng.random(n) + 2.5
    s = gains.adaptive_vs_fixed(2.25, correct, nll, columns, 4, seed=0)
    fixed = 0.75 * columns["correct_d2"].mean() + 0.25 * columns["correct_d3"].mean()
    assert s["fixed_top1"] == pytest.approx(100 * fixed)
    assert s["delta_top1"] == pytest.approx(s["adaptive_top1"] - s["fixed_top1"])
    assert s["delta_nll"] == pytest.approx(s["adaptive_nll"] - s["fixed_nll"])
    assert s["delta_top1_ci95"][0] <= s["delta_top1"] <= s["delta_top1_ci95"][1]
    assert s["delta_nll_ci95"][0] <= s["delta_nll"] <= s["delta_nll_ci95"][1]
    at_three = gains.adaptive_vs_fixed(3.0, correct, nll, columns, 4, seed=0)
    assert at_three["fixed_top1"] == pytest.approx(100 * columns["correct_d3"].mean())
    assert s["tokens"] == n and s["fixed_depths"] == [2, 3]


# --- end to end: train the recipe, export, evaluate ------------------------------------------

def test_recipe_run_writes_probe_and_tau_into_checkpoint_artifacts_and_eval(tmp_path, capsys):
    from lantern_edge.cli import main as lantern_main
    from lantern_edge.export.api import export_checkpoint
    from lantern_edge.export.manifest import read_manifest
    out = tmp_path / "r.pt"
    args = ["--preset", "recipe-tiny", "-o", str(out), "-q"]
    for name, value in QUICK.items():
        if name not in PRESETS["recipe-tiny"] or PRESETS["recipe-tiny"][name] != value:
            args += ["--" + name.replace("_", "-"), str(value)]
    assert train_main(args + ["--main-output", str(tmp_path / "main.pt")]) == 0
    ckpt = load_checkpoint(out)
    main = load_checkpoint(tmp_path / "main.pt")          # before the phases: no probe
    assert main.model_config.depth_probe_hidden == 0 and main.training["steps"] == 12
    phases = ckpt.training["phases"]
    assert phases["corrector"]["steps"] == 4 and phases["probe"]["steps"] == 6
    assert ckpt.model_config.depth_probe_hidden == 8
    assert ckpt.model_config.recursion_order == "cycle" and not ckpt.model_config.use_halting
    assert ckpt.controller_config.deep_trigger == "probe"
    assert ckpt.controller_config.tau_probe == pytest.approx(phases["probe"]["tau_probe"])
    assert not ckpt.controller_config.inject_think
    assert ckpt.controller_config.tau_mid == ckpt.controller_config.tau_high == MC_OFF
    assert train_main(["--resume", str(out), "-q"]) == 2
    assert "this run is complete" in capsys.readouterr().err

    artifacts = tmp_path / "art"
    export_checkpoint(out, artifacts)
    manifest = read_manifest(artifacts)
    assert manifest["controller"]["tau_probe"] == pytest.approx(phases["probe"]["tau_probe"])
    assert manifest["controller"]["deep_trigger"] == "probe"
    assert manifest["model_config"]["depth_probe_hidden"] == 8

    text = tmp_path / "outside.py"
    text.write_text("def add(a, b):\n    return a + b\n\n" * 40)
    result = tmp_path / "eval"
    assert lantern_main(["eval", "--checkpoint", str(out), "-o", str(result), "--tokens", "128",
                         "--retrieval-examples", "2", "--no-figures", "-q", "--text",
                         str(text)]) == 0
    results = json.loads((result / "eval.json").read_text())
    s = results["summary"]["adaptive_vs_fixed"]
    assert set(s) >= {"cost", "adaptive_top1", "adaptive_nll", "fixed_top1", "fixed_nll",
                      "delta_top1", "delta_top1_ci95", "delta_nll", "delta_nll_ci95", "tokens"}
    assert s["tokens"] == 128 and results["run"]["heldout"]["split"] == "all"
    assert s["delta_top1"] == pytest.approx(s["adaptive_top1"] - s["fixed_top1"])
    shipped = [p for p in results["sections"]["compute"]["points"] if p["strategy"] == "shipped"]
    assert shipped[0]["on_policy"] and shipped[0]["trigger"] == "probe"
    assert shipped[0]["cost"] == pytest.approx(s["cost"]) and shipped[0]["mc_share"] == 0
    # cycle order: a continued token costs steps_reasoning - steps_base more per block
    assert s["cost"] == pytest.approx(2 + 2 * shipped[0]["deep_share"])
    assert "p_benefit" in results["sections"]["signals"]["fix_given_change"]["deepened"]["auroc"]
    assert "## Summary: the default controller" in (result / "EVAL.md").read_text()
    assert lantern_main(["eval", "--checkpoint", str(out), "--text", str(tmp_path / "nope.py"),
                         "-o", str(result), "-q"]) == 2
    assert "--text" in capsys.readouterr().err
