"""One optimizer step of `AlignModule` over a list of micro-batches.

Each micro-batch's loss is its sum divided by the step's normalizer (counted over all
micro-batches and ranks), so accumulating gradients over the list gives the same update for any
micro-batch size. That is why optimization is manual: Lightning's ``accumulate_grad_batches``
divides by the number of micro-batches, which is only right when they hold equally many tokens.
A step whose loss or gradient is not finite on any rank is skipped on all of them.

The functions take the module (it sits above this file) and read its ``policy``, ``reference``,
``critic``, ``objective``, settings and counters.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.distributed.fsdp import FullyShardedDataParallel

from lit_align.data.batch import Responses
from lit_align.models.response_forward import response_logps, response_scores
from lit_align.objectives.base import ObjectiveOutput
from lit_align.objectives.reduce import masked_sum


class NonFiniteStop(FloatingPointError):
    """``max_bad_steps`` steps in a row were not finite; the weights are the last finite ones."""


def optimizer_step(module: Any, batch: list[Responses]) -> None:
    """`AlignModule.training_step`: accumulates the micro-batches' gradients, then clips and
    steps, or skips the step (`skip_step`); logs ``train/loss``, ``train/lr``,
    ``train/tokens_per_s`` and the objective's metrics."""
    start = time.perf_counter()
    optimizer = module.optimizers()
    normalizer = global_normalizer(sum(module.objective.normalizer(micro) for micro in batch), module.trainer)
    loss, metrics = over_micro_batches(module, batch, normalizer, backward=True)
    rows = sum(micro.num_responses for micro in batch)
    if not all_finite(loss, module.parameters(), module.trainer):
        skip_step(module, optimizer, rows, loss)
        return
    module.bad_in_a_row = 0
    if module.grad_clip:
        root = module.trainer.strategy.model
        if isinstance(root, FullyShardedDataParallel):  # FSDP1: the norm over all shards, from its root
            root.clip_grad_norm_(module.grad_clip)
        else:
            module.clip_gradients(optimizer, gradient_clip_val=module.grad_clip, gradient_clip_algorithm="norm")
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if (scheduler := module.lr_schedulers()) is not None:
        scheduler.step()

    tokens = sum(micro.num_tokens for micro in batch)
    seconds = time.perf_counter() - start
    module.train_tokens += tokens
    module.train_seconds += seconds
    # Each rank's loss is its share of the step's (sum / (global count / world)): the mean
    # over ranks is the step's loss, the same number one process would log.
    module.log("train/loss", loss, prog_bar=True, batch_size=rows, sync_dist=True)
    module.log("train/lr", lr, batch_size=rows)
    module.log("train/tokens_per_s", tokens / seconds, batch_size=rows)
    module.log_dict(metrics, batch_size=rows, sync_dist=True)


