"""The run's exported model: a plain transformers ``save_pretrained`` directory, whatever the
training wrapped the policy in (FSDP2 shards, LoRA adapters, compiled layers)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_align.checkpointing import require_finite, write_failure
from lit_align.models.lora import is_lora, merged
from lit_align.models.sharding import full_state_dict, has_fsdp1, is_sharded


def export_model(policy: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path,
                 is_global_zero: bool, root: torch.nn.Module | None = None) -> None:  # fmt: skip
    """Writes ``policy`` and ``tokenizer`` to ``out_dir`` (rank 0 only).

    A sharded policy's full weights (FSDP2; FSDP1 through ``root``, the strategy's wrapper of
    the module holding ``policy`` as ``policy``) are gathered to rank 0's CPU first (every rank
    must call this: the gather is a collective) into an unsharded copy built from the model's
    config; LoRA adapters are merged into the weights. Weights that are not finite are never
    written. The directory is written whole or not at all: into ``<out_dir>.tmp``, renamed
    into place (a failed write, a full disk, removes it and raises `WriteFailed`).
    """
    sharded = is_sharded(policy) or (root is not None and has_fsdp1(root))
    state = full_state_dict(policy, root, prefix="policy.") if sharded else None
    if not is_global_zero:
        return
    if state is not None:
        policy = _unsharded_copy(policy, state)
    model = merged(policy)
    require_finite(model, "model export")
    tmp, old = out_dir.with_name(out_dir.name + ".tmp"), out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of an earlier failed export
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except (OSError, RuntimeError) as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failure(out_dir, error) from error
    if out_dir.exists():  # a resumed run's export replaces the earlier one
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _unsharded_copy(policy: PreTrainedModel | PeftModel, state: dict[str, torch.Tensor]) -> PreTrainedModel | PeftModel:
    """A CPU model of ``policy``'s class and config (with the same LoRA adapters) holding
    ``state``. Built with real (not meta) tensors, so non-persistent buffers such as rotary
    frequencies are computed as the class computes them."""
    base = policy.get_base_model() if is_lora(policy) else policy
    with torch.device("cpu"):
        copy = type(base)(base.config).to(base.dtype)
    if is_lora(policy):
        copy = get_peft_model(copy, policy.peft_config[policy.active_adapter])
    copy.load_state_dict(state)
    return copy
