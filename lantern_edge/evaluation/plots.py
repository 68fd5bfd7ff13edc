"""The evaluation's figures, drawn from eval.json sections (matplotlib, headless Agg backend).

matplotlib is imported only when a figure is drawn; it is in the `dev` extra. Figures are
small (about 640 x 360 px) so they can be committed under docs/.
"""

from __future__ import annotations

from pathlib import Path

DPI = 100
COLORS = {"fixed": "black", "composite": "tab:blue", "entropy": "tab:orange",
          "random": "tab:gray", "oracle": "tab:green", "composite_mc": "tab:purple",
          "shipped": "tab:red"}
LABELS = {"fixed": "fixed depth 1..steps_reasoning", "composite": "composite U -> deep",
          "entropy": "entropy only -> deep", "random": "random, same budget",
          "oracle": "oracle (deep only where it fixes)", "composite_mc": "composite U -> MC averaging",
          "shipped": "checkpoint's controller"}


def _pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "lantern-edge eval draws its figures with matplotlib: pip install "
            "\"lantern-edge[dev]\" (or pass --no-figures)", name=e.name) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path, layout: bool = True) -> Path:
    if layout:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    fig.clear()
    _pyplot().close(fig)
    return path


def reliability(section: dict, path: Path) -> Path:
    """Reliability diagram of the cheap pass's top-1 probability, with the ECE."""
    plt = _pyplot()
    bins = section["reliability"]
    edges = bins["edges"]
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    width = edges[1] - edges[0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.2, 4.6), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    accuracy = [a if a is not None else 0.0 for a in bins["accuracy"]]
    top.bar(centers, accuracy, width=width * 0.9, color="tab:blue", alpha=0.8, label="accuracy")
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    top.set_ylabel("top-1 accuracy")
    top.set_title(f"Reliability of p(top-1), cheap pass: ECE = {section['ece']:.3f}")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, bins["counts"], width=width * 0.9, color="tab:gray")
    bottom.set_yscale("log")
    bottom.yaxis.set_minor_formatter(plt.NullFormatter())
    bottom.set_ylabel("tokens")
    bottom.set_xlabel("confidence (probability of the top-1)")
    bottom.set_xlim(0, 1)
    return _save(fig, path)


def risk_coverage(section: dict, path: Path) -> Path:
    """Error rate among kept tokens as the most uncertain are rejected first."""
    plt = _pyplot()
    curves = section["risk_coverage"]
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for name, style in (("oracle", ":"), ("random", "--"), ("entropy", "-"), ("composite", "-")):
        label = name if name not in section["prr"] else f"{name} (PRR {section['prr'][name]:.2f})"
        ax.plot(curves["coverage"], curves[name], style, color=COLORS.get(name, "black"),
                label=label)
    ax.set_xlabel("coverage (share of tokens kept)")
    ax.set_ylabel("top-1 error among kept tokens")
    ax.set_xlim(1, 0)
    ax.set_title("Risk-coverage: reject the most uncertain tokens first")
    ax.legend(fontsize=8)
    return _save(fig, path)


def compute(section: dict, path: Path) -> Path:
    """Held-out top-1 accuracy and loss against mean block iterations per token."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.6, 4.4))
    by_strategy: dict[str, list] = {}
    for point in section["points"]:
        by_strategy.setdefault(point["strategy"], []).append(point)
    for ax, metric, label in ((axes[0], "accuracy", "top-1 accuracy"),
                              (axes[1], "loss", "NLL (nats/token)")):
        for strategy, points in by_strategy.items():
            points = sorted(points, key=lambda p: p["cost"])
            xs, ys = [p["cost"] for p in points], [p[metric] for p in points]
            if strategy == "shipped":
                ax.plot(xs, ys, "*", ms=12, color=COLORS[strategy], label=LABELS[strategy])
            else:
                marker = "s" if strategy == "fixed" else "o"
                ax.plot(xs, ys, marker=marker, ms=4, lw=1.4 if strategy == "fixed" else 1.1,
                        color=COLORS[strategy], label=LABELS[strategy])
        ax.set_xlabel("mean block iterations per token")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].yaxis.set_major_formatter(lambda value, _: f"{100 * value:.1f}%")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.suptitle("Top-1 and NLL vs compute on held-out text (teacher-forced)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _save(fig, path, layout=False)


def think(section: dict, path: Path) -> Path:
    """THINK utility on the controller's deep tokens, and attention paid to THINK keys."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    rows = [r for r in section["utility"]["rows"] if r["group"] == "sent deep by the controller"]
    names = [r["action"] for r in rows]
    left.bar(range(len(rows)), [r["accuracy"] or 0.0 for r in rows],
             color=["tab:gray", "tab:blue", "tab:green"][:len(rows)])
    left.set_xticks(range(len(rows)), [n.replace(" + ", "\n+ ") for n in names], fontsize=8)
    left.set_ylabel("top-1 accuracy")
    left.set_title(f"{section['utility']['deep_tokens']} tokens the controller sends deep",
                   fontsize=9)
    attention = section["attention"]
    if attention.get("available") and attention.get("queries"):
        bins = [b for b in attention["by_distance"] if b["pairs"]]
        labels = [f"{b['from']:.0f}-{b['to']:.0f}" if b["to"] is not None
                  else f">={b['from']:.0f}\n(global only)" for b in bins]
        xs = range(len(bins))
        right.bar([x - 0.2 for x in xs], [b["attention"] for b in bins], width=0.4,
                  label="attention to one THINK")
        right.bar([x + 0.2 for x in xs], [b["uniform"] for b in bins], width=0.4,
                  color="tab:gray", label="uniform over visible keys")
        right.set_xticks(list(xs), labels, fontsize=8)
        right.set_xlabel("distance to the THINK (positions)")
        right.legend(fontsize=8)
    right.set_ylabel("attention mass")
    right.set_title("How much later cheap tokens attend to a THINK", fontsize=9)
    return _save(fig, path)


def retrieval(section: dict, path: Path) -> Path:
    """Second-value accuracy and loss saved by the definition, against distance in windows."""
    plt = _pyplot()
    window = section["window_size"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    from .retrieval import CONTROL
    styles = {"plain": ("tab:blue", "no THINK"),
              "think_after_definition": ("tab:green", "THINK after the definition"),
              "no_definition": ("tab:gray", "no definition (chance)")}
    conditions = section["conditions"]
    for condition, (color, label) in styles.items():
        if condition not in conditions:
            continue
        rows = conditions[condition]
        xs = [r["distance"] / window for r in rows]
        left.plot(xs, [r["first_token_accuracy"] for r in rows], "o-", color=color, label=label)
        if condition in CONTROL:
            control = conditions[CONTROL[condition]]
            right.plot(xs, [c["value_loss"] - r["value_loss"] for c, r in zip(control, rows)],
                       "o-", color=color, label=label)
    right.axhline(0.0, color="tab:gray", lw=1)
    field = section["receptive_field"] / window
    for ax in (left, right):
        for x, text in ((1.0, "window"), (field, "receptive field")):
            ax.axvline(x, color="black", ls="--", lw=1)
            ax.text(x + 0.03, 0.95, text, transform=ax.get_xaxis_transform(), fontsize=8, va="top")
        ax.set_xlabel(f"distance between the values (windows of {window} tokens)")
    left.set_ylabel("accuracy of the value's first token")
    left.set_ylim(-0.02, 1.02)
    left.legend(fontsize=8)
    right.set_ylabel("nats per value token saved by the definition")
    fig.suptitle("Recall across the sliding window", fontsize=10)
    return _save(fig, path)
