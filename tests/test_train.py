"""End-to-end: train(cfg) and the CLI on the tiny model, asserting files, numbers and changes."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_align.train import train
from tests.conftest import FAST, SMALL_DATA, SMALL_MODEL, make_cfg

SNAPSHOTS: list[dict[str, torch.Tensor]] = []


class SnapshotAtFitStart(Callback):
    """Keeps the policy's weights as training starts, to check that every one of them moved."""

    def on_fit_start(self, trainer, pl_module):
        SNAPSHOTS.append({k: v.detach().clone() for k, v in pl_module.policy.state_dict().items()})


def _train_losses(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_sft_end_to_end(tmp_path):
    SNAPSHOTS.clear()
    cfg = make_cfg(tmp_path, "+callbacks.snapshot._target_=tests.test_train.SnapshotAtFitStart")
    summary = train(cfg)

    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["objective"] == "sft" and summary["seed"] == 0 and summary["steps"] == 6
    assert set(summary["start"]) == {"val/accuracy"}
    assert {"val/accuracy", "test/accuracy", "train/loss"} <= set(summary["final"])
    assert 0.0 <= summary["final"]["test/accuracy"] <= 1.0
    assert summary["wall_time_s"] > 0 and summary["train_tokens_per_s"] > 0 and summary["peak_rss_mb"] > 0
    assert summary["data"] == {"data/train_rows": 64, "data/prompt_truncated": 0, "data/response_truncated": 0}

    losses = _train_losses(tmp_path)
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.95 * losses[0] and sum(losses[3:]) < sum(losses[:3]), losses
    with open(tmp_path / "metrics.csv") as f:
        header = next(csv.reader(f))
    assert {"train/lr", "train/tokens_per_s", "val/accuracy", "test/accuracy"} <= set(header)

    # The export loads with plain transformers, and every trainable weight moved.
    exported = load_file(tmp_path / "model" / "model.safetensors")
    (start,) = SNAPSHOTS
    unchanged = [k for k, v in exported.items() if torch.equal(v, start[k])]
    assert not unchanged
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert model.config.num_hidden_layers == 2 and tok.decode(tok("7+1=8")["input_ids"]) == "7+1=8"


def test_same_seed_same_loss(tmp_path):
    runs = [train(make_cfg(tmp_path / name, f"seed={seed}", "eval.before_train=false")) for name, seed in
            [("a", 1), ("b", 1), ("c", 2)]]  # fmt: skip
    assert runs[0]["final"]["train/loss"] == runs[1]["final"]["train/loss"]
    assert _train_losses(tmp_path / "a") == _train_losses(tmp_path / "b")
    assert runs[0]["final"]["train/loss"] != runs[2]["final"]["train/loss"]
    assert runs[0]["start"] == {}


def test_continue_from_an_exported_run_with_model_hf(tmp_path):
    first = train(make_cfg(tmp_path / "sft", "eval.before_train=false"))
    second = train(make_cfg(tmp_path / "again", "model=hf", f"model.name_or_path={tmp_path / 'sft' / 'model'}"))
    # The second run starts from the first run's final weights.
    assert second["start"]["val/accuracy"] == first["final"]["val/accuracy"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_precisions_train(tmp_path, precision):
    summary = train(
        make_cfg(tmp_path, f"trainer.precision={precision}", "trainer.max_steps=2", "eval.before_train=false")
    )
    assert math.isfinite(summary["final"]["train/loss"])


def test_micro_batches_give_the_same_run(tmp_path):
    whole = train(make_cfg(tmp_path / "whole", "eval.before_train=false", "grad_clip=null"))
    split = train(make_cfg(tmp_path / "split", "eval.before_train=false", "grad_clip=null", "data.micro_batch_size=3"))
    torch.testing.assert_close(
        _train_losses(tmp_path / "split"), _train_losses(tmp_path / "whole"), rtol=1e-4, atol=1e-5
    )
    assert whole["final"]["val/accuracy"] == split["final"]["val/accuracy"]


def test_wandb_without_credentials_runs_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    train(make_cfg(tmp_path / "run", "logger=wandb", "trainer.max_steps=2", "eval.before_train=false"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_cli_writes_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    fast = [o for o in FAST if not o.startswith("trainer.enable_model_summary")]  # the shipped setting
    overrides = [*fast, *SMALL_MODEL, *SMALL_DATA, "trainer.max_steps=2", f"hydra.run.dir={run_dir}"]
    out = subprocess.run([sys.executable, "-m", "lit_align", *overrides], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in (
        ".hydra/config.yaml",
        "metrics.csv",
        "checkpoints/last.ckpt",
        "model/model.safetensors",
        "summary.json",
    ):
        assert (run_dir / name).is_file(), name
    assert "test/accuracy" in out.stdout and "run dir:" in out.stdout
    # Lightning's noise is gone: its cloud tips, the accelerators not found, a deprecation warning
    # from its own code, and the model summary's FLOPs (0); our own parameter line replaces it.
    for noise in ("💡", "litlogger", "litmodels", "LeafSpec", "TPU available", "HPU available", "FLOPs"):
        assert noise not in out.stdout + out.stderr, noise
    assert "policy: LlamaForCausalLM, 0.02M parameters, 0.02M trainable" in out.stdout


# AFT on the data's own ranked chains, without the SFT stage and online sampling.
OFFLINE = ["rollout=none", "init=none", "callbacks=default"]


@pytest.mark.parametrize(
    "overrides,metric",
    [
        (["objective=dpo", "init=none"], "rewards/accuracies"),
        (["objective=dpo", "init=none", "objective.loss_type=ipo"], "rewards/margins"),
        (["objective=aft", *OFFLINE], "aft/pair_accuracy"),
        (["objective=aft", *OFFLINE, "objective.feedback=ranking", "objective.constraint=detach"], "aft/pair_accuracy"),
    ],
)
def test_preference_objectives_end_to_end(tmp_path, overrides, metric):
    summary = train(make_cfg(tmp_path, *overrides, "trainer.max_steps=3", "eval.before_train=false"))
    assert summary["objective"] == overrides[0].split("=")[1]
    assert metric in summary["final"] and all(math.isfinite(x) for x in _train_losses(tmp_path))
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_precomputed_reference_matches_a_live_reference(tmp_path):
    live = train(make_cfg(tmp_path / "live", "objective=dpo", "init=none", "eval.before_train=false"))
    cached = train(make_cfg(tmp_path / "cached", "objective=dpo", "init=none", "objective.precompute_ref=true",
                            "eval.before_train=false"))  # fmt: skip
    torch.testing.assert_close(
        _train_losses(tmp_path / "cached"), _train_losses(tmp_path / "live"), rtol=1e-5, atol=1e-6
    )
    assert cached["final"]["rewards/margins"] == pytest.approx(live["final"]["rewards/margins"], abs=1e-5)
    ckpt = torch.load(tmp_path / "live" / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any(k.startswith("reference.") for k in ckpt["state_dict"])


def test_a_frozen_reference_in_eval_mode_is_not_warned_about(tmp_path):
    """DPO's reference is in eval mode on purpose: Lightning's warning about modules in eval mode
    at the start of training is noise on every run that keeps one."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(make_cfg(tmp_path, "objective=dpo", "init=none", "trainer.max_steps=1"))
    assert not [w for w in caught if "in eval mode" in str(w.message)]
