"""Checks on the composed config that must fail before any model or data is built.

`train` reads the config tree; this module only refuses values that would otherwise fail late
(after minutes of data building or model loading) or fail silently. Each message names the key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A user-facing configuration problem, reported in one line without a traceback."""


_ABSENT = object()

# (key, test, what the value must be). A key absent from the config is not checked.
_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("optimizer.lr", lambda v: v > 0, "> 0"),
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.micro_batch_size", lambda v: v is None or v >= 1, ">= 1 or null"),
    ("data.eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("data.max_prompt_length", lambda v: v >= 1, ">= 1"),
    ("trainer.max_steps", lambda v: v == -1 or v >= 1, ">= 1 (or -1 to train by epochs)"),
    ("grad_clip", lambda v: v is None or v >= 0, ">= 0 or null"),
    ("max_bad_steps", lambda v: v >= 1, ">= 1"),
    ("eval.max_new_tokens", lambda v: v >= 1, ">= 1"),
]


def validate(cfg: DictConfig) -> None:
    """Raises `ConfigError` naming the first key whose value cannot work."""
    missing = sorted(_missing(OmegaConf.to_container(cfg, resolve=False)))
    if missing:
        raise ConfigError(f"{missing[0]} must be set, e.g. {missing[0]}=<value> on the command line")
    for key, ok, expected in _RULES:
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is not _ABSENT and not _holds(ok, value):
            raise ConfigError(f"{key} must be {expected}, got {value!r}")
    data = cfg.get("data") or {}
    if "max_length" in data and "max_prompt_length" in data and data.max_length <= data.max_prompt_length:
        raise ConfigError(
            f"data.max_length={data.max_length} must exceed data.max_prompt_length="
            f"{data.max_prompt_length} (the prompt budget), or no response token fits"
        )
    rollout = cfg.get("rollout") or {}
    if (cfg.get("objective") or {}).get("precompute_ref") and "_target_" in rollout:
        raise ConfigError(
            "objective.precompute_ref=true scores fixed pairs once before training, but rollout=online "
            "makes new pairs from the policy: set objective.precompute_ref=false (a reference model is kept)"
        )


def _missing(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???``, found without resolving interpolations to them."""
    if isinstance(node, dict):
        return [key for k, v in node.items() for key in _missing(v, f"{prefix}{k}.")]
    if isinstance(node, list):
        return [key for i, v in enumerate(node) for key in _missing(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def _holds(ok: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(ok(value))
    except TypeError:  # a string where a number belongs
        return False
