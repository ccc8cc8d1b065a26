"""Checks on the composed config that must fail before any model or data is built.

`train` reads the config tree; this module only refuses values that would otherwise fail late
(after minutes of data building or model loading) or fail silently. Each message names the key.

The schema is the code itself: every node with a ``_target_`` is checked against the signature
and annotations of the class or function it names (see `check_targets`), so a new argument
needs no second declaration here, and a misspelled key or a value of the wrong type fails in
one line instead of as a ``TypeError`` deep inside `hydra.utils.instantiate`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from omegaconf import DictConfig, OmegaConf

from lit_align.callbacks.best_of_n import BestOfN
from lit_align.data.datamodule import AlignDataModule, check_sizes
from lit_align.errors import ConfigError
from lit_align.rollout.draw import check_sampling
from lit_align.schema import ABSENT, check_targets, check_type, holds, locate_target
from lit_align.strategy import FSDP2Strategy

# (key, test, what the value must be). A key absent from the config is not checked. The data
# module's sizes are its own `check_sizes`.
_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("optimizer.lr", lambda v: v > 0, "> 0"),
    ("sft_steps", lambda v: v >= 1, ">= 1"),
    ("trainer.max_steps", lambda v: v >= -1, ">= 1, 0 to evaluate only, or -1 to train by epochs"),
    ("grad_clip", lambda v: v is None or v >= 0, ">= 0 or null"),
    ("max_bad_steps", lambda v: v >= 1, ">= 1"),
    ("eval.max_new_tokens", lambda v: v >= 1, ">= 1"),
]

# The keys `train` reads itself (no class to take their types from). A key absent is not checked.
_TYPES: dict[str, Any] = {
    "seed": int,
    "sft_steps": int,
    "ckpt_path": str | None,
    "force_resume": bool,
    "grad_clip": float | None,
    "max_bad_steps": int,
    "eval.before_train": bool,
    "eval.max_new_tokens": int,
    "init.max_steps": int,
    "init.lr": float,
    "init.batch_size": int,
    "init.cache_dir": str,
    "optimized_metric": str | None,
    "model.gradient_checkpointing": bool,
    "model.compile": bool,
}


def validate(cfg: DictConfig) -> None:
    """Raises `ConfigError` naming the first key whose value cannot work."""
    missing = sorted(_missing(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        raise ConfigError(f"{missing[0]} must be set, e.g. {missing[0]}=<value> on the command line")
    for key, hint in _TYPES.items():  # first: target nodes interpolate some of them (${seed})
        check_type(cfg, key, hint)
    check_targets(cfg)
    for key, ok, expected in _RULES:
        value = OmegaConf.select(cfg, key, default=ABSENT)
        if value is not ABSENT and not holds(ok, value):
            raise ConfigError(f"{key} must be {expected}, got {value!r}")
    check_sizes(cfg.get("data") or {})  # the data module's own check, before it is built
    _check_combinations(cfg)


# -- combinations -------------------------------------------------------------------------------


def is_online(cfg: DictConfig) -> bool:
    """Whether the run samples its training rows from the policy (``rollout=online``).
    `rollout=none` with an objective that sets rollout keys leaves a node without a _target_."""
    rollout = cfg.get("rollout")
    return isinstance(rollout, DictConfig) and "_target_" in rollout


def _check_combinations(cfg: DictConfig) -> None:
    """Settings that each work but not together, refused before the SFT stage or any model."""
    objective = locate_target(cfg.get("objective"))
    name = f"objective={objective.__name__.lower()}" if objective else "the objective"
    # The objective class's row format (its `batch_format` is a property of instances).
    batch_format = getattr(getattr(objective, "row_format", None), "name", None)
    scores = getattr(objective, "inputs", None) == "scores"  # a reward model: a score head, no generation
    rollout, online = cfg.get("rollout"), is_online(cfg)
    if OmegaConf.select(cfg, "trainer.max_steps", default=None) == 0 and cfg.get("ckpt_path"):
        raise ConfigError("trainer.max_steps=0 evaluates the model as loaded, not a checkpoint: "
                          "drop ckpt_path, or load its run's exported model with model=hf")  # fmt: skip
    if online:  # what `OnlineSampling.setup` refuses, here before the SFT stage
        check_sampling(name, batch_format, bool((cfg.get("objective") or {}).get("precompute_ref")),
                       rollout.get("every_n_epochs"), rollout.get("temperature", 1.0), rollout.get("top_p", 1.0),
                       rollout.get("top_k", 0))  # fmt: skip
    if batch_format == "rollout" and not online:
        raise ConfigError(f"{name} trains on rollouts from online sampling: keep rollout=online")
    head = OmegaConf.select(cfg, "model.policy.head", default=None)
    if scores and head not in (None, "score"):
        raise ConfigError(f"{name} trains a one-label score head: set model.policy.head=score, got {head!r}")
    if objective and not scores and head == "score":
        raise ConfigError(
            f"{name} trains a language model, but model.policy.head=score builds a one-label score head: "
            "set model.policy.head=lm (score is for objective=rm)"
        )
    best_of_n = None  # a callback that generates at test time, outside any step
    for key, node in (cfg.get("callbacks") or {}).items():
        callback = locate_target(node)
        if inspect.isclass(callback) and issubclass(callback, BestOfN):
            best_of_n = f"callbacks.{key} (best-of-N)"
        if scores and inspect.isclass(callback) and issubclass(callback, BestOfN):  # it would judge nothing, silently
            raise ConfigError(
                f"callbacks.{key} samples completions at test time, but {name}'s score head cannot "
                "generate: use callbacks=default"
            )
    if online:
        _check_online(cfg, rollout, name, batch_format, scores)
    generates = "online sampling" if online else best_of_n
    _check_strategy(cfg.get("trainer") or {}, generates, (rollout or {}).get("num_prompts") if online else None)


def _check_online(cfg: DictConfig, rollout: DictConfig, name: str, batch_format: str | None, scores: bool) -> None:
    """Online sampling generates from the policy, scores with ``reward`` and needs prompts."""
    if locate_target(cfg.get("reward")) is None:
        raise ConfigError("rollout=online scores its samples with reward, which is not set: pick one, e.g. reward=math")
    if scores:
        raise ConfigError(f"{name} trains a score head, which cannot generate samples: set rollout=none")
    data = locate_target(cfg.get("data"))
    if getattr(data, "prompt_set", None) is AlignDataModule.prompt_set:
        # The base's `prompt_set` raises: the data holds fixed responses, not prompts to sample.
        raise ConfigError(
            f"rollout=online samples from the data's training prompts, but {data.__name__} has none "
            "(its rows come with their responses): set rollout=none"
        )
    k = rollout.get("num_samples", 1)
    objective = locate_target(cfg.get("objective"))
    if batch_format == "rollout" and not getattr(objective, "needs_values", False) and k < 2:
        # PPO's baseline is its critic; the others' is the rest of the prompt's group.
        raise ConfigError(
            f"{name}'s baseline is the rewards of a prompt's other samples, so it needs "
            f"rollout.num_samples >= 2 (got {k}: every advantage would be 0)"
        )
    if batch_format in ("pairs", "groups") and k < 2 and not rollout.get("include_reference", False):
        raise ConfigError(
            f"{name} learns from {batch_format} of a prompt's samples: set rollout.num_samples >= 2 (got {k}), "
            "or rollout.include_reference=true"
        )


def _check_strategy(trainer: DictConfig | dict[str, Any], generates: str | None, num_prompts: int | None) -> None:
    """Lightning refuses FSDP without a CUDA accelerator, but only once the trainer is built.
    FSDP1 gathers its root unit (embeddings, head) only inside the wrapped module's forward,
    which generation from a callback (``generates``: online sampling, best-of-N) is not. FSDP2's
    mesh is ``trainer.devices × trainer.num_nodes`` wide, so both must be numbers, and a hybrid
    mesh (replicated across nodes) needs more than one node."""
    strategy = trainer.get("strategy", "auto")
    located = None if isinstance(strategy, str) else locate_target(strategy)
    if isinstance(strategy, str):
        fsdp, shown = strategy in FSDPStrategy.get_registered_strategies(), strategy
    else:
        fsdp = inspect.isclass(located) and issubclass(located, FSDPStrategy)
        shown = getattr(located, "__name__", "")
    accelerator = trainer.get("accelerator", "auto")
    gpu = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    if fsdp and isinstance(accelerator, str) and not gpu:
        found = " (no GPU found)" if accelerator == "auto" else ""
        raise ConfigError(
            f"trainer.strategy={shown} is FSDP, which needs GPUs, but trainer.accelerator={accelerator}{found}: "
            "on CPU use strategy=fsdp2 (or strategy=ddp)"
        )
    if fsdp and generates:
        raise ConfigError(
            f"trainer.strategy={shown} (FSDP1) cannot generate outside a training step, as {generates} "
            "does: use strategy=fsdp2"
        )
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if not _count(nodes):
        raise ConfigError(f"trainer.num_nodes is a number of machines, at least 1 (got {nodes!r})")
    if nodes > 1 and not _count(devices):
        # Each node's processes are counted from trainer.devices: every node starts as many.
        raise ConfigError(
            f"trainer.num_nodes={nodes} needs trainer.devices as the number of processes on each node (got {devices!r})"
        )
    hybrid = not isinstance(strategy, str) and bool(strategy.get("hybrid", False))
    if hybrid and nodes == 1:
        raise ConfigError(
            "trainer.strategy.hybrid=true shards inside a node and replicates across nodes, but trainer.num_nodes=1: "
            "drop hybrid (plain FSDP2 shards over the node)"
        )
    if inspect.isclass(located) and issubclass(located, ModelParallelStrategy):
        if not _count(devices):
            raise ConfigError(
                f"strategy=fsdp2 shards over trainer.devices × trainer.num_nodes processes: set trainer.devices to "
                f"a number (got {devices!r})"
            )
        world = devices * nodes
        size = strategy.get("data_parallel_size", "auto")
        if not issubclass(located, FSDP2Strategy) and size not in ("auto", world):
            raise ConfigError(
                f"trainer.strategy.data_parallel_size={size} is not the world (trainer.devices × trainer.num_nodes = "
                f"{world}): use strategy=fsdp2, which shards over every rank"
            )
        if num_prompts is not None and num_prompts % world:
            raise ConfigError(
                f"strategy=fsdp2 needs as many prompts on every rank: rollout.num_prompts={num_prompts} does not "
                f"split over trainer.devices × trainer.num_nodes = {world} processes"
            )


def _count(value: Any) -> bool:
    """Whether ``value`` is a count of processes or nodes: an int (not a bool) of at least 1."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _missing(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???``, found without resolving interpolations to them."""
    if isinstance(node, dict):
        return [key for k, v in node.items() for key in _missing(v, f"{prefix}{k}.")]
    if isinstance(node, list):
        return [key for i, v in enumerate(node) for key in _missing(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if node == "???" else []
