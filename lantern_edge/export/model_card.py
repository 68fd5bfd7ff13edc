"""MODEL_CARD.md of an artifacts directory, rendered from its manifest (lantern.json).

Everything in the card is a recorded fact: the checkpoint's training metadata (corpus, split,
steps, time, validation loss per recursion depth, halting-head statistics, calibrated
thresholds), the export's parity and, once quantized, the INT8 quality report. `lantern-export`
writes it and `lantern-edge quantize` rewrites it; ``notes`` adds hand-written sections (how a
shipped model was made, its known limits). Imports nothing heavier than the standard library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .atomic import write_text_atomic

MODEL_CARD = "MODEL_CARD.md"


def write_model_card(root: Path, manifest: dict[str, Any], notes: str = "") -> Path:
    """Write root/MODEL_CARD.md for ``manifest``; callers rewrite lantern.json afterwards so the
    card's sha256 is current."""
    path = Path(root) / MODEL_CARD
    write_text_atomic(path, render_model_card(manifest, notes))
    return path


def render_model_card(manifest: dict[str, Any], notes: str = "") -> str:
    cfg = manifest["model_config"]
    training = manifest.get("training") or {}
    producer = manifest.get("producer", {})
    lines = ["# Model card", ""]
    params = training.get("parameters")
    lines += [
        f"LANTERN, {cfg['num_blocks']} weight-shared blocks x {cfg['steps_base']} iterations per "
        f"token ({cfg['steps_reasoning']} when the controller deepens), hidden "
        f"{cfg['hidden_size']}, {cfg['num_heads']} heads, SwiGLU {cfg['intermediate_size']}, "
        f"vocabulary {cfg['vocab_size']}, sliding window {cfg['window_size']} + "
        f"{cfg['max_global_tokens']} global slots, {cfg['max_position']} positions"
        + (f"; {params:,} parameters." if params else "."),
        "", _depth(cfg, manifest["controller"]),
        "", f"Exported by lantern-edge {producer.get('version', '?')} (opset "
        f"{producer.get('opset', '?')}) from a {producer.get('checkpoint_kind', '?')} checkpoint "
        f"(sha256 {str(producer.get('checkpoint_sha256', '?'))[:16]}...).", ""]
    if training:
        lines += _training(training)
    lines += _controller(manifest["controller"])
    parity = manifest.get("parity") or {}
    if parity:
        lines += ["## Export parity (max abs difference vs the PyTorch reference)", "",
                  ", ".join(f"{k} {v:.1e}" for k, v in parity.items()
                            if isinstance(v, (int, float))), ""]
    quality = manifest["graphs"].get("int8", {}).get("quality")
    if quality:
        lines += _int8(manifest["graphs"]["int8"], quality)
    if notes.strip():
        lines += [notes.strip(), ""]
    return "\n".join(lines)


