"""Callbacks that interrupt a CLI run from inside, at an exact step, for the resume tests:
``+callbacks.interrupt._target_=tests.interrupt.SignalAt +callbacks.interrupt.step=7``."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class SignalAt(L.Callback):
    """Sends ``signum`` (SIGKILL by default) to this process once optimizer step ``step`` is
    done, before the step's checkpoint callbacks run (Lightning runs those last); with ``rank``,
    on that global rank only (one node of a multi-node run)."""

    def __init__(self, step: int, signum: str = "SIGKILL", rank: int | None = None) -> None:
        self.step, self.signum, self.rank = step, signal.Signals[signum], rank

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)


class SignalInEvaluation(L.Callback):
    """Sends ``signum`` (SIGINT by default: Ctrl+C) to this process as the first batch of the
    evaluation ``stage`` starts: ``validate`` (the starting evaluation, before any step) or
    ``test`` (the final one, after training)."""

    def __init__(self, stage: str = "validate", signum: str = "SIGINT") -> None:
        self.stage, self.signum, self.sent = stage, signal.Signals[signum], False

    def _maybe_send(self, trainer: L.Trainer) -> None:
        if not self.sent and trainer.state.fn == self.stage:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._maybe_send(trainer)

    def on_test_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._maybe_send(trainer)
