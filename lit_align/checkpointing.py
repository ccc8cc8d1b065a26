"""What a checkpoint needs beyond Lightning's defaults: atomic writes and the RNG streams.

Lightning writes a checkpoint through fsspec to a temporary file in the system temp directory
and then moves it into place. When that directory is on another filesystem than the run
directory (common on clusters: local /tmp, networked home), the move is a copy, and a kill
during the copy leaves a truncated ``last.ckpt`` where a good one was. `AtomicCheckpointIO`
writes beside the target, syncs, and renames: on one filesystem, a rename is atomic.

Lightning does not save the RNG streams either; `rng_states` / `set_rng_states` do (in a form
``torch.load(weights_only=True)`` accepts), so that a resumed run draws what the uninterrupted
one would have. `require_finite` refuses to write weights that are NaN or infinite.
`save_module_state` / `load_module_state` are what `AlignModule` adds to and takes from a
checkpoint: its counters, the RNG streams, and no second copy of the frozen reference.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy


class WriteFailed(OSError):
    """A checkpoint, model or summary could not be written (a full disk, a quota); reported in
    one line naming the path. What was half-written has been removed."""


def write_failure(path: Path, error: BaseException) -> WriteFailed:
    """A `WriteFailed` for ``path`` saying the OS error behind ``error`` (torch reports a full
    disk as a RuntimeError about zip positions, with the OSError only in its context)."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno is not None:
        reason = f"{cause.strerror or os.strerror(cause.errno)} ({errno.errorcode.get(cause.errno, cause.errno)})"
    else:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return WriteFailed(f"could not write {path}: {reason}; free space there (or pick another run dir) and resume")


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``path`` whole or not at all: a temporary file beside it, renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_failure(path, error) from error


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves a local checkpoint to ``<name>.tmp`` in the target's directory, fsyncs it and
    renames it over the target, so the target is always either the old or the new checkpoint.
    A failed write (a full disk) removes the temporary file and raises `WriteFailed`. Remote
    paths (``s3://`` …) keep Lightning's writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as error:  # torch wraps a full disk in a RuntimeError
            tmp.unlink(missing_ok=True)
            raise write_failure(path, error) from error


def rng_states() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU (and CUDA) RNG states, as tensors and tuples."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what `rng_states` returned."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def require_finite(module: torch.nn.Module, what: str) -> None:
    """Refuses to write a ``what`` (checkpoint, export) of weights that are NaN or infinite."""
    # A sharded (FSDP2) parameter is checked shard by shard: each rank its own.
    local = ((name, p.to_local() if hasattr(p, "to_local") else p) for name, p in module.named_parameters())
    bad = [name for name, p in local if not torch.isfinite(p.detach()).all()]
    if bad:
        raise FloatingPointError(f"refusing to write a {what}: {len(bad)} parameters are not finite, e.g. {bad[0]}")


def save_module_state(module: LightningModule, checkpoint: dict[str, Any]) -> None:
    """`AlignModule.on_save_checkpoint`: refuses non-finite weights, leaves the reference out
    and adds the step counters and the RNG streams."""
    require_finite(module, "checkpoint")
    # The reference is a frozen copy of the starting policy: storing it again is waste. A
    # sharded checkpoint keeps it: Lightning loads those into the whole module, strictly.
    if not sharded_checkpoints(module):
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("reference.")
        }  # fmt: skip
    checkpoint["skipped_steps"] = (module.skipped_steps, module.bad_in_a_row)
    checkpoint["train_tokens"] = (module.train_tokens, module.train_seconds)
    # Lightning keeps no RNG state; a resumed run must draw what this one would (dropout…).
    checkpoint["rng_states"] = rng_states()
    for logger in module.trainer.loggers:  # the metrics up to the checkpoint reach the disk too
        logger.save()


def load_module_state(module: LightningModule, checkpoint: dict[str, Any]) -> None:
    """`AlignModule.on_load_checkpoint`: restores what `save_module_state` added and refills the
    reference's keys, so that Lightning's loading stays strict."""
    module.skipped_steps, module.bad_in_a_row = checkpoint.get("skipped_steps", (0, 0))
    module.train_tokens, module.train_seconds = checkpoint.get("train_tokens", (0, 0.0))
    if "rng_states" in checkpoint:
        set_rng_states(checkpoint["rng_states"])
    if module.reference is not None and not sharded_checkpoints(module):
        ref = {f"reference.{k}": v for k, v in module.reference.state_dict().items()}
        checkpoint["state_dict"].update(ref)


def sharded_checkpoints(module: LightningModule) -> bool:
    """Whether checkpoints are per-rank shards, which Lightning loads into the whole module
    before `on_load_checkpoint` (FSDP2; FSDP1 with ``state_dict_type: sharded``)."""
    strategy = module._trainer.strategy if module._trainer is not None else None
    fsdp1 = isinstance(strategy, FSDPStrategy) and strategy._state_dict_type == "sharded"
    return module._device_mesh is not None or fsdp1
