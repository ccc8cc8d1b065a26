"""AlignModule: the policy, an optional frozen reference, an objective and the optimizer step."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_align.checkpointing import load_module_state, save_module_state
from lit_align.data.answers import exact_match
from lit_align.data.batch import Responses
from lit_align.evaluation import Batch, Scorer, evaluate, held_out_scorers
from lit_align.models.forward import eval_mode
from lit_align.models.lora import is_lora
from lit_align.models.reference import frozen_copy, reference_logps
from lit_align.models.response_forward import check_shared_prefix, response_logps
from lit_align.models.sharding import configure_models
from lit_align.models.value import ValueHead
from lit_align.objectives.base import Objective, ObjectiveOutput
from lit_align.step import build_optimizers, optimizer_step, run_objective


class AlignModule(L.LightningModule):
    """Wires a policy to an objective; the objective does the math.

    A training batch is one optimizer step: a list of micro-batches whose gradients accumulate,
    each loss divided by the whole step's normalizer (`lit_align.step`), so optimization is manual.

    Args:
        policy: the causal LM being trained.
        objective: the loss; if its ``needs_reference`` is true, a frozen copy of the starting
            policy is kept as the reference (eval mode, no grad, left out of checkpoints), or,
            for a LoRA policy, the policy with its adapters off is the reference (no copy); if
            its ``needs_values`` is true, a critic (`ValueHead`, trained with the policy) is
            built on the policy's trunk or on a copy of it (``objective.critic``).
        tokenizer: decodes generations at evaluation.
        optimizer: builds the optimizer from the trainable parameters (a Hydra partial).
        scheduler: builds the LR schedule from the optimizer and ``num_training_steps``.
        grad_clip: max gradient norm; ``None`` or 0 disables clipping.
        max_new_tokens: generation budget at evaluation.
        verifier: ``(completion, answer) -> float | None``, 1.0 for a correct completion;
            its mean is ``val/accuracy`` and ``test/accuracy``.
        eval_metrics: more held-out metrics by name (`lit_align.evaluation.Scorer`), logged as
            ``val/<name>``, e.g. the instruction task's ``constraint_accuracy``.
        shared_prefix: run each prompt once for all its responses (`lit_align.models.
            response_forward`); false repeats it per response (the flat forward). Same numbers.
    """

    def __init__(
        self,
        policy: PreTrainedModel,
        objective: Objective,
        tokenizer: PreTrainedTokenizerBase,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], Optimizer],
        scheduler: Callable[..., LRScheduler] | None = None,
        grad_clip: float | None = 1.0,
        max_new_tokens: int = 64,
        verifier: Callable[[str, str], float | None] = exact_match,
        eval_metrics: dict[str, Scorer] | None = None,
        max_bad_steps: int = 3,
        gradient_checkpointing: bool = False,
        compile_layers: bool = False,
        shared_prefix: bool = True,
    ) -> None:
        super().__init__()
        if shared_prefix:
            check_shared_prefix(policy)
        self.automatic_optimization = False
        # from_pretrained returns eval mode and Lightning keeps module modes as it finds them.
        self.policy = policy.train()
        self.objective = objective
        # A LoRA policy is its own reference with the adapters off (see `reference_logps`).
        self.reference = frozen_copy(policy) if objective.needs_reference and not is_lora(policy) else None
        self.critic = ValueHead(policy, separate=objective.critic == "separate") if objective.needs_values else None
        self.tokenizer = tokenizer
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.grad_clip = grad_clip
        self.max_new_tokens = max_new_tokens
        # The held-out scorers by metric name, and their means per stage: held_out[stage][name].
        self.scorers, self.held_out = held_out_scorers(verifier, eval_metrics)
        self.max_bad_steps = max_bad_steps
        self.skipped_steps = 0  # steps whose loss or gradient was not finite, over the run
        self.bad_in_a_row = 0
        self.train_tokens = 0  # summed over the run, for summary.json
        self.train_seconds = 0.0
        self.validated_at_step = -1
        self.gradient_checkpointing = gradient_checkpointing
        self.compile_layers = compile_layers
        self.shared_prefix = shared_prefix
        self._configured = False

    def configure_model(self) -> None:
        """Memory and speed switches, then FSDP2 sharding under ModelParallelStrategy
        (`configure_models`). Lightning calls this on each ``fit``/``validate``/``test``; it
        acts once."""
        if self._configured:
            return
        self._configured = True
        configure_models(self.policy, self.reference, self.critic, self._device_mesh,
                         self.gradient_checkpointing, self.compile_layers)  # fmt: skip

    # -- training -----------------------------------------------------------------------------

    def training_step(self, batch: list[Responses], batch_idx: int) -> None:
        optimizer_step(self, batch)

    def objective_step(
        self, micro: Responses, normalizer: Tensor, step: dict[str, Tensor] | None = None
    ) -> ObjectiveOutput:
        """One micro-batch's forward and loss (`lit_align.step.run_objective`)."""
        return run_objective(self, micro, normalizer, step)

    def reference_logps(self, inputs: dict[str, Tensor]) -> Tensor:
        """``(R, T)`` log-probs of the response tokens under the reference (`lit_align.models.
        reference`). ``inputs``: `Responses.forward_inputs`."""
        return reference_logps(self.policy, self.reference, inputs, self.shared_prefix, type(self.objective).__name__)

    @torch.no_grad()
    def score_rollout(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """For online sampling: the sampling policy's, the reference's and the critic's ``(R,
        T)`` log-probs and values of sampled responses, in eval mode (the values are ``None``
        without a critic; without a reference the policy's own log-probs stand in for it)."""
        hidden = self.critic is not None and self.critic.reads_policy
        with eval_mode(self.policy):
            out = response_logps(self.policy, **inputs, shared=self.shared_prefix, hidden=hidden)
            values = None
            if self.critic is not None:
                with eval_mode(self.critic):
                    values = self.critic(inputs, out.hidden, shared=self.shared_prefix)
        ref_logps = self.reference_logps(inputs) if self.objective.needs_reference else out.logps
        return out.logps, ref_logps, values

    def configure_optimizers(self) -> Any:
        return build_optimizers(self)

    def train(self, mode: bool = True) -> AlignModule:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # whoever switches the module to train mode, never the reference
        return self

    # -- evaluation and checkpoints (`lit_align.evaluation`, `lit_align.checkpointing`) ----------

    def validation_step(self, batch: Batch | list[Responses], batch_idx: int) -> dict[str, list[str]] | None:
        return evaluate(self, batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.validated_at_step = self.trainer.global_step

    def test_step(self, batch: Batch | list[Responses], batch_idx: int) -> dict[str, list[str]] | None:
        return evaluate(self, batch, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_module_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        load_module_state(self, checkpoint)
