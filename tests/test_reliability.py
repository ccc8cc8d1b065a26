"""Fault injection on whole runs: a second process in a run directory, a resume with other
settings, a truncated checkpoint, a full disk, a finished run resumed. Each fault is injected
as a user (or the machine) would cause it, and the run keeps its data and says so in one line."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import transformers
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lit_align.callbacks.preemption import StoppedOutside
from lit_align.checkpointing import WriteFailed
from lit_align.pipeline import sft_start
from lit_align.resume import read_checkpoint
from lit_align.runlock import RunLocked, run_lock
from lit_align.schema import ConfigError
from lit_align.train import train
from tests.conftest import FAST, SMALL_DATA, SMALL_MODEL, make_cfg

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["eval.before_train=false", "callbacks.model_checkpoint.every_n_train_steps=3"]

_HOLD = """
import sys, time
from pathlib import Path
from lit_align.runlock import run_lock
with run_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process that holds ``run_dir``'s lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_second_process_in_a_run_dir_is_refused_naming_the_holder(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunLocked, match=rf"^the run directory {tmp_path} is in use by process {holder.pid} "):
            train(make_cfg(tmp_path, *QUICK))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]  # nothing written
    finally:
        _kill(holder)
    # The holder died without unlocking: its PID is still in the file, and the lock is free.
    assert (tmp_path / "run.lock").read_text() == f"{holder.pid}\n"
    with run_lock(tmp_path):
        assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"
    assert (tmp_path / "run.lock").read_text() == ""


def test_two_pipelines_sharing_an_sft_cache_do_not_share_a_stage(tmp_path):
    cache = tmp_path / "cache"
    cfg = make_cfg(tmp_path / "run", *QUICK, "init=sft", f"init.cache_dir={cache}", "init.max_steps=2")
    stage_dirs = []

    def record_stage(stage):  # the stage's directory, without training it
        stage_dirs.append(Path(stage.paths.output_dir))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sft_start(cfg, record_stage)
    (stage_dir,) = stage_dirs
    holder = _holder(stage_dir)  # the other pipeline, training the stage
    try:
        with pytest.raises(RunLocked, match=rf"{stage_dir} is in use by process {holder.pid}"):
            train(cfg)
    finally:
        _kill(holder)


def test_a_resume_with_other_settings_is_refused_unless_forced(tmp_path):
    first = train(make_cfg(tmp_path, *QUICK, "trainer.max_steps=4"))
    assert first["steps"] == 4
    with pytest.raises(
        ConfigError, match=r"differ from the run's: data.batch_size, optimizer.lr; .* force_resume=true"
    ):
        train(make_cfg(tmp_path, *QUICK, "trainer.max_steps=4", "ckpt_path=last", "data.batch_size=16",
                       "optimizer.lr=1e-2"))  # fmt: skip
    # Where things are written and shown is no change to the run.
    with pytest.raises(ConfigError, match=r"differ from the run's: trainer.max_steps;"):
        train(make_cfg(tmp_path, *QUICK, "trainer.max_steps=6", "ckpt_path=last", "trainer.enable_progress_bar=true"))
    resumed = train(make_cfg(tmp_path, *QUICK, "trainer.max_steps=6", "ckpt_path=last", "force_resume=true"))
    assert resumed["steps"] == 6 and resumed["start"] == first["start"] == {}


def test_the_final_step_is_checkpointed_and_a_finished_run_resumed_does_nothing(tmp_path, capsys):
    # max_steps=5 is no multiple of every_n_train_steps=3, and the epoch (8 batches) not over.
    first = train(make_cfg(tmp_path, "trainer.max_steps=5", "callbacks.model_checkpoint.every_n_train_steps=3"))
    checkpoint = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 5 and "start" in checkpoint["lit_align"]
    rows = (tmp_path / "metrics.csv").read_text()
    again = train(make_cfg(tmp_path, "trainer.max_steps=5", "callbacks.model_checkpoint.every_n_train_steps=3",
                           "ckpt_path=last"))  # fmt: skip
    assert again == first and (tmp_path / "metrics.csv").read_text() == rows
    assert f"lit_align: the run in {tmp_path} finished at step 5 (summary.json, model/); nothing to do" in (
        capsys.readouterr().out
    )


def test_a_truncated_checkpoint_is_refused_before_anything_runs(tmp_path):
    train(make_cfg(tmp_path, *QUICK, "trainer.max_steps=3"))
    path = tmp_path / "checkpoints/last.ckpt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rows = (tmp_path / "metrics.csv").read_text()
    with pytest.raises(ConfigError, match=rf"^checkpoint {path} is unreadable \(truncated or corrupt: .*\); delete it"):
        train(make_cfg(tmp_path, "trainer.max_steps=6", "ckpt_path=last"))  # start evaluation on: it did not run
    assert (tmp_path / "metrics.csv").read_text() == rows


def test_a_sharded_checkpoint_is_checked_whole_and_read_for_its_step(tmp_path):
    """FSDP2's ``last.ckpt/``: a DCP index, shard files, and Lightning's ``meta.pt``."""
    folder = tmp_path / "last.ckpt"
    dcp.save({"w": torch.arange(1000.0)}, checkpoint_id=folder)  # one process: no process group needed
    torch.save({"global_step": 7, "lit_align": {"start": {}}}, folder / "meta.pt")
    assert read_checkpoint(folder)["global_step"] == 7
    shard = next(p for p in folder.iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ConfigError, match=rf"^checkpoint {folder} is unreadable \(truncated or corrupt: shard "):
        read_checkpoint(folder)
    (folder / ".metadata").unlink()
    with pytest.raises(ConfigError, match=rf"^checkpoint {folder} is unreadable"):
        read_checkpoint(folder)


