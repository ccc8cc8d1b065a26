"""Turning scored samples into training rows in the format the objective consumes, kept as the
token ids that were sampled: a completion is never decoded and re-tokenised on its way to the
loss (a round trip that can change a BPE tokenisation, and would add an eos the sampler never
produced to a sample cut at ``max_new_tokens``). The text only goes to the reward and the logs.

``k`` samples per prompt arrive adjacent (prompt ``p`` owns samples ``p·k … p·k + k − 1``), each
with a reward or ``None`` (unscorable). Unscorable samples are left out of every format: a
sample we cannot judge is neither a positive nor a negative. What each format makes of a
prompt's scored samples is its ``RowFormat.from_samples`` (`lit_align.data.row_format`):

- ``sft`` (rejection-sampling fine-tuning): every sample whose reward reaches ``threshold``;
- ``pairs`` (online DPO): the best- against the worst-rewarded sample, when their rewards differ;
- ``groups`` (AFT): every scorable sample, labelled correct and ranked by reward;
- ``unpaired`` (online KTO): every scorable sample, desirable when its reward reaches ``threshold``.

With ``references`` (one gold solution per prompt, encoded), ``groups`` add it as a
``reference`` chain (fine-tuned on, outside the ranking) and ``sft`` adds it as a row, so every
prompt keeps a positive to learn from however few samples pass; ``pairs`` ignore it.

The rows are what the format stores (``input_ids`` and ``prompt_len`` for sft,
``chosen_ids``/``rejected_ids`` for pairs, ``sequences`` with labels for groups, each with
``prompt_truncated`` and ``response_truncated``), so the datamodule serves them as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lit_align.data.formats import FORMATS

Ids = Sequence[int]


def rows_from_samples(
    batch_format: str,
    prompts: Sequence[Ids],
    completions: Sequence[Ids],
    rewards: Sequence[float | None],
    num_samples: int,
    threshold: float = 1.0,
    references: Sequence[Ids] | None = None,
    max_length: int | None = None,
    prompt_truncated: Sequence[bool] | None = None,
) -> list[dict[str, Any]]:
    """Encoded training rows of ``batch_format`` from ``len(prompts) · num_samples`` scored samples.

    ``prompts``: each prompt's ids as the sampler saw them (bos included); ``completions``: each
    sample's ids up to and including its eos (none when cut at the budget); ``references``: each
    prompt's gold response ids, eos-terminated; ``max_length``: a sequence's longest, its
    response cut to fit (and flagged ``response_truncated``); ``prompt_truncated``: per prompt,
    whether its encoding was cut.
    """
    if batch_format not in FORMATS:
        raise ValueError(f"unknown batch format {batch_format!r}")
    if len(completions) != len(prompts) * num_samples or len(rewards) != len(completions):
        raise ValueError(
            f"{len(prompts)} prompts × {num_samples} samples need as many completions and rewards, "
            f"got {len(completions)} and {len(rewards)}"
        )
    fmt, rows = FORMATS[batch_format], []
    for p, prompt in enumerate(prompts):
        span = range(p * num_samples, (p + 1) * num_samples)
        scored = [(completions[i], float(rewards[i])) for i in span if rewards[i] is not None]
        reference = [] if references is None else [references[p]]
        if not scored and not reference:
            continue
        cut = bool(prompt_truncated[p]) if prompt_truncated is not None else False
        rows += fmt.from_samples(list(prompt), scored, reference, threshold, max_length, cut)
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
