"""Typed training batches: prompts, each continued by one or more responses.

Every training format has the same shape: ``P`` distinct prompts and ``R`` responses, response
``r`` continuing prompt ``prompt_index[r]``. An SFT row is a prompt with one response, a DPO
pair a prompt with two (`chosen`, `rejected`), an AFT group a question with its chains, a
rollout a prompt with its k samples. Keeping the prompt apart from its responses is what lets
the forward compute each prompt once (`lit_align.models.response_forward`), and it makes every
mask line up with what it masks: ``loss_mask[r, t]`` belongs to ``response_ids[r, t]`` and to
the forward's ``logps[r, t]``, with no shifting by one.

A batch is built once, by its format's ``collate`` (`lit_align.data.formats`), and stays tensors
to the loss.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TypeVar

import torch
from torch import Tensor

B = TypeVar("B", bound="Responses")


@dataclass
class Responses:
    """One micro-batch of prompts and their responses.

    Attributes:
        prompt_ids: ``(P, Lp)`` prompt ids, left-padded (every prompt ends at column ``Lp - 1``).
        prompt_mask: ``(P, Lp)`` 1 on prompt tokens.
        response_ids: ``(R, T)`` response ids, right-padded.
        response_mask: ``(R, T)`` 1 on response tokens (attended to).
        loss_mask: ``(R, T)`` 1 on the response tokens the loss reads: all of them, except in a
            conversation, whose user turns after the first are context, not targets.
        prompt_index: ``(R,)`` the prompt each response continues.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    loss_mask: Tensor
    prompt_index: Tensor

    def to(self: B, device: torch.device | str) -> B:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return replace(self, **{k: v.to(device) for k, v in moved.items() if isinstance(v, Tensor)})

    @property
    def num_prompts(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def num_responses(self) -> int:
        return self.response_ids.shape[0]

    @property
    def num_tokens(self) -> int:
        """Tokens of the batch as flat sequences (each response with its prompt): the unit of
        ``train/tokens_per_s``, comparable with a trainer that repeats the prompt."""
        prompt_lens = self.prompt_mask.sum(-1).index_select(0, self.prompt_index)
        return int(prompt_lens.sum() + self.response_mask.sum())

    def forward_inputs(self) -> dict[str, Tensor]:
        """The tensors the response forward reads."""
        return {"prompt_ids": self.prompt_ids, "prompt_mask": self.prompt_mask, "response_ids": self.response_ids,
                "response_mask": self.response_mask, "prompt_index": self.prompt_index}  # fmt: skip


@dataclass
class SFTBatch(Responses):
    """Prompts with one target response each (``R == P``)."""


@dataclass
class PairBatch(Responses):
    """Preference pairs: each prompt with a chosen and a rejected response.

    Attributes:
        chosen, rejected: ``(pairs,)`` the response index of each pair's chosen / rejected one.
        ref_logps: ``(pairs, 2)`` the reference's sequence log-probs of (chosen, rejected),
            when computed before training (``objective.precompute_ref``), else ``None``.
    """

    chosen: Tensor
    rejected: Tensor
    ref_logps: Tensor | None = None


@dataclass
class GroupBatch(Responses):
    """A question with several chains (AFT). Per response ``(R,)``: ``correct`` (binary
    feedback), ``rank`` (lower is better) and ``reference`` (a gold solution, trained by the
    fine-tuning term only). The group of a chain is its ``prompt_index``."""

    correct: Tensor
    rank: Tensor
    reference: Tensor


@dataclass
class RolloutBatch(Responses):
    """Sampled responses for policy-gradient objectives, as sampled (never re-tokenised).

    Attributes:
        rewards: ``(R,)`` each sample's reward, NaN where unscorable.
        old_logps: ``(R, T)`` the sampling policy's log-probs, or ``None`` when the rollout is
            trained on in one on-policy step (the training forward's, detached, are the same).
        ref_logps: ``(R, T)`` the reference's log-probs, or ``None`` (computed in the step).
        advantages, returns, old_values: ``(R, T)`` computed once per rollout (``prepare``),
            or ``None`` when the objective computes its advantages in the step.
    """

    rewards: Tensor
    old_logps: Tensor | None = None
    ref_logps: Tensor | None = None
    advantages: Tensor | None = None
    returns: Tensor | None = None
    old_values: Tensor | None = None


@dataclass
class UnpairedBatch(Responses):
    """Single responses with a thumbs-up or thumbs-down (KTO), one per prompt (``R == P``), and
    each prompt again with a mismatched response: another row's, for the KL reference point.

    Attributes:
        desirable: ``(R,)`` bool, whether response ``r`` is desirable.
        kl_response_ids: ``(R, Tk)`` the mismatched response that prompt ``r`` is paired with
            (another row's of its split, `lit_align.data.formats.mismatched_responses`), right-padded.
        kl_response_mask: ``(R, Tk)`` 1 on its tokens.
    """

    desirable: Tensor
    kl_response_ids: Tensor
    kl_response_mask: Tensor

    def kl_inputs(self) -> dict[str, Tensor]:
        """The response forward's inputs for the mismatched pairs (`Responses.forward_inputs`)."""
        return {**self.forward_inputs(), "response_ids": self.kl_response_ids, "response_mask": self.kl_response_mask}
