"""Turning scored samples into training rows in the format the objective consumes.

``k`` samples per prompt arrive adjacent (prompt ``p`` owns samples ``p·k … p·k + k − 1``), each
with a reward or ``None`` (unscorable). Unscorable samples are left out of every format: a
sample we cannot judge is neither a positive nor a negative.

- ``sft`` (rejection-sampling fine-tuning): every sample whose reward reaches ``threshold``.
- ``pairs`` (online DPO): per prompt, the best-rewarded sample is chosen and the worst rejected,
  when their rewards differ (ties between equal rewards go to the earlier sample).
- ``groups`` (AFT): per prompt, all scorable samples; ``correct`` is reward ≥ ``threshold`` and
  ``rank`` the dense rank of the reward, highest first, so a 0/1 verifier gives ranks 0 and 1.
  A group needs a scorable sample (or a reference, below); one with only positives or only
  negatives still trains the objective's fine-tuning term.

With ``references`` (one gold solution per prompt), ``groups`` add it as a ``reference`` chain
(fine-tuned on, outside the ranking) and ``sft`` adds it as a row, so every prompt keeps a
positive to learn from however few samples pass; ``pairs`` ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def rows_from_samples(
    batch_format: str,
    prompts: Sequence[str],
    completions: Sequence[str],
    rewards: Sequence[float | None],
    num_samples: int,
    threshold: float = 1.0,
    references: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Training rows of ``batch_format`` from ``len(prompts) · num_samples`` scored samples."""
    if len(completions) != len(prompts) * num_samples or len(rewards) != len(completions):
        raise ValueError(
            f"{len(prompts)} prompts × {num_samples} samples need as many completions and rewards, "
            f"got {len(completions)} and {len(rewards)}"
        )
    rows: list[dict[str, Any]] = []
    for p, prompt in enumerate(prompts):
        span = range(p * num_samples, (p + 1) * num_samples)
        scored = [(completions[i], rewards[i]) for i in span if rewards[i] is not None]
        reference = [] if references is None or batch_format == "pairs" else [references[p]]
        if not scored and not reference:
            continue
        if batch_format == "sft":
            rows += [{"prompt": prompt, "response": text} for text in reference]
            rows += [{"prompt": prompt, "response": text} for text, reward in scored if reward >= threshold]
        elif batch_format == "pairs":
            best = max(range(len(scored)), key=lambda i: scored[i][1])
            worst = min(range(len(scored)), key=lambda i: scored[i][1])
            if scored[best][1] > scored[worst][1]:
                rows.append({"prompt": prompt, "chosen": scored[best][0], "rejected": scored[worst][0]})
        elif batch_format == "groups":
            levels = sorted({reward for _, reward in scored}, reverse=True)
            rows.append({
                "prompt": prompt,
                "responses": [
                    {"text": text, "correct": reward >= threshold, "rank": levels.index(reward), "reference": False}
                    for text, reward in scored
                ] + [{"text": text, "correct": True, "rank": 0, "reference": True} for text in reference],
            })  # fmt: skip
        else:
            raise ValueError(f"unknown batch format {batch_format!r}")
    return rows


def rollout_metrics(
    rewards: Sequence[float | None],
    completion_lengths: Sequence[int],
    truncated: Sequence[bool],
    threshold: float = 1.0,
    num_samples: int = 1,
) -> dict[str, float]:
    """``rollout/*`` statistics of one refresh.

    ``reward_mean``/``reward_std`` are over scorable samples (population std); ``pass_rate`` is
    the fraction of scorable samples whose reward reaches ``threshold``; ``unscorable_frac``,
    ``completion_len`` (tokens, eos included) and ``truncated_frac`` are over all samples;
    ``frac_reward_zero_std`` is the fraction of prompts with a scorable sample whose scorable
    samples (``num_samples`` per prompt, adjacent) all have the same reward.
    """
    groups = [
        [r for r in rewards[i : i + num_samples] if r is not None] for i in range(0, len(rewards), num_samples)
    ]  # fmt: skip
    groups = [g for g in groups if g]
    zero_std = sum(max(g) == min(g) for g in groups) / len(groups) if groups else math.nan
    scored = [r for r in rewards if r is not None]
    n = max(len(rewards), 1)
    mean = sum(scored) / len(scored) if scored else math.nan
    variance = sum((r - mean) ** 2 for r in scored) / len(scored) if scored else math.nan
    return {
        "rollout/reward_mean": mean,
        "rollout/reward_std": math.sqrt(variance),
        "rollout/pass_rate": sum(r >= threshold for r in scored) / len(scored) if scored else math.nan,
        "rollout/unscorable_frac": (len(rewards) - len(scored)) / n,
        "rollout/frac_reward_zero_std": zero_std,
        "rollout/completion_len": sum(completion_lengths) / n,
        "rollout/truncated_frac": sum(bool(t) for t in truncated) / n,
    }
