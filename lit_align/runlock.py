"""One process per run directory: ``run.lock``, held for the run's life.

Two processes writing one run directory (the same ``hydra.run.dir``, or two pipelines sharing
an SFT stage in ``init.cache_dir``) interleave their metrics and overwrite each other's
checkpoints and model. The lock is an advisory ``flock`` on ``<dir>/run.lock``, which holds
the holder's PID: the kernel releases it when the holder exits, however it exits, so a lock
left by a killed process is simply taken over.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lit_align.errors import ConfigError

LOCK_NAME = "run.lock"


class RunLocked(ConfigError):
    """Another live process holds the run directory; reported in one line."""


@contextmanager
def run_lock(run_dir: Path, what: str = "run directory") -> Iterator[None]:
    """Holds ``run_dir/run.lock`` while the block runs; raises `RunLocked` naming the holder's
    PID if another process holds it. Call on one process per run (rank 0): the ranks of one
    data-parallel run share its directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLocked(
            f"the {what} {run_dir} is in use by process {holder} ({path}); wait for it to end, "
            "or pick another directory (hydra.run.dir=...)"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)  # the file stays (removing it would race a process about to lock it)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
