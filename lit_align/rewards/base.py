"""Rewards are plain callables ``(prompts, completions, **columns) -> list[float | None]``.

``None`` means "cannot be scored" (no gold answer, say), which is not the same as wrong: callers
leave such samples out of baselines and accuracies. `score` is how callers invoke a reward: it
checks the result and turns failures into messages that name the reward and the sample.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

Reward = Callable[..., list[float | None]]


def reward_name(reward: Reward) -> str:
    return getattr(reward, "name", None) or getattr(reward, "__name__", type(reward).__name__)


def score(
    reward: Reward, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
) -> list[float | None]:
    """``reward``'s scores as floats, with NaN turned into ``None``.

    A reward that raises is re-run one sample at a time to find the sample that fails, and the
    error names the reward, the sample index and the start of its completion. So does a score
    that is not a number (a string, a list) or is infinite: taken as is, it would fail later,
    far from the reward, or turn a whole rollout's advantages into NaN.
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
    return [_number(reward, s, i, completions[i]) for i, s in enumerate(scores)]


def _number(reward: Reward, value: Any, index: int, completion: str) -> float | None:
    """One score as a float, ``None`` for None or NaN (unscorable); `RuntimeError` otherwise."""
    if value is None:
        return None
    number = None
    # Strings are refused even when they parse ("1.0"): a reward returning text is a bug.
    if not isinstance(value, str | bytes) and hasattr(value, "__float__"):
        with contextlib.suppress(TypeError, ValueError, RuntimeError):  # a tensor of several values
            number = float(value)  # a Python or NumPy number, or a one-element tensor
    if number is not None and math.isnan(number):
        return None
    if number is None or math.isinf(number):
        problem = "is infinite" if number is not None else "is not a number"
        raise RuntimeError(
            f"reward {reward_name(reward)!r} gave sample {index} (completion {completion[:60]!r}) "
            f"a score that {problem}: {repr(value)[:60]} (None or NaN mark an unscorable sample)"
        )
    return number
