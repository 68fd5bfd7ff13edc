"""Every token's own counterfactual at once: each query run alone over a shared context.

The runtime decides depth per token: a token sent deep runs on to steps_reasoning while the
tokens before it keep the depth they ran (their KV past that depth is carried). `solo` computes,
for every position t of a batch in one pass, the logits token t would get had it alone run
`query_depth` iterations over the context that `context_depth` left (an int, or a per-token
grid (num_blocks, B, T)): each query attends to the context's keys and values of the same
(block, iteration), carried past the context's last iteration, and to its own fresh keys only.

It is differentiable (the error-corrector phase trains through it) and has no grad of its own
when called under torch.no_grad (the evaluation and the probe labels).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .modeling import LanternModel


@contextmanager
def capture(model: LanternModel, queries: bool = False):
    """Record {(block, iteration): (keys, values[, queries])} of each model.forward inside.

    keys/values (B, H, K, D) are exactly what each iteration attended over (carried KV
    included); queries (B, H, T, D) too when asked (for attention maps).
    """
    record: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}

    def wrap(original):
        def finish(x, q, keys, values, visible, site, p, masks):
            record[site] = (keys, values, q) if queries else (keys, values)
            return original(x, q, keys, values, visible, site, p, masks)
        return finish

    saved = [block.__dict__.get("finish") for block in model.blocks]
    for block in model.blocks:
        block.finish = wrap(block.finish)       # an instance attribute shadows the method
    try:
        yield record
    finally:
        for block, previous in zip(model.blocks, saved):
            del block.finish
            if previous is not None:            # an enclosing capture's wrapper
                block.finish = previous


def solo(model: LanternModel, ids: torch.Tensor, query_depth: int, think: bool = False,
         context_depth: int | torch.Tensor | None = None):
    """(context ModelOutput, query logits (B, T, V), query hidden after the final norm (B, T, C)).

    think=False: token t itself run `query_depth` iterations (the runtime's continuation has the
    same logits); think=True: a THINK at position t + 1 run `query_depth` iterations, whose
    logits predict what token t's did. context_depth: what the other tokens ran (default
    steps_base).
    """
    cfg = model.config
    if think and cfg.think_token_id is None:
        raise ValueError("the model has no THINK token")
    length = ids.shape[1]
    if think and length >= cfg.max_position:
        raise ValueError(f"a THINK after the last token needs position {length}, but "
                         f"max_position={cfg.max_position}")
    context_depth = cfg.steps_base if context_depth is None else context_depth
    positions = torch.arange(length, device=ids.device)
    query_positions = positions + 1 if think else positions
    delta = query_positions[:, None] - positions[None, :]                       # (T, K)
    with capture(model) as context:
        out = model(ids, context_depth)
    ran = {}                                       # block -> iterations the context recorded
    for b, i in context:
        ran[b] = max(ran.get(b, 0), i + 1)
    glob = model.is_global(ids, positions[None])                                # (B, K)
    # context j is visible to the query when it came strictly before it and is in its window or
    # global; the query sees itself through its own fresh keys only
    ctx_visible = (delta > 0) & ((delta < cfg.window_size) | glob[:, None, :])
    own_visible = torch.eye(length, dtype=torch.bool, device=ids.device).expand(len(ids), -1, -1)
    visible = torch.cat((ctx_visible, own_visible), dim=-1)[:, None]           # (B, 1, T, 2T)
    query_ids = torch.full_like(ids, cfg.think_token_id) if think else ids
    x = embedded = model.embed(query_ids, query_positions[None])
    cos, sin = model.rope(query_positions)
    for b, i in cfg.schedule(query_depth):
        block = model.blocks[b]
        if cfg.injects(b, i):
            x = model.inject(x, embedded)
        ctx_k, ctx_v = context[(b, min(i, ran[b] - 1))]
        q, k, v = block.project(x, cos, sin, model.rope_perm, model.rope_sign)
        x, _ = block.finish(x, q, torch.cat((ctx_k, k), 2), torch.cat((ctx_v, v), 2),
                            visible, (b, i), cfg.dropout, None)
    logits, hidden = model.lm_head(x)
    return out, logits, hidden
