"""Turning scored samples into training rows in the format the objective consumes, kept as the
token ids that were sampled: a completion is never decoded and re-tokenised on its way to the
loss (a round trip that can change a BPE tokenisation, and would add an eos the sampler never
produced to a sample cut at ``max_new_tokens``). The text only goes to the reward and the logs.

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

With ``references`` (one gold solution per prompt, encoded), ``groups`` add it as a
``reference`` chain (fine-tuned on, outside the ranking) and ``sft`` adds it as a row, so every
prompt keeps a positive to learn from however few samples pass; ``pairs`` ignore it.

The rows are what `lit_align.data.formats` stores for that format (``input_ids`` and
``prompt_len`` for sft, ``chosen_ids``/``rejected_ids`` for pairs, ``sequences`` with labels for
groups, each with ``prompt_truncated`` and ``response_truncated``), so the datamodule serves
them as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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
    if len(completions) != len(prompts) * num_samples or len(rewards) != len(completions):
        raise ValueError(
            f"{len(prompts)} prompts × {num_samples} samples need as many completions and rewards, "
            f"got {len(completions)} and {len(rewards)}"
        )
    rows: list[dict[str, Any]] = []
    for p, prompt in enumerate(prompts):
        prompt = list(prompt)
        span = range(p * num_samples, (p + 1) * num_samples)
        scored = [(completions[i], rewards[i]) for i in span if rewards[i] is not None]
        reference = [] if references is None or batch_format == "pairs" else [references[p]]
        if not scored and not reference:
            continue
        cut = bool(prompt_truncated[p]) if prompt_truncated is not None else False
        if batch_format == "sft":
            for response in reference + [ids for ids, reward in scored if reward >= threshold]:
                ids, truncated = _joined(prompt, response, max_length)
                rows.append({"input_ids": ids, "prompt_len": len(prompt), "prompt_truncated": cut,
                             "response_truncated": truncated})  # fmt: skip
        elif batch_format == "pairs":
            best = max(range(len(scored)), key=lambda i: scored[i][1])
            worst = min(range(len(scored)), key=lambda i: scored[i][1])
            if scored[best][1] > scored[worst][1]:
                chosen, chosen_cut = _joined(prompt, scored[best][0], max_length)
                rejected, rejected_cut = _joined(prompt, scored[worst][0], max_length)
                rows.append({"chosen_ids": chosen, "rejected_ids": rejected, "prompt_len": len(prompt),
                             "prompt_truncated": cut, "response_truncated": chosen_cut or rejected_cut})  # fmt: skip
        elif batch_format == "groups":
            levels = sorted({reward for _, reward in scored}, reverse=True)
            joined = [_joined(prompt, ids, max_length) for ids in [ids for ids, _ in scored] + reference]
            rows.append({
                "sequences": [ids for ids, _ in joined],
                "prompt_len": len(prompt),
                "correct": [reward >= threshold for _, reward in scored] + [True] * len(reference),
                "rank": [levels.index(reward) for _, reward in scored] + [0] * len(reference),
                "reference": [False] * len(scored) + [True] * len(reference),
                "prompt_truncated": cut,
                "response_truncated": any(truncated for _, truncated in joined),
            })  # fmt: skip
        else:
            raise ValueError(f"unknown batch format {batch_format!r}")
    return rows


def _joined(prompt: list[int], response: Ids, max_length: int | None) -> tuple[list[int], bool]:
    """``prompt + response``, the response cut to fit ``max_length``; and whether it was cut."""
    room = len(response) if max_length is None else max(max_length - len(prompt), 0)
    return prompt + list(response[:room]), len(response) > room


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
