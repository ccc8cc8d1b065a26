"""`train(cfg)`: the one place that reads the config tree."""

from __future__ import annotations

import copy
import json
import math
import resource
import time
import warnings
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import torch
import transformers
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from lit_align.callbacks.preemption import stop_on_signal
from lit_align.checkpointing import write_text_atomic
from lit_align.config import is_online, validate
from lit_align.errors import ConfigError
from lit_align.loggers import finish, quiet_lightning
from lit_align.models.export import export_model
from lit_align.models.reference import sequence_logps
from lit_align.models.response_forward import Unsupported, check_shared_prefix
from lit_align.module import AlignModule
from lit_align.pipeline import sft_start
from lit_align.ranks import set_launch_rank
from lit_align.resume import (
    RunRecord,
    check_same_settings,
    checkpoint_path,
    drop_history_after,
    read_checkpoint,
    resolved,
)
from lit_align.runlock import run_lock
from lit_align.step import NonFiniteStop


def train(cfg: DictConfig) -> dict[str, Any]:
    """Builds everything from ``cfg``, evaluates, fits, tests, exports; returns the summary.

    Order matters: the config is checked, the run directory locked, a checkpoint to resume from
    read and compared with this config, and the datamodule constructed (which checks its own
    arguments) before any model is built, so a bad value fails in seconds.
    """
    started = time.perf_counter()
    validate(cfg)
    # Rank 0 is the world's (node 0's first process), not each node's: past one node the run
    # directory and init.cache_dir are on a shared filesystem, which only rank 0 writes.
    set_launch_rank(cfg.trainer.get("devices", 1))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One process per run directory; the ranks of a data-parallel run share it (rank 0 locks).
    with run_lock(out_dir) if rank_zero_only.rank == 0 else nullcontext():
        return _train(cfg, out_dir, started)


