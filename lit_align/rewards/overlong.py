"""DAPO's soft overlong punishment as a reward wrapper (Yu et al. 2025, arXiv 2503.14476, §3.4)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lit_align.rewards.base import score


def overlong_penalty(length: int, max_length: int, cache_length: int) -> float:
    """DAPO's length-aware penalty of a response of ``length`` tokens:

    R_length(y) = 0                                  if |y| ≤ L_max − L_cache
                  ((L_max − L_cache) − |y|) / L_cache   if L_max − L_cache < |y| ≤ L_max
                  −1                                 if |y| > L_max
    """
    start = max_length - cache_length
    if length <= start:
        return 0.0
    if length <= max_length:
        return (start - length) / cache_length
    return -1.0


class OverlongPenalty:
    """``reward`` plus `overlong_penalty` of each completion's length in tokens.

    Online sampling passes the sampled token counts as ``completion_length`` to a reward that
    sets ``wants_completion_length`` (text alone does not say how many tokens it was sampled
    as). An unscorable sample stays unscorable.

    Args:
        reward: the reward to shape, e.g. the math verifier.
        max_length: L_max, the generation budget (``rollout.max_new_tokens``).
        cache_length: L_cache, how many tokens before the budget the penalty ramps over.
    """

    name = "overlong"
    wants_completion_length = True

    def __init__(self, reward: Callable[..., list[float | None]], max_length: int, cache_length: int) -> None:
        if not 0 < cache_length <= max_length:
            raise ValueError(f"need 0 < cache_length <= max_length, got {cache_length}, {max_length}")
        self.reward, self.max_length, self.cache_length = reward, max_length, cache_length

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        completion_length: Sequence[int] | None = None,
        **columns: Any,
    ) -> list[float | None]:
        if completion_length is None:
            raise ValueError("OverlongPenalty needs completion_length, each completion's sampled token count")
        base = score(self.reward, prompts, completions, **columns)
        return [
            None if r is None else r + overlong_penalty(int(n), self.max_length, self.cache_length)
            for r, n in zip(base, completion_length, strict=True)
        ]
