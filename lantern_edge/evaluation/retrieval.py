"""Sliding-window failure: can the model use a value defined further back than its window?

Each example is held-out code with a definition `KEY = "VALUE"` and, some filler later, the
same line again; teacher-forced, we score the second VALUE's tokens. Repeating the line is
the easiest recall there is (plain copying, which even small models learn), so what fails
here fails for any harder use of the key.

A token attends directly only to the last window_size positions, but every attention layer
(each block iteration) reaches window_size - 1 further back through the tokens in between, so
the cheap pass's receptive field is num_blocks * steps_base * (window_size - 1) positions.
Distances run from inside the window to past that field. Three conditions per distance:
- plain: every token at steps_base;
- THINK after the definition: a global THINK token (steps_reasoning iterations, as the
  controller injects it) right after the definition line, attended directly from any later
  position (it adds one position to the distance): past the receptive field, whatever it
  carries of the value is all that can arrive;
- no definition (controls, with and without the THINK): the definition replaced by other
  held-out text of the same length: what the model guesses without the information.
"""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer

from ..model.modeling import LanternModel
from . import passes

WINDOW_MULTIPLES = (0.5, 0.9, 1.1, 1.5)     # then whole windows up to past the receptive field
# condition -> (the definition is there, a THINK follows the definition line)
CONDITIONS = {"plain": (True, False), "think_after_definition": (True, True),
              "no_definition": (False, False), "no_definition_think": (False, True)}
# what each condition's loss is compared with: the same text without the definition
CONTROL = {"plain": "no_definition", "think_after_definition": "no_definition_think"}
KEY_WORDS = ("alpha", "beta", "gamma", "delta", "omega", "red", "green", "blue", "north",
             "south", "east", "west", "fast", "slow", "old", "new", "left", "right", "upper",
             "lower")
VALUE_WORDS = ("apple", "river", "stone", "cloud", "tiger", "piano", "garden", "window",
               "silver", "rocket", "candle", "forest", "island", "mirror", "pepper", "violin",
               "yellow", "hammer", "ticket", "castle", "dragon", "winter", "button", "pocket",
               "planet", "bridge", "orange", "shadow", "thunder", "lemon", "anchor", "saddle")


def receptive_field(config) -> int:
    """Positions back that the cheap pass can draw on through stacked windowed attention."""
    return config.num_blocks * config.steps_base * (config.window_size - 1)