def _train(cfg: DictConfig, out_dir: Path, started: float) -> dict[str, Any]:
    config = resolved(cfg)
    checkpoint_dir = Path(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
                          or out_dir / "checkpoints")  # fmt: skip
    ckpt_path = checkpoint_path(cfg.get("ckpt_path"), checkpoint_dir)
    record: dict[str, Any] = {}
    if ckpt_path is not None:
        checkpoint = read_checkpoint(ckpt_path)
        check_same_settings(checkpoint, ckpt_path, cfg, config)
        if (done := _finished(checkpoint, cfg, out_dir)) is not None:
            return done
        record = checkpoint.get("lit_align") or {}
        if checkpoint and rank_zero_only.rank == 0:
            drop_history_after(out_dir, checkpoint)
        del checkpoint
    init = None
    if cfg.get("init") and not cfg.model.get("name_or_path"):
        init = sft_start(cfg, train)
        cfg = copy.deepcopy(cfg)
        cfg.model.name_or_path = init["model"]
    datasets.disable_progress_bars()  # the trainer's progress bar is the run's one display
    transformers.utils.logging.disable_progress_bar()
    quiet_lightning()
    # Checkpoints hold the weights after the step, which is what resuming needs.
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization")
    # Lightning logs by global step; an online run's short epochs (one rollout each) still log.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")
    # The frozen reference (and the critic's frozen parts) are in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    objective = instantiate(cfg.objective)
    tokenizer = instantiate(cfg.model.tokenizer)
    datamodule = instantiate(
        cfg.data, tokenizer=tokenizer, batch_format=objective.batch_format,
        eval_by_generation=objective.inputs == "logps",  # a reward model is scored on held-out pairs
    )  # fmt: skip
    policy = instantiate(cfg.model.policy, tokenizer=tokenizer)
    if cfg.model.get("lora"):
        policy = instantiate(cfg.model.lora)(policy)
    shared_prefix = cfg.model.get("shared_prefix", True)
    if shared_prefix:
        try:
            check_shared_prefix(policy)
        except Unsupported as error:  # one line on the command line, before anything runs
            raise ConfigError(str(error)) from None
    module = AlignModule(
        policy=policy,
        objective=objective,
        tokenizer=tokenizer,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        grad_clip=cfg.grad_clip,
        max_bad_steps=cfg.max_bad_steps,
        max_new_tokens=cfg.eval.max_new_tokens,
        verifier=datamodule.verify,
        eval_metrics=datamodule.eval_metrics(),
        gradient_checkpointing=cfg.model.get("gradient_checkpointing", False),
        compile_layers=cfg.model.get("compile", False),
        shared_prefix=shared_prefix,
    )
    _print_model(policy)
    callbacks = _instantiate_each(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # else Lightning refuses the configured bar
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if is_online(cfg):  # online sampling: the training rows come from the policy, scored by the reward
        callbacks.append(instantiate(cfg.rollout, reward=instantiate(cfg.reward)))
    run_record = RunRecord(config, record.get("start", {}))
    callbacks.append(run_record)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=_instantiate_each(cfg.get("logger")), callbacks=callbacks)
    for logger in trainer.loggers:  # the whole resolved config: W&B's run config, the CSV's hparams.yaml
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    evaluate_only = cfg.trainer.get("max_steps") == 0  # the model as loaded: validated, tested, exported
    if objective.precompute_ref and not evaluate_only:
        # The starting policy is the reference: score every pair once, on the device it will
        # train on, and keep no second model.
        datamodule.setup("fit")
        datamodule.add_reference_logps(
            partial(sequence_logps, policy.to(trainer.strategy.root_device), shared=module.shared_prefix)
        )

    if cfg.eval.before_train and ckpt_path is None:  # a resumed run keeps the start its checkpoint holds
        with stop_on_signal("the starting evaluation", "nothing was trained yet"):
            run_record.start = _floats(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
    summary = {
        "objective": type(objective).__name__.lower(), "seed": cfg.seed, "init": init, "start": run_record.start,
    }  # fmt: skip
    if evaluate_only:
        return _finish(summary, module, tokenizer, trainer, datamodule, out_dir, started, kept="nothing was trained")
    try:
        # weights_only: a checkpoint is tensors, numbers and strings; loading one runs no code.
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except NonFiniteStop as stop:
        # The weights are the last finite ones (a skipped step changes nothing): keep them.
        checkpoint = checkpoint_dir / "last.ckpt"
        trainer.save_checkpoint(checkpoint, weights_only=False)
        final = {k: v for k, v in _floats(trainer.callback_metrics).items() if math.isfinite(v)}
        summary |= _totals(trainer, module, datamodule, started) | {"final": final, "stopped": str(stop)}
        _write_results(summary, module, tokenizer, trainer, out_dir)
        raise NonFiniteStop(f"{stop} Saved the last finite weights: {checkpoint}, {out_dir / 'model'} "
                            "(summary.json records the stop)") from None  # fmt: skip
    checkpointer = trainer.checkpoint_callback
    if isinstance(checkpointer, ModelCheckpoint) and checkpointer._last_global_step_saved != trainer.global_step:
        # The final step, when max_steps is not a multiple of every_n_train_steps: a finished
        # run's checkpoint is its end, and resuming it does nothing.
        trainer.save_checkpoint(Path(checkpointer.dirpath) / "last.ckpt", weights_only=False)
    kept = f"training finished and {checkpoint_dir / 'last.ckpt'} holds its end: ckpt_path=last evaluates, exports it"
    return _finish(summary, module, tokenizer, trainer, datamodule, out_dir, started, kept)


def _finish(summary: dict[str, Any], module: AlignModule, tokenizer: Any, trainer: L.Trainer, datamodule: Any,
            out_dir: Path, started: float, kept: str) -> dict[str, Any]:  # fmt: skip
    """The final validation (unless the last step was validated) and test; the summary and model."""
    final = _floats(trainer.callback_metrics)
    with stop_on_signal("the final evaluation", kept):
        if module.validated_at_step != trainer.global_step:  # evaluate the weights we export
            final |= _floats(trainer.validate(module, datamodule=datamodule, verbose=False)[0])
        final |= _floats(trainer.test(module, datamodule=datamodule, verbose=False)[0])
    summary |= {"final": final} | _totals(trainer, module, datamodule, started) | {"stopped": None}
    _write_results(summary, module, tokenizer, trainer, out_dir)
    _print_summary(summary, out_dir)
    finish(trainer.loggers)
    return summary


def _totals(trainer: L.Trainer, module: AlignModule, datamodule: Any, started: float) -> dict[str, Any]:
    return {
        "steps": trainer.global_step,
        "skipped_steps": module.skipped_steps,
        "data": datamodule.stats,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_tokens_per_s": round(module.train_tokens / max(module.train_seconds, 1e-9), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _write_results(summary: dict[str, Any], module: AlignModule, tokenizer: Any, trainer: L.Trainer,
                   out_dir: Path) -> None:  # fmt: skip
    """``model/``, then ``summary.json``: each whole or absent, so a run directory with a
    summary has its model."""
    export_model(module.policy, tokenizer, out_dir / "model", trainer.is_global_zero, root=trainer.strategy.model)
    if trainer.is_global_zero:
        write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")


def _finished(checkpoint: dict[str, Any], cfg: DictConfig, out_dir: Path) -> dict[str, Any] | None:
    """The summary of the run ``checkpoint`` ended, if it did: resuming a finished run (a
    requeued job that had completed) does nothing but say so."""
    summary_file = out_dir / "summary.json"
    step, max_steps = checkpoint.get("global_step", -1), cfg.trainer.get("max_steps", -1)
    if not (0 < max_steps <= step and summary_file.is_file()):
        return None
    summary = json.loads(summary_file.read_text())
    if summary.get("steps") != step or summary.get("stopped"):
        return None
    if rank_zero_only.rank == 0:
        print(f"lit_align: the run in {out_dir} finished at step {step} (summary.json, model/); nothing to do")
    return summary


def _instantiate_each(group: DictConfig | None) -> list[Any]:
    """Each entry of a ``logger`` or ``callbacks`` group that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: round(float(value), 6) for key, value in sorted(metrics.items())}


@rank_zero_only
def _print_model(policy: torch.nn.Module) -> None:
    """One line in place of Lightning's model summary, whose FLOPs column and total read 0 for a
    module without an ``example_input_array``."""
    total = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    Console().print(f"policy: {type(policy).__name__}, {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable")


@rank_zero_only
def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    table = Table(title=f"lit_align · {summary['objective']} · seed {summary['seed']}")
    table.add_column("metric")
    table.add_column("start", justify="right")
    table.add_column("final", justify="right")
    for key in sorted(set(summary["start"]) | set(summary["final"])):
        # Every metric, whatever its objective's namespace, but the learning rate's schedule.
        if key != "train/lr":
            before, after = summary["start"].get(key), summary["final"].get(key)
            table.add_row(key, "" if before is None else f"{before:.4f}", "" if after is None else f"{after:.4f}")
    console = Console()
    console.print(table)
    console.print(
        f"{summary['steps']} steps in {summary['wall_time_s']:.0f} s · "
        f"{summary['train_tokens_per_s']:.0f} train tokens/s · peak RSS {summary['peak_rss_mb']:.0f} MB"
    )
    if summary["init"]:
        init = summary["init"]
        console.print(f"start: the {init['stage']} model {init['model']}{' (reused)' if init['reused'] else ''}")
    if summary["data"]:
        console.print("data: " + ", ".join(f"{k.removeprefix('data/')}={v}" for k, v in summary["data"].items()))
    console.print(f"run dir: {out_dir}")
