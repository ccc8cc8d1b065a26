"""Rewards are plain callables ``(prompts, completions, **columns) -> list[float | None]``.

``None`` means "cannot be scored" (no gold answer, say), which is not the same as wrong: callers
leave such samples out of baselines and accuracies. `score` is how callers invoke a reward: it
checks the result and turns failures into messages that name the reward and the sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Reward = Callable[..., list[float | None]]


def reward_name(reward: Reward) -> str:
    return getattr(reward, "name", None) or getattr(reward, "__name__", type(reward).__name__)


def score(
    reward: Reward, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
) -> list[float | None]:
    """``reward``'s scores with NaN turned into ``None``.

    A reward that raises is re-run one sample at a time to find the sample that fails, and the
    error names the reward, the sample index and the start of its completion.
    """
    try:
        scores = list(reward(prompts, completions, **columns))
    except Exception as error:
        for i in range(len(completions)):
            try:
                reward([prompts[i]], [completions[i]], **{k: [v[i]] for k, v in columns.items()})
            except Exception as sample_error:
                raise RuntimeError(
                    f"reward {reward_name(reward)!r} failed on sample {i} "
                    f"(completion {completions[i][:60]!r}): {sample_error!r}"
                ) from sample_error
        raise RuntimeError(f"reward {reward_name(reward)!r} failed on the batch: {error!r}") from error
    if len(scores) != len(completions):
        raise RuntimeError(
            f"reward {reward_name(reward)!r} returned {len(scores)} scores for {len(completions)} samples"
        )
    return [None if s is None or (isinstance(s, float) and math.isnan(s)) else float(s) for s in scores]
