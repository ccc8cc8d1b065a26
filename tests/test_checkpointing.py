"""Checkpoints: atomic writes, RNG streams, no NaN weights written, nothing executed on load."""

from __future__ import annotations

import pickle
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lit_align.checkpointing import AtomicCheckpointIO, require_finite, rng_states, set_rng_states
from lit_align.train import train
from tests.conftest import make_cfg

# Saves checkpoint 1, then dies by SIGKILL halfway through writing checkpoint 2.
_KILLED_MID_SAVE = """
import os, signal, sys, torch
from lit_align.checkpointing import AtomicCheckpointIO

path = sys.argv[1]
io = AtomicCheckpointIO()
io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
real_save = torch.save

def half_then_die(obj, f, *args, **kwargs):
    f.write(b"\\x80\\x02" * 1000)  # some of the bytes
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = half_then_die
io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
"""


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_MID_SAVE), str(path)], timeout=120)
    assert out.returncode == -9
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] == 1 and checkpoint["w"].equal(torch.ones(1000))
    assert (path.parent / "last.ckpt.tmp").exists()  # the partial write, never renamed
    AtomicCheckpointIO().save_checkpoint({"step": 3}, path)  # the next save goes through
    assert torch.load(path, weights_only=True) == {"step": 3} and not (path.parent / "last.ckpt.tmp").exists()


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.save({"rng": rng_states()}, tmp_path / "rng.pt")
    expected = (random.random(), torch.rand(3), np.random.rand())
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (random.random(), torch.rand(3), np.random.rand())
    assert again[0] == expected[0] and again[1].equal(expected[1]) and again[2] == expected[2]


def test_non_finite_weights_are_never_written(tiny_model):
    require_finite(tiny_model, "checkpoint")  # finite: fine
    with torch.no_grad():
        tiny_model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"checkpoint: 1 parameters are not finite, e.g. model.layers.1.mlp"):
        require_finite(tiny_model, "checkpoint")


class _Payload:
    def __reduce__(self):
        return (print, ("a checkpoint ran code",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    summary = train(make_cfg(tmp_path / "run", "trainer.max_steps=2", "eval.before_train=false"))
    assert summary["steps"] == 2
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)  # ours load
    checkpoint["payload"] = _Payload()
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    cfg = make_cfg(tmp_path / "resumed", "trainer.max_steps=4", "eval.before_train=false",
                   f"ckpt_path={tmp_path / 'evil.ckpt'}")  # fmt: skip
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        train(cfg)
    assert "a checkpoint ran code" not in capsys.readouterr().out
