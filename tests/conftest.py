"""Tiny fixtures: a 2-layer 32-dim Llama, the character tokenizer, and composed configs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

# No test touches the network: huggingface_hub reads these once, at import, so set them first.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from lit_align.__main__ import CONF_DIR
from lit_align.models.tiny import char_tokenizer, tiny_llama

# The tiny model at 2 layers of width 32 (applies to model=tiny only).
SMALL_MODEL = [
    "model.policy.hidden_size=32",
    "model.policy.num_layers=2",
    "model.policy.num_heads=2",
    "model.policy.intermediate_size=64",
]
# The arithmetic task at a few rows (applies to data=arith only).
SMALL_DATA = ["data.num_train=64", "data.num_val=8", "data.num_test=8"]
# A run of a few steps: seconds, not minutes.
FAST = [
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "scheduler.num_warmup_steps=1",
    "eval.max_new_tokens=12",
]


def make_cfg(out_dir: Path, *overrides: str, fast: bool = True) -> DictConfig:
    """The shipped config with ``overrides``, writing into ``out_dir``."""
    quick = []
    if fast:
        quick += FAST
        quick += [] if any(o.startswith("model=") for o in overrides) else SMALL_MODEL
        quick += [] if any(o.startswith("data=") for o in overrides) else SMALL_DATA
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[*quick, f"paths.output_dir={out_dir}", *overrides])


# The run every data-parallel test (tests/test_distributed.py, tests/test_multinode.py) must
# equal on more processes: 4 SFT steps on one CPU process, validated at step 2.
PARALLEL_RUN = [*FAST, *SMALL_MODEL, *SMALL_DATA, "trainer.max_steps=4", "trainer.val_check_interval=2",
                "trainer.accelerator=cpu"]  # fmt: skip


@pytest.fixture(scope="session")
def one_process(tmp_path_factory) -> Path:
    """`PARALLEL_RUN`'s run directory, run once per session for every test that compares with it."""
    run_dir = tmp_path_factory.mktemp("one")
    command = [sys.executable, "-m", "lit_align", *PARALLEL_RUN, f"hydra.run.dir={run_dir}"]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="session")
def tokenizer():
    return char_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    torch.manual_seed(0)
    return tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def losses_by_step(run_dir: Path) -> dict[int, float]:
    """``train/loss`` by step from a run's metrics.csv (a step logged twice: the later row)."""
    with (run_dir / "metrics.csv").open() as f:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")}
