"""Controller thresholds calibrated to a trained model's own uncertainty distribution.

U = a*H + b*dispersion - c*p_max has a model-specific scale (a small model's entropy is high
everywhere), so fixed thresholds would put every token in one band. After training, U is
measured on held-out text at steps_base and tau_low / tau_mid / tau_high are set at quantiles:
by default 60% of tokens confident, 25% moderate, 10% MC refinement, 5% THINK + deep recursion.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .config import ControllerConfig
from .modeling import LanternModel
from .train_data import IGNORE
from .uncertainty import UncertaintyHead

BAND_QUANTILES = (0.60, 0.85, 0.95)


@torch.no_grad()
def calibrate_thresholds(model: LanternModel, batches, device: torch.device,
                         base: ControllerConfig | None = None,
                         quantiles: tuple[float, float, float] = BAND_QUANTILES) -> ControllerConfig:
    """base with tau_low/tau_mid/tau_high at the given quantiles of U on (inputs, targets) batches."""
    base = base or ControllerConfig()
    was_training = model.training
    model.eval()
    head = UncertaintyHead(model.token_embedding.weight, base.top_k_dispersion).to(device)
    weights = torch.tensor([base.weight_entropy, base.weight_dispersion, base.weight_p_max],
                           device=device)
    scores = []
    for inputs, targets in batches:
        logits = model(inputs.to(device), model.config.steps_base).logits.float()
        valid = (targets != IGNORE).flatten().to(device)
        scores.append(head(logits.flatten(0, 1)[valid], weights)[3].cpu().numpy())
    model.train(was_training)
    low, mid, high = (float(v) for v in np.quantile(np.concatenate(scores), quantiles))
    return dataclasses.replace(base, tau_low=round(low, 4), tau_mid=round(mid, 4),
                               tau_high=round(high, 4))
