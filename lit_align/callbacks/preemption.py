"""SIGTERM / SIGINT / SIGUSR1 during training: finish the step, write ``last.ckpt``, stop.
Outside training (the evaluations before and after it): stop at once with one line and exit
128 + signum."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info

# What a scheduler or a user sends to stop a run; each one saves, then exits 128 + its number.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class Interrupted(Exception):
    """The run stopped on a signal after writing ``checkpoint``; `__main__` exits 128 + signum."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint}")


class StoppedOutside(Exception):
    """A signal during ``stage``, outside training: nothing to save that is not saved already."""

    def __init__(self, signum: int, stage: str, after: str) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} during {stage}; {after}")


@contextmanager
def stop_on_signal(stage: str, after: str) -> Iterator[None]:
    """SIGINT / SIGTERM / SIGUSR1 inside the block raise `StoppedOutside` (``after`` says what
    is kept).

    Lightning turns a KeyboardInterrupt inside ``validate``/``test`` into its own message and
    exit status 1, which a scheduler or a shell reads as a crash; an exception of ours passes
    through its handler, so `__main__` can exit 128 + signum as for a signal during training.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        raise StoppedOutside(signum, stage, after)

    previous = {s: signal.signal(s, stop) for s in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class SaveOnSignal(Checkpoint):
    """Turns SIGTERM (preemption, ``scancel``, ``kill``), SIGINT (Ctrl+C) and SIGUSR1 (Slurm's
    warning before a time limit or preemption, ``sbatch --signal=USR1@<seconds>``) into a
    checkpoint.

    A signal only sets a flag. At the end of the training batch in progress (or the next one,
    if it came during validation or a rollout) — after the optimizer step and the step's other
    callbacks, online sampling's refresh included, since Lightning runs checkpoint callbacks
    last — this writes ``dirpath/last.ckpt``, the file ``ckpt_path=last`` resumes from; the
    run stops with `Interrupted` as the next batch or validation starts, once Lightning has
    logged the saved step's metrics. (If that was the last step, the run just finishes.) A
    second signal restores the default handling and delivers the signal again: press Ctrl+C
    twice to quit at once.

    Under data parallelism the signal is reduced over ranks every step (the largest number), so
    every rank saves, stops at the same step and exits with the same code even when only one
    received it. Handlers are installed for training only; the evaluations before and after it
    stop at once (`stop_on_signal`). During training they replace Lightning's own SIGUSR1
    handler (its Slurm auto-requeue, which saves a differently named ``hpc_ckpt``): requeueing
    is the job script's, on exit code 138 (tools/slurm.sbatch).

    Args:
        dirpath: where to write ``last.ckpt`` (the model checkpoint's directory).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.received = 0
        self.saved: Interrupted | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received, self.saved = 0, None
        self._previous = {s: signal.signal(s, self._notify) for s in SIGNALS}

    def _notify(self, signum: int, frame: FrameType | None) -> None:
        if self.received:  # the second signal: give up on the checkpoint
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        rank_zero_info(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        signum = self.received
        if trainer.world_size > 1:
            # One all-reduce of a scalar per step: every rank stops together, and exits with the
            # same code (a job script requeues on it, whichever rank's code it is handed).
            received = torch.tensor(float(signum), device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(received, reduce_op="max").item())
        if signum and self.saved is None:
            path = self.dirpath / "last.ckpt"
            trainer.save_checkpoint(path, weights_only=False)  # explicit: else Lightning warns it defaulted
            self.saved = Interrupted(signum, trainer.global_step, path)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.saved is not None:
            raise self.saved

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.saved is not None:
            raise self.saved

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
