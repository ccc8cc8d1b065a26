"""Rollout rows for policy-gradient objectives: each prompt with its sampled responses, kept as
sampled (never decoded and re-tokenised) and as tensors from the sampler to the loss.

A prompt becomes one row (`lit_align.data.formats.RolloutFormat` collates them)::

    prompt_ids                (Lp,)    the prompt's ids, unpadded
    response_ids, response_mask (k, T) its samples, up to and including eos
    rewards                   (k,)     NaN where unscorable
    truncated                 (k,)     no eos within the budget
    old_logps, ref_logps, advantages[, returns, old_values]   (k, T)
                                       when the rollout is scored once before training: the
                                       sampling policy's and the reference's log-probs, the
                                       advantages (and PPO's value targets and old values)

A rollout trained on in one on-policy step carries only the samples and rewards: the step's own
forward gives the sampling policy's log-probs and the objective its advantages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lit_align.objectives.policy_gradient import PolicyGradientObjective
from lit_align.rollout.sampler import Rollout

Row = dict[str, Any]


def split_rollout(rollout: Rollout, scored: tuple[Tensor, Tensor, Tensor | None] | None = None) -> list[Row]:
    """Per prompt of a rollout: its unpadded ``prompt_ids`` and its samples' ``response_ids``,
    ``response_mask``, ``truncated`` (and, with ``scored`` = the sampling policy's, the
    reference's and the critic's ``(N, T)`` outputs, ``old_logps``, ``ref_logps``, ``values``),
    on the CPU, each prompt's responses trimmed to its longest."""
    per_token = {}
    if scored is not None:
        logps, ref_logps, values = scored
        per_token = {"old_logps": logps, "ref_logps": ref_logps} | ({} if values is None else {"values": values})
    per_token = {key: value.float().cpu() for key, value in per_token.items()}
    ids, mask = rollout.completion_ids.cpu(), rollout.completion_mask.cpu()
    prompts, prompt_mask = rollout.prompt_ids.cpu(), rollout.prompt_mask.cpu().bool()
    index = rollout.prompt_index.cpu()
    rows = []
    for p in range(len(prompts)):
        samples = (index == p).nonzero().squeeze(-1)
        width = max(1, int(mask[samples].sum(-1).max()))
        row = {"prompt_ids": prompts[p][prompt_mask[p]], "response_ids": ids[samples, :width],
               "response_mask": mask[samples, :width], "truncated": rollout.truncated[samples].cpu()}  # fmt: skip
        rows.append(row | {key: value[samples, :width] for key, value in per_token.items()})
    return rows


def _stack(rows: Sequence[Row], key: str) -> Tensor:
    """``rows[i][key]`` ``(k_i, T_i)`` right-padded with 0 and stacked: ``(N, max T)``."""
    width = max(r[key].shape[1] for r in rows)
    return torch.cat([torch.nn.functional.pad(r[key], (0, width - r[key].shape[1])) for r in rows])


def experience_rows(
    objective: PolicyGradientObjective,
    groups: Sequence[Row],
    rewards: Sequence[float | None],
    num_samples: int,
) -> tuple[list[Row], list[float]]:
    """The rows of one rollout and each sample's KL to the reference.

    ``groups`` come from `split_rollout` (``num_samples`` samples each, in order), ``rewards``
    one per sample. Groups scored before training get the objective's advantages (computed
    here, over the whole rollout: PPO whitens over it); unscored groups (one on-policy step)
    only their rewards, and no KL is known yet (an empty list)."""
    if not groups:
        return [], []
    reward = torch.tensor([float("nan") if r is None else float(r) for r in rewards])
    if "old_logps" not in groups[0]:
        return [g | {"rewards": reward[i * num_samples : (i + 1) * num_samples]} for i, g in enumerate(groups)], []
    mask = _stack(groups, "response_mask").float()
    values = _stack(groups, "values") if "values" in groups[0] else None
    experience = objective.prepare(
        reward, _stack(groups, "old_logps"), _stack(groups, "ref_logps"), mask, num_samples, values
    )
    rows = []
    for i, group in enumerate(groups):
        span = slice(i * num_samples, (i + 1) * num_samples)
        keep = experience.keep[span]
        if not keep.any():
            continue
        width = group["response_ids"].shape[1]
        row = {
            key: group[key][keep] for key in ("response_ids", "response_mask", "truncated", "old_logps", "ref_logps")
        }
        row |= {"prompt_ids": group["prompt_ids"], "rewards": reward[span][keep],
                "advantages": experience.advantages[span][keep, :width]}  # fmt: skip
        if experience.returns is not None:
            row |= {"returns": experience.returns[span][keep, :width], "old_values": group["values"][keep]}
        rows.append(row)
    return rows, experience.kl.tolist()
