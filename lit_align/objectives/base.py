"""The contract between the LightningModule and an objective."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


class ObjectiveOutput(NamedTuple):
    """What an objective returns for one micro-batch.

    ``loss`` is this micro-batch's share of the step loss (its sum divided by the step's
    normalizer), so the micro-batch losses of a step add up to the step loss. ``metrics`` are
    detached scalars averaged over the micro-batch, keyed ``group/name``.
    """

    loss: Tensor
    metrics: dict[str, Tensor]


class Objective(nn.Module):
    """A loss over log-probs of a tokenised batch; the math lives in pure functions beside it.

    The module runs the policy (and, if ``needs_reference``, the frozen reference, unless the
    batch already carries ``ref_logps``) over ``batch["input_ids"]`` and hands the objective
    per-token log-probs of each next token, ``(batch, seq - 1)``. The objective never sees a
    model, a trainer or a config.
    """

    needs_reference: bool = False
    # The reference log-probs come with the batch (``ref_logps``), computed once by `train`
    # with the starting policy before training, instead of from a reference model.
    precompute_ref: bool = False
    # The training rows it consumes: "sft" (prompt, response), "pairs", "groups" or "rollout"
    # (see `lit_align.data.datamodule`).
    batch_format: str = "sft"
    # What the module passes as ``logps``: "logps", a causal LM's per-token log-probs
    # ``(batch, seq - 1)``, or "scores", a sequence classifier's score per row ``(batch,)``
    # (reward models; such a model cannot be evaluated by generation).
    inputs: str = "logps"
    # Extra policy outputs passed as keyword arguments to ``forward``: ``values`` ``(batch,
    # seq - 1)`` from the module's critic, and ``entropy`` ``(batch, seq - 1)`` of each next-token
    # distribution.
    needs_values: bool = False
    needs_entropy: bool = False
    # Whether the entropy needs a gradient (an entropy bonus); without one it is computed under
    # no_grad, so logging it does not keep a float32 (batch, seq, vocab) tensor for backward.
    entropy_grad: bool = False

    def normalizer(self, batch: dict[str, Tensor]) -> Tensor:
        """How many units (tokens, sequences, pairs…) the loss averages over in ``batch``.

        The module sums this over every micro-batch of the step and over ranks, and passes the
        total back to ``forward``.
        """
        raise NotImplementedError

    def forward(
        self,
        batch: dict[str, Tensor],
        logps: Tensor,
        ref_logps: Tensor | None,
        normalizer: Tensor,
    ) -> ObjectiveOutput:
        raise NotImplementedError
