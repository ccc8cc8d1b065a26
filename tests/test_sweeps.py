"""Hydra multirun and the Optuna sweeper from the command line, each run in its own directory of
the sweep, and tools/report.py over the result; W&B groups a sweep's runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from lit_align.__main__ import CONF_DIR
from lit_align.loggers import wandb_logger
from tests.conftest import FAST, SMALL_DATA, SMALL_MODEL

ROOT = Path(__file__).resolve().parents[1]
TINY = [*FAST, *SMALL_MODEL, *SMALL_DATA, "trainer.max_steps=2", "trainer.val_check_interval=2"]


def _multirun(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "lit_align", "-m", *args, *TINY], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


def test_two_by_two_multirun_and_its_report(tmp_path):
    _multirun("objective=sft,dpo", "seed=0,1", "init=none", f"hydra.sweep.dir={tmp_path}")
    runs = sorted(p.parent.name for p in tmp_path.glob("*/summary.json"))
    assert runs == ["0", "1", "2", "3"]  # each run in its own directory of the sweep
    assert yaml.safe_load((tmp_path / "0/hparams.yaml").read_text())["objective"]["_target_"].endswith("SFT")
    out = subprocess.run([sys.executable, "tools/report.py", str(tmp_path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()[2:]
    assert [row.split(" | ")[:2] for row in rows] == [["| `objective=sft`", "0,1"], ["| `objective=dpo`", "0,1"]]
    assert (tmp_path / "accuracy.png").is_file() and (tmp_path / "curves.png").is_file()


@pytest.mark.slow  # 13-60 s of subprocesses: the default suite keeps under 10 minutes
def test_optuna_sweep_searches_lr_and_beta(tmp_path):
    search = ["hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
              "optimized_metric=train/loss", "hydra.sweeper.direction=minimize"]  # fmt: skip
    _multirun("hparams_search=dpo_optuna", *search, "init.max_steps=2", "init.batch_size=8",
              f"init.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"optimizer.lr", "objective.beta"}
    assert 1e-4 <= result["best_params"]["optimizer.lr"] <= 2e-3
    trials = {p.parent.name for p in tmp_path.glob("*/summary.json")}
    assert trials == {"0", "1", "2"}  # the SFT start is trained once, into the cache, and shared


def test_a_sweeps_wandb_runs_share_a_group(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["objective=dpo"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "2026-11-22_10-00-00")
        cfg.hydra.job.override_dirname = "objective=dpo,seed=1"
    HydraConfig.instance().set_config(cfg)
    try:
        logger = wandb_logger(project="p", save_dir=str(tmp_path), mode="disabled")
        assert logger._wandb_init["group"] == "2026-11-22_10-00-00"
        assert logger._wandb_init["name"] == "objective=dpo,seed=1"
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.slow  # a CLI subprocess run of 15-35 s: the default suite keeps under 10 minutes
def test_each_run_of_a_multirun_gets_its_own_wandb_run(tmp_path):
    _multirun("seed=0,1", "logger=wandb", f"hydra.sweep.dir={tmp_path}")
    runs = [sorted(p.name for p in (tmp_path / job / "wandb").glob("offline-run-*")) for job in ("0", "1")]
    assert [len(r) for r in runs] == [1, 1] and runs[0] != runs[1]
