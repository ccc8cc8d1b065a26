"""Masked reductions shared by the objectives.

A loss is reduced in two explicit steps: a *sum* over the micro-batch, divided by a *normalizer*
counted over the whole optimizer step (every micro-batch and every rank). Summing the
micro-batch losses then gives the same step loss however the step is split, which is what makes
the result independent of micro-batch size, gradient accumulation and device count.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``values`` where ``mask`` is 1; ``mask`` has the shape of ``values``."""
    masked = values * mask.to(values.dtype)
    return masked.sum() if dim is None else masked.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1; 0 (not NaN) where the mask is empty."""
    total = masked_sum(values, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1).to(total.dtype)


def normalize(total: Tensor, normalizer: Tensor | float) -> Tensor:
    """``total / normalizer``, with an empty step (normalizer 0) giving 0 instead of NaN."""
    # An empty step has total 0, so clamping the denominator gives 0 without a host sync.
    normalizer = torch.as_tensor(normalizer, dtype=total.dtype, device=total.device)
    return total / normalizer.clamp(min=1e-8)


def rows_of(normalizer: Tensor) -> Tensor:
    """The rows a step's normalizer counts: the normalizer itself, or the first entry of a vector
    one (a loss with terms over other units too, `Objective.normalizer`)."""
    return normalizer.reshape(-1)[0]
