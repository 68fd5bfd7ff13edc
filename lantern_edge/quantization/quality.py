"""INT8 vs fp32 on held-out text: perplexity, top-1 agreement, signal drift, band agreement, speed.

Teacher-forced: each held-out sequence is fed in one prefill through the runtime's own engine
at steps_base, once per precision, so the numbers describe exactly what `Runtime` runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..export.atomic import write_text_atomic
from ..runtime.artifacts import open_artifacts
from ..runtime.controller import band_of
from ..runtime.decode import Sequence
from ..runtime.engine import Engine
from ..runtime.generate import Runtime

REPORT_MD = "QUALITY.md"
REPORT_JSON = "quality.json"


def heldout_sequences(runtime: Runtime, texts: list[str] | None, count: int, length: int):
    """Token sequences of `length` (BOS first when the model has one) from held-out text;
    characters a char vocabulary lacks are dropped."""
    if texts is None:
        from ..model.corpus import load_corpus
        texts = load_corpus(max_chars=400_000).val
    vocab = runtime.tokenizer.get_vocab()
    char_level = max(len(t) for t in vocab) == 1
    ids: list[int] = []
    for text in texts:
        if char_level:
            text = "".join(ch for ch in text if ch in vocab)
        ids.extend(runtime.tokenizer.encode(text, add_special_tokens=False).ids)
        if len(ids) >= count * length:
            break
    bos = runtime.config.bos_token_id
    body = length - (bos is not None)
    seqs = [ids[i * body:(i + 1) * body] for i in range(min(count, len(ids) // body))]
    return [np.array(([bos] if bos is not None else []) + s, dtype=np.int64) for s in seqs]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def evaluate_quality(root: Path, texts: list[str] | None = None, sequences: int = 24,
                     decode_tokens: int = 128, threads: int = 1) -> dict:
    artifacts = open_artifacts(root, "int8")
    cfg = artifacts.model_config
    runtime = Runtime(root)
    length = min(256, cfg.max_position - 1)
    seqs = heldout_sequences(runtime, texts, sequences, length)
    if not seqs:
        from .api import QuantizationError
        raise QuantizationError("no held-out text could be tokenized for the quality report "
                                "(does the vocabulary cover the text?); pass --no-eval to skip it")
    engines = {p: Sequence(Engine(open_artifacts(root, p), p, ["CPUExecutionProvider"]))
               for p in ("fp32", "int8")}
    options = runtime.defaults
    weights = np.array([options.weight_entropy, options.weight_dispersion, options.weight_p_max],
                       np.float32)
    nll = {"fp32": [], "int8": []}
    signals = {"fp32": [], "int8": []}
    top1_agree = []
    for ids in seqs:
        argmax = {}
        for precision, engine in engines.items():
            engine.reset()
            logits = engine.feed(ids, cfg.steps_base).logits.copy()
            logp = _log_softmax(logits[:-1].astype(np.float64))
            nll[precision].append(-logp[np.arange(len(ids) - 1), ids[1:]])
            argmax[precision] = logits.argmax(-1)
            signals[precision].append(engine.signals(logits, weights))
        top1_agree.append(argmax["fp32"] == argmax["int8"])
    nll = {p: np.concatenate(v) for p, v in nll.items()}
    merged = {p: {k: np.concatenate([s[k] for s in v]) for k in v[0]} for p, v in signals.items()}
    bands = {p: np.array([band_of(float(u), options) for u in merged[p]["score"]]) for p in merged}
    ppl = {p: float(np.exp(v.mean())) for p, v in nll.items()}
    quality = {
        "heldout_tokens": int(sum(len(s) - 1 for s in seqs)),
        "perplexity_fp32": ppl["fp32"], "perplexity_int8": ppl["int8"],
        "perplexity_delta_pct": 100 * (ppl["int8"] / ppl["fp32"] - 1),
        "top1_agreement": float(np.concatenate(top1_agree).mean()),
        "band_agreement": float((bands["fp32"] == bands["int8"]).mean()),
    }
    for name in ("entropy", "p_max", "dispersion", "score"):
        quality[f"mean_abs_change_{name}"] = float(
            np.abs(merged["fp32"][name] - merged["int8"][name]).mean())
    quality.update(decode_speed(root, decode_tokens, threads))
    return quality


def decode_speed(root: Path, tokens: int, threads: int, rounds: int = 3) -> dict:
    """Decode tokens/s (fixed path, greedy), fp32 and int8 alternating in one run; best of rounds.
    At one thread by default: the runtime's default (a second thread speeds fp32 up more than
    INT8; docs/PERFORMANCE.md)."""
    runtimes = {p: Runtime(root, precision=p, intra_op_threads=threads,
                           providers=["CPUExecutionProvider"]) for p in ("fp32", "int8")}
    prompt = [runtimes["fp32"].config.bos_token_id or 0] * 8
    best = {p: 0.0 for p in runtimes}
    for _ in range(rounds):
        for p, rt in runtimes.items():
            n = min(tokens, rt.config.max_position - len(prompt) - 1)
            start = time.perf_counter()
            result = rt.generate(prompt, max_new_tokens=n, adaptive=False, ignore_eos=True)
            best[p] = max(best[p], len(result.token_ids) / (time.perf_counter() - start))
    return {"decode_tokens_per_s_fp32": best["fp32"], "decode_tokens_per_s_int8": best["int8"],
            "decode_speedup": best["int8"] / best["fp32"], "decode_threads": threads}


def write_quality_report(report) -> None:
    q = report.quality
    out = report.root / "int8"
    write_text_atomic(out / REPORT_JSON, json.dumps({"sizes": report.sizes, **q}, indent=1) + "\n")
    total32 = sum(a for a, _ in report.sizes.values())
    total8 = sum(b for _, b in report.sizes.values())
    detail = (", per-channel" if report.per_channel else
              f", MatMulNBits, block size {report.block_size}" if report.block_size else "")
    lines = [f"# INT8 quality report ({report.mode}{detail})",
             "", "| graph | fp32 bytes | int8 bytes | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {a} | {b} | {b / a:.2f} |" for n, (a, b) in report.sizes.items()]
    lines += [f"| total | {total32} | {total8} | {total8 / total32:.2f} |", "",
              "| measure | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in q.items()]
    write_text_atomic(out / REPORT_MD, "\n".join(lines) + "\n")
