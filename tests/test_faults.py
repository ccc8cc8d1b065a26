"""Non-finite losses and gradients: the step is skipped and counted, the weights stay as they
were, and a run whose steps keep failing stops with a message."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from lit_align.module import AlignModule
from lit_align.step import NonFiniteStop
from lit_align.train import train
from tests.conftest import FAST, SMALL_DATA, SMALL_MODEL, make_cfg


def poison(monkeypatch, bad_calls: set[int]) -> None:
    """Makes the training loss NaN on the given objective calls (0-based; one per step here)."""
    original, calls = AlignModule.objective_step, [0]

    def objective_step(self, micro, normalizer, *step):
        out = original(self, micro, normalizer, *step)
        if self.training:
            calls[0] += 1
            if calls[0] - 1 in bad_calls:
                return out._replace(loss=out.loss * torch.tensor(float("nan")))
        return out

    monkeypatch.setattr(AlignModule, "objective_step", objective_step)


class WeightsPerBatch(L.Callback):
    def __init__(self) -> None:
        self.before, self.after = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.before.append([p.detach().clone() for p in module.policy.parameters()])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.after.append([p.detach().clone() for p in module.policy.parameters()])


def test_non_finite_steps_are_skipped_counted_and_leave_the_weights(tmp_path, monkeypatch):
    poison(monkeypatch, {2, 3})
    weights = WeightsPerBatch()
    monkeypatch.setattr("lit_align.train._instantiate_each", _with(weights))
    summary = train(make_cfg(tmp_path))
    # Six optimizer steps were taken: the two skipped batches did not count as steps.
    assert summary["steps"] == 6 and summary["skipped_steps"] == 2
    changed = [any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
               for before, after in zip(weights.before, weights.after, strict=True)]  # fmt: skip
    # (the first step's learning rate is 0: warmup starts there)
    assert changed[:5] == [False, True, False, False, True] and len(changed) == 8
    assert all(torch.isfinite(p).all() for p in weights.after[-1])
    with (tmp_path / "metrics.csv").open() as f:
        logged = [row["train/skipped_steps"] for row in csv.DictReader(f)]
    assert {float(v) for v in logged if v} == {1.0, 2.0}


def test_a_run_whose_steps_keep_failing_stops(tmp_path, monkeypatch):
    poison(monkeypatch, set(range(100)))
    with pytest.raises(FloatingPointError, match="3 steps in a row had a non-finite loss or gradient"):
        train(make_cfg(tmp_path))


def test_a_run_that_stops_keeps_its_last_finite_weights_and_says_why(tmp_path, monkeypatch):
    poison(monkeypatch, set(range(4, 100)))  # four good steps, then three bad ones in a row
    with pytest.raises(NonFiniteStop, match=r"^3 steps in a row .* Saved the last finite weights: .*last.ckpt, "):
        train(make_cfg(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["skipped_steps"] == 3
    assert summary["stopped"].startswith("3 steps in a row had a non-finite loss or gradient (after optimizer step 4)")
    checkpoint = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4
    exported = load_file(tmp_path / "model/model.safetensors")
    for name, tensor in exported.items():  # the export is the checkpoint's policy, all finite
        assert tensor.equal(checkpoint["state_dict"][f"policy.{name}"]) and torch.isfinite(tensor).all(), name
    with (tmp_path / "metrics.csv").open() as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert len(losses) == 7 and all(map(math.isfinite, losses[:4])) and all(map(math.isnan, losses[4:]))


def test_the_cli_stops_a_diverging_run_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [*FAST, *SMALL_MODEL, *SMALL_DATA, "optimizer.lr=1e30", "eval.before_train=false",
                 f"hydra.run.dir={run_dir}"]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "lit_align", *overrides], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1].startswith("lit_align: 3 steps in a row had a non-finite loss")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["skipped_steps"] == 3 and summary["stopped"]
    assert (run_dir / "checkpoints/last.ckpt").is_file() and (run_dir / "model/model.safetensors").is_file()


def _with(extra: L.Callback):
    from lit_align import train as train_module

    original = train_module._instantiate_each

    def instantiate_each(node):
        made = original(node)
        return [*made, extra] if node is not None and "model_checkpoint" in node else made

    return instantiate_each