def over_micro_batches(
    module: Any, batch: list[Responses], normalizer: Tensor, backward: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """The step loss (the sum of the micro-batch losses) and each metric's mean over the
    micro-batches; with ``backward``, gradients accumulate micro-batch by micro-batch."""
    loss = torch.zeros((), device=module.device)
    metrics: dict[str, list[Tensor]] = defaultdict(list)
    step = step_inputs(module, batch)
    for micro in batch:
        out = module.objective_step(micro, normalizer, step)
        if backward:
            module.manual_backward(out.loss)
        loss += out.loss.detach()
        for key, value in out.metrics.items():
            metrics[key].append(value)
    return loss, {key: torch.stack(values).mean() for key, values in metrics.items()}


def run_objective(
    module: Any, micro: Responses, normalizer: Tensor, step: dict[str, Tensor] | None = None
) -> ObjectiveOutput:
    """`AlignModule.objective_step`: runs the policy (and the reference, and the critic) over
    one micro-batch's prompts and responses and applies the objective; ``step`` is
    `step_inputs` of its optimizer step (``None``: the micro-batch is the whole step)."""
    if step is None:
        step = step_inputs(module, [micro])
    policy, objective, critic = module.policy, module.objective, module.critic
    inputs, shared = micro.forward_inputs(), module.shared_prefix
    if objective.inputs == "scores":  # a reward model: one score per response
        return objective(micro, response_scores(policy, **inputs, shared=shared), None, normalizer)
    hidden = critic is not None and critic.reads_policy
    out = response_logps(policy, **inputs, shared=shared, entropy=objective.needs_entropy,
                         entropy_grad=objective.entropy_grad, hidden=hidden)  # fmt: skip
    extras = {}
    if critic is not None:
        extras["values"] = critic(inputs, out.hidden, shared=shared)
    if objective.needs_entropy:
        extras["entropy"] = out.entropy
    ref_logps = None
    if objective.needs_reference and getattr(micro, "ref_logps", None) is None:  # else computed earlier
        ref_logps = module.reference_logps(inputs)
    return objective(micro, out.logps, ref_logps, normalizer, **extras, **step)


@torch.no_grad()
def step_inputs(module: Any, batch: list[Responses]) -> dict[str, Tensor]:
    """What the objective reads of the whole optimizer step in each micro-batch: for
    ``needs_kl_pairs`` (KTO), ``kl_estimate``, the mean over the step's mismatched pairs
    (`UnpairedBatch.kl_inputs`, every micro-batch and rank) of log π − log π_ref, scored
    without gradient before the gradient pass, so that it does not depend on micro-batching."""
    if not module.objective.needs_kl_pairs:
        return {}
    total, count = torch.zeros((), device=module.device), torch.zeros((), device=module.device)
    for micro in batch:
        inputs = micro.kl_inputs()
        logps = response_logps(module.policy, **inputs, shared=module.shared_prefix).logps
        total += masked_sum(logps - module.reference_logps(inputs), micro.kl_response_mask).float()
        count += micro.num_responses
    if module._trainer is not None and module.trainer.world_size > 1:
        total = module.trainer.strategy.reduce(total, reduce_op="sum")
        count = module.trainer.strategy.reduce(count, reduce_op="sum")
    return {"kl_estimate": total / count.clamp(min=1)}


def build_optimizers(module: Any) -> Any:
    """`AlignModule.configure_optimizers`: the optimizer over the trainable parameters, the
    critic in a group of its own, and the LR schedule stepped every optimizer step."""
    trainable = [p for name, p in module.named_parameters() if p.requires_grad and not name.startswith("critic.")]
    optimizer = module.optimizer_factory(trainable)
    if module.critic is not None:
        # The critic's head starts from scratch while the policy is only fine-tuned: it
        # learns at its own rate, objective.critic_lr_scale × lr (the schedule keeps the ratio).
        lr = optimizer.defaults["lr"] * module.objective.critic_lr_scale
        optimizer.add_param_group({"params": list(module.critic.parameters()), "lr": lr})
    if module.scheduler_factory is None:
        return optimizer
    scheduler = module.scheduler_factory(optimizer, num_training_steps=module.trainer.estimated_stepping_batches)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def global_normalizer(count: Tensor, trainer: L.Trainer) -> Tensor:
    """The step's normalizer per rank: the global count divided by the world size.

    DDP averages gradients over ranks, so dividing each rank's sum by global/world makes the
    averaged gradient that of the global sum over the global count.
    """
    count = count.float()
    if trainer.world_size == 1:
        return count
    return trainer.strategy.reduce(count, reduce_op="sum") / trainer.world_size


def all_finite(loss: Tensor, parameters: Iterable[torch.nn.Parameter], trainer: L.Trainer) -> bool:
    """Whether the step's loss and every gradient are finite on all ranks (one decision for
    all, so that no rank steps alone)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    local = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2 shards
    # One norm over all gradients is non-finite iff one of them holds an inf or a NaN: a
    # single foreach kernel instead of an isfinite per parameter (~1.5% of a tiny model's step).
    norm = torch.nn.utils.get_total_norm(local, error_if_nonfinite=False) if local else loss.new_zeros(())
    bad = (~(torch.isfinite(loss) & torch.isfinite(norm))).float()
    if trainer.world_size > 1:
        bad = trainer.strategy.reduce(bad, reduce_op="sum")
    return bool(bad == 0)


def skip_step(module: Any, optimizer: Any, rows: int, loss: Tensor) -> None:
    """Drops a step with a non-finite loss or gradient: no optimizer or scheduler step (the
    weights, the moments and the step count stay), counted in ``train/skipped_steps``; after
    ``max_bad_steps`` in a row the run stops, since the model or the data is broken."""
    optimizer.zero_grad(set_to_none=True)
    module.skipped_steps += 1
    module.bad_in_a_row += 1
    module.log("train/skipped_steps", float(module.skipped_steps), batch_size=rows)
    module.log("train/loss", loss, prog_bar=True, batch_size=rows, sync_dist=True)  # as it was: NaN or inf
    if module.bad_in_a_row >= module.max_bad_steps:
        # Lightning writes a step's logs once the step ends; this one ends the run: write them now.
        step = module.trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in module.loggers:
            logger.log_metrics({"train/loss": loss.item(), "train/skipped_steps": float(module.skipped_steps)}, step)
            logger.save()
        raise NonFiniteStop(
            f"{module.bad_in_a_row} steps in a row had a non-finite loss or gradient (after optimizer "
            f"step {module.global_step}); stopping with the last finite weights. Lower optimizer.lr, "
            "check the data, or raise max_bad_steps."
        )
