"""The lit_align contender of `tools/bench.py`: the user's path, `train(cfg)` on a composed config.

Everything a run does by default happens (the Lightning loop, the CSV logger, the checkpoint
callback, online sampling for RLOO and GRPO); only what the other contenders do not do either is
off: evaluation before and during training, checkpoints inside the timed steps, the progress bar.
The Qwen-shaped model and its rows come in as a user's local files would: ``model=hf`` on the
model's folder and ``data=gsm8k|preference|cot_ranking`` on JSON Lines files (`bench_qwen`).
``spec.extra["lit_overrides"]`` appends overrides (the ``lit_flat`` variant's switch).
"""

from __future__ import annotations

import itertools
import tempfile

import bench_qwen
import torch
from bench_setup import MODELS, Gate, Spec, build_model, datamodule, tokenizer
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback

from lit_align.__main__ import CONF_DIR
from lit_align.data.collate import collate_prompts, encode_prompt
from lit_align.rollout.sampler import Sampler
from lit_align.train import train

_gate: Gate | None = None


class GateCallback(Callback):
    """Hands every optimizer step's begin to the bench's gate."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        assert _gate is not None
        _gate.step_begin()


def model_and_data(spec: Spec) -> list[str]:
    """The model and the rows: the built-in Llama and task, or the Qwen-shaped model and its
    files through ``model=hf`` and the file datamodules (`bench_qwen`)."""
    lengths = [f"data.max_length={spec.max_length}", f"data.max_prompt_length={spec.max_length // 2}"]
    if spec.model == "qwen":
        source = bench_qwen.data_file(spec.workload, spec.seed, spec.num_train)
        return [
            "model=hf", f"model.name_or_path={bench_qwen.model_dir(spec.seed)}",
            f"model.tokenizer.name_or_path={bench_qwen.tokenizer_dir(spec.seed)}",
            *bench_qwen.lit_data_overrides(spec.workload, source), *lengths,
        ]  # fmt: skip
    return [
        *(f"model.policy.{k}={v}" for k, v in MODELS[spec.model].items()),
        f"data.num_train={spec.num_train}", "data.num_val=8", "data.num_test=8", f"data.steps={spec.steps}",
        f"data.group_size={spec.group_size}", *lengths,
    ]  # fmt: skip


def overrides(spec: Spec, out_dir: str) -> list[str]:
    """The command line a user would type for this workload."""
    common = [
        f"paths.output_dir={out_dir}",
        f"seed={spec.seed}",
        *model_and_data(spec),
        f"optimizer.lr={spec.lr}", f"optimizer.betas=[{spec.betas[0]},{spec.betas[1]}]",
        f"optimizer.weight_decay={spec.weight_decay}", "optimizer.fused=true",  # as TRL and the bare loop
        f"grad_clip={spec.grad_clip}", "scheduler=null",
        "trainer.max_steps=1000000", "trainer.val_check_interval=1000000", "eval.before_train=false",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "callbacks.model_checkpoint.every_n_train_steps=1000000",
        "+callbacks.bench_gate._target_=bench_lit.GateCallback",
    ]  # fmt: skip
    batch = f"data.batch_size={spec.batch_size}"
    extra = list(spec.extra.get("lit_overrides", []))  # a variant's switches (bench_setup.VARIANTS)
    if spec.workload == "sft":
        return [*common, "objective=sft", batch, *extra]
    if spec.workload == "dpo":
        # Plain DPO as TRL runs it: from the given weights, no NLL term (pipeline/dpo adds one).
        return [*common, "objective=dpo", "init=none", "objective.sft_weight=0", f"objective.beta={spec.beta}", batch,
                *extra]  # fmt: skip
    if spec.workload == "rm":  # pipeline/rm sets the score head (model.policy.head=score)
        return [*common, "objective=rm", "init=none", batch, *extra]
    if spec.workload == "aft":  # offline AFT on given groups: no SFT stage, no sampling, no best-of-N
        return [
            *common, "objective=aft", "init=none", "rollout=none", "callbacks=default", f"objective.beta={spec.beta}",
            "objective.constraint=boundary", "objective.feedback=binary", f"objective.vft_weight={spec.vft_weight}",
            batch, *extra,
        ]  # fmt: skip
    if spec.workload in ("rloo", "grpo"):
        if spec.workload == "rloo":
            objective = [
                "objective=rloo", f"objective.kl.coef={spec.kl_coef}",
                "objective.aggregation=seq_sum",  # TRL's RLOO: −A·Σ_t log π, mean over samples
            ]  # fmt: skip
        else:  # GRPO's defaults, spelled out: group-std advantages, k3 KL in the loss, per-sequence token means
            objective = [
                "objective=grpo", f"objective.kl.coef={spec.grpo_kl_coef}", "objective.kl.estimator=k3",
                "objective.kl.placement=loss", "objective.advantage=group_std",
                f"objective.epsilon_low={spec.clip_epsilon}", "objective.aggregation=seq_mean",  # TRL's loss_type=grpo
            ]  # fmt: skip
        # One rollout (batch_size prompts × k samples) and one optimizer step on all of it per epoch.
        return [
            *common, *objective, "init=none",
            f"rollout.num_prompts={spec.batch_size}", f"rollout.num_samples={spec.num_samples}",
            "rollout.every_n_epochs=1", f"data.batch_size={spec.batch_size}",  # prompts, each with its k samples
            f"eval.max_new_tokens={spec.max_new_tokens}", f"rollout.temperature={spec.temperature}",
            f"rollout.generation_batch_size={spec.batch_size}", "rollout.log_samples=0", *extra,
        ]  # fmt: skip
    raise ValueError(f"unknown workload {spec.workload!r}")


def run(spec: Spec, gate: Gate) -> None:
    global _gate
    _gate = gate
    torch.manual_seed(spec.seed)
    if spec.workload == "generate":
        return generate(spec, gate)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides(spec, tempfile.mkdtemp(prefix="bench_lit_")))
    train(cfg)


def generate(spec: Spec, gate: Gate) -> None:
    """Sampling as online RLOO does it (the `Sampler`, k samples per prompt), text only."""
    tok = tokenizer(spec)
    model = build_model(spec, tok)
    sampler = Sampler(spec.num_samples, spec.max_new_tokens, temperature=spec.temperature, seed=spec.seed)
    rows = datamodule(spec, tok, "rollout").prompt_set().to_list()
    keep = spec.max_length // 2  # the max_prompt_length the training workloads pass
    encoded = [{"prompt_ids": encode_prompt(tok, r["prompt"], keep)[0], "answer": r["answer"]} for r in rows]
    for step in itertools.count():
        chunk = [encoded[(step * spec.batch_size + i) % len(encoded)] for i in range(spec.batch_size)]
        batch = collate_prompts(chunk, tok.pad_token_id)
        gate.step_begin()
        sampler(model, tok, batch["prompt_ids"], batch["prompt_mask"], seed=step, with_logps=False)
