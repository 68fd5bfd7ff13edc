"""lantern_edge.Runtime: parity with the PyTorch reference, the controller's bands, the API."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lantern_edge import ArtifactError, GenerationOptions, Runtime
from lantern_edge.model.checkpoint import load_checkpoint
from lantern_edge.model.incremental import IncrementalDecoder
from lantern_edge.model.uncertainty import UncertaintyHead
from lantern_edge.runtime.controller import band_of, dropout_masks


@pytest.fixture(scope="module")
def tiny(tiny_artifacts):
    return Runtime(tiny_artifacts)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return load_checkpoint(tiny_checkpoint).build_model()


# --- parity with the reference ----------------------------------------------------------------

@pytest.mark.parametrize("seq", [0, 1])
def test_fixed_path_greedy_reproduces_upstream_reference(upstream_artifacts, upstream_reference, seq):
    runtime = Runtime(upstream_artifacts)
    prompt = upstream_reference[f"input_ids_seq{seq}"].tolist()
    result = runtime.generate(prompt, max_new_tokens=40, adaptive=False)
    assert result.token_ids == upstream_reference[f"greedy_seq{seq}_new_ids"].tolist()
    assert result.stop_reason == "max_new_tokens"


def test_fixed_path_greedy_matches_incremental_reference_past_the_window(tiny, tiny_model):
    prompt = tiny.encode("def fibonacci(n):\n    ")
    n = 4 * tiny.config.window_size                      # 64 tokens, window 16
    result = tiny.generate(prompt.tolist(), max_new_tokens=n, adaptive=False, ignore_eos=True)
    decoder = IncrementalDecoder(tiny_model)
    logits = decoder.forward(torch.from_numpy(prompt)).logits[0, -1]
    expected = []
    for _ in range(n):
        token = int(logits.argmax())
        expected.append(token)
        logits = decoder.forward(torch.tensor([token])).logits[0, -1]
    assert result.token_ids == expected


def _reference_controller(model, prompt, options, n, seed):
    """The controller of runtime/controller.py restated over the torch reference (greedy)."""
    cfg = model.config
    decoder = IncrementalDecoder(model)
    head = UncertaintyHead(model.token_embedding.weight, 10)
    weights = torch.tensor([options.weight_entropy, options.weight_dispersion,
                            options.weight_p_max])
    halting = options.halting_threshold if options.use_halting else None
    logits = decoder.forward(torch.from_numpy(prompt), options.steps_base).logits[0, -1]
    last, trace = int(prompt[-1]), []
    stored = cfg.window_size + cfg.max_global_tokens
    for _ in range(n):
        u = float(head(logits[None], weights)[3][0])
        band, cheap, deep = band_of(u, options), list(decoder.iterations), None
        if band == "high":
            b, i = cfg.num_blocks - 1, decoder.iterations[-1] - 1
            masks = {(site, b, i): torch.from_numpy(m) for site, m in zip(
                ("attn_probs", "attn_out", "mlp_out"),
                dropout_masks(cfg, options.mc_samples, stored, seed, decoder.length - 1).values())}
            out = decoder.block_step(b, i, decoder.mc_input, torch.tensor([last]),
                                     decoder.length - 1, masks)[0]
            probs = torch.softmax(model.lm_head(out)[0][:, 0].double(), -1)
            mean = probs.mean(0)
            ent = lambda p: -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # noqa: E731
            u_total = u + options.lambda_epistemic * float(ent(mean) - ent(probs).mean())
            token = int(mean.argmax())
            if u_total >= options.tau_high:
                band = "very_high"
        if band == "very_high":
            room = decoder.buffers[0][0].glob_count < cfg.max_global_tokens
            if cfg.think_token_id is not None and options.inject_think and room:
                out = decoder.forward(torch.tensor([cfg.think_token_id]), options.steps_reasoning)
                deep = list(decoder.iterations)
            else:      # continued (sequence order): block 0 from where it stopped, block 1 again
                deep = [options.steps_reasoning - decoder.iterations[0]] + \
                    [options.steps_reasoning] * (cfg.num_blocks - 1)
                out = decoder.deepen(options.steps_reasoning)
            token = int(out.logits[0, -1].argmax())
        elif band != "high":
            token = int(logits.argmax())
        trace.append((token, band, cheap, deep))
        logits = decoder.forward(torch.tensor([token]), options.steps_base, halting).logits[0, -1]
        last = token
    return trace


def test_adaptive_greedy_matches_the_reference_controller_in_every_band(tiny, tiny_model):
    prompt = tiny.encode("import os\n\ndef main(argv):\n    ")
    probe = tiny.generate(prompt.tolist(), max_new_tokens=40, tau_low=1e9, tau_mid=1e9,
                          tau_high=1e9, ignore_eos=True)
    q = np.quantile([t.u for t in probe.trace], [0.3, 0.55, 0.8])
    options = dict(tau_low=float(q[0]), tau_mid=float(q[1]), tau_high=float(q[2]),
                   use_halting=True, halting_threshold=0.5, seed=11, ignore_eos=True)
    result = tiny.generate(prompt.tolist(), max_new_tokens=40, **options)
    bands = {t.band for t in result.trace}
    assert bands == {"confident", "moderate", "high", "very_high"}, bands
    assert any(t.think_injected for t in result.trace)
    assert any(t.mc_samples for t in result.trace)
    with torch.no_grad():
        expected = _reference_controller(tiny_model, prompt, tiny.options(**options), 40, 11)
    got = [(t.token_id, t.band, t.iterations, t.deep_iterations) for t in result.trace]
    assert got == expected
    assert {tuple(t.iterations) for t in result.trace} != {(2, 2)}    # halting stopped some


@pytest.mark.parametrize("path", ["io_binding", "kv_on_device"])
def test_decode_paths_equal_the_plain_session_path(tiny_artifacts, path):
    """The one-token decode paths against session.run on the same graphs: IO binding to host
    buffers (bindings.py, the CPU default) and the device-resident KV of the CUDA provider
    (device_kv.py, here on CPU OrtValues). Mixed depths, halting, THINK tokens, three windows
    long, then a multi-token chunk; logits, KV, MC step and signals."""
    from lantern_edge.runtime.artifacts import open_artifacts
    from lantern_edge.runtime.bindings import BoundPass
    from lantern_edge.runtime.decode import Sequence
    from lantern_edge.runtime.device_kv import DevicePass
    from lantern_edge.runtime.engine import Engine
    artifacts = open_artifacts(tiny_artifacts)
    cfg = artifacts.model_config
    bound = Sequence(Engine(artifacts, kv_on_device=path == "kv_on_device"))
    # the same KV layout (the device path has no fused pass, hence no scratch slot)
    plain = Sequence(Engine(artifacts, shared_kv=bound.engine.kv_scratch))
    plain.one = plain.host                                    # session.run for one token too
    assert isinstance(bound.one, BoundPass if path == "io_binding" else DevicePass)
    rng = np.random.default_rng(0)
    prompt = rng.integers(4, cfg.vocab_size, 5)
    prompt[0] = cfg.bos_token_id
    tokens = rng.integers(4, cfg.vocab_size, 3 * cfg.window_size)
    tokens[[7, 20]] = cfg.think_token_id
    weights = np.array([1.0, 0.5, 0.5], np.float32)
    stored = cfg.window_size + cfg.max_global_tokens      # what the controller draws for
    masks = dropout_masks(cfg, 3, stored, seed=0, position=0)
    for engine in (bound, plain):
        engine.feed(prompt, cfg.steps_base)
    halted = 0
    for t, token in enumerate(tokens):
        depth = (cfg.steps_base, cfg.steps_reasoning, 1)[t % 3]
        threshold = 0.5 if t % 2 else None
        a, b = bound.feed([token], depth, threshold), plain.feed([token], depth, threshold)
        assert (a.iterations, a.position, a.is_global) == (b.iterations, b.position, b.is_global)
        halted += threshold is not None and a.iterations != [depth] * cfg.num_blocks
        np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-6)
        np.testing.assert_allclose(a.mc_input, b.mc_input, rtol=0, atol=1e-6)
        sa, sb = bound.signals(a.logits[-1:], weights), plain.signals(b.logits[-1:], weights)
        if path == "io_binding":
            assert sa is bound.one.signal_buffers                   # the bound session ran
        for name in sa:
            np.testing.assert_allclose(sa[name], sb[name], rtol=1e-6, atol=1e-6)
        if t % 10 == 0:
            for x, y in zip(bound.mc_distributions(a, masks), plain.mc_distributions(b, masks)):
                np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
    chunk = [bound.feed(tokens[:4], cfg.steps_base), plain.feed(tokens[:4], cfg.steps_base)]
    np.testing.assert_allclose(chunk[0].logits, chunk[1].logits, rtol=0, atol=1e-6)
    if path == "kv_on_device":
        bound.device.download()
    np.testing.assert_allclose(bound.kv.keys, plain.kv.keys, rtol=0, atol=1e-6)
    np.testing.assert_allclose(bound.kv.values, plain.kv.values, rtol=0, atol=1e-6)
    assert np.array_equal(bound.kv.slot_pos, plain.kv.slot_pos)
    assert bound.kv.global_count == plain.kv.global_count == 3
    assert halted > 0                                      # halting really cut some iterations


def test_kv_write_graph_is_valid_onnx():
    import onnx
    from lantern_edge.runtime.device_kv import kv_write_model
    model = onnx.load_from_string(kv_write_model())
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Expand", "ScatterND"] * 2
    session = ort.InferenceSession(kv_write_model(), providers=["CPUExecutionProvider"])
    past = np.zeros((3, 2, 5, 4), np.float32)
    key = np.arange(8, dtype=np.float32).reshape(1, 2, 1, 4)
    indices = np.array([[[i, h, 4] for h in range(2)] for i in (1, 2)], np.int64)
    out = session.run(None, {"past_key": past, "past_value": past, "key": key, "value": -key,
                             "update_shape": np.array([1, 2, 4]),
                             "expand_shape": np.array([2, 2, 4]), "indices": indices})
    expected = past.copy()
    expected[1:, :, 4] = key[0, :, 0]
    assert np.array_equal(out[0], expected) and np.array_equal(out[1], -expected)


# --- each band's action, forced by thresholds ---------------------------------------------------

def test_confident_band_is_plain_greedy(tiny):
    fixed = tiny.generate("x = ", max_new_tokens=12, adaptive=False)
    confident = tiny.generate("x = ", max_new_tokens=12, tau_low=1e9, tau_mid=1e9, tau_high=1e9)
    assert confident.token_ids == fixed.token_ids
    assert {t.band for t in confident.trace} == {"confident"}
    assert all(t.u is not None and t.entropy >= 0 and 0 < t.p_max <= 1 for t in confident.trace)


def test_moderate_band_lowers_the_sampling_temperature(tiny):
    kw = dict(max_new_tokens=1, do_sample=True, temperature=1.0, seed=5)
    moderate = tiny.generate("x = ", tau_low=-1e9, tau_mid=1e9, tau_high=1e9, **kw)
    assert moderate.trace[0].band == "moderate"
    # refined sampling with refined_temperature -> 0 approaches greedy
    cold = [tiny.generate("x = ", tau_low=-1e9, tau_mid=1e9, tau_high=1e9,
                          refined_temperature=1e-4, **{**kw, "seed": s}).token_ids[0]
            for s in range(5)]
    greedy = tiny.generate("x = ", max_new_tokens=1, adaptive=False).token_ids[0]
    assert cold == [greedy] * 5


def test_high_band_runs_mc_dropout_and_reports_mutual_information(tiny):
    result = tiny.generate("x = ", max_new_tokens=6, tau_low=-1e9, tau_mid=-1e9, tau_high=1e9,
                           mc_samples=4, seed=0)
    for t in result.trace:
        assert t.band == "high" and t.mc_samples == 4
        assert t.u_epistemic is not None and t.u_epistemic >= 0
        assert t.u_total == pytest.approx(t.u + 0.3 * t.u_epistemic)
    assert result.stats["mc_calls"] == 6
    assert max(t.u_epistemic for t in result.trace) > 1e-4     # the samples really differ


def test_high_band_escalates_when_epistemic_uncertainty_is_large(tiny):
    result = tiny.generate("x = ", max_new_tokens=4, tau_low=-1e9, tau_mid=-1e9, tau_high=1e3,
                           lambda_epistemic=1e12, seed=0)
    for t in result.trace:
        assert t.band == "very_high" and t.mc_samples == 5 and t.u_total >= 1e3
        assert t.think_injected


def test_very_high_band_injects_think_which_never_reaches_the_text(tiny):
    result = tiny.generate("x = ", max_new_tokens=5, tau_low=-1e9, tau_mid=-1e9, tau_high=-1e9)
    think = tiny.config.think_token_id
    assert all(t.think_injected and t.deep_iterations == [4, 4] for t in result.trace)
    assert think not in result.token_ids and "<think>" not in result.text
    assert result.stats["think_injections"] == 5


def test_very_high_band_without_think_deepens_the_newest_token(tiny, upstream_artifacts):
    result = tiny.generate("x = ", max_new_tokens=3, tau_low=-1e9, tau_mid=-1e9, tau_high=-1e9,
                           inject_think=False)
    assert all(t.deepened and not t.think_injected and t.think_skipped == "inject_think=False"
               for t in result.trace)
    upstream = Runtime(upstream_artifacts).generate(" the", max_new_tokens=3, tau_low=-1e9,
                                                    tau_mid=-1e9, tau_high=-1e9)
    assert all(t.deepened and t.think_skipped == "the model has no THINK token"
               for t in upstream.trace)


def test_think_stops_when_the_global_buffer_is_full(tiny):
    slots = tiny.config.max_global_tokens
    result = tiny.generate("x", max_new_tokens=slots + 3, tau_low=-1e9, tau_mid=-1e9,
                           tau_high=-1e9, ignore_eos=True)
    injected = [t.think_injected for t in result.trace]
    assert sum(injected) == slots - 1                        # BOS holds one global slot
    assert result.trace[-1].think_skipped == "the global KV buffer is full"


# --- determinism, memory, limits ----------------------------------------------------------------

def test_same_seed_same_tokens_and_trace(tiny):
    kw = dict(max_new_tokens=24, do_sample=True, temperature=1.2, top_k=50, top_p=0.95, seed=42)
    a, b = tiny.generate("for i in", **kw), tiny.generate("for i in", **kw)
    strip = lambda r: [{k: v for k, v in vars(t).items() if k != "microseconds"} for t in r.trace]  # noqa: E731
    assert a.token_ids == b.token_ids and strip(a) == strip(b)
    c = tiny.generate("for i in", **{**kw, "seed": 43})
    assert c.token_ids != a.token_ids


def test_memory_is_flat_for_generations_longer_than_the_window(tiny):
    from lantern_edge.runtime.decode import Sequence
    seq = Sequence(tiny.engine)
    kv = seq.kv
    before = (kv.keys.ctypes.data, kv.values.ctypes.data, kv.keys.shape)
    prompt = tiny.encode("x")
    seq.feed(prompt, tiny.config.steps_base)
    for token in range(4 * tiny.config.window_size):
        seq.feed([5 + token % 50], tiny.config.steps_base)
    assert kv.length == len(prompt) + 4 * tiny.config.window_size
    assert (kv.keys.ctypes.data, kv.values.ctypes.data, kv.keys.shape) == before
    scratch = 1 if tiny.engine.kv_scratch else 0        # the fused pass's (kv_state.py)
    assert kv.slot_pos.shape == (tiny.config.window_size + tiny.config.max_global_tokens
                                 + scratch,)


def test_generation_stops_at_max_position(tiny):
    limit = tiny.config.max_position
    prompt = [5] * (limit - 10)
    result = tiny.generate(prompt, max_new_tokens=50, adaptive=False, ignore_eos=True)
    assert result.stop_reason == "max_position"
    # the last token is decided from position limit - 1 and needs no position of its own
    assert result.prompt_tokens + len(result.token_ids) == limit + 1
    with pytest.raises(ValueError, match="prompt is .* tokens but the model has max_position"):
        tiny.generate([5] * limit)


def test_eos_and_stop_strings_end_generation(tiny):
    free = tiny.generate("def", max_new_tokens=30, adaptive=False, ignore_eos=True)
    eos = free.token_ids[3]
    stopped = tiny.generate("def", max_new_tokens=30, adaptive=False, eos_token_id=eos)
    assert stopped.stop_reason == "eos"
    assert stopped.token_ids == free.token_ids[:free.token_ids.index(eos) + 1]
    piece = free.text[2:6]
    by_text = tiny.generate("def", max_new_tokens=30, adaptive=False, ignore_eos=True, stop=piece)
    # the text ends before the stop string (as llama.cpp and OpenAI return it)
    assert by_text.stop_reason == "stop" and by_text.text == free.text[:free.text.index(piece)]
    assert "".join(t.text for t in by_text.trace) == by_text.text


def test_stream_yields_what_generate_returns(tiny):
    streamed = list(tiny.stream("class A:", max_new_tokens=10, seed=1))
    result = tiny.generate("class A:", max_new_tokens=10, seed=1)
    assert [s.token_id for s in streamed] == result.token_ids
    assert "".join(s.text for s in streamed) == result.text
    assert result.stats["new_tokens"] == 10 and 0 <= result.stats["controller_overhead"] < 1


def test_stream_checks_options_eagerly_and_reports_its_end(tiny):
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        tiny.stream("x", max_new_tokens=0)                    # before any next()
    stream = tiny.stream("x = ", max_new_tokens=5, adaptive=False)
    assert stream.stop_reason is None and stream.result is None
    tokens = [t.token_id for t in stream]
    assert stream.stop_reason == "max_new_tokens" and stream.result.token_ids == tokens
    assert stream.stats["new_tokens"] == 5
    closed = tiny.stream("x = ", max_new_tokens=5, adaptive=False)
    next(closed)
    closed.close()
    assert closed.stop_reason == "cancelled" and closed.result.token_ids == tokens[:1]


# --- validation and errors ----------------------------------------------------------------------

@pytest.mark.parametrize("option, value, fragment", [
    ("temperature", 0.0, "temperature must be > 0 (use do_sample=False"),
    ("top_p", 1.5, "top_p must be None or in (0, 1]"),
    ("max_new_tokens", 0, "max_new_tokens must be an int >= 1"),
    ("mc_samples", 1, "mc_samples must be an int in [2, 64]"),
    ("steps_reasoning", 9, "steps_reasoning must be <= the model's steps_reasoning=4"),
    ("tau_low", 1e6, "tau_low <= tau_mid <= tau_high must be ordered"),
    ("top_k", 10_000, "top_k must be <= vocab_size=512"),
    ("bogus", 1, "unknown generation option(s): bogus"),
])
def test_bad_options_name_the_option(tiny, option, value, fragment):
    with pytest.raises(ValueError) as info:
        tiny.generate("x", **{option: value})
    assert fragment in str(info.value)


def test_options_are_frozen_and_replace_validates():
    import dataclasses
    options = GenerationOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.temperature = 2.0
    with pytest.raises(ValueError, match="top_k must be None or an int >= 1"):
        dataclasses.replace(options, top_k=0)


def test_prompt_outside_the_vocabulary_is_a_clear_error(upstream_artifacts):
    runtime = Runtime(upstream_artifacts)
    with pytest.raises(ValueError, match=r"vocabulary lacks: \['é'\]"):
        runtime.generate("café")
    with pytest.raises(ValueError, match="prompt ids must be ints in \\[0, vocab_size=71\\)"):
        runtime.generate([3, 99])


@pytest.fixture
def artifacts_copy(tmp_path, tiny_artifacts):
    return shutil.copytree(tiny_artifacts, tmp_path / "art")


def test_missing_graph_is_named(artifacts_copy):
    (artifacts_copy / "lm_head.onnx").unlink()
    with pytest.raises(ArtifactError, match="lm_head.onnx is missing .*lantern-export"):
        Runtime(artifacts_copy)


def test_modified_graph_fails_its_hash(artifacts_copy):
    with open(artifacts_copy / "weights.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02")
    with pytest.raises(ArtifactError, match="weights.bin does not match its sha256"):
        Runtime(artifacts_copy / "model.onnx")


def test_wrong_format_version_and_not_an_artifacts_dir(artifacts_copy, tmp_path):
    manifest = json.loads((artifacts_copy / "lantern.json").read_text())
    manifest["format_version"] = 99
    (artifacts_copy / "lantern.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format_version 99"):
        Runtime(artifacts_copy)
    with pytest.raises(ArtifactError, match="no lantern.json"):
        Runtime(tmp_path)
    manifest["format_version"] = 1
    (artifacts_copy / "lantern.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="no int8 graphs; quantize them with `lantern-edge quantize"):
        Runtime(artifacts_copy, precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        Runtime(artifacts_copy, precision="fp16")


def test_unavailable_provider_is_a_clear_error(tiny_artifacts):
    with pytest.raises(ValueError, match="providers \\['NoSuchExecutionProvider'\\] are not available"):
        Runtime(tiny_artifacts, providers=["NoSuchExecutionProvider"])


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="no CUDA execution provider in this onnxruntime")
def test_cuda_provider_matches_cpu(tiny_artifacts):
    cpu = Runtime(tiny_artifacts, providers=["CPUExecutionProvider"])
    gpu = Runtime(tiny_artifacts)
    assert gpu.providers[0] == "CUDAExecutionProvider"
    from lantern_edge.runtime.decode import Sequence
    device = Sequence(gpu.engine).device
    assert device is not None and device.device == "cuda"
    assert "cuda" in device.keys[0].device_name().lower()                  # KV on the device
    long = dict(max_new_tokens=4 * gpu.config.window_size, adaptive=False, ignore_eos=True)
    deep = dict(max_new_tokens=12, tau_low=-1e9, tau_mid=-1e9, tau_high=-1e9)  # THINK, deepen
    for kw in (long, deep):
        a, b = gpu.generate("def f(x):", **kw), cpu.generate("def f(x):", **kw)
        assert a.token_ids == b.token_ids
        assert [t.deep_iterations for t in a.trace] == [t.deep_iterations for t in b.trace]


# --- torch-free runtime and the CLI ---------------------------------------------------------------

BLOCK_TORCH = """
import builtins, sys
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch.") or name == "onnx" or name.startswith("onnx."):
        raise ImportError(f"{name} is blocked in this test")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
