"""Exact resume: a CLI run killed mid-training (SIGKILL, or SIGTERM with its checkpoint) and
resumed with ``ckpt_path=last`` retraces the uninterrupted run's losses and ends with the same
weights, bit for bit on CPU."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import FAST, SMALL_DATA, SMALL_MODEL, losses_by_step

ROOT = Path(__file__).resolve().parents[1]


def _run(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [*FAST, *SMALL_MODEL, *SMALL_DATA, f"hydra.run.dir={run_dir}", *overrides]
    # Output to files, not pipes: a killed child must not block on a full pipe.
    with (run_dir.parent / f"{run_dir.name}.log").open("a") as log:
        return subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=ROOT, stdout=log, stderr=log,
                              timeout=300)  # fmt: skip


def _reference(tmp_path: Path, overrides: list[str]) -> Path:
    """The uninterrupted run."""
    run_dir = tmp_path / "reference"
    run_dir.mkdir()
    assert _run(run_dir, *overrides).returncode == 0
    return run_dir


def _interrupted_and_resumed(tmp_path: Path, overrides: list[str], *interrupts: tuple[int, str]) -> Path:
    """A run stopped by each ``(step, signal)`` in turn, each time resumed with ``ckpt_path=last``
    in its run directory, and then run to the end."""
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    log = tmp_path / "resumed.log"
    for i, (step, signum) in enumerate(interrupts):
        kill = ["+callbacks.interrupt._target_=tests.interrupt.SignalAt", f"+callbacks.interrupt.step={step}",
                f"+callbacks.interrupt.signum={signum}"]  # fmt: skip
        out = _run(run_dir, *overrides, *kill, *(["ckpt_path=last"] if i else []))
        # SIGKILL: nothing saved since the last checkpoint; SIGTERM: saved, exit 128 + signum.
        assert out.returncode == (-9 if signum == "SIGKILL" else 128 + 15), log.read_text()[-3000:]
        assert not (run_dir / "summary.json").exists()
    assert _run(run_dir, *overrides, "ckpt_path=last").returncode == 0, log.read_text()[-3000:]
    return run_dir


def _assert_same_run(resumed: Path, reference: Path) -> None:
    """Every step's loss in metrics.csv (which each resumed run appends to; the last row of a
    step wins) and the exported weights are exactly the reference's."""
    assert losses_by_step(resumed) == losses_by_step(reference)  # exact, not approximate
    # ...and each step once: the rows an interrupted run logged after its checkpoint are dropped
    # on resume, and a resumed run does not evaluate its start again.
    assert _logged(resumed) == _logged(reference)
    weights, expected_weights = (
        load_file(resumed / "model/model.safetensors"),
        load_file(reference / "model/model.safetensors"),
    )
    assert weights.keys() == expected_weights.keys()
    for name, tensor in expected_weights.items():
        assert weights[name].equal(tensor), name


SFT = ["trainer.max_steps=12", "trainer.val_check_interval=4", "callbacks.model_checkpoint.every_n_train_steps=3",
       "data.num_train=40"]  # fmt: skip  # 5 steps per epoch: the checkpoint at step 6 is mid-epoch


def test_sft_stopped_twice_and_resumed_retraces_the_uninterrupted_run(tmp_path):
    reference = _reference(tmp_path, SFT)
    # SIGTERM at step 5 saves step 5; SIGKILL at step 8 loses steps 7-8 (the last checkpoint is
    # step 6, mid-epoch, written by the run that had resumed from step 5).
    resumed = _interrupted_and_resumed(tmp_path, SFT, (5, "SIGTERM"), (8, "SIGKILL"))
    _assert_same_run(resumed, reference)


# 4 prompts × 4 samples in steps of 2 prompts = 2 steps per rollout; checkpoints at steps 3
# (mid-rollout) and 6 (after a rollout's last step, the next rollout already drawn).
ONLINE = ["init=none", "rollout.num_prompts=4", "rollout.num_samples=4", "rollout.log_samples=1", "data.batch_size=2",
          "rollout.every_n_epochs=1", "trainer.max_steps=8",
          "callbacks.model_checkpoint.every_n_train_steps=3"]  # fmt: skip
PPO = ["objective=ppo", *ONLINE, "objective.kl.controller=adaptive", "objective.kl.horizon=16"]


@pytest.mark.slow  # 13-60 s of subprocesses: the default suite keeps under 10 minutes
def test_online_run_killed_twice_and_resumed_retraces_the_uninterrupted_run(tmp_path):
    # PPO carries every piece of online state: the rollout buffer and prompt cursor, the adaptive
    # KL coefficient, the critic and its optimizer group.
    reference = _reference(tmp_path, PPO)
    # Killed at step 5: resumes mid-rollout from step 3; killed at step 7: resumes from step 6,
    # whose checkpoint holds the rollout drawn after step 6.
    resumed = _interrupted_and_resumed(tmp_path, PPO, (5, "SIGKILL"), (7, "SIGKILL"))
    _assert_same_run(resumed, reference)
    # Each rollout (the resumed runs redraw the ones after their checkpoint) is the same samples
    # with the same rewards: the sample logged at each refresh, by step, last one written wins.
    assert _rollouts(resumed) == _rollouts(reference)
    assert _rollout_steps(resumed) == _rollout_steps(reference)  # each refresh once


def _rollout_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]


def _logged(run_dir: Path) -> list[tuple[int, str, str]]:
    """metrics.csv's rows as (step, train/loss, val/accuracy), in the file's order."""
    with (run_dir / "metrics.csv").open() as f:
        return [(int(r["step"]), r.get("train/loss", ""), r.get("val/accuracy", "")) for r in csv.DictReader(f)]


def _rollouts(run_dir: Path) -> dict[int, dict]:
    return {row["step"]: row for row in map(json.loads, (run_dir / "rollouts.jsonl").read_text().splitlines())}
