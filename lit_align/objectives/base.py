"""The contract between the LightningModule and an objective."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn

from lit_align.data.formats import FORMATS
from lit_align.data.row_format import RowFormat


class ObjectiveOutput(NamedTuple):
    """What an objective returns for one micro-batch.

    ``loss`` is this micro-batch's share of the step loss (its sum divided by the step's
    normalizer), so the micro-batch losses of a step add up to the step loss. ``metrics`` are
    detached scalars averaged over the micro-batch, keyed ``group/name``.
    """

    loss: Tensor
    metrics: dict[str, Tensor]


class Objective(nn.Module):
    """A loss over log-probs of a typed batch; the math lives in pure functions beside it.

    The module runs the policy (and, if ``needs_reference``, the frozen reference, unless the
    batch already carries ``ref_logps``) over the batch's prompts and responses
    (`lit_align.data.batch.Responses`) and hands the objective the log-prob of each response
    token, ``(responses, T)``, aligned with ``batch.loss_mask``. The objective never sees a
    model, a trainer or a config.
    """

    needs_reference: bool = False
    # The reference log-probs come with the batch (``ref_logps``), computed once by `train`
    # with the starting policy before training, instead of from a reference model.
    precompute_ref: bool = False
    # The training rows it consumes, which owns their encoding and collation
    # (`lit_align.data.formats`): SFT rows, pairs, groups or rollouts.
    row_format: ClassVar[RowFormat] = FORMATS["sft"]
    # What the module passes as ``logps``: "logps", a causal LM's log-probs of each response
    # token ``(responses, T)``, or "scores", a sequence classifier's score per response
    # ``(responses,)`` (reward models; such a model cannot be evaluated by generation).
    inputs: str = "logps"
    # Extra policy outputs passed as keyword arguments to ``forward``: ``values`` ``(responses,
    # T)`` from the module's critic, and ``entropy`` ``(responses, T)`` of each response token's
    # distribution.
    needs_values: bool = False
    # With ``needs_values``, how the module builds the critic (`lit_align.models.value.ValueHead`):
    # "shared", a value head on the policy's trunk, or "separate", a head on a copy of the trunk;
    # and its learning rate as a multiple of the policy's (its head starts from scratch).
    critic: str = "shared"
    critic_lr_scale: float = 1.0
    needs_entropy: bool = False
    # Whether the entropy needs a gradient (an entropy bonus); without one it is computed under
    # no_grad, so logging it does not keep a float32 (batch, seq, vocab) tensor for backward.
    entropy_grad: bool = False
    # Whether ``forward`` reads ``kl_estimate``: the mean over the optimizer step's mismatched
    # prompt/response pairs (all micro-batches and ranks) of log π − log π_ref, from a no-grad
    # pass before the step's gradient pass (KTO's reference point; `lit_align.step.step_inputs`).
    needs_kl_pairs: bool = False

    @property
    def batch_format(self) -> str:
        """The row format's name (what data modules build raw rows for)."""
        return self.row_format.name

    def normalizer(self, batch: Any) -> Tensor:
        """How many units (tokens, sequences, pairs…) the loss averages over in ``batch``.

        The module sums this over every micro-batch of the step and over ranks, and passes the
        total back to ``forward``. A loss with terms averaged over different units returns a
        vector, its first entry the rows (DPO with a token-mean NLL: pairs, chosen tokens).
        """
        raise NotImplementedError

    def forward(
        self,
        batch: Any,
        logps: Tensor,
        ref_logps: Tensor | None,
        normalizer: Tensor,
    ) -> ObjectiveOutput:
        raise NotImplementedError
