"""DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476, §3.2): a prompt whose samples all
scored the same has advantage 0 for every sample under a group baseline and teaches nothing, so
it is dropped and the rollout is topped up with fresh prompts (``OnlineSampling``'s
``dynamic_sampling``), keeping 0 < |{o_i : correct}| < G in the batch.

A rollout's samples are a dict of lists: per prompt ``prompts``, ``experience`` (and
``references``, ``prompt_ids``, ``prompt_truncated``); per sample (k per prompt, in order)
``completions``, ``rewards``, ``lengths``, ``truncated`` (and ``completion_ids``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PER_PROMPT = ("prompts", "experience", "references", "prompt_ids", "prompt_truncated")

Samples = dict[str, list[Any]]


def informative_groups(rewards: Sequence[float | None], k: int) -> list[bool]:
    """Per prompt: whether its scorable samples hold at least two different rewards. A prompt
    with fewer than two scorable samples is not informative either (no group baseline)."""
    keep = []
    for start in range(0, len(rewards), k):
        scored = {r for r in rewards[start : start + k] if r is not None and not math.isnan(r)}
        keep.append(len(scored) >= 2)
    return keep


def select_groups(samples: Samples, keep: Sequence[bool], k: int) -> Samples:
    """The prompts of ``samples`` where ``keep`` is true, with their k samples each."""
    out: Samples = {}
    for key, values in samples.items():
        if key in PER_PROMPT:
            out[key] = [v for v, kept in zip(values, keep, strict=True) if kept]
        else:
            out[key] = [v for i, v in enumerate(values) if keep[i // k]]
    return out


def merge(a: Samples, b: Samples) -> Samples:
    """The samples of two draws, one after the other."""
    return {key: a[key] + b[key] for key in a}
