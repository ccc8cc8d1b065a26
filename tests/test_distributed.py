"""Data parallelism changes the speed, not the run: the same global batch on 1 process and on 2
(DDP with gloo on the CPU, launched by the CLI as a subprocess: inside pytest Lightning would
re-execute pytest in the child rank) gives the same losses and the same weights."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import FAST, SMALL_DATA, SMALL_MODEL, losses_by_step

ROOT = Path(__file__).resolve().parents[1]


def _run(run_dir: Path, *overrides: str) -> str:
    args = [*FAST, *SMALL_MODEL, *SMALL_DATA, "trainer.max_steps=4", "trainer.val_check_interval=2",
            "trainer.accelerator=cpu", f"hydra.run.dir={run_dir}", *overrides]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def test_one_process_and_two_ddp_processes_train_the_same_run(tmp_path):
    _run(tmp_path / "one")
    log = _run(tmp_path / "two", "strategy=ddp", "trainer.devices=2")
    assert "MEMBER: 2/2" in log  # two ranks really ran
    one, two = losses_by_step(tmp_path / "one"), losses_by_step(tmp_path / "two")
    assert len(one) == 4 and two == pytest.approx(one, rel=1e-5)
    a, b = load_file(tmp_path / "one/model/model.safetensors"), load_file(tmp_path / "two/model/model.safetensors")
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=0, atol=1e-6)
