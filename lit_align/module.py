"""AlignModule: the policy, an optional frozen reference, an objective and the optimizer step."""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.nn import ModuleDict
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_align.checkpointing import require_finite, rng_states, set_rng_states
from lit_align.data.answers import exact_match
from lit_align.data.batch import Responses
from lit_align.models.forward import eval_mode
from lit_align.models.lora import is_lora
from lit_align.models.response_forward import check_shared_prefix, response_logps, response_scores
from lit_align.models.sharding import configure_models
from lit_align.models.value import ValueHead
from lit_align.objectives.base import Objective, ObjectiveOutput
from lit_align.objectives.reduce import masked_sum
from lit_align.rollout.generate import generate_completions

Batch = dict[str, Any]  # held-out prompts for generation


class AlignModule(L.LightningModule):
    """Wires a policy to an objective; the objective does the math.

    A training batch is one optimizer step: a list of micro-batches. Each micro-batch's loss is
    its sum divided by the step's normalizer (counted over all micro-batches and ranks), so
    accumulating gradients over the list gives the same update for any micro-batch size. That is
    why optimization is manual here: Lightning's ``accumulate_grad_batches`` divides by the
    number of micro-batches, which is only right when they hold equally many tokens.

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
        eval_metrics: more held-out metrics by name, each ``(completion, answer) -> (value,
            weight)`` or ``None`` (not judged); logged as ``val/<name>``, the weighted mean over
            the split (the instruction task's ``constraint_accuracy`` weighs each completion by
            its number of constraints).
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
        eval_metrics: dict[str, Callable[[str, str], tuple[float, float] | None]] | None = None,
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
        self.verifier = verifier
        # Held-out scorers by metric name, each (completion, answer) -> (value, weight) | None.
        self.scorers = {"accuracy": self._verified, **(eval_metrics or {})}
        self.held_out = ModuleDict({
            stage: ModuleDict({name: MeanMetric() for name in self.scorers}) for stage in ("val", "test")
        })  # fmt: skip
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
        start = time.perf_counter()
        optimizer = self.optimizers()
        normalizer = self._across_ranks(sum(self.objective.normalizer(micro) for micro in batch))
        loss, metrics = self._over_micro_batches(batch, normalizer, backward=True)
        rows = sum(micro.num_responses for micro in batch)
        if not self._finite(loss):
            self._skip_step(optimizer, rows, loss)
            return
        self.bad_in_a_row = 0
        if self.grad_clip:
            root = self.trainer.strategy.model
            if isinstance(root, FullyShardedDataParallel):  # FSDP1: the norm over all shards, from its root
                root.clip_grad_norm_(self.grad_clip)
            else:
                self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()

        tokens = sum(micro.num_tokens for micro in batch)
        seconds = time.perf_counter() - start
        self.train_tokens += tokens
        self.train_seconds += seconds
        # Each rank's loss is its share of the step's (sum / (global count / world)): the mean
        # over ranks is the step's loss, the same number one process would log.
        self.log("train/loss", loss, prog_bar=True, batch_size=rows, sync_dist=True)
        self.log("train/lr", lr, batch_size=rows)
        self.log("train/tokens_per_s", tokens / seconds, batch_size=rows)
        self.log_dict(metrics, batch_size=rows, sync_dist=True)

    def _finite(self, loss: Tensor) -> bool:
        """Whether the step's loss and every gradient are finite on all ranks (one decision for
        all, so that no rank steps alone)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2 shards
        # One norm over all gradients is non-finite iff one of them holds an inf or a NaN: a
        # single foreach kernel instead of an isfinite per parameter (~1.5% of a tiny model's step).
        norm = torch.nn.utils.get_total_norm(local, error_if_nonfinite=False) if local else loss.new_zeros(())
        bad = (~(torch.isfinite(loss) & torch.isfinite(norm))).float()
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return bool(bad == 0)

    def _skip_step(self, optimizer: Any, rows: int, loss: Tensor) -> None:
        """Drops a step with a non-finite loss or gradient: no optimizer or scheduler step (the
        weights, the moments and the step count stay), counted in ``train/skipped_steps``; after
        ``max_bad_steps`` in a row the run stops, since the model or the data is broken."""
        optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=rows)
        self.log("train/loss", loss, prog_bar=True, batch_size=rows, sync_dist=True)  # as it was: NaN or inf
        if self.bad_in_a_row >= self.max_bad_steps:
            # Lightning writes a step's logs once the step ends; this one ends the run: write them now.
            step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
            for logger in self.loggers:
                logger.log_metrics({"train/loss": loss.item(), "train/skipped_steps": float(self.skipped_steps)}, step)
                logger.save()
            raise NonFiniteStop(
                f"{self.bad_in_a_row} steps in a row had a non-finite loss or gradient (after optimizer "
                f"step {self.global_step}); stopping with the last finite weights. Lower optimizer.lr, "
                "check the data, or raise max_bad_steps."
            )

    def _over_micro_batches(
        self, batch: list[Responses], normalizer: Tensor, backward: bool
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The step loss (the sum of the micro-batch losses) and each metric's mean over the
        micro-batches; with ``backward``, gradients accumulate micro-batch by micro-batch."""
        loss = torch.zeros((), device=self.device)
        metrics: dict[str, list[Tensor]] = defaultdict(list)
        step = self.step_inputs(batch)
        for micro in batch:
            out = self.objective_step(micro, normalizer, step)
            if backward:
                self.manual_backward(out.loss)
            loss += out.loss.detach()
            for key, value in out.metrics.items():
                metrics[key].append(value)
        return loss, {key: torch.stack(values).mean() for key, values in metrics.items()}

    def objective_step(
        self, micro: Responses, normalizer: Tensor, step: dict[str, Tensor] | None = None
    ) -> ObjectiveOutput:
        """Runs the policy (and the reference, and the critic) over one micro-batch's prompts
        and responses and applies the objective; ``step`` is `step_inputs` of its optimizer step
        (``None``: the micro-batch is the whole step)."""
        if step is None:
            step = self.step_inputs([micro])
        inputs, shared = micro.forward_inputs(), self.shared_prefix
        if self.objective.inputs == "scores":  # a reward model: one score per response
            return self.objective(micro, response_scores(self.policy, **inputs, shared=shared), None, normalizer)
        out = response_logps(self.policy, **inputs, shared=shared, entropy=self.objective.needs_entropy,
                             entropy_grad=self.objective.entropy_grad, hidden=self._critic_reads_policy)  # fmt: skip
        extras = {}
        if self.critic is not None:
            extras["values"] = self.critic(inputs, out.hidden, shared=shared)
        if self.objective.needs_entropy:
            extras["entropy"] = out.entropy
        ref_logps = None
        if self.objective.needs_reference and getattr(micro, "ref_logps", None) is None:  # else computed earlier
            ref_logps = self.reference_logps(inputs)
        return self.objective(micro, out.logps, ref_logps, normalizer, **extras, **step)

    @torch.no_grad()
    def step_inputs(self, batch: list[Responses]) -> dict[str, Tensor]:
        """What the objective reads of the whole optimizer step in each micro-batch: for
        ``needs_kl_pairs`` (KTO), ``kl_estimate``, the mean over the step's mismatched pairs
        (`UnpairedBatch.kl_inputs`, every micro-batch and rank) of log π − log π_ref, scored
        without gradient before the gradient pass, so that it does not depend on micro-batching."""
        if not self.objective.needs_kl_pairs:
            return {}
        total, count = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for micro in batch:
            inputs = micro.kl_inputs()
            logps = response_logps(self.policy, **inputs, shared=self.shared_prefix).logps
            total += masked_sum(logps - self.reference_logps(inputs), micro.kl_response_mask).float()
            count += micro.num_responses
        if self._trainer is not None and self.trainer.world_size > 1:
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
            count = self.trainer.strategy.reduce(count, reduce_op="sum")
        return {"kl_estimate": total / count.clamp(min=1)}

    @torch.no_grad()
    def reference_logps(self, inputs: dict[str, Tensor]) -> Tensor:
        """``(R, T)`` log-probs of the response tokens under the reference: the frozen copy, or
        a LoRA policy with its adapters off (the starting weights exactly: LoRA trains only the
        adapters). ``inputs``: `Responses.forward_inputs`."""
        if self.reference is not None:
            return response_logps(self.reference, **inputs, shared=self.shared_prefix).logps
        if not is_lora(self.policy):
            raise RuntimeError(f"{type(self.objective).__name__} has no reference model")
        with self.policy.disable_adapter(), eval_mode(self.policy):
            return response_logps(self.policy, **inputs, shared=self.shared_prefix).logps

    @property
    def _critic_reads_policy(self) -> bool:
        """A shared-trunk critic reads the policy's last hidden states from the same forward."""
        return self.critic is not None and self.critic.trunk is None

    @torch.no_grad()
    def score_rollout(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """For online sampling: the sampling policy's, the reference's and the critic's ``(R,
        T)`` log-probs and values of sampled responses, in eval mode (the values are ``None``
        without a critic; without a reference the policy's own log-probs stand in for it)."""
        with eval_mode(self.policy):
            out = response_logps(self.policy, **inputs, shared=self.shared_prefix, hidden=self._critic_reads_policy)
            values = None
            if self.critic is not None:
                with eval_mode(self.critic):
                    values = self.critic(inputs, out.hidden, shared=self.shared_prefix)
        ref_logps = self.reference_logps(inputs) if self.objective.needs_reference else out.logps
        return out.logps, ref_logps, values

    def _across_ranks(self, count: Tensor) -> Tensor:
        """The step's normalizer per rank: the global count divided by the world size.

        DDP averages gradients over ranks, so dividing each rank's sum by global/world makes the
        averaged gradient that of the global sum over the global count.
        """
        count = count.float()
        if self.trainer.world_size == 1:
            return count
        return self.trainer.strategy.reduce(count, reduce_op="sum") / self.trainer.world_size

    def configure_optimizers(self) -> Any:
        trainable = [p for name, p in self.named_parameters() if p.requires_grad and not name.startswith("critic.")]
        optimizer = self.optimizer_factory(trainable)
        if self.critic is not None:
            # The critic's head starts from scratch while the policy is only fine-tuned: it
            # learns at its own rate, objective.critic_lr_scale × lr (the schedule keeps the ratio).
            lr = optimizer.defaults["lr"] * self.objective.critic_lr_scale
            optimizer.add_param_group({"params": list(self.critic.parameters()), "lr": lr})
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, num_training_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train(self, mode: bool = True) -> AlignModule:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # whoever switches the module to train mode, never the reference
        return self

    # -- evaluation ---------------------------------------------------------------------------

    def validation_step(self, batch: Batch | list[Responses], batch_idx: int) -> dict[str, list[str]] | None:
        if isinstance(batch, list):
            return self._evaluate_objective(batch, "val")
        return self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.validated_at_step = self.trainer.global_step

    def test_step(self, batch: Batch | list[Responses], batch_idx: int) -> dict[str, list[str]] | None:
        if isinstance(batch, list):
            return self._evaluate_objective(batch, "test")
        return self._evaluate(batch, "test")

    def _evaluate_objective(self, batch: list[Responses], stage: str) -> None:
        """The objective's loss and metrics on held-out training-format rows (e.g. pairs),
        logged as ``{stage}/loss``, ``{stage}/rewards/accuracies`` …"""
        normalizer = sum(self.objective.normalizer(micro) for micro in batch).float()
        loss, metrics = self._over_micro_batches(batch, normalizer, backward=False)
        rows = int(normalizer.item())
        self.log(f"{stage}/loss", loss, batch_size=rows, sync_dist=True)
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, batch_size=rows, sync_dist=True)

    def _evaluate(self, batch: Batch, stage: str) -> dict[str, list[str]]:
        """Greedy completions of held-out prompts, scored by the verifier (and ``eval_metrics``);
        returned as ``{"completions": [...]}`` for callbacks (best-of-N compares against them).

        Rows a scorer cannot judge (``None``) are left out of its metric.
        """
        _, texts = generate_completions(
            self.policy, self.tokenizer, batch["prompt_ids"], batch["prompt_mask"], self.max_new_tokens
        )
        pairs = list(zip(texts, batch["answer"], strict=True))
        for name, scorer in self.scorers.items():
            metric = self.held_out[stage][name]
            scored = [s for s in (scorer(text, answer) for text, answer in pairs) if s is not None]
            if scored:
                values, weights = torch.tensor(scored, dtype=torch.float32, device=self.device).T
                metric.update(values, weights)
            self.log(f"{stage}/{name}", metric, batch_size=max(len(scored), 1))
        return {"completions": texts}

    def _verified(self, completion: str, answer: str) -> tuple[float, float] | None:
        score = self.verifier(completion, answer)
        return None if score is None else (score, 1.0)

    # -- checkpoints --------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        require_finite(self, "checkpoint")
        # The reference is a frozen copy of the starting policy: storing it again is waste. A
        # sharded checkpoint keeps it: Lightning loads those into the whole module, strictly.
        if not self._sharded:
            checkpoint["state_dict"] = {
                k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("reference.")
            }  # fmt: skip
        checkpoint["skipped_steps"] = (self.skipped_steps, self.bad_in_a_row)
        checkpoint["train_tokens"] = (self.train_tokens, self.train_seconds)
        # Lightning keeps no RNG state; a resumed run must draw what this one would (dropout…).
        checkpoint["rng_states"] = rng_states()
        for logger in self.trainer.loggers:  # the metrics up to the checkpoint reach the disk too
            logger.save()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps, self.bad_in_a_row = checkpoint.get("skipped_steps", (0, 0))
        self.train_tokens, self.train_seconds = checkpoint.get("train_tokens", (0, 0.0))
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
        if self.reference is not None and not self._sharded:  # keep strict loading: refill the keys we left out
            ref = {f"reference.{k}": v for k, v in self.reference.state_dict().items()}
            checkpoint["state_dict"].update(ref)

    @property
    def _sharded(self) -> bool:
        """Whether checkpoints are per-rank shards, which Lightning loads into the whole module
        before `on_load_checkpoint` (FSDP2; FSDP1 with ``state_dict_type: sharded``)."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        fsdp1 = isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "sharded"
        return self._device_mesh is not None or fsdp1


class NonFiniteStop(FloatingPointError):
    """``max_bad_steps`` steps in a row were not finite; the weights are the last finite ones."""


@torch.no_grad()
def sequence_logps(model: PreTrainedModel, batch: Responses, shared: bool = True) -> Tensor:
    """``(responses,)`` summed log-probs of each response's scored tokens, computed in eval mode
    on the model's device and returned on the CPU."""
    device = next(model.parameters()).device
    batch = batch.to(device)
    with eval_mode(model):
        logps = response_logps(model, **batch.forward_inputs(), shared=shared).logps
    return masked_sum(logps, batch.loss_mask, dim=1).cpu()


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """An eval-mode copy of ``model`` whose parameters need no gradient."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference
