"""LoRA through PEFT (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):
``W x + (alpha / r) B A x`` with ``A`` ``(r, d_in)``, ``B`` ``(d_out, r)`` trained and ``W`` frozen.

Two things follow for post-training. The reference model of DPO, RLOO and PPO is the
starting policy, which with LoRA is the policy with its adapters switched off (``B A`` removed),
so no second copy of the weights is kept (`AlignModule` calls `reference_logps` here). And the
exported model has the adapters merged into ``W`` (`merged`), so it loads with plain
transformers and starts the next stage like any other model.
"""

from __future__ import annotations

import warnings

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GenerationMixin, PreTrainedModel


def add_lora(
    model: PreTrainedModel,
    r: int = 0,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
) -> PreTrainedModel | PeftModel:
    """``model`` with LoRA adapters of rank ``r`` on ``target_modules`` (PEFT's names: a list of
    module names, or ``all-linear``: every linear layer but the output head), only the adapters
    trainable; ``r=0`` returns ``model`` unchanged (full fine-tuning).

    ``B`` starts at zero (PEFT's default), so the adapted model starts as ``model`` exactly.
    """
    if r < 0:
        raise ValueError(f"model.lora.r must be >= 0 (0 disables LoRA), got {r}")
    if r == 0:
        return model
    # A score head (a reward model) is SEQ_CLS to PEFT: the new head trains in full (modules_to_save)
    # instead of being adapted; a causal LM's output head is left out of all-linear either way.
    task = "CAUSAL_LM" if isinstance(model, GenerationMixin) else "SEQ_CLS"
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type=task)
    with warnings.catch_warnings():  # PEFT still calls a transformers API deprecated in 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        return get_peft_model(model, config)


def is_lora(model: object) -> bool:
    return isinstance(model, PeftModel)


def merged(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """A plain transformers model: a LoRA model's adapters merged into its weights (in place:
    the adapters are gone afterwards), any other model as it is."""
    return model.merge_and_unload() if is_lora(model) else model
