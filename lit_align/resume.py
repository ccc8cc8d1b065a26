"""Resuming a run (``ckpt_path=``): which checkpoint, whether it is readable, whether the run
it came from had the same settings, and the run directory's history after it.

All of it runs before any model is built, so a bad resume fails in seconds, in one line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributed.checkpoint import FileSystemReader

from lit_align.errors import ConfigError
from lit_align.ranks import launch_rank

# Settings that decide nothing a resumed run computes: where things go, what is shown and
# logged, how often checkpoints are written, whether the start is evaluated. Any other change
# alters the run's trajectory and is refused unless ``force_resume=true``.
NEUTRAL = (
    "paths", "ckpt_path", "force_resume", "optimized_metric", "logger", "callbacks", "hparams_search",
    "eval.before_train", "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    "rollout.log_samples", "init.cache_dir",
)  # fmt: skip


class RunRecord(L.Callback):
    """Writes into every checkpoint the run's resolved config and its start metrics, so a
    resume can be checked against the settings it continues and keep the run's start."""

    def __init__(self, config: dict[str, Any], start: dict[str, float]) -> None:
        self.config, self.start = config, start

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["lit_align"] = {"config": json.dumps(self.config, sort_keys=True), "start": self.start}


def checkpoint_path(ckpt_path: str | None, checkpoint_dir: Path) -> Path | None:
    """The checkpoint ``ckpt_path`` names: ``last`` is ``checkpoint_dir/last.ckpt``, or None
    (said in one line) when there is none yet, so a requeued job can always pass it."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        path = checkpoint_dir / "last.ckpt"
        if not path.exists():
            print(f"lit_align: ckpt_path=last: no checkpoint in {checkpoint_dir}; starting from scratch")
            return None
        return path
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata (step, the run record), read without running code. A sharded
    checkpoint (FSDP2's folder) is checked whole first: its index, and every shard file at least
    as long as the index says; its metadata is the ``meta.pt`` Lightning writes beside them."""
    if path.is_dir():
        _check_shards(path)
        path = path / "meta.pt"
    try:
        # mmap: the tensors stay on disk; only the small entries read here are touched.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        if str(error).startswith("Weights only load failed"):
            raise  # readable, but would run code: torch's own explanation of the refusal stands
        raise _unreadable(path, error) from None
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError… for a bad file
        raise _unreadable(path, error) from None
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        raise ConfigError(f"checkpoint {path} is not a Lightning checkpoint (no global_step)")
    return checkpoint


def _check_shards(folder: Path) -> None:
    try:
        metadata = FileSystemReader(folder).read_metadata()
    except Exception as error:  # absent or truncated index
        raise _unreadable(folder, error) from None
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        shard = folder / name
        if not shard.is_file() or shard.stat().st_size < size:
            raise _unreadable(folder, OSError(f"shard {name} is missing or shorter than its index says"))
    if not (folder / "meta.pt").is_file():
        raise _unreadable(folder, OSError("no meta.pt"))


def _unreadable(path: Path, error: BaseException) -> ConfigError:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ConfigError(
        f"checkpoint {path} is unreadable (truncated or corrupt: {reason}); delete it to start over, "
        "or pass ckpt_path=<an earlier checkpoint>"
    )


def changed_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two resolved configs, but the neutral ones."""
    before, after = _flat(saved), _flat(current)
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k, "<absent>") != after.get(k, "<absent>"))
    return [k for k in keys if not any(k == n or k.startswith(n + ".") for n in NEUTRAL)]


def check_same_settings(checkpoint: dict[str, Any], path: Path, cfg: DictConfig, config: dict[str, Any]) -> None:
    """Refuses a resume whose settings would change the run's trajectory (``force_resume=true``
    accepts them)."""
    record = checkpoint.get("lit_align")
    if not record or cfg.get("force_resume"):
        return
    changed = changed_keys(json.loads(record["config"]), config)
    if changed:
        shown = ", ".join(changed[:8]) + (f" (+{len(changed) - 8} more)" if len(changed) > 8 else "")
        raise ConfigError(
            f"resuming {path} with settings that differ from the run's: {shown}; resume with the "
            "original settings, or pass force_resume=true to continue with the new ones"
        )


def drop_history_after(run_dir: Path, checkpoint: dict[str, Any]) -> None:
    """Removes the rows of ``metrics.csv`` and ``rollouts.jsonl`` logged after ``checkpoint``
    was written (by a run killed after it), so that a resumed run logs each step once.

    metrics.csv counts steps as Lightning's logger does (batches, skipped steps included), except
    the rows online sampling writes itself (only ``rollout/*`` values), which, like
    rollouts.jsonl, count optimizer steps: a refresh logged at the step the checkpoint holds
    happened before it was written."""
    step = _logged_step(checkpoint)
    metrics = run_dir / "metrics.csv"
    if metrics.is_file():
        with metrics.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
        if header and "step" in header:
            at = header.index("step")
            rollout = [i for i, name in enumerate(header) if name.startswith("rollout/")]

            def last_step(row: list[str]) -> int:
                values = [i for i, v in enumerate(row) if v and i != at]
                by_optimizer = bool(values) and set(values) <= set(rollout)
                return checkpoint["global_step"] if by_optimizer else step

            kept = [r for r in rows if not r[at] or int(float(r[at])) <= last_step(r)]
            if len(kept) < len(rows):
                out = io.StringIO()
                csv.writer(out, lineterminator="\n").writerows([header, *kept])
                _replace(metrics, out.getvalue())
    rollouts = run_dir / "rollouts.jsonl"
    if rollouts.is_file():
        lines = rollouts.read_text().splitlines(keepends=True)
        kept_lines = [line for line in lines if json.loads(line).get("step", 0) <= checkpoint["global_step"]]
        if len(kept_lines) < len(lines):
            _replace(rollouts, "".join(kept_lines))


def _logged_step(checkpoint: dict[str, Any]) -> int:
    loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    return loop.get("_batches_that_stepped", checkpoint["global_step"])


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain values, interpolations resolved."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_subdir(run_dir: str) -> str | None:
    """Hydra's ``output_subdir`` for a run in ``run_dir``: ``.hydra`` for its first process,
    ``.hydra/resume-<n>`` for each later one (a resume), so the config the run was started with
    is never overwritten by the command line that resumed it; None (nothing written) on every
    rank but 0 when a launcher (torchrun, srun) starts the processes, which share the folder."""
    if launch_rank() != 0:
        return None
    base = Path(run_dir) / ".hydra"
    if not (base / "config.yaml").exists():
        return ".hydra"
    n = 1
    while (base / f"resume-{n}").exists():
        n += 1
    return f".hydra/resume-{n}"