def gaps(window_size: int, field: int, overhead: float, max_gap: int) -> list[int]:
    """Filler lengths that put the second value about each WINDOW_MULTIPLES of the window, then
    every whole window up to one past the receptive field, after the first (overhead: the
    distance at gap 0); smallest first, all that fit in max_gap."""
    multiples = (*WINDOW_MULTIPLES, *range(2, -(-field // window_size) + 2))
    found = sorted({max(0, int(round(m * window_size - overhead))) for m in multiples})
    return [g for g in found if g <= max_gap]


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False).ids


def build_examples(tokenizer: Tokenizer, model: LanternModel, stream: np.ndarray, gap: int,
                   count: int, seed: int, with_definition: bool = True):
    """count examples with gap filler tokens between the definition line and the use line.

    Returns:
        ids (B, L+1), value_at (B, k) indexes into the targets of the use-site value tokens
        (padded with -1), definition_end (B,) index of the definition's last token, and
        distance (B,) from the definition's first value token to the use's.

    Example e draws from its own generator (seed, gap, e), so every condition sees the same
    keys, values and filler; the control's replacement text has a generator of its own.
    """
    cfg = model.config
    rows, value_at, definition_end, distance = [], [], [], []
    for example in range(count):
        rng = np.random.default_rng([seed, gap, example])
        key = "_".join(rng.choice(KEY_WORDS, 2, replace=False)) + f"_{int(rng.integers(100))}"
        value = str(rng.choice(VALUE_WORDS))
        opening = _encode(tokenizer, f'\n{key} = "')
        value_ids = _encode(tokenizer, value)
        closing = _encode(tokenizer, '"\n')
        use = opening                        # the line again, up to the value
        lead = 8
        definition = opening + value_ids + closing
        if not with_definition:              # same length, other text: no information
            definition = _filler(stream, len(definition),
                                 np.random.default_rng([seed, gap, example, 1]))
        row = ([cfg.bos_token_id] if cfg.bos_token_id is not None else []) + _filler(stream, lead, rng)
        definition_end.append(len(row) + len(definition) - 1)
        row += definition + _filler(stream, gap, rng) + use
        # targets[t] = row[t + 1]: the value token at row index j is predicted at t = j - 1
        value_at.append([len(row) - 1 + k for k in range(len(value_ids))])
        distance.append(len(value_ids) + len(closing) + gap + len(use))
        row += value_ids + closing
        rows.append(row)
    width = max(map(len, rows))
    if width + 1 > cfg.max_position:
        raise ValueError(f"a retrieval example needs {width + 1} positions, more than "
                         f"max_position={cfg.max_position}")
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    depth = max(map(len, value_at))
    value_index = torch.tensor([v + [-1] * (depth - len(v)) for v in value_at])
    return ids, value_index, torch.tensor(definition_end), np.array(distance)


def _filler(stream: np.ndarray, length: int, rng: np.random.Generator) -> list[int]:
    if length == 0:
        return []
    start = int(rng.integers(0, len(stream) - length))
    return stream[start:start + length].tolist()


@torch.no_grad()
def retrieval(model: LanternModel, tokenizer_json: str, stream: np.ndarray, examples: int,
              seed: int, progress=lambda m: None) -> dict:
    """Accuracy of the use-site value against definition distance, per condition.

    Args:
        model: reference model in eval mode.
        tokenizer_json: the checkpoint's tokenizer.
        stream: held-out ids (filler text).
        examples: examples per gap and condition (the same keys, values and filler across
            conditions, so differences are paired).
        seed: seed of keys, values and filler.

    Returns:
        JSON-ready dict: "window_size", "receptive_field", "gaps", and per condition and gap
        the mean distance between the two values, the shares of examples with it beyond the
        window and beyond the receptive field, the accuracy of the first value token and of
        the whole value, and the mean value-token loss.
    """
    cfg = model.config
    tokenizer = Tokenizer.from_str(tokenizer_json)
    overhead = float(build_examples(tokenizer, model, stream, 0, examples, seed)[3].mean())
    field = receptive_field(cfg)
    found = gaps(cfg.window_size, field, overhead, cfg.max_position - 96)
    conditions = [c for c, (_, think) in CONDITIONS.items()
                  if not think or cfg.think_token_id is not None]
    results: dict[str, list] = {c: [] for c in conditions}
    for gap in found:
        progress(f"retrieval with {gap} filler tokens")
        for condition in conditions:
            with_definition, think = CONDITIONS[condition]
            ids, value_at, definition_end, distance = build_examples(
                tokenizer, model, stream, gap, examples, seed, with_definition)
            inputs, targets = ids[:, :-1], ids[:, 1:]
            deep = np.zeros(inputs.shape, dtype=bool)
            if think:
                deep[np.arange(len(ids)), definition_end.numpy()] = True
            outcome, _, _ = passes.adaptive(model, inputs, targets, deep, use_think=True)
            valid = (value_at >= 0).numpy()
            rows = np.arange(len(ids))[:, None]
            index = value_at.clamp(min=0).numpy()
            correct, nll = outcome.correct[rows, index], outcome.nll[rows, index]
            results[condition].append({
                "gap": gap, "examples": len(ids), "distance": float(distance.mean()),
                "beyond_window": float((distance >= cfg.window_size).mean()),
                "beyond_field": float((distance > field).mean()),
                "first_token_accuracy": float(correct[:, 0].mean()),
                "value_accuracy": float(np.where(valid, correct, True).all(axis=1).mean()),
                "value_loss": float(nll[valid].mean())})
    return {"window_size": cfg.window_size, "receptive_field": field, "gaps": found,
            "conditions": results}
