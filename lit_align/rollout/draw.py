"""Drawing a rollout for `OnlineSampling`: what it refuses, when a single round's buffer is worth
a warning, one shard of prompts sampled from the policy and scored (once per refresh, and once
per top-up round of dynamic sampling), and the sample table a refresh writes. Nothing here holds
state.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import lightning as L
from datasets import Dataset
from lightning.pytorch.loggers import WandbLogger

from lit_align.checkpointing import write_failure
from lit_align.data.collate import encode_prompt, encode_response, pad
from lit_align.errors import ConfigError
from lit_align.rewards.base import score
from lit_align.rollout.experience import split_rollout
from lit_align.rollout.sampler import Sampler


def check_sampling(
    objective: str, batch_format: str | None, precompute_ref: bool, every_n_epochs: int | None,
    temperature: float, top_p: float, top_k: int,
) -> None:  # fmt: skip
    """What online sampling refuses, raised naming the config key: `validate` calls it on the
    config, before the SFT stage or any model, and `OnlineSampling.setup` on the objects, for a
    run built in Python. ``objective`` names the objective (``objective=rloo``)."""
    if precompute_ref:
        raise ConfigError(
            "objective.precompute_ref=true scores fixed pairs once before training, but rollout=online "
            "makes new pairs from the policy: set objective.precompute_ref=false (a reference model is kept)"
        )
    if batch_format != "rollout":
        return
    if not every_n_epochs:
        raise ConfigError(
            f"{objective} learns on-policy: set rollout.every_n_epochs (update epochs per rollout), "
            "or the first rollout would serve the whole run"
        )
    if temperature != 1 or top_p < 1 or top_k > 0:
        # The ratio π/π_old and the on-policy gradient assume samples from π itself.
        raise ConfigError(
            f"{objective} needs samples from the policy itself: set rollout.temperature=1, rollout.top_p=1, "
            "rollout.top_k=0"
        )


MAX_PASSES = 10  # a single round's buffer passed over more often than this is worth a warning


def passes_warning(rows: int, batch_size: int, max_steps: int) -> str | None:
    """The warning for a single-round buffer of ``rows`` rows that ``max_steps`` steps of
    ``batch_size`` rows pass over more than `MAX_PASSES` times, else ``None``. From a start that
    already solves most prompts, few prompts yield a pair or a group with a wrong sample, and
    the run would fit those few over and over (online DPO from the converged benchmark start: 58
    pairs, 150 steps of 16, ~41 passes, test 0.98 -> 0.48)."""
    if rows < 1 or max_steps < 1:
        return None
    passes = max_steps * batch_size / rows
    if passes <= MAX_PASSES:
        return None
    return (
        f"online sampling made {rows} training rows, sampled once: {max_steps} steps of {batch_size} pass over "
        f"them {passes:.0f} times; set rollout.every_n_epochs to re-sample from the policy, or train fewer steps"
    )


def sample_and_score(
    sampler: Sampler, reward: Any, pl_module: Any, datamodule: Any, prompts: Dataset, *, batch_size: int,
    seed_key: str, top_up_round: int, include_reference: bool, in_step: bool,
) -> dict[str, list[Any]]:  # fmt: skip
    """``sampler.num_samples`` completions of every prompt in ``prompts``, ``batch_size`` prompts
    per ``generate`` call, and their rewards: lists keyed ``prompts``, ``completions``,
    ``lengths``, ``truncated``, ``rewards``; for the rollout format (RLOO, PPO, GRPO) the sampled
    tokens as ``experience`` (`lit_align.rollout.experience`, with the policy's and reference's
    outputs unless the step scores them itself, ``in_step``), else the ids as sampled
    (``prompt_ids``, ``prompt_truncated``, ``completion_ids``) and, with ``include_reference``,
    each prompt's gold ``solution`` as ``references``.

    ``seed_key`` names the run's seed, the refresh and the rank; with each chunk's offset (and a
    dynamic-sampling top-up round's number) it seeds that chunk's sampling, so every refresh
    draws new samples and a resumed run the same ones.
    """
    tokenizer, policy, k = pl_module.tokenizer, pl_module.policy, sampler.num_samples
    out: dict[str, list[Any]] = {"prompts": [], "completions": [], "lengths": [], "truncated": []}
    rl = datamodule.batch_format == "rollout"
    if rl:
        out["experience"] = []
    else:  # the rows are built from the ids as sampled (`rows_from_samples`)
        out |= {"prompt_ids": [], "prompt_truncated": [], "completion_ids": []}
    if include_reference and "solution" in prompts.column_names and not rl:
        out["references"] = [encode_response(tokenizer, text) for text in prompts["solution"]]
    for start in range(0, len(prompts), batch_size):
        texts = prompts[start : start + batch_size]["prompt"]
        encoded = [encode_prompt(tokenizer, text, datamodule.max_prompt_length) for text in texts]
        ids, cut = [e[0] for e in encoded], [e[1] for e in encoded]
        prompt_ids, prompt_mask = pad(ids, tokenizer.pad_token_id, left=True)
        key = f"{seed_key}/{start}" + (f"/{top_up_round}" if top_up_round else "")
        seed = random.Random(key).getrandbits(62)
        rollout = sampler(policy, tokenizer, prompt_ids.to(pl_module.device), prompt_mask.to(pl_module.device),
                          seed=seed, with_logps=False, shared_prefix=pl_module.shared_prefix)  # fmt: skip
        lengths = rollout.completion_mask.sum(-1).tolist()  # tokens up to and including eos
        if rl:  # the tokens as sampled, with the policy's, reference's (and critic's) outputs
            scored = None if in_step else pl_module.score_rollout(rollout.forward_inputs())
            out["experience"] += split_rollout(rollout, scored)
        else:
            out["prompt_ids"] += ids
            out["prompt_truncated"] += cut
            sampled = zip(rollout.completion_ids.tolist(), lengths, strict=True)
            out["completion_ids"] += [row[:n] for row, n in sampled]
        out["prompts"] += texts
        out["completions"] += rollout.completions
        out["lengths"] += lengths
        out["truncated"] += rollout.truncated.tolist()
    columns = {name: [v for v in prompts[name] for _ in range(k)] for name in prompts.column_names if name != "prompt"}
    repeated = [p for p in out["prompts"] for _ in range(k)]
    if getattr(reward, "wants_completion_length", False):  # a length-shaped reward (OverlongPenalty)
        columns["completion_length"] = out["lengths"]
    out["rewards"] = score(reward, repeated, out["completions"], **columns)
    return out


def write_sample_table(trainer: L.Trainer, samples: dict[str, list[Any]], k: int, count: int) -> None:
    """The first ``count`` samples of a refresh (step, prompt, completion, reward): a W&B table
    under ``logger=wandb``, else lines appended to ``rollouts.jsonl`` in the run directory."""
    table = [
        [trainer.global_step, samples["prompts"][i // k], samples["completions"][i], samples["rewards"][i]]
        for i in range(min(count, len(samples["completions"])))
    ]
    wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if wandb:
        wandb[0].log_table("rollout/samples", columns=["step", "prompt", "completion", "reward"], data=table)
        return
    path = Path(trainer.default_root_dir) / "rollouts.jsonl"
    try:
        with path.open("a") as f:
            for step, prompt, completion, reward in table:
                row = {"step": step, "prompt": prompt, "completion": completion, "reward": reward}
                f.write(json.dumps(row) + "\n")
    except OSError as error:  # a full disk: one line naming the file
        raise write_failure(path, error) from error
