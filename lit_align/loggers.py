"""Experiment trackers that never prompt or hang, and a run's output without Lightning's noise."""

from __future__ import annotations

import csv
import logging
import netrc
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lit_align.checkpointing import write_failure


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here. Keep it, and its columns, so that new
        # rows are appended under one header (a new column rewrites the file with all rows).
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def save(self) -> None:
        try:
            super().save()
        except OSError as error:  # a full disk: one line naming the file, not Lightning's traceback
            raise write_failure(Path(self.metrics_file_path), error) from error


class AppendingCSVLogger(CSVLogger):
    """Lightning's CSV logger, except that it appends to an existing ``metrics.csv``: a run
    resumed in its run directory (``ckpt_path=last``) keeps the rows the interrupted run wrote
    (`lit_align.resume.drop_history_after` has removed those logged after its checkpoint)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def has_wandb_credentials() -> bool:
    """True if ``WANDB_API_KEY`` is set or ``~/.netrc`` holds a key for the W&B API."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def finish(loggers: Sequence[object]) -> None:
    """Ends the W&B run this process started. Otherwise the next run in the process (a
    multirun's next job, a pipeline's next stage) gets it back from ``wandb.init`` and logs into
    it."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def _sweep() -> tuple[str | None, str | None]:
    """In a Hydra multirun: the sweep directory's name (the runs' W&B group) and the job's
    overrides (its run name); ``(None, None)`` otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None, None
    hydra = HydraConfig.get()
    return Path(hydra.sweep.dir).name, hydra.job.override_dirname or str(hydra.job.num)


def wandb_logger(
    project: str,
    save_dir: str,
    mode: str = "auto",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    init_timeout: float = 30.0,
) -> WandbLogger:
    """A `WandbLogger` that writes an offline run into ``save_dir/wandb`` when it cannot sync.

    ``mode="auto"`` (or ``WANDB_MODE`` in the environment) picks ``online`` when credentials
    are found and ``offline`` otherwise, so W&B never asks for a key. An online start that
    fails within ``init_timeout`` seconds (no network) falls back to offline; sync later with
    ``wandb sync <save_dir>/wandb/offline-run-*``.
    """
    group, name = group or _sweep()[0], name or _sweep()[1]
    mode = os.environ.get("WANDB_MODE", mode) if mode == "auto" else mode
    mode = "offline" if mode == "dryrun" else mode  # wandb's old name, which it sets itself once a run ends
    if mode == "auto":
        mode = "online" if has_wandb_credentials() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode must be auto, online, offline or disabled, got {mode!r}")
    kwargs = dict(project=project, save_dir=save_dir, name=name, group=group, tags=list(tags))
    if mode == "online" and rank_zero_only.rank == 0:
        import wandb

        try:  # start eagerly, so a dead network costs init_timeout once instead of a crash later
            run = wandb.init(
                project=project, dir=save_dir, name=name, group=group, tags=list(tags),
                settings=wandb.Settings(init_timeout=init_timeout),
            )  # fmt: skip
            return WandbLogger(experiment=run, **kwargs)
        except Exception as error:  # wandb raises several types for auth and network failures
            rank_zero_warn(f"W&B online start failed ({error}); logging offline to {save_dir}/wandb")
            mode = "offline"
    if mode == "disabled":
        kwargs["mode"] = "disabled"
    return WandbLogger(offline=mode == "offline", **kwargs)


# Lightning's lines that say nothing about this run: advertisements for its cloud products, and
# the accelerators it did not find (the GPU line stays).
_NOISE = ("💡 Tip:", "TPU available:", "HPU available:")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_NOISE)


def quiet_lightning() -> None:
    """Drops Lightning's advertisements and its TPU/HPU lines from the run's output, and the
    ``LeafSpec is deprecated`` warning that Lightning's own code (``utilities/_pytree.py``) gets
    from torch: a newcomer's screen shows the progress bar, the start/final table and the run dir."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    leaf_spec = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
    warnings.filterwarnings("ignore", message=leaf_spec, category=FutureWarning)