"""


def test_runtime_imports_and_generates_without_torch(tiny_artifacts):
    code = BLOCK_TORCH + f"""
import lantern_edge
result = lantern_edge.Runtime({str(tiny_artifacts)!r}).generate("def f(x):", max_new_tokens=8, seed=0)
assert "torch" not in sys.modules and "onnx" not in sys.modules
print(len(result.token_ids), result.stats["band_counts"])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("8 ")


def test_cli_generate_streams_traces_and_prints_json(tiny_artifacts):
    run = lambda *a: subprocess.run([sys.executable, "-m", "lantern_edge.cli", "generate", *a],  # noqa: E731
                                    capture_output=True, text=True)
    proc = run("def f(x):", "--model", str(tiny_artifacts), "--max-new-tokens", "12", "--trace",
               "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    assert "band" in proc.stdout and "tok/s" in proc.stdout
    proc = run("def f(x):", "--model", str(tiny_artifacts), "--max-new-tokens", "5", "--json",
               "--no-adaptive")
    data = json.loads(proc.stdout)
    assert len(data["token_ids"]) == 5 and data["trace"][0]["band"] is None
    proc = run("x", "--model", str(tiny_artifacts), "--max-new-tokens", "0")
    assert proc.returncode == 2 and "max_new_tokens must be an int >= 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    free = run("def f(x):", "--model", str(tiny_artifacts), "--max-new-tokens", "16",
               "--no-adaptive").stdout.rstrip("\n")
    stop = free[-3:]
    proc = run("def f(x):", "--model", str(tiny_artifacts), "--max-new-tokens", "16",
               "--no-adaptive", "--stop", stop)
    assert proc.returncode == 0 and proc.stdout.rstrip("\n") == free[:free.index(stop)]


def test_a_prompt_longer_than_the_window_is_prefilled_in_chunks_exactly(tiny, tiny_model):
    """Prefill runs window-sized chunks; every position's logits equal the reference's."""
    prompt = tiny.encode("import os\nimport sys\n\n\ndef main(argv):\n    return argv\n" * 3)
    assert len(prompt) > 3 * tiny.config.window_size
    from lantern_edge.runtime.decode import Sequence
    seq = Sequence(tiny.engine)
    logits = seq.feed(prompt, tiny.config.steps_base).logits
    with torch.no_grad():
        expected = IncrementalDecoder(tiny_model).forward(torch.from_numpy(prompt)).logits[0]
    assert logits.shape == tuple(expected.shape)
    assert np.abs(logits - expected.numpy()).max() <= 1e-4
    assert seq.kv.length == len(prompt)
