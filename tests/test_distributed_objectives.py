"""Data parallelism leaves the objectives' updates unchanged: KTO (its reference point z₀
included), SimPO and ORPO train the same run on 1 process as on 2 (DDP, gloo on the CPU, each rank
in micro-batches of 2 rows), launched by the CLI as a subprocess; the GRPO family's loss
normalisations give one process's update on two DDP processes."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close
from torch.utils.data import DataLoader

import tests.test_policy_gradient as pg
from lit_align.data.collate import StepCollator
from lit_align.data.formats import FORMATS
from lit_align.module import AlignModule
from lit_align.objectives.grpo import GRPO
from lit_align.objectives.policy_gradient import KLPenalty
from tests.conftest import FAST, SMALL_DATA, SMALL_MODEL, losses_by_step

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def _run(run_dir: Path, *overrides: str) -> str:
    args = [*FAST, *SMALL_MODEL, *SMALL_DATA, f"trainer.max_steps={STEPS}", "trainer.val_check_interval=2",
            "trainer.accelerator=cpu", "init=none", f"hydra.run.dir={run_dir}", *overrides]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def _metric_by_step(run_dir: Path, key: str) -> dict[int, float]:
    with (run_dir / "metrics.csv").open() as f:
        return {int(row["step"]): float(row[key]) for row in csv.DictReader(f) if row.get(key)}


def _same_run(one: Path, two: Path) -> None:
    """Equal losses at every step (rel 1e-5) and equal exported weights (abs 1e-6)."""
    a, b = losses_by_step(one), losses_by_step(two)
    assert len(a) == STEPS
    assert b == pytest.approx(a, rel=1e-5)
    weights_a, weights_b = load_file(one / "model/model.safetensors"), load_file(two / "model/model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[name], tensor, rtol=0, atol=1e-6, msg=name)


# KTO's reference point z₀ = max(0, KL estimate) is 0 while the policy is its reference: at this
# learning rate and λ_D it is well above 0 by the last steps (1.0 and 1.6 on one process).
OFFLINE = {
    "kto": ["objective=kto", "optimizer.lr=1e-3", "objective.desirable_weight=2.0"],
    "simpo": ["objective=simpo"],
    "orpo": ["objective=orpo"],
}


@pytest.mark.distributed
@pytest.mark.parametrize("objective", list(OFFLINE))
def test_one_process_and_two_processes_in_micro_batches_train_the_same_run(tmp_path, objective):
    """8 rows a step (the built-in task, as unpaired rows for KTO): one process with the whole
    step in one forward, and two ranks of 4 rows each in micro-batches of 2. KTO's z₀ is the mean
    over the step's mismatched pairs on all ranks, so it is the same number on both."""
    _run(tmp_path / "one", *OFFLINE[objective])
    log = _run(tmp_path / "two", *OFFLINE[objective], "strategy=ddp", "trainer.devices=2",
               "data.micro_batch_size=2")  # fmt: skip
    assert "MEMBER: 2/2" in log  # two ranks really ran
    _same_run(tmp_path / "one", tmp_path / "two")
    if objective == "kto":
        z0 = [_metric_by_step(tmp_path / run, "kto/kl") for run in ("one", "two")]
        assert z0[0][STEPS - 1] > 0.1  # the reference point is exercised
        assert z0[1] == pytest.approx(z0[0], rel=1e-5)


# The GRPO family's normalisations. Online sampling draws per rank, so a CLI run's samples
# differ between 1 and 2 processes; a fixed rollout trained by the real module under DDP (Lightning's
# ddp_spawn: two gloo processes, the gradient all-reduced by DDP) instead isolates the loss
# normalisation, the one thing the device count could change.
GRPO_VARIANTS = {
    "grpo-seq_mean": lambda: GRPO(aggregation="seq_mean"),  # k3 KL in the loss
    "dapo-token_mean": lambda: GRPO(KLPenalty(coef=0.0), epsilon_high=0.28, aggregation="token_mean"),
    "dr_grpo-token_sum": lambda: GRPO(
        KLPenalty(coef=0.0), advantage="group_mean", aggregation="token_sum", max_tokens=8
    ),
    "gspo-sequence_ratio": lambda: GRPO(
        KLPenalty(coef=0.0), ratio_level="sequence", epsilon_low=3e-4, epsilon_high=4e-4
    ),
}


def _grpo_rows(in_step: bool) -> list[dict]:
    """4 prompts × 2 samples (tests/test_policy_gradient.py's rollout), ordered so that the
    DistributedSampler's halves (rows 0, 2 and 1, 3) hold 12 and 16 response tokens: a rank's own
    token mean would weigh them differently. ``in_step``: rewards instead of advantages and
    old log-probs, so the objective computes its group advantages in the step."""
    rows = [pg._rollout_rows()[i] for i in (0, 2, 1, 3)]
    if in_step:
        rows = [{k: v for k, v in row.items() if k not in ("advantages", "old_logps")} for row in rows]
        for i, row in enumerate(rows):
            row["rewards"] = torch.tensor([float(i % 3), 1.0 - i % 2])
    return rows


def _one_sgd_step(module: AlignModule, rows: list[dict], rows_per_rank: int, micro: int, **trainer: object) -> None:
    collate = StepCollator(partial(FORMATS["rollout"].collate, pad_id=0), micro)
    loader = DataLoader(rows, batch_size=rows_per_rank, collate_fn=collate)
    fit = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu", **trainer)  # fmt: skip
    fit.fit(module, train_dataloaders=loader)


@pytest.mark.distributed
@pytest.mark.parametrize("variant", list(GRPO_VARIANTS))
def test_grpo_family_update_is_the_same_on_two_processes(tokenizer, tiny_model, variant):
    """One SGD step (lr 0.5) on the whole rollout in one process equals the step with each of two
    DDP ranks holding 2 prompts in micro-batches of one prompt: token counts are summed over the
    step's micro-batches and ranks (`AlignModule._across_ranks`), so the all-reduced gradient is
    the one-process gradient for token_mean (DAPO), seq_mean (GRPO), token_sum (Dr. GRPO) and
    GSPO's sequence ratio. DAPO's case computes its group advantages in the step."""
    rows = _grpo_rows(in_step=variant.startswith("dapo"))
    tokens = [sum(int(r["response_mask"].sum()) for r in rows[rank::2]) for rank in range(2)]
    assert tokens == [12, 16]
    sgd = partial(torch.optim.SGD, lr=0.5)
    one, two = (AlignModule(copy.deepcopy(tiny_model), GRPO_VARIANTS[variant](), tokenizer, optimizer=sgd,
                            grad_clip=None) for _ in range(2))  # fmt: skip
    start = copy.deepcopy(one.policy)
    _one_sgd_step(one, rows, rows_per_rank=4, micro=4)
    _one_sgd_step(two, rows, rows_per_rank=2, micro=1, strategy="ddp_spawn", devices=2)  # rank 0's weights return
    for (name, a), b, s in zip(one.policy.named_parameters(), two.policy.parameters(), start.parameters(),
                               strict=True):  # fmt: skip
        assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
        if not name.endswith("embed_tokens.weight"):  # ids outside the rows keep their embeddings
            assert not torch.equal(a, s), name
