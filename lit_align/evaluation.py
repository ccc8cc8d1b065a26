"""Held-out evaluation of `AlignModule`: greedy completions of held-out prompts scored by the
task's verifier and metrics, or, for held-out rows without gold answers (preference pairs), the
objective's own loss and metrics.

The functions take the module (it sits above this file) and log through it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.nn import ModuleDict
from torchmetrics import MeanMetric

from lit_align.data.batch import Responses
from lit_align.objectives.reduce import rows_of
from lit_align.rollout.generate import generate_completions
from lit_align.step import over_micro_batches

Batch = dict[str, Any]  # held-out prompts for generation
# (completion, answer) -> (value, weight), or None where the completion cannot be judged.
Scorer = Callable[[str, str], tuple[float, float] | None]
STAGES = ("val", "test")


def held_out_scorers(
    verifier: Callable[[str, str], float | None], eval_metrics: dict[str, Scorer] | None
) -> tuple[dict[str, Scorer], ModuleDict]:
    """The scorers by metric name, ``accuracy`` (the verifier, each completion weighing 1) first,
    and a `MeanMetric` for each per stage (``held_out[stage][name]``)."""
    scorers = {"accuracy": partial(_verified, verifier), **(eval_metrics or {})}
    means = ModuleDict({stage: ModuleDict({name: MeanMetric() for name in scorers}) for stage in STAGES})
    return scorers, means


def _verified(verifier: Callable[[str, str], float | None], completion: str, answer: str) -> tuple[float, float] | None:
    score = verifier(completion, answer)
    return None if score is None else (score, 1.0)


def evaluate(module: Any, batch: Batch | list[Responses], stage: str) -> dict[str, list[str]] | None:
    """`AlignModule`'s validation and test step: a list of micro-batches is held-out
    training-format rows, scored by the objective; a dict is prompts, scored by generation."""
    if isinstance(batch, list):
        return evaluate_objective(module, batch, stage)
    return evaluate_generation(module, batch, stage)


def evaluate_objective(module: Any, batch: list[Responses], stage: str) -> None:
    """The objective's loss and metrics on held-out training-format rows (e.g. pairs),
    logged as ``{stage}/loss``, ``{stage}/rewards/accuracies`` …"""
    normalizer = sum(module.objective.normalizer(micro) for micro in batch).float()
    loss, metrics = over_micro_batches(module, batch, normalizer, backward=False)
    rows = int(rows_of(normalizer).item())
    module.log(f"{stage}/loss", loss, batch_size=rows, sync_dist=True)
    module.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, batch_size=rows, sync_dist=True)


def evaluate_generation(module: Any, batch: Batch, stage: str) -> dict[str, list[str]]:
    """Greedy completions of held-out prompts, scored by the module's ``scorers`` (the verifier
    and ``eval_metrics``), each logged as ``{stage}/{name}``, the weighted mean over the split;
    returned as ``{"completions": [...]}`` for callbacks (best-of-N compares against them).

    Rows a scorer cannot judge (``None``) are left out of its metric.
    """
    _, texts = generate_completions(
        module.policy, module.tokenizer, batch["prompt_ids"], batch["prompt_mask"], module.max_new_tokens
    )
    pairs = list(zip(texts, batch["answer"], strict=True))
    for name, scorer in module.scorers.items():
        metric = module.held_out[stage][name]
        scored = [s for s in (scorer(text, answer) for text, answer in pairs) if s is not None]
        if scored:
            values, weights = torch.tensor(scored, dtype=torch.float32, device=module.device).T
            metric.update(values, weights)
        module.log(f"{stage}/{name}", metric, batch_size=max(len(scored), 1))
    return {"completions": texts}
