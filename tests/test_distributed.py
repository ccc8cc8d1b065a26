"""Data parallelism changes the speed, not the run: the same global batch on 1 process and on 2
(DDP, or FSDP2 sharding every layer, with gloo on the CPU, launched by the CLI as a subprocess:
inside pytest Lightning would re-execute pytest in the child rank) gives the same losses and the
same weights; sharded checkpoints resume; online RL samples per rank under both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.conftest import FAST, SMALL_DATA, SMALL_MODEL, losses_by_step

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ["ddp", "fsdp2"]


def _run(run_dir: Path, *overrides: str, returncode: int = 0) -> str:
    args = [*FAST, *SMALL_MODEL, *SMALL_DATA, "trainer.max_steps=4", "trainer.val_check_interval=2",
            "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}", *overrides]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == returncode, out.stderr[-3000:]
    return out.stdout + out.stderr


def _two(run_dir: Path, strategy: str, *overrides: str, returncode: int = 0) -> None:
    log = _run(run_dir, f"strategy={strategy}", "trainer.devices=2", *overrides, returncode=returncode)
    assert "MEMBER: 2/2" in log  # two ranks really ran


def _same_run(one: Path, two: Path) -> None:
    """Equal losses at every step and equal exported weights (a plain transformers model)."""
    a, b = losses_by_step(one), losses_by_step(two)
    assert len(a) == 4 and b == pytest.approx(a, rel=1e-5)
    weights_a, weights_b = load_file(one / "model/model.safetensors"), load_file(two / "model/model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name, tensor in weights_a.items():
        torch.testing.assert_close(weights_b[name], tensor, rtol=0, atol=1e-6)
    assert AutoModelForCausalLM.from_pretrained(two / "model").config.model_type == "llama"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_process_and_two_processes_train_the_same_run(one_process, tmp_path, strategy):
    _two(tmp_path, strategy)
    _same_run(one_process, tmp_path)


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_dpo_with_its_reference_is_the_same_run_on_two_processes(tmp_path, strategy):
    dpo = ["objective=dpo", "init=none"]
    _run(tmp_path / "one", *dpo)
    _two(tmp_path / "two", strategy, *dpo)
    _same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.distributed
def test_sharded_checkpoint_resumes_the_run(tmp_path):
    """FSDP2 writes ``last.ckpt`` as a folder of per-rank shards; a run killed after step 3
    resumes from step 2's and continues exactly (the losses of every step equal the
    uninterrupted run's, the weights too)."""
    every = ["callbacks.model_checkpoint.every_n_train_steps=2"]
    kill = ["+callbacks.interrupt._target_=tests.interrupt.SignalAt", "+callbacks.interrupt.step=3"]
    _two(tmp_path / "whole", "fsdp2", *every)
    _two(tmp_path / "part", "fsdp2", *every, *kill, returncode=-9)
    assert (tmp_path / "part/checkpoints/last.ckpt").is_dir()  # a sharded checkpoint
    _two(tmp_path / "part", "fsdp2", *every, "ckpt_path=last")
    assert losses_by_step(tmp_path / "part") == losses_by_step(tmp_path / "whole")
    resumed, whole = (
        load_file(tmp_path / "part/model/model.safetensors"),
        load_file(tmp_path / "whole/model/model.safetensors"),
    )
    assert all(resumed[name].equal(tensor) for name, tensor in whole.items())


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_rloo_samples_on_each_rank(tmp_path, strategy):
    # 4 prompts × 4 samples: 2 prompts per rank, gathered into one 4-row (prompt) rollout on every rank.
    rl = ["objective=rloo", "init=none", "rollout.num_prompts=4", "rollout.num_samples=4", "trainer.max_steps=2"]
    _two(tmp_path, strategy, *rl)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"]["rollout/buffer_rows"] == 4 and summary["steps"] == 2
    assert all(map(torch.isfinite, map(torch.tensor, losses_by_step(tmp_path).values())))
