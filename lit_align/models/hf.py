"""Loading any causal LM and tokenizer through transformers, from a Hub id or a local directory."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)  # fmt: skip

from lit_align.errors import ConfigError

HEADS = ("lm", "score")


def _resolve(name_or_path: str) -> str:
    """Fail in one line on a local path that does not exist, before transformers tries the Hub.

    A string with a leading ``/``, ``.`` or ``~``, or with more than one ``/``, can only be a
    path: a Hub id is ``name`` or ``org/name``.
    """
    path = Path(name_or_path).expanduser()
    if path.suffix == ".ckpt" and path.exists():  # a file, or an FSDP2 checkpoint's folder of shards
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        raise ConfigError(
            f"model.name_or_path={name_or_path} is a training checkpoint, not a model: resume its run with "
            f"ckpt_path={name_or_path} (and its hydra.run.dir), or load the model the run exported: "
            f"model.name_or_path={run / 'model'}"
        )
    if path.is_file():
        raise ConfigError(
            f"model.name_or_path={name_or_path} is a file: give a model's directory (config.json and weights, "
            "as a run's model/ is) or a Hub id"
        )
    if path.exists():
        return str(path)
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1:
        raise ConfigError(f"model.name_or_path: no such directory: {name_or_path}")
    return name_or_path


def _load(loader, name_or_path: str, **kwargs):
    try:
        return loader.from_pretrained(_resolve(name_or_path), **kwargs)
    except OSError as error:  # transformers raises OSError for unknown ids and unreachable Hubs
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"model.name_or_path={name_or_path!r} is neither a local directory nor a reachable Hub model ({first_line})"
        ) from error


def load_tokenizer(
    name_or_path: str, trust_remote_code: bool = False, revision: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model. One without a pad token pads with its eos token."""
    tokenizer = _load(AutoTokenizer, name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
    head: str = "lm",
) -> PreTrainedModel:
    """An ``AutoModelForCausalLM`` (``head="lm"``) or a one-label
    ``AutoModelForSequenceClassification`` (``head="score"``, a reward model), with its pad
    token aligned to ``tokenizer``.

    ``dtype`` is the dtype of the stored weights once loaded; keep ``float32`` and let the
    trainer's ``precision`` decide the compute dtype, or ``bfloat16`` to halve memory. A score
    head loaded from a causal LM (an SFT model, say) starts from its trunk with a new head.
    """
    if head not in HEADS:
        raise ConfigError(f"model.policy.head must be one of {HEADS}, got {head!r}")
    extra = {} if head == "lm" else {"num_labels": 1}
    model = _load(
        AutoModelForCausalLM if head == "lm" else AutoModelForSequenceClassification,
        name_or_path,
        **extra,
        dtype=getattr(torch, dtype),
        trust_remote_code=trust_remote_code,
        revision=revision,
        attn_implementation=attn_implementation,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model
