"""Rollout rows for policy-gradient objectives: the sampled token ids with the per-token
tensors an update needs, kept as sampled (never decoded and re-tokenised).

A sample becomes one row::

    input_ids   prompt ids (no padding) + response ids (up to and including eos)
    prompt_len  how many of them are the prompt
    old_logps, ref_logps, advantages[, returns, old_values]
                one float per response token: the sampling policy's and the reference's
                log-prob, the advantage (and PPO's value target and old value)

`lit_align.data.collate.collate_rollout` pads rows back into ``(batch, seq - 1)`` tensors
aligned with the training forward's log-probs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_align.objectives.policy_gradient import PolicyGradientObjective
from lit_align.rollout.sampler import Rollout


def split_rollout(rollout: Rollout, logps: Tensor, ref_logps: Tensor, values: Tensor | None) -> list[dict[str, Any]]:
    """Per sample of a left-padded rollout: its unpadded ``prompt_ids`` and ``response_ids``,
    and ``old_logps``, ``ref_logps`` (and ``values``) over its response tokens, as lists.

    ``logps``, ``ref_logps``, ``values``: ``(N, L - 1)``, aligned with ``rollout.input_ids[:, 1:]``.
    """
    prompt_width = int(rollout.response_mask.any(0).int().argmax())  # the first completion column
    per_token = {"old_logps": logps, "ref_logps": ref_logps} | ({"values": values} if values is not None else {})
    per_token = {key: value.float().cpu() for key, value in per_token.items()}
    ids, attention = rollout.input_ids.cpu(), rollout.attention_mask.cpu()
    lengths = rollout.response_mask.sum(-1).tolist()
    samples = []
    for i, length in enumerate(lengths):
        prompt = ids[i, :prompt_width][attention[i, :prompt_width].bool()]
        span = slice(prompt_width - 1, prompt_width - 1 + length)  # logps index of response token j: P − 1 + j
        sample = {"prompt_ids": prompt.tolist(), "response_ids": ids[i, prompt_width : prompt_width + length].tolist()}
        samples.append(sample | {key: value[i, span].tolist() for key, value in per_token.items()})
    return samples


def response_tensors(samples: Sequence[dict[str, Any]], key: str) -> Tensor:
    """``(N, T)`` right-padded with 0: ``samples[i][key]`` over each response."""
    longest = max(len(s["response_ids"]) for s in samples)
    out = torch.zeros(len(samples), longest)
    for i, sample in enumerate(samples):
        out[i, : len(sample[key])] = torch.tensor(sample[key])
    return out


def experience_rows(
    objective: PolicyGradientObjective,
    samples: Sequence[dict[str, Any]],
    rewards: Sequence[float | None],
    num_samples: int,
    truncated: Sequence[bool],
) -> tuple[list[dict[str, Any]], list[float]]:
    """The rows of one rollout, with the objective's advantages, and each sample's KL to the
    reference. ``samples`` come from `split_rollout`, ``k = num_samples`` per prompt, adjacent."""
    if not samples:
        return [], []
    mask = torch.zeros(len(samples), max(len(s["response_ids"]) for s in samples))
    for i, sample in enumerate(samples):
        mask[i, : len(sample["response_ids"])] = 1
    values = response_tensors(samples, "values") if "values" in samples[0] else None
    reward = torch.tensor([float("nan") if r is None else float(r) for r in rewards])
    experience = objective.prepare(
        reward, response_tensors(samples, "old_logps"), response_tensors(samples, "ref_logps"), mask,
        num_samples, values,
    )  # fmt: skip
    rows = []
    for i, sample in enumerate(samples):
        if not experience.keep[i]:
            continue
        n = len(sample["response_ids"])
        row = {
            "input_ids": sample["prompt_ids"] + sample["response_ids"],
            "prompt_len": len(sample["prompt_ids"]),
            "old_logps": sample["old_logps"],
            "ref_logps": sample["ref_logps"],
            "advantages": experience.advantages[i, :n].tolist(),
            "prompt_truncated": False,
            "response_truncated": bool(truncated[i]),
        }
        if experience.returns is not None:
            row |= {"returns": experience.returns[i, :n].tolist(), "old_values": sample["values"]}
        rows.append(row)
    return rows, experience.kl.tolist()
