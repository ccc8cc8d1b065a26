"""SIGTERM / SIGINT during training: finish the step, write ``last.ckpt``, stop."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info


class Interrupted(Exception):
    """The run stopped on a signal after writing ``checkpoint``; `__main__` exits 128 + signum."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {checkpoint}")


class SaveOnSignal(Checkpoint):
    """Turns SIGTERM (preemption, ``scancel``, ``kill``) and SIGINT (Ctrl+C) into a checkpoint.

    A signal only sets a flag. The next boundary, the end of a training batch (after the
    optimizer step, online sampling's refresh and the step's other callbacks: Lightning runs
    checkpoint callbacks last) or the end of a validation, writes ``dirpath/last.ckpt``, the file
    ``ckpt_path=last`` resumes from, and raises `Interrupted`. A second signal before then
    restores the default handling and delivers the signal again: press Ctrl+C twice to quit now.

    Under data parallelism the flag is reduced over ranks every step, so every rank saves and
    stops at the same step even when only one received the signal. Handlers are installed for
    training only; evaluation before and after it keeps Python's defaults.

    Args:
        dirpath: where to write ``last.ckpt`` (the model checkpoint's directory).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.received = 0
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = 0
        self._previous = {s: signal.signal(s, self._notify) for s in (signal.SIGTERM, signal.SIGINT)}

    def _notify(self, signum: int, frame: FrameType | None) -> None:
        if self.received:  # the second signal: give up on the checkpoint
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signum
        rank_zero_info(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._stop_if_signalled(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":  # not a `trainer.validate` of its own
            self._stop_if_signalled(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        flag = torch.tensor(float(self.received > 0), device=trainer.strategy.root_device)
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag, reduce_op="sum")
        if not flag or trainer.sanity_checking:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        raise Interrupted(self.received or signal.SIGTERM, trainer.global_step, path)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
