"""A pipeline's first stage: the SFT model a post-SFT run (``init=sft``) starts from."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console

from lit_align.errors import ConfigError


def sft_start(cfg: DictConfig, train: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """Stage 1 of a pipeline (``init=sft``): fine-tunes the configured model with SFT on the
    configured data, or reuses the result of an earlier run with the same settings.

    The stage is this run's config with ``init``'s objective, steps, learning rate and batch
    size, and without online sampling or lit_align's own callbacks (but ``save_on_signal``); for
    the default model and data it is exactly the default SFT run. Its run directory is
    ``init.cache_dir/sft-<hash>``, the hash taken over everything that decides its weights; a
    directory with a ``summary.json`` is complete and reused, one with only a checkpoint (an
    interrupted stage) resumes from it. ``train`` runs the stage (`lit_align.train.train`,
    passed in: it sits above this module).
    """
    if "name_or_path" not in cfg.model:
        raise ConfigError("init=sft needs a model config with a name_or_path key to load the SFT model from")
    stage = copy.deepcopy(cfg)
    with open_dict(stage):
        stage.objective = cfg.init.objective
        stage.trainer.max_steps = cfg.init.max_steps
        stage.optimizer.lr = cfg.init.lr
        stage.data.batch_size = cfg.init.batch_size
        stage.init = stage.rollout = None
        if "head" in stage.model.get("policy", {}):
            stage.model.policy.head = "lm"  # a reward model starts from the SFT model's trunk
        stage.callbacks = {
            name: node for name, node in (cfg.get("callbacks") or {}).items()
            if not str(node.get("_target_", "")).startswith("lit_align.") or name == "save_on_signal"
        }  # fmt: skip
    weights = {key: stage.get(key) for key in ("seed", "model", "data", "objective", "optimizer", "scheduler")}
    weights |= {"grad_clip": stage.grad_clip, "max_steps": stage.trainer.max_steps,
                "precision": stage.trainer.precision, "lit_align": version("lit_align")}  # fmt: skip
    blob = json.dumps(OmegaConf.to_container(OmegaConf.create(weights), resolve=True), sort_keys=True)
    out_dir = Path(cfg.init.cache_dir).expanduser() / f"sft-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    stage.paths.output_dir = str(out_dir)
    # An interrupted stage resumes from its own checkpoint, never from the run's ckpt_path
    # (last.ckpt is a folder when the checkpoint is sharded).
    stage.ckpt_path = "last" if (out_dir / "checkpoints" / "last.ckpt").exists() else None
    console = Console()
    if (out_dir / "summary.json").is_file() and (out_dir / "model").is_dir():
        console.print(f"init: reusing the SFT model in {out_dir} (same settings; delete it to retrain)")
        summary, reused = json.loads((out_dir / "summary.json").read_text()), True
    else:
        console.print(f"init: stage 1, SFT for {stage.trainer.max_steps} steps into {out_dir}")
        summary, reused = train(stage), False
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()  # rank 0 writes the model the other ranks are about to load
    return {"stage": "sft", "model": str(out_dir / "model"), "reused": reused, "final": summary["final"]}
