"""The TRL contender of `tools/bench.py`: each workload run by TRL's own trainer, as a TRL user
would set it up, on the shared `Spec`, model and rows of `bench_setup`.

Run by ``python tools/bench_setup.py trl '<spec json>'``. Every trainer gets a `TrainerCallback`
whose ``on_step_begin`` calls ``gate.step_begin()`` and trains "forever" (``max_steps=10**6``);
the gate ends the process when the controller is done.

Where TRL's defaults differ from the shared workload, the workload wins and the choice is written
here:

- fp32 (TRL defaults to ``bf16=True``), CPU, no logging integration, no evaluation, no
  checkpoints, no progress bar (``disable_tqdm``; it only writes to stderr), logging every 10**6
  steps (never, in practice; TRL still computes its per-step metrics, see below).
- Gradient checkpointing off (TRL's configs default it on; lit_align's default is off). It trades
  compute for memory, which is not what this benchmark compares; ``spec.extra
  ["trl_gradient_checkpointing"] = true`` turns TRL's default back on.
- AdamW is transformers' default optimizer, ``adamw_torch_fused`` (``torch.optim.AdamW(fused=True)``),
  with the spec's lr, betas, weight decay and grad clip; constant schedule, no warmup, no
  gradient accumulation.
- The character tokenizer adds no bos by itself (no post-processor) and TRL tokenises prompts with
  the tokenizer's own special-token handling, so TRL alone would train on ``prompt + response +
  eos``. The rows' prompts get ``tok.bos_token`` prepended as text (it tokenises to the bos id), so
  every sequence is ``bos + prompt + response + eos`` as in lit_align. TRL appends the eos itself
  (``completion``/``chosen``/``rejected`` + ``eos_token``).
- RewardTrainer gets the one-label sequence classifier `build_model` makes (``head="score"``) and
  the pairs as text; it joins ``prompt + chosen`` (and ``+ rejected``) and appends the eos itself,
  as lit_align's encoding does; no reward centring (``center_rewards_coefficient=None``, lit_align's
  ``center_coef=0``).
- DPO, RLOO and GRPO build their reference the way TRL does when none is given: TRL reloads the
  policy from its ``name_or_path`` (``create_model_from_path``). The policy is `build_model` saved
  to a temporary directory, whose path becomes its ``name_or_path``, so the reference TRL loads has
  the policy's initial weights. (RLOOTrainer and GRPOTrainer have no ``ref_model`` argument at all.)
- GRPOTrainer is set to lit_align's ``objective=grpo``: ``num_generations`` = the group k,
  ``beta=0.04`` with TRL's k3 KL in the loss, ``loss_type="grpo"`` (each sequence's token mean,
  then the mean over sequences: lit_align's ``aggregation=seq_mean``), ``scale_rewards="group"``
  (Bessel std + 1e-4, as lit_align's ``group_std``), token-level ratios clipped at ε = 0.2 both
  sides, one generation round and one update per step, so its old log-probs are the training
  forward's, detached (no forward for them). ``use_bias_correction_kl=False``: TRL 1.16 defaults
  to multiplying the per-token KL by the ratio, which is 1 in value on-policy but adds
  KL·∇log π to the gradient; lit_align's loss has no such factor. Like RLOOTrainer, it computes
  the per-token entropy in the training forward for its metrics (``compute_entropy=True``, not a
  setting); that is part of what it costs.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from typing import Any

import torch
from bench_setup import Gate, Spec, build_model, datamodule, model_path, rows, tokenizer
from datasets import Dataset
from transformers import GenerationConfig, TrainerCallback

FOREVER = 10**6


class GateCallback(TrainerCallback):
    """Opens every optimizer step at the gate."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def on_step_begin(self, args, state, control, **kwargs):
        self.gate.step_begin()


def run(spec: Spec, gate: Gate) -> None:
    workloads = {"sft": _sft, "dpo": _dpo, "rm": _rm, "rloo": _rloo, "grpo": _grpo, "generate": _generate}
    if spec.workload not in workloads:
        raise ValueError(f"unknown workload {spec.workload!r}; one of {sorted(workloads)}")
    workloads[spec.workload](spec, gate)


def _common(spec: Spec, batch_size: int) -> dict[str, Any]:
    """The TrainingArguments every trainer shares."""
    return dict(
        output_dir=tempfile.mkdtemp(prefix="bench_trl_"),
        max_steps=FOREVER,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        learning_rate=spec.lr,
        adam_beta1=spec.betas[0],
        adam_beta2=spec.betas[1],
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.grad_clip,
        lr_scheduler_type="constant",
        warmup_steps=0,
        seed=spec.seed,
        use_cpu=True,
        bf16=False,
        fp16=False,
        activation_checkpointing=bool(spec.extra.get("trl_gradient_checkpointing", False)),
        report_to="none",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=FOREVER,
        disable_tqdm=True,
        dataloader_num_workers=0,
        # The rows come in lit_align's first-epoch order (bench_setup.rows): the same batches.
        train_sampling_strategy="sequential",
    )


def _saved_policy(spec: Spec, tok) -> torch.nn.Module:
    """`build_model`, saved so TRL can load its default reference from the policy's path (see
    `_forget_saved_policy`); a model loaded from a folder (the Qwen-shaped one) has that path already."""
    model = build_model(spec, tok)
    if model_path(spec) is not None:
        model.config._name_or_path = model_path(spec)
        return model
    path = tempfile.mkdtemp(prefix="bench_trl_policy_")
    model.save_pretrained(path)
    model.config._name_or_path = path
    return model


def _forget_saved_policy(model: torch.nn.Module) -> None:
    """Removes the copy `_saved_policy` wrote once the trainer has loaded its reference from it
    (the gate ends the worker with os._exit, so nothing after ``train()`` would run)."""
    if model.config._name_or_path.startswith(tempfile.gettempdir() + "/bench_trl_policy_"):
        shutil.rmtree(model.config._name_or_path, ignore_errors=True)


def _with_bos(tok, prompt: str) -> str:
    return (tok.bos_token or "") + prompt


def _sft(spec: Spec, gate: Gate) -> None:
    from trl import SFTConfig, SFTTrainer

    tok = tokenizer(spec)
    data = Dataset.from_list(
        [{"prompt": _with_bos(tok, r["prompt"]), "completion": r["response"]} for r in rows(spec, tok, "sft")]
    )
    args = SFTConfig(
        **_common(spec, spec.batch_size),
        max_length=spec.max_length,
        packing=False,
        completion_only_loss=True,
        loss_type="nll",
    )
    trainer = SFTTrainer(
        model=build_model(spec, tok),
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=[GateCallback(gate)],
    )
    trainer.train()