def test_ckpt_path_last_without_a_checkpoint_says_so_and_starts(tmp_path, capsys):
    summary = train(make_cfg(tmp_path, *QUICK, "trainer.max_steps=1", "ckpt_path=last"))
    assert summary["steps"] == 1
    assert f"lit_align: ckpt_path=last: no checkpoint in {tmp_path / 'checkpoints'}; starting from scratch" in (
        capsys.readouterr().out
    )
    with pytest.raises(ConfigError, match=r"^ckpt_path=/nowhere/x.ckpt: no such checkpoint$"):
        train(make_cfg(tmp_path / "b", "ckpt_path=/nowhere/x.ckpt"))


def _disk_full(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04" * 256)  # a partial write, then the disk is full
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_at_a_checkpoint_says_so_in_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setattr("lit_align.checkpointing.torch.save", _disk_full)
    path = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(WriteFailed) as error:
        train(make_cfg(tmp_path, *QUICK))
    assert str(error.value) == (
        f"could not write {path}: No space left on device (ENOSPC); free space there (or pick another run dir) "
        "and resume"
    )
    assert list(path.parent.iterdir()) == []


def test_a_full_disk_at_export_leaves_no_model_that_looks_loadable(tmp_path, monkeypatch):
    def save_pretrained(self, directory, *args, **kwargs):  # config.json fits, the weights do not
        self.config.save_pretrained(directory)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_pretrained)
    with pytest.raises(WriteFailed, match=rf"^could not write {tmp_path / 'model'}: No space left on device"):
        train(make_cfg(tmp_path, *QUICK, "trainer.max_steps=2"))
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.tmp").exists()
    assert not (tmp_path / "summary.json").exists()
    assert (tmp_path / "checkpoints/last.ckpt").is_file()  # the run's work is kept: resume to export


def test_a_full_disk_at_the_metrics_file_says_so_in_one_line(tmp_path, monkeypatch):
    def save(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ExperimentWriter, "save", save)  # the writer lit_align's CSV logger extends
    with pytest.raises(WriteFailed) as error:
        train(make_cfg(tmp_path, *QUICK, "trainer.max_steps=2"))
    assert str(error.value) == (
        f"could not write {tmp_path / 'metrics.csv'}: No space left on device (ENOSPC); free space there "
        "(or pick another run dir) and resume"
    )


def test_an_unwritable_rollout_log_says_so_in_one_line(tmp_path):
    (tmp_path / "rollouts.jsonl").mkdir(parents=True)  # open(..., "a") fails with EISDIR, as a full disk fails
    rl = ["objective=rloo", "init=none", "rollout.num_prompts=2", "rollout.num_samples=2", "rollout.log_samples=1",
          "data.batch_size=2", "trainer.max_steps=1", "eval.before_train=false"]  # fmt: skip
    with pytest.raises(
        WriteFailed, match=rf"^could not write {tmp_path / 'rollouts.jsonl'}: Is a directory \(EISDIR\)"
    ):
        train(make_cfg(tmp_path, *rl))


def _cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [*FAST, *SMALL_MODEL, *SMALL_DATA, *QUICK, f"hydra.run.dir={run_dir}", *overrides]
    return subprocess.run([sys.executable, "-m", "lit_align", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)  # fmt: skip


@pytest.mark.slow  # a CLI subprocess run of 15-35 s: the default suite keeps under 10 minutes
def test_a_resume_never_rewrites_the_config_the_run_started_with(tmp_path):
    assert _cli(tmp_path, "trainer.max_steps=2").returncode == 0
    original = (tmp_path / ".hydra/config.yaml").read_text()
    out = _cli(tmp_path, "trainer.max_steps=2", "ckpt_path=last", "data.batch_size=16", "optimizer.lr=1e-2")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"lit_align: resuming {tmp_path / 'checkpoints/last.ckpt'} with settings that differ from the run's: "
            "data.batch_size, optimizer.lr; resume with the original settings, or pass force_resume=true"
        )
    )
    assert (tmp_path / ".hydra/config.yaml").read_text() == original
    assert "batch_size: 16" in (tmp_path / ".hydra/resume-1/config.yaml").read_text()


def test_ctrl_c_in_the_starting_evaluation_exits_130_in_one_line(tmp_path):
    """Lightning answers a KeyboardInterrupt in ``validate`` with its own text and exit 1."""
    args = [*FAST, *SMALL_MODEL, *SMALL_DATA, f"hydra.run.dir={tmp_path}", "trainer.accelerator=cpu",
            "+callbacks.interrupt._target_=tests.interrupt.SignalInEvaluation"]  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 130, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        "lit_align: stopped by SIGINT during the starting evaluation; nothing was trained yet"
    )
    assert "Traceback" not in out.stderr


def test_a_signal_in_the_final_evaluation_keeps_the_run_and_a_resume_finishes_it(tmp_path):
    steps = ["trainer.max_steps=3", "eval.before_train=false"]
    signal_in_test = ["+callbacks.interrupt._target_=tests.interrupt.SignalInEvaluation",
                      "+callbacks.interrupt.stage=test", "+callbacks.interrupt.signum=SIGTERM"]  # fmt: skip
    with pytest.raises(StoppedOutside, match=r"^stopped by SIGTERM during the final evaluation; training finished"):
        train(make_cfg(tmp_path, *steps, *signal_in_test))
    assert not (tmp_path / "summary.json").exists()
    summary = train(make_cfg(tmp_path, *steps, "ckpt_path=last"))  # evaluates and exports the checkpointed end
    assert summary["steps"] == 3
    assert "test/accuracy" in summary["final"]
    assert (tmp_path / "model/model.safetensors").is_file()
