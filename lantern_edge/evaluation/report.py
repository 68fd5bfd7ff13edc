"""EVAL.md: the Markdown tables and plain statements of an eval.json (no computation here)."""

from __future__ import annotations

import math

import numpy as np



def _pct(x, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(values) -> str:
    mean, low, high = values
    return f"{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _figure(name: str, run: dict) -> list[str]:
    flags = f"{run['flags']} " if run["flags"] else ""
    return [f"![{name}]({name}.png)", "",
            f"Reproduce: `lantern-edge eval {flags}--figure {name}`", ""]


def render(results: dict) -> str:
    """The whole EVAL.md for the sections present in results."""
    run, sections = results["run"], results["sections"]
    model, heldout, ctl = run["model"], run["heldout"], run["controller"]
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    note = f" ({heldout['note']})" if heldout.get("note") else ""
    lines = ["# lantern-edge eval", "",
             f"- checkpoint: `{run['checkpoint']}` (sha256 {run['sha256'][:12]})",
             f"- model: {model['parameters']:,} parameters, hidden {model['hidden_size']}, "
             f"vocab {model['vocab_size']}, window {model['window_size']}, steps "
             f"{model['steps_base']}/{model['steps_reasoning']}, THINK "
             f"{yes(model['think_token_id'] is not None)}, halting {yes(model['use_halting'])}",
             f"- held-out text: {heldout['source']}, validation split ({heldout['split']}), "
             f"{heldout['windows']} windows of {heldout['window_length']} tokens = "
             f"{heldout['tokens']} teacher-forced predictions{note}",
             f"- controller (from the checkpoint): U = {ctl['weight_entropy']}*H + "
             f"{ctl['weight_dispersion']}*dispersion - {ctl['weight_p_max']}*p_max, tau = "
             f"{ctl['tau_low']}/{ctl['tau_mid']}/{ctl['tau_high']}, lambda "
             f"{ctl['lambda_epistemic']}; MC: {run['mc_samples']} samples; seed {run['seed']}",
             "", "How it is measured: " + " ".join(run["method"]), ""]
    if "adaptive_vs_fixed" in results.get("summary", {}):
        lines += _summary(results["summary"]["adaptive_vs_fixed"])
    for name, render_section in (("signals", _signals), ("compute", _compute),
                                 ("think", _think), ("retrieval", _retrieval)):
        if name in sections:
            lines += render_section(sections[name], run)
    return "\n".join(lines) + "\n"


def _summary(s: dict) -> list[str]:
    """summary.adaptive_vs_fixed as one table and one sentence."""
    ci = lambda pair, digits: f"[{pair[0]:+.{digits}f}, {pair[1]:+.{digits}f}]"  # noqa: E731
    rows = [["top-1 (%)", f"{s['adaptive_top1']:.2f}", f"{s['fixed_top1']:.2f}",
             f"{s['delta_top1']:+.2f} points", ci(s["delta_top1_ci95"], 2)],
            ["NLL (nats/token)", f"{s['adaptive_nll']:.4f}", f"{s['fixed_nll']:.4f}",
             f"{s['delta_nll']:+.4f}", ci(s["delta_nll_ci95"], 4)]]
    low, high = s["fixed_depths"]
    return (["## Summary: the default controller against fixed depth at equal cost", "",
             f"The checkpoint's controller costs {s['cost']:.3f} block iterations per token; "
             f"fixed depth at that cost is the line between depths {low} and {high} (weight "
             f"{s['fixed_weight']:.2f} on {high}), paired per token over {s['tokens']} tokens, "
             f"95% intervals resampling windows.", ""]
            + _table(["", "adaptive", "fixed at equal cost", "Δ", "95% interval"], rows)
            + [""])


def _decomposition(d: dict) -> str:
    return (f"{_pct(d['share_deep'])} deep x P(change) {_pct(d['p_change'])} x "
            f"[P(fix|change) {_pct(d['p_fix_given_change'])} - P(break|change) "
            f"{_pct(d['p_break_given_change'])}] = {100 * d['gain']:+.2f} points")


def _signals(section: dict, run: dict) -> list[str]:
    events = section["events"]
    header = ["signal"] + [f"{e['label']} ({_pct(e['rate'])})" for e in events.values()] + ["PRR"]
    rows = [[label] + [_num(section["auroc"][name][event]) for event in events]
            + [_num(section["prr"][name], 2)]
            for name, label in section["signals"].items()]
    lines = ["## Is the uncertainty signal a good trigger?", "",
             f"AUROC of each cheap-pass signal (higher = less sure) for predicting each event, "
             f"over {section['tokens']} held-out tokens (0.5 = chance; in brackets: how often the "
             f"event happens). \"fixes\" = the cheap top-1 was wrong and the extra compute's is "
             f"right: the target a compute controller needs. PRR: prediction-rejection ratio "
             f"for the top-1 error (0 = random rejection, 1 = oracle).", ""]
    lines += _table(header, rows) + [""]
    lines += [f"Calibration of the cheap pass's top-1 probability: ECE = {section['ece']:.4f} "
              f"(15 bins; accuracy {_pct(section['accuracy_base'])}, mean confidence "
              f"{_pct(section['mean_confidence'])}).", ""]
    lines += _figure("reliability", run) + _figure("risk_coverage", run)
    labels = {"deepened": "continued deep (steps_reasoning)", "think": "THINK + deep",
              "mc": "MC averaging"}
    rows = [[labels[a], _pct(e["accuracy"]), _pct(e["changes"]), _pct(e["fixes"]),
             _pct(e["breaks"]), _num(e["loss"])] for a, e in section["effect"].items()]
    lines += ["What extra compute does when applied to every token alone (cheap-pass accuracy "
              f"{_pct(section['accuracy_base'])}):", ""]
    lines += _table(["action", "accuracy", "changes top-1", "fixes", "breaks", "loss"], rows)
    lines += ["", "Does a signal know which way a change goes? AUROC for \"fixes\" among the "
              "tokens whose top-1 the action changes (0.5 = chance):", ""]
    fix_change = section.get("fix_given_change", {})
    actions = list(fix_change)
    if actions:
        rows = [[label] + [_num(fix_change[a]["auroc"].get(name)) for a in actions]
                for name, label in section["signals"].items()]
        lines += _table(["signal"] + [f"{labels[a]} ({fix_change[a]['fixes']} fixes / "
                                      f"{fix_change[a]['changes']} changes)" for a in actions],
                        rows)
        lines += ["", "Gain of each action on every token: " + "; ".join(
            f"{labels[a]}: {_decomposition(d)}"
            for a, d in section.get("decomposition_all_tokens", {}).items()) + "."]
    return lines + [""]


def _compute(section: dict, run: dict) -> list[str]:
    names = {"fixed": "fixed depth", "composite": "composite U -> deep",
             "entropy": "entropy -> deep", "random": "random -> deep",
             "oracle": "oracle -> deep", "composite_mc": "composite U -> MC",
             "shipped": "checkpoint's controller"}
    rows = []
    for p in section["points"]:
        if p["strategy"] == "fixed":
            setting = f"depth {p['setting']}"
        else:
            setting = (p["setting"] if isinstance(p["setting"], str)
                       else f"{_pct(p['setting'], 0)} of tokens")
        extra = []
        if "deep_share" in p and p["strategy"] != "fixed":
            extra.append(f"deep {_pct(p['deep_share'])}")
        if p.get("mc_share"):
            extra.append(f"MC {_pct(p['mc_share'])}")
        if "thinks" in p:
            extra.append(f"{p['thinks']} THINK / {p['deepened']} re-run")
        if p.get("on_policy"):
            extra.append(f"on-policy, {p['rounds']} rounds, trigger {p['trigger']}")
        if "flipped" in p:
            extra.append(f"flipped {_pct(p['flipped'])}")
        rows.append([names[p["strategy"]], setting, _num(p["cost"], 2), _pct(p["accuracy"], 2),
                     _num(p["loss"]), _ci(p["gain_vs_base"]), ", ".join(extra)])
    action = ("THINK + steps_reasoning (the token continued in place once the window has no "
              "global slot left)" if section["deep_action"] == "think" else
              "continuing the token to steps_reasoning (--no-think)")
    lines = ["## Accuracy vs compute", "",
             "Cost = mean block iterations per token (the runtime's `mean_iterations_per_block`: "
             "the cheap pass, plus steps_reasoning per THINK token, plus what continuing a "
             "token to steps_reasoning runs (cycle order: the missing cycles; sequence order: "
             "the rest of block 0 and every later block again), plus mc_samples / "
             "num_blocks for an MC refinement). Δ = accuracy minus the cheap pass's, in points, "
             "with a 95% interval resampling whole windows. \"flipped\": share of cheap tokens "
             "whose U, in the context the deep tokens left, would have crossed the threshold "
             f"(the size of the decision approximation). The deep action is {action}; it fixes "
             f"the top-1 of {_pct(section['helped_share'])} of tokens (the oracle's ceiling).", ""]
    lines += _table(["strategy", "setting", "cost", "accuracy", "loss", "Δ accuracy vs cheap",
                     "notes"], rows) + [""]
    lines += _figure("compute", run)
    if "decomposition" in section:
        lines += ["Gain decomposition of the checkpoint's controller (isolated counterfactuals "
                  "on the tokens it sends deep): " + _decomposition(section["decomposition"])
                  + ".", ""]
    lines += ["Paired comparisons of the composite trigger (same tokens, 95% interval over "
              "windows):", ""]
    rows = [[_pct(c["share"], 0), _num(c["cost"], 2),
             f"fixed depth {c['versus'][1]}" if c["versus"][0] == "fixed" else c["versus"][0],
             _ci((c["difference"], c["low"], c["high"])), c["verdict"]]
            for c in section["comparisons"]]
    lines += _table(["composite sends deep", "cost", "versus", "Δ accuracy (points)", "verdict"],
                    rows) + [""]
    return lines + ["Plainly:", ""] + [f"- {s}" for s in statements(section)] + [""]


def statements(section: dict) -> list[str]:
    """Sentences saying where adaptive compute beats fixed depth at equal cost and where not."""
    points = {(p["strategy"], p["setting"]): p for p in section["points"]}
    out = []
    fixed = [p for p in section["points"] if p["strategy"] == "fixed"]
    for c in section["comparisons"]:
        other = tuple(c["versus"])
        mine, theirs = points[("composite", c["share"])], points[other]
        if other[0] == "fixed":
            out.append(f"At equal cost {c['cost']:.2f} (fixed depth {other[1]}), sending the "
                       f"{_pct(c['share'], 0)} most uncertain tokens deep gives "
                       f"{_pct(mine['accuracy'], 2)} vs {_pct(theirs['accuracy'], 2)}: "
                       f"{_phrase(c['verdict'], 'fixed depth')} "
                       f"({_ci((c['difference'], c['low'], c['high']))} points).")
    for rival in ("random", "entropy"):
        found = [c for c in section["comparisons"] if c["versus"][0] == rival]
        better = [c for c in found if c["verdict"] == "better"]
        worse = [c for c in found if c["verdict"] == "worse"]
        out.append(f"Composite vs {rival} at the same share of deep tokens: better at "
                   f"{len(better)} of {len(found)} budgets, worse at {len(worse)}, the rest "
                   f"within noise.")
    composite = sorted((p for p in section["points"] if p["strategy"] == "composite"),
                       key=lambda p: p["cost"])
    costs, accuracies = [p["cost"] for p in fixed], [p["accuracy"] for p in fixed]
    inside = [p for p in composite if p["cost"] <= costs[-1]]
    above = [p for p in inside if p["accuracy"] > float(np.interp(p["cost"], costs, accuracies))]
    if inside:
        where = ", ".join(f"{p['cost']:.2f}" for p in above) or "none"
        out.append(f"Against the fixed-depth line (linear between depths), the composite trigger "
                   f"is above it at {len(above)} of {len(inside)} costs up to "
                   f"{costs[-1]:.0f} (at: {where}); points without an interval are not paired "
                   f"comparisons.")
    oracle = [p for p in section["points"] if p["strategy"] == "oracle"]
    if oracle and composite:
        best, mine = (max(group, key=lambda p: p["accuracy"]) for group in (oracle, composite))
        out.append(f"Headroom: an oracle that sends deep only the tokens the deep action fixes "
                   f"({_pct(best['deep_share'])} of tokens) gains {_ci(best['gain_vs_base'])} "
                   f"points over the cheap pass; the best composite point "
                   f"({_pct(mine['deep_share'])} deep) gains {_ci(mine['gain_vs_base'])}.")
    below = [p for p in fixed if p["cost"] < section["steps_base"]]
    if below:
        out.append(f"Fixed depth {', '.join(str(p['setting']) for p in below)} costs less than "
                   f"the cheap pass every adaptive point starts with.")
    return out


def _phrase(verdict: str, rival: str) -> str:
    return {"better": f"adaptive beats {rival}", "worse": f"adaptive loses to {rival}",
            "no significant difference": f"no significant difference from {rival}"}[verdict]


def _think(section: dict, run: dict) -> list[str]:
    utility = section["utility"]
    rows = [[r["group"], r["action"], str(r["tokens"]), _pct(r["accuracy"], 2), _num(r["loss"]),
             _ci(r["versus_base"]) if r["versus_base"] and "base" not in r["action"] else ""]
            for r in utility["rows"]]
    lines = ["## THINK utility", "",
             "Each token's counterfactuals over the cheap context: the cheap pass, the token "
             "continued to steps_reasoning, and a THINK after it run at steps_reasoning.", ""]
    lines += _table(["tokens", "prediction", "count", "accuracy", "loss",
                     "Δ accuracy vs base (points)"], rows) + [""]
    attention = section["attention"]
    if not attention.get("available"):
        return lines + [f"Attention to THINK: {attention.get('reason')}.", ""]
    lines += [f"Attention to THINK tokens: with the shipped controller's {attention['thinks']} "
              f"THINKs in place, {attention['queries']} later cheap tokens see at least one. "
              f"Their attention mass on THINK keys (mean over heads, blocks, cheap iterations) "
              f"is {_pct(attention['mass_on_thinks'])}, against "
              f"{_pct(attention['uniform_mass_on_thinks'])} under uniform attention over the "
              f"visible keys; position 0 (the other global "
              f"token) gets {_pct(attention['mass_on_position_0'])}.", ""]
    rows = [[f"{b['from']:.0f}-{b['to']:.0f}" if b["to"] is not None
             else f">= {b['from']:.0f} (beyond the window)",
             str(b["pairs"]), _pct(b["attention"], 2), _pct(b["uniform"], 2)]
            for b in attention["by_distance"]]
    lines += _table(["distance to the THINK", "query-THINK pairs", "attention to it",
                     "uniform share"], rows) + [""]
    return lines + _figure("think", run)


def _retrieval(section: dict, run: dict) -> list[str]:
    from .retrieval import CONTROL
    conditions = section["conditions"]
    names = {"plain": "no THINK", "think_after_definition": "THINK after the definition"}
    shown = [c for c in names if c in conditions]
    control = conditions["no_definition"]
    header = (["filler", "distance", "beyond window", "beyond field"]
              + [f"{names[c]}: accuracy / nats saved" for c in shown]
              + ["no definition: accuracy / loss"])
    rows = []
    for i, gap in enumerate(section["gaps"]):
        first = conditions["plain"][i]
        cells = [f"{_pct(conditions[c][i]['first_token_accuracy'], 0)} / "
                 f"{conditions[CONTROL[c]][i]['value_loss'] - conditions[c][i]['value_loss']:+.3f}"
                 for c in shown]
        rows.append([str(gap), f"{first['distance']:.0f}", _pct(first["beyond_window"], 0),
                     _pct(first["beyond_field"], 0), *cells,
                     f"{_pct(control[i]['first_token_accuracy'], 0)} / {control[i]['value_loss']:.3f}"])
    lines = ["## Sliding-window retrieval", "",
             f"`KEY = \"VALUE\"`, held-out filler, then the same line again: accuracy of the "
             f"second value's first token (teacher-forced, cheap pass), and the nats per value "
             f"token the definition saves against the same text (and THINK) without it (0 = the "
             f"model got nothing from the definition). {control[0]['examples']} examples per "
             f"row; distance from the first value to the second, in tokens. Direct attention "
             f"reaches {section['window_size'] - 1} positions back; through the tokens in "
             f"between, the cheap pass's stacked layers reach {section['receptive_field']} "
             f"(num_blocks x steps_base x (window - 1), the \"field\"). Past the field only a "
             f"global token can bring the value.", ""]
    return lines + _table(header, rows) + [""] + _figure("retrieval", run)