def _dpo(spec: Spec, gate: Gate) -> None:
    from trl import DPOConfig, DPOTrainer

    tok = tokenizer(spec)
    data = Dataset.from_list(
        [
            {"prompt": _with_bos(tok, r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in rows(spec, tok, "pairs")
        ]
    )
    args = DPOConfig(
        **_common(spec, spec.batch_size), max_length=spec.max_length, loss_type=["sigmoid"], beta=spec.beta
    )
    model = _saved_policy(spec, tok)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,  # TRL's default: a fresh copy loaded from the policy's path
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=[GateCallback(gate)],
    )
    _forget_saved_policy(model)
    trainer.train()


def _rm(spec: Spec, gate: Gate) -> None:
    from trl import RewardConfig, RewardTrainer

    tok = tokenizer(spec)
    data = Dataset.from_list(
        [
            {"prompt": _with_bos(tok, r["prompt"]), "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in rows(spec, tok, "pairs")
        ]
    )
    args = RewardConfig(**_common(spec, spec.batch_size), max_length=spec.max_length)
    trainer = RewardTrainer(
        model=build_model(spec, tok, head="score"),
        args=args,
        train_dataset=data,
        processing_class=tok,
        callbacks=[GateCallback(gate)],
    )
    trainer.train()


def _prompt_set(spec: Spec, tok) -> Dataset:
    """The rollout prompts (with ``answer`` and ``solution``), bos prepended as lit_align encodes them."""
    prompts = datamodule(spec, tok, "rollout").prompt_set()
    return prompts.map(lambda row: {"prompt": _with_bos(tok, row["prompt"])})


def _math_reward():
    from lit_align.rewards.math import MathReward

    reward = MathReward()

    def math(prompts, completions, answer, **kwargs):  # TRL passes the dataset's columns as kwargs
        return reward(prompts, completions, answer)

    return math


def _online(spec: Spec) -> dict[str, Any]:
    """What RLOOConfig and GRPOConfig share: one generation round of ``batch_size`` prompts ×
    ``num_samples`` completions per optimizer step, trained on once, sampled as lit_align samples."""
    return dict(
        **_common(spec, spec.batch_size * spec.num_samples),  # their batch size counts completions, not prompts
        steps_per_generation=1,  # one generation round per optimizer step ...
        num_iterations=1,  # ... trained on once
        num_generations=spec.num_samples,
        max_completion_length=spec.max_new_tokens,
        temperature=spec.temperature,
        top_p=1.0,
        top_k=0,
        use_vllm=False,
    )


def _train_online(spec: Spec, gate: Gate, trainer_class, args) -> None:
    """RLOOTrainer or GRPOTrainer on the rollout prompts, scored by the math verifier."""
    tok = tokenizer(spec)
    model = _saved_policy(spec, tok)
    trainer = trainer_class(
        model=model,
        reward_funcs=_math_reward(),
        args=args,
        train_dataset=_prompt_set(spec, tok),
        processing_class=tok,
        callbacks=[GateCallback(gate)],
    )
    _forget_saved_policy(model)
    trainer.train()


def _rloo(spec: Spec, gate: Gate) -> None:
    from trl import RLOOConfig, RLOOTrainer

    _train_online(spec, gate, RLOOTrainer, RLOOConfig(**_online(spec), beta=spec.kl_coef))


def _grpo(spec: Spec, gate: Gate) -> None:
    """GRPOTrainer set to lit_align's ``objective=grpo`` (see the module docstring)."""
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        **_online(spec),
        beta=spec.grpo_kl_coef,  # k3 KL to the reference, in the loss
        use_bias_correction_kl=False,  # the KL unweighted by the ratio, as lit_align (TRL's default: weighted)
        loss_type="grpo",  # per-sequence token mean, then the mean over sequences: lit_align's seq_mean
        scale_rewards="group",  # (r − group mean) / (group std + 1e-4)
        importance_sampling_level="token",
        epsilon=spec.clip_epsilon,
        epsilon_high=spec.clip_epsilon,
    )
    _train_online(spec, gate, GRPOTrainer, args)


def _generate(spec: Spec, gate: Gate) -> None:
    """Generation alone, as RLOOTrainer does it with transformers (`_generate_single_turn`,
    `_generate`): tokenise the prompts (each repeated ``num_samples`` times, as its RepeatSampler
    delivers them), left-pad, ``generate`` under ``no_grad`` with the GenerationConfig it builds,
    cut each completion after its first eos and decode it."""
    from trl.trainer.utils import add_fused_lm_head, pad

    tok = tokenizer(spec)
    model = build_model(spec, tok)
    # As RLOOTrainer leaves the model: its forward patched with the fused LM head (generation takes
    # the original path) and in train mode (the Trainer's training_step calls model.train()).
    add_fused_lm_head(model, temperature=spec.temperature, outputs=("log_probs", "entropy"))
    model.train()
    eos_token_ids = [tok.eos_token_id]
    config = GenerationConfig(
        max_new_tokens=spec.max_new_tokens,
        do_sample=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos_token_ids,
        temperature=spec.temperature,
        top_p=1.0,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        cache_implementation=None,
        disable_compile=True,
    )
    torch.manual_seed(spec.seed)
    prompts = _prompt_set(spec, tok)["prompt"]
    eos = torch.tensor(eos_token_ids)
    for step in itertools.count():
        gate.step_begin()
        start = step * spec.batch_size  # the prompt set in order, cycling
        chunk = [prompts[(start + i) % len(prompts)] for i in range(spec.batch_size)]
        repeated = [p for p in chunk for _ in range(spec.num_samples)]
        prompt_ids = tok(text=repeated)["input_ids"]
        tensors = [torch.tensor(ids) for ids in prompt_ids]
        input_ids = pad(tensors, padding_value=tok.pad_token_id, padding_side="left")
        attention_mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left")
        with torch.no_grad():
            sequences = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
        completion_ids = sequences[:, input_ids.size(1) :]
        is_eos = torch.isin(completion_ids, eos)
        eos_idx = torch.full((is_eos.size(0),), is_eos.size(1), dtype=torch.long)
        eos_idx[is_eos.any(dim=1)] = is_eos.int().argmax(dim=1)[is_eos.any(dim=1)]
        keep = torch.arange(is_eos.size(1)).expand(is_eos.size(0), -1) <= eos_idx.unsqueeze(1)
        completions = [c[m].tolist() for c, m in zip(completion_ids, keep, strict=True)]
        tok.batch_decode(completions, skip_special_tokens=True)
