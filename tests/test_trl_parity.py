"""TRL as an oracle: on the bench's first batch (`tools/bench_setup.py`: the same seeded model,
rows and order for every contender), lit_align's first SFT and sigmoid-DPO losses, through its
real path (`train(cfg)` with the bench's command line, shared-prefix forward and chunked head
included), equal TRL 1.16's `compute_loss` on its own first batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

trl = pytest.importorskip("trl")

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import bench_lit  # noqa: E402
import bench_trl  # noqa: E402
from bench_setup import Spec  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from lit_align.__main__ import CONF_DIR  # noqa: E402
from lit_align.train import train  # noqa: E402
from tests.conftest import losses_by_step  # noqa: E402


def _trl_first_loss(monkeypatch, spec: Spec, trainer_class: type) -> float:
    """TRL's loss on the first batch its own dataloader serves, in place of ``train()``."""
    losses = []

    def first_loss(self, *args, **kwargs):
        batch = self._prepare_inputs(next(iter(self.get_train_dataloader())))
        losses.append(float(self.compute_loss(self.model, batch)))

    monkeypatch.setattr(trainer_class, "train", first_loss)
    getattr(bench_trl, f"_{spec.workload}")(spec, None)
    return losses[0]


def _lit_first_loss(tmp_path: Path, spec: Spec) -> float:
    """lit_align's first logged ``train/loss``: the loss before the first update, as the bench runs it."""
    overrides = [o for o in bench_lit.overrides(spec, str(tmp_path)) if "bench_gate" not in o]
    overrides = [o for o in overrides if not o.startswith("trainer.max_steps=")] + [
        "trainer.max_steps=1", "trainer.log_every_n_steps=1", "logger=csv",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        train(compose(config_name="train", overrides=overrides))
    losses = losses_by_step(tmp_path)
    assert len(losses) == 1
    return next(iter(losses.values()))


@pytest.mark.parametrize("workload", ["sft", "dpo"])
def test_first_loss_equals_trls(tmp_path, monkeypatch, workload):
    spec = Spec(workload, "tiny", batch_size=8 if workload == "sft" else 4, num_train=64)
    trainer = {"sft": trl.SFTTrainer, "dpo": trl.DPOTrainer}[workload]
    ours, theirs = _lit_first_loss(tmp_path, spec), _trl_first_loss(monkeypatch, spec, trainer)
    assert ours == pytest.approx(theirs, rel=1e-5)
