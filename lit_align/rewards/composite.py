"""Weighted sums of rewards, and format and step rewards to combine with correctness."""

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


class StepReward:
    """The fraction of a chain's equations that hold: a process reward for arithmetic chains.

    Every line of the form ``a op b = c`` (integers, ``op`` one of ``+ - *``) is a step; the
    reward is the share of steps whose result is right, each checked on its own operands (a
    step computed correctly from an earlier wrong value counts as right, as in the built-in
    task's corrupted chains). 0.0 for a completion with no step. With correctness it ranks
    chains the way the AFT paper's ranking feedback needs (Wang et al. 2023): right
    answers above wrong ones, and among them fewer wrong steps above more.
    """

    name = "steps"
    pattern = re.compile(r"^\s*(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$", re.MULTILINE)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float | None]:
        scores: list[float | None] = []
        for completion in completions:
            steps = self.pattern.findall(completion)
            right = sum(_apply(int(a), op, int(b)) == int(c) for a, op, b, c in steps)
            scores.append(right / len(steps) if steps else 0.0)
        return scores


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


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
