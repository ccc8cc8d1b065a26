"""Weighted sums of rewards, and a format reward to combine with correctness."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lit_align.rewards.base import score


class FormatReward:
    """1.0 when the completion ends its reasoning with a ``#### answer`` line, else 0.0."""

    name = "format"
    pattern = re.compile(r"^#### \S+\s*$", re.MULTILINE)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
        return [float(bool(self.pattern.search(c))) for c in completions]


class CompositeReward:
    """A weighted sum of rewards: Σ_name weight[name] · reward[name], per sample.

    A sample that any part cannot score (``None``) is unscorable as a whole: a partial sum
    would silently change the reward's scale.
    """

    name = "composite"

    def __init__(self, rewards: Mapping[str, Callable[..., list[float | None]]], weights: Mapping[str, float]):
        if set(rewards) != set(weights):
            raise ValueError(f"weights must name exactly the rewards {sorted(rewards)}, got {sorted(weights)}")
        self.rewards, self.weights = dict(rewards), dict(weights)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Any) -> list[float | None]:
        parts = {name: score(r, prompts, completions, **columns) for name, r in self.rewards.items()}
        totals: list[float | None] = []
        for i in range(len(completions)):
            values = [parts[name][i] for name in self.rewards]
            totals.append(
                None
                if any(v is None for v in values)
                else sum(self.weights[n] * v for n, v in zip(self.rewards, values, strict=True))
            )
        return totals
