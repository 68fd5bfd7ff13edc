"""bench.json -> BENCH.md: the Markdown tables of one `lantern-edge bench` run. No torch."""

from __future__ import annotations

from .analysis import busiest
from .bands import BAND_WORK, FORCED
from .suite import LABELS



class _Notes:
    """Numbered footnotes: the same text gets the same number."""

    def __init__(self):
        self.texts: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def lines(self) -> list[str]:
        return [f"- [{i}] {text}" for i, text in enumerate(self.texts, 1)]


def _num(value, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "–"
    if digits == 0 and abs(value) < 10:
        digits = 1 if abs(value) >= 1 else 2      # 0.76 tok/s, not 1
    return f"{value:,.{digits}f}{suffix}"


def _ratio(value) -> str:
    return "–" if value is None else f"{value:,.1f}x" if value >= 10 else f"{value:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _missing(row: dict, notes: _Notes) -> str | None:
    if row.get("skipped"):
        return "skipped " + notes.ref(row["skipped"])
    if row.get("error"):
        return "failed " + notes.ref(row["error"])
    return None


def decode_table(results: dict, notes: _Notes) -> list[str]:
    header = ["configuration", "thr", "new tokens", "tok/s", "median µs/tok", "p90 µs/tok",
              "vs full recompute", "vs PyTorch KV", "overhead", "peak RSS MiB", "iters/blk",
              "bands c/m/h/vh"]
    rows = []
    for r in results["decode"]:
        name = LABELS.get(r["configuration"], r["configuration"])
        head = [name, str(r["threads"]), str(r["tokens_requested"])]
        missing = _missing(r, notes)
        if missing:
            rows.append(head + [missing] + ["–"] * (len(header) - 4))
            continue
        est = ""
        if r.get("estimated"):
            est = " est. " + notes.ref(
                f"{LABELS['pytorch-full']}, {r['tokens_requested']} tokens: the loop reached its "
                f"time box (--time-box) after {r['measured_tokens']} tokens; the other steps' "
                f"costs are interpolated from full forwards timed at {len(r['sampled_lengths'])} "
                f"sequence lengths between {r['sampled_lengths'][0]} and "
                f"{r['sampled_lengths'][-1]}")
        if r["tokens"] < r["tokens_requested"]:
            head[2] += " " + notes.ref(f"stopped early: {r.get('stop_reason')}")
        overhead = r.get("controller_overhead")
        bands = r.get("bands")
        mix = "/".join(str(bands[b]) for b in FORCED) if bands and any(bands.values()) else "–"
        rows.append(head + [
            _num(r["tok_s"]) + est, _num(r["us_median"]), _num(r["us_p90"]),
            _ratio(r.get("speedup_vs_full")), _ratio(r.get("speedup_vs_kv")),
            "–" if overhead is None else f"{overhead:.1%}", _num(r.get("peak_rss_mib"), 1),
            _num(r.get("mean_iterations"), 2), mix])
    return _table(header, rows)


def ttft_table(results: dict, notes: _Notes) -> list[str]:
    lengths = results["settings"]["prompt_lengths"]
    header = ["configuration", "thr"] + [f"prompt {n}: TTFT ms" for n in lengths] + \
        ["peak RSS MiB"]
    rows = []
    for r in results["ttft"]:
        head = [LABELS.get(r["configuration"], r["configuration"]), str(r["threads"])]
        missing = _missing(r, notes)
        if missing:
            rows.append(head + [missing] + ["–"] * len(lengths))
            continue
        cells = []
        for n in lengths:
            value = r["prompts"].get(str(n)) or r["prompts"].get(n)
            cells.append(_num(value["ttft_ms"], 1) if value
                         else "– " + notes.ref(r["too_long"][str(n)]))
        rows.append(head + cells + [_num(r.get("peak_rss_mib"), 1)])
    return _table(header, rows)


def memory_table(results: dict) -> list[str]:
    tokens = results["settings"]["tokens"]
    header = ["configuration", "thr"] + [f"{n} tokens" for n in tokens] + \
        [f"growth {tokens[0]} → {tokens[-1]}", "flat"]
    rows = []
    for m in results["memory"]:
        cells = [_num(m["peak_rss_mib"].get(str(n)), 1) for n in tokens]
        growth = m.get("growth_mib")
        flat = "–" if growth is None else "yes" if m["flat"] else "**no**"
        rows.append([LABELS.get(m["configuration"], m["configuration"]), str(m["threads"])]
                    + cells + [_num(growth, 1, " MiB"), flat])
    return _table(header, rows)


def cost_table(results: dict, notes: _Notes) -> list[str]:
    header = ["precision", "thr", "mode", "what runs per token", "µs/tok (mean)", "median",
              "p90", "vs fixed", "overhead", "iters/blk", "MC calls", "THINK", "deepened"]
    rows = []
    for r in results["cost_shape"]:
        head = [r["precision"], str(r["threads"])]
        missing = _missing(r, notes)
        if missing:
            rows.append(head + ["all", missing] + ["–"] * (len(header) - 4))
            continue
        fixed = r["modes"]["fixed"]["us_mean"]
        work = {"fixed": "steps_base, no signals (adaptive off)",
                "adaptive": "manifest thresholds (the real mix)", **BAND_WORK}
        for mode, m in r["modes"].items():
            rows.append(head + [mode if mode in ("fixed", "adaptive") else f"all {mode}",
                                work[mode], _num(m["us_mean"]), _num(m["us_median"]),
                                _num(m["us_p90"]), _ratio(m["us_mean"] / fixed if fixed else None),
                                f"{m['controller_overhead']:.1%}", _num(m["mean_iterations"], 2),
                                str(m["mc_calls"]), str(m["think"]), str(m["deepened"])])
    return _table(header, rows)


def bounds_table(results: dict) -> list[str]:
    header = ["precision", "thr", "lower bound µs/tok", "upper bound µs/tok", "upper/lower",
              "worst single token µs", "fixed path", "adaptive (defaults)"]
    rows = [[b["precision"], str(b["threads"]), f"{b['lower_us']:,.0f} ({b['lower_band']})",
             f"{b['upper_us']:,.0f} ({b['upper_band']})", _ratio(b["upper_over_lower"]),
             _num(b["worst_token_us"]), _num(b["fixed_us"]), _num(b["adaptive_us"])]
            for b in results["bounds"]]
    return _table(header, rows)


def concurrency_table(results: dict, notes: _Notes) -> list[str]:
    """Aggregate tok/s of S streams on one model, against one stream alone (generate() on its
    own: the threads row at S=1), and peak RSS against that row's."""
    rows_in = results.get("concurrency", [])
    header = ["mode", "thr", "streams", "tok/stream", "aggregate tok/s", "vs 1 stream",
              "peak RSS MiB", "vs 1 stream"]
    base = {r["threads"]: r for r in rows_in
            if r["mode"] == "threads" and r["streams"] == 1 and "tok_s" in r}
    rows = []
    for r in rows_in:
        head = [r["mode"], str(r["threads"]), str(r["streams"]), str(r["tokens_requested"])]
        missing = _missing(r, notes)
        if missing:
            rows.append(head + [missing] + ["–"] * (len(header) - 5))
            continue
        one = base.get(r["threads"])
        rows.append(head + [_num(r["tok_s"]), _ratio(one and r["tok_s"] / one["tok_s"]),
                            _num(r["peak_rss_mib"], 1),
                            _ratio(one and r["peak_rss_mib"] / one["peak_rss_mib"])])
    return _table(header, rows)


def agreement_lines(results: dict) -> list[str]:
    lines = []
    for r in results["decode"]:
        if "tokens_compared" in r:
            same = r["tokens_agree"] == r["tokens_compared"]
            lines.append(f"- {LABELS[r['configuration']]}, {r['threads']} thr, "
                         f"{r['tokens_requested']} tokens: "
                         + ("the same greedy tokens as ONNX fp32 (all "
                            f"{r['tokens_compared']})" if same else
                            f"the first {r['tokens_agree']} of {r['tokens_compared']} greedy "
                            f"tokens equal to ONNX fp32's (after one differs the continuations "
                            f"part)"))
    return lines


def render(results: dict) -> str:
    """The whole BENCH.md."""
    s, m, machine = results["settings"], results["model"], results["machine"]
    cfg, notes = m["config"], _Notes()
    checkpoint = m["checkpoint"] or "none"
    out = [
        "# lantern-edge bench", "",
        f"`{results['command']}`", "",
        f"- model: `{m['path']}` (hidden {cfg['hidden_size']}, {cfg['num_blocks']} blocks, "
        f"vocab {cfg['vocab_size']}, window {cfg['window_size']}, max_position "
        f"{cfg['max_position']}, steps {cfg['steps_base']}/{cfg['steps_reasoning']}); "
        f"PyTorch reference: {checkpoint}",
        f"- machine: {machine['cpu']}, {machine['cpus']} CPUs, load average "
        f"{machine['load_average_before']} before, {machine['load_average_after']} after; "
        f"Python {machine['python']}, onnxruntime {machine['onnxruntime']}, torch "
        f"{machine['torch'] or 'not used'}",
        f"- greedy, EOS ignored, {s['decode_prompt_tokens']}-token prompt ({s['prompt_source']})",
        f"- decode: the fastest of {s['repeats']} rounds; in a round every configuration of one "
        f"token count runs in turn, each in a fresh process (its peak RSS is its own) with one "
        f"timed run after a warm-up; a row whose run took longer than the time box "
        f"({s['time_box']:g} s) runs one round. Time to first token and cost shape: the fastest "
        f"of {s['repeats']} runs in one process per configuration. {results['wall_seconds']:.0f} "
        f"s in all",
        ""]
    load, threads = busiest(results), max(s["threads"])
    if load is not None and load > threads + 1:
        out += [f"**The machine was busy**: the 1-minute load average reached {load:.1f} on "
                f"{machine['cpus']} CPUs while rows ran {threads} threads: other processes "
                f"took CPU time, so absolute numbers are pessimistic and noisy; ratios between "
                f"neighbouring rows hold better.", ""]
    out += [
        "## Decode",
        "",
        "tok/s excludes the prefill; a token's latency is feeding the previous token plus "
        "deciding this one. \"overhead\": share of decode wall time outside `session.run` "
        "(NumPy, Python, tokenizer). Ratios compare rows of the same run.", ""]
    out += decode_table(results, notes)
    agreement = agreement_lines(results)
    if agreement:
        out += ["", "Greedy tokens (adaptive off):", ""] + agreement
    out += ["", "## Time to first token", "",
            "Prefill of the prompt plus the first token decided (its MC or deep pass included "
            "when adaptive); one untimed run first.", ""]
    out += ttft_table(results, notes)
    out += ["", "## Peak RSS", "",
            "Peak resident memory of each decode row's process (its own: one process per row). "
            "ONNX rows: the peak after a `stream()` of all the tokens that keeps no trace, i.e. "
            "the runtime's own memory (the decode table's peak also holds the trace that "
            "`generate()` returns, ~2 KB per token). \"flat\": it grew by at most "
            f"{s['rss_tolerance_mib']:g} MiB from the fewest to the most new tokens. What "
            "little the ONNX rows grow is weights paged in on first use (rows of the position "
            "embedding for positions not reached before), bounded by that table's size; the "
            "KV buffers are allocated once.", ""]
    out += memory_table(results)
    out += ["", "## Cost shape", "",
            f"{s['band_tokens']} new tokens with every token forced into one band (thresholds "
            f"at ±inf) and the model's defaults otherwise. Very high injects THINK (while the "
            f"global KV buffer has room) when the manifest's inject_think says so, and "
            f"otherwise continues the token from its cheap pass to steps_reasoning: iters/blk "
            f"counts what ran (sequence order at steps 2/4 on two blocks: (2 + 2 + 2 + 4) / 2 = "
            f"5; cycle order: steps_reasoning; docs/DEPTH.md).", ""]
    out += cost_table(results, notes)
    out += ["", "Bounds per token: the mean µs per token of the cheapest and the costliest band "
            "(the controller's cost per token is bounded below by the cheap band and above by the "
            "costliest). The "
            "fixed path computes no uncertainty signals, so it can sit below the lower bound; "
            "the adaptive run (the manifest's thresholds) mixes the bands.", ""]
    out += bounds_table(results)
    if results.get("concurrency"):
        out += ["", "## Concurrent streams", "",
                "S streams at once on one loaded model (fp32, the manifest's adaptive "
                "controller, greedy): \"threads\": S threads each calling `generate()` (each "
                "generation its own state, unbatched calls); \"batched\": one `Batcher` "
                "(max_batch_size=S) decoding them together, one graph call per kind per step. "
                "Aggregate tok/s: all new tokens over the wall time from the first start to the "
                "last end (prefills included), the fastest of the rounds; each row its own "
                "process. \"vs 1 stream\": against the threads row with 1 stream (plain "
                "`generate()`).", ""]
        out += concurrency_table(results, notes)
    if results["notes"] or notes.texts:
        out += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]] + notes.lines()
    return "\n".join(out) + "\n"
