"""Memory and speed switches change the cost of a step, not what it computes: gradient
checkpointing and torch.compile train the same run; bf16 precisions train close to it."""

from __future__ import annotations

import pytest

from lit_align.train import train
from tests.conftest import losses_by_step, make_cfg

STEPS = ["trainer.max_steps=4"]


@pytest.fixture(scope="module")
def fp32_losses(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fp32")
    train(make_cfg(run_dir, *STEPS))
    return losses_by_step(run_dir)


def test_gradient_checkpointing_trains_the_same_run(tmp_path, fp32_losses):
    train(make_cfg(tmp_path, *STEPS, "model.gradient_checkpointing=true"))
    assert losses_by_step(tmp_path) == pytest.approx(fp32_losses, rel=1e-6)


@pytest.mark.parametrize("precision,rel", [("bf16-mixed", 1e-3), ("bf16-true", 2e-2)])
def test_bf16_trains_close_to_fp32(tmp_path, fp32_losses, precision, rel):
    # bf16-mixed: fp32 weights, bf16 matmuls (autocast); bf16-true: bf16 weights too (8 bits of mantissa).
    train(make_cfg(tmp_path, *STEPS, f"trainer.precision={precision}"))
    losses = losses_by_step(tmp_path)
    assert losses == pytest.approx(fp32_losses, rel=rel) and losses != fp32_losses


@pytest.mark.slow  # compiling the layers takes about a minute on a CPU
def test_compiled_layers_train_the_same_run(tmp_path, fp32_losses):
    train(make_cfg(tmp_path, *STEPS, "model.compile=true"))
    assert losses_by_step(tmp_path) == pytest.approx(fp32_losses, rel=1e-5)