def _training(t: dict[str, Any]) -> list[str]:
    data = t.get("data") or {}
    source = (data.get("prepared_from") or {}).get("source") or data.get("source", "?")
    lines = ["## Training", "",
             f"- Corpus: {source}; {data.get('files_train', '?')} training files "
             f"({t.get('train_tokens', '?'):,} tokens), {data.get('files_val', '?')} held-out "
             f"files ({t.get('val_tokens', '?'):,} tokens), split by file, never by line."
             if isinstance(t.get("train_tokens"), int) else f"- Corpus: {source}",
             f"- {t.get('steps', '?')} steps, {t.get('tokens_seen', 0):,} tokens seen, "
             f"{t.get('loop_seconds', 0):.0f} s of training loop on {t.get('device', '?')} "
             f"(torch {t.get('torch_version', '?')}).",
             f"- Objectives: {'; '.join(f'{k}: {v}' for k, v in (t.get('objectives') or {}).items())}",
             ""]
    losses = t.get("eval_loss_per_depth") or {}
    if losses:
        depths = sorted(losses, key=int)
        lines += ["Validation loss (nats/token, eval mode, no THINK) per recursion depth:", "",
                  "| step | " + " | ".join(f"depth {d}" for d in depths) + " |",
                  "|---|" + "---:|" * len(depths)]
        history = t.get("eval_history") or []
        shown = history[:1] + history[1:-1][::max(1, len(history) // 6)] + history[-1:]
        for h in (shown if history else [{"step": t.get("steps"), "loss_per_depth": losses}]):
            row = h["loss_per_depth"]
            lines.append(f"| {h['step']} | " + " | ".join(f"{row[d]:.3f}" for d in depths) + " |")
        lines.append("")
    halting = t.get("halting_eval") or {}
    if halting:
        lines += ["Halting heads on held-out text (target: one more iteration leaves the argmax "
                  "unchanged):", "", "| after depth | target rate | accuracy at 0.5 | BCE |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {int(d) - 1} -> {d} | {h['target_rate']:.3f} | {h['accuracy']:.3f} | "
                  f"{h['bce']:.3f} |" for d, h in sorted(halting.items(), key=lambda kv: int(kv[0]))]
        lines.append("")
    return lines


def _depth(cfg: dict[str, Any], c: dict[str, Any]) -> str:
    """How depth is spent (docs/DEPTH.md); absent fields read as their defaults."""
    order = cfg.get("recursion_order", "sequence")
    shape = "d cycles of every block" if order == "cycle" else "each block d times in turn"
    probe = cfg.get("depth_probe_hidden", 0)
    probe_text = (f"depth probe (MLP width {probe}, top-{cfg.get('depth_probe_top_k', 10)} "
                  f"probabilities)" if probe else "no depth probe")
    trigger = c.get("deep_trigger", "u")
    if trigger == "probe":
        trigger += f" (tau_probe {c.get('tau_probe', 0.5)})"
    return (f"Depth: {order} order ({shape}), input injection "
            f"{'on' if cfg.get('input_injection') else 'off'}, {probe_text}; a deep token "
            f"continues from its cheap pass; THINK injection "
            f"{'on' if c.get('inject_think', False) else 'off'} by default; deep trigger "
            f"{trigger}.")


def _controller(c: dict[str, Any]) -> list[str]:
    return ["## Controller defaults", "",
            f"U = {c['weight_entropy']} * entropy + {c['weight_dispersion']} * dispersion - "
            f"{c['weight_p_max']} * p_max; bands at tau_low {c['tau_low']:.3f}, tau_mid "
            f"{c['tau_mid']:.3f}, tau_high {c['tau_high']:.3f}; MC dropout {c['mc_samples']} "
            f"samples, lambda_epistemic {c['lambda_epistemic']}.", ""]


def _int8(section: dict[str, Any], q: dict[str, Any]) -> list[str]:
    mode = section.get("quantization", {}).get("mode", "?")
    rows = [("held-out tokens (teacher-forced)", f"{q['heldout_tokens']}"),
            ("perplexity fp32 -> int8", f"{q['perplexity_fp32']:.3f} -> {q['perplexity_int8']:.3f}"
                                        f" ({q['perplexity_delta_pct']:+.2f}%)"),
            ("top-1 agreement", f"{q['top1_agreement']:.2%}"),
            ("band agreement", f"{q['band_agreement']:.2%}"),
            ("mean abs change of U", f"{q['mean_abs_change_score']:.4f}"),
            ("decode tokens/s fp32 / int8", f"{q['decode_tokens_per_s_fp32']:.0f} / "
                                            f"{q['decode_tokens_per_s_int8']:.0f} "
                                            f"({q['decode_speedup']:.2f}x, "
                                            f"{q['decode_threads']} thread"
                                            f"{'s' if q['decode_threads'] != 1 else ''})")]
    return [f"## INT8 ({mode}; full report in int8/QUALITY.md)", "", "| measure | value |",
            "|---|---:|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
