"""Online sampling: generate from the current policy, score, and refresh the training buffer."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_align.models.sharding import is_sharded
from lit_align.rollout.buffer import rollout_metrics, rows_from_samples
from lit_align.rollout.draw import check_sampling, passes_warning, sample_and_score, write_sample_table
from lit_align.rollout.dynamic_sampling import informative_groups, merge, select_groups
from lit_align.rollout.experience import experience_rows
from lit_align.rollout.sampler import Sampler


class OnlineSampling(L.Callback):
    """Samples ``num_samples`` completions per prompt from the policy, scores them with
    ``reward`` and makes them the training split, in the objective's format (see
    `lit_align.rollout.buffer`): groups for AFT, best-vs-worst pairs for online DPO, passing
    samples for SFT (rejection sampling), and for RLOO and PPO the sampled tokens with their
    log-probs and the objective's advantages (`lit_align.rollout.experience`), computed here,
    once per rollout; the objective's adaptive KL coefficient is updated after each.

    The first buffer is sampled when fitting starts. An epoch is one pass over the buffer; with
    ``every_n_epochs`` the buffer is re-sampled after every N epochs (iterative AFT), otherwise
    the first buffer serves the whole run (the AFT paper's single round). A pass over a buffer
    of ``num_prompts`` groups is ``num_prompts / data.batch_size`` steps (for RLOO and PPO,
    whose rows are samples, ``num_prompts × num_samples / data.batch_size``), so
    ``num_prompts`` sets how many steps pass between refreshes.

    Prompts come from the datamodule's ``prompt_set()`` in a seeded order, each refresh taking
    the next ``num_prompts`` (wrapping around). Under DDP each rank samples its own shard of
    them; the rows are then gathered so every rank holds the same buffer, which the training
    loader splits evenly. The buffer is checkpointed with the prompt cursor: a resumed run goes
    on training on the samples it was training on.

    Logs ``rollout/reward_mean``, ``reward_std``, ``pass_rate``, ``unscorable_frac``,
    ``frac_reward_zero_std`` (prompts whose samples all scored the same: no learning signal for
    RLOO), ``completion_len``, ``truncated_frac`` and ``buffer_rows`` (and for RLOO/PPO
    ``rollout/kl``, the mean sequence KL to the reference, and ``rollout/kl_coef``), and the first ``log_samples``
    samples of every refresh (prompt, completion, reward): a W&B table under ``logger=wandb``,
    else lines of ``rollouts.jsonl`` in the run directory.

    Args:
        reward: ``(prompts, completions, **columns) -> list[float | None]``; the prompt set's
            other columns (``answer``…) are passed as keyword lists.
        num_samples: completions per prompt (k).
        num_prompts: prompts per refresh; ``None`` takes the whole prompt set.
        every_n_epochs: re-sample after this many passes over the buffer; ``None`` samples once
            (and warns when the step budget passes over that one buffer more than 10 times,
            `lit_align.rollout.draw.passes_warning`).
        generation_batch_size: prompts per ``generate`` call.
        max_new_tokens, temperature, top_p, top_k: sampling settings.
        threshold: the reward at which a sample counts as correct (positive).
        include_reference: add each prompt's gold ``solution``, when the prompt set has that
            column, to its rows: AFT fine-tunes on it beside the passing samples, SFT trains on
            it. RLOO and PPO ignore it: they train on samples only.
        seed: seeds the prompt order and every refresh's sampling.
        log_samples: samples per refresh written to the sample table.
        dynamic_sampling: DAPO's dynamic sampling (policy-gradient objectives): prompts whose
            samples all scored the same are dropped and fresh prompts sampled in their place
            until the rollout has ``num_prompts`` (`lit_align.rollout.dynamic_sampling`); logs
            ``rollout/filtered_groups`` and ``rollout/refill_rounds``. The rollout metrics
            cover every sample drawn.
        max_refill_rounds: at most this many top-up rounds per refresh; a rollout still short
            after them trains on the prompts it has.
    """

    def __init__(
        self,
        reward: Callable[..., list[float | None]],
        num_samples: int = 4,
        num_prompts: int | None = 1024,
        every_n_epochs: int | None = None,
        generation_batch_size: int = 64,
        max_new_tokens: int = 48,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        threshold: float = 1.0,
        include_reference: bool = True,
        seed: int = 0,
        log_samples: int = 8,
        dynamic_sampling: bool = False,
        max_refill_rounds: int = 3,
    ) -> None:
        if num_prompts is not None and num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1 or null, got {num_prompts}")
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1 or null, got {every_n_epochs}")
        self.reward = reward
        self.sampler = Sampler(num_samples, max_new_tokens, temperature, top_p, top_k, seed)
        self.num_prompts = num_prompts
        self.every_n_epochs = every_n_epochs
        self.generation_batch_size = generation_batch_size
        self.threshold = threshold
        self.include_reference = include_reference
        self.seed = seed
        self.log_samples = log_samples
        if max_refill_rounds < 0:
            raise ValueError(f"max_refill_rounds must be >= 0, got {max_refill_rounds}")
        self.dynamic_sampling, self.max_refill_rounds = dynamic_sampling, max_refill_rounds
        self._round = 0  # the top-up round of the current refresh (seeds its sampling)
        self.refreshes = 0  # checkpointed with the cursor, so a resumed run samples new prompts
        self.cursor = 0
        self.rows: list[dict[str, Any]] | None = None  # the current buffer
        self.in_step = False  # each rollout trained on in one on-policy step (set in setup)
        self._prompts: Dataset | None = None
        self._datamodule: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._datamodule = trainer.datamodule  # where a restored buffer goes
        objective, sampler = pl_module.objective, self.sampler
        check_sampling(f"objective={type(objective).__name__.lower()}", trainer.datamodule.batch_format,
                       objective.precompute_ref, self.every_n_epochs, sampler.temperature, sampler.top_p,
                       sampler.top_k)  # fmt: skip
        if self.every_n_epochs:
            # The buffer changes at epoch ends; Lightning must ask for a new loader to see it.
            trainer.reload_dataloaders_every_n_epochs = self.every_n_epochs
        self.in_step = self._trained_in_one_step(pl_module.objective, trainer.datamodule)

    def _trained_in_one_step(self, objective: Any, datamodule: Any) -> bool:
        """Whether each rollout is trained on in exactly one optimizer step by the policy that
        sampled it (one update epoch, the whole rollout one batch), with advantages the step
        can compute (``in_step_advantages``) and no adaptive KL (which needs the rollout's KL
        before training). Then the step's forward gives the sampling policy's log-probs and the
        reference's, and no separate scoring forward runs here."""
        if datamodule.batch_format != "rollout" or not getattr(objective, "in_step_advantages", False):
            return False
        if self.every_n_epochs != 1 or objective.kl.controller != "fixed":
            return False
        if self.num_prompts is None:
            self._prompts = self._prompts if self._prompts is not None else datamodule.prompt_set()
        prompts = self.num_prompts if self.num_prompts is not None else len(self._prompts)
        return prompts <= datamodule.batch_size

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None and self.rows is not None:
            return  # resumed: the checkpoint's buffer is already the training split
        self.refresh(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # The refresh after an epoch's last batch, here rather than in on_train_epoch_end: a
        # checkpoint written after this batch (checkpoint callbacks run last) then holds the new
        # buffer, which a run resumed from it trains on; Lightning does not repeat the end of an
        # epoch it restarts after.
        if batch_idx + 1 < trainer.num_training_batches:
            return
        done = trainer.should_stop or 0 <= trainer.max_steps <= trainer.global_step
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0 and not done:
            self.refresh(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        # The buffer itself: a resumed run trains on the samples this one drew, not on new ones.
        return {"refreshes": self.refreshes, "cursor": self.cursor, "rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.refreshes, self.cursor = state_dict["refreshes"], state_dict["cursor"]
        self.rows = state_dict.get("rows")
        if self.rows is not None and self._datamodule is not None:
            self._datamodule.set_train_rows(self.rows)

    # -- one refresh ----------------------------------------------------------------------------

    def refresh(self, trainer: L.Trainer, pl_module: Any) -> None:
        started = time.perf_counter()
        datamodule = trainer.datamodule
        if self._prompts is None:
            self._prompts = datamodule.prompt_set()
        prompt_set = self._prompts
        chosen = self._next_prompts(len(prompt_set))
        self._round = 0
        samples = drawn = self._draw(trainer, pl_module, chosen)
        dynamic = {}
        if self.dynamic_sampling and datamodule.batch_format == "rollout":
            samples, dynamic = self._top_up(trainer, pl_module, samples, len(chosen))
            drawn = dynamic.pop("drawn")
        if datamodule.batch_format == "rollout":
            # After the gather, so advantages (and PPO's whitening) see the whole rollout, and
            # every rank builds the same rows from the same samples.
            rows, kl = experience_rows(pl_module.objective, samples["experience"], samples["rewards"],
                                       self.sampler.num_samples)  # fmt: skip
        else:
            rows = rows_from_samples(datamodule.batch_format, samples["prompt_ids"], samples["completion_ids"],
                                     samples["rewards"], self.sampler.num_samples, self.threshold,
                                     samples.get("references"), datamodule.max_length,
                                     samples["prompt_truncated"])  # fmt: skip
        if rows:
            datamodule.set_train_rows(rows)
            self.rows = rows
            if not self.every_n_epochs and (warning := passes_warning(len(rows), datamodule.batch_size,
                                                                      trainer.max_steps)):  # fmt: skip
                rank_zero_warn(warning)
        elif self.refreshes == 0:
            raise RuntimeError(
                f"online sampling made no {datamodule.batch_format} rows from {len(chosen)} prompts: every "
                "sample was unscorable, or no prompt had samples with different rewards (pairs) or a passing "
                "sample (sft)"
            )
        else:
            rank_zero_warn("online sampling made no training rows this refresh; training goes on on the last buffer")
        self.refreshes += 1
        k = self.sampler.num_samples
        metrics = rollout_metrics(drawn["rewards"], drawn["lengths"], drawn["truncated"], self.threshold, k) | dynamic
        if datamodule.batch_format == "rollout" and kl:  # no KL yet when the step scores the rollout itself
            mean_kl = sum(kl) / len(kl)
            metrics |= {"rollout/kl": mean_kl, "rollout/kl_coef": float(pl_module.objective.kl_coef)}
            pl_module.objective.update_kl_coef(mean_kl, len(kl))  # the same on every rank
        metrics |= {"rollout/buffer_rows": float(len(rows)), "rollout/seconds": time.perf_counter() - started}
        self._log(trainer, metrics, samples)
        rank_zero_info(
            f"online sampling #{self.refreshes}: {len(chosen)} prompts × {self.sampler.num_samples}, "
            f"reward {metrics['rollout/reward_mean']:.3f}, pass rate {metrics['rollout/pass_rate']:.3f}, "
            f"{len(rows)} rows, {metrics['rollout/seconds']:.0f} s"
        )

    def _draw(self, trainer: L.Trainer, pl_module: Any, chosen: list[int]) -> dict[str, list[Any]]:
        """Samples and rewards of the prompts ``chosen``, each rank sampling its shard, gathered."""
        if len(chosen) % trainer.world_size and is_sharded(pl_module.policy):
            # Every forward of a sharded model is a collective: all ranks need as many generate calls.
            raise ValueError(
                f"strategy=fsdp2 needs as many prompts on every rank: {len(chosen)} prompts per refresh do not "
                f"split over {trainer.world_size} processes (set rollout.num_prompts to a multiple)"
            )
        shard = self._prompts.select(chosen[trainer.global_rank :: trainer.world_size])
        samples = sample_and_score(self.sampler, self.reward, pl_module, trainer.datamodule, shard,
                                   batch_size=self.generation_batch_size,
                                   seed_key=f"{self.seed}/{self.refreshes}/{pl_module.global_rank}",
                                   top_up_round=self._round, include_reference=self.include_reference,
                                   in_step=self.in_step)  # fmt: skip
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, samples)
            samples = {key: [v for part in gathered for v in part[key]] for key in samples}
        return samples

    def _top_up(
        self, trainer: L.Trainer, pl_module: Any, samples: dict[str, list[Any]], target: int
    ) -> tuple[dict[str, list[Any]], dict[str, Any]]:
        """DAPO's dynamic sampling: drop the prompts whose samples all scored the same and draw
        fresh ones until ``target`` prompts remain (at most ``max_refill_rounds`` rounds). Every
        rank sees the same gathered rewards, so all take the same rounds."""
        k, drawn = self.sampler.num_samples, samples
        keep = informative_groups(samples["rewards"], k)
        filtered, samples = keep.count(False), select_groups(samples, keep, k)
        while len(samples["prompts"]) < target and self._round < self.max_refill_rounds:
            self._round += 1
            need = target - len(samples["prompts"])
            if is_sharded(pl_module.policy):
                need = -(-need // trainer.world_size) * trainer.world_size
            more = self._draw(trainer, pl_module, self._next_prompts(len(self._prompts), need))
            keep = informative_groups(more["rewards"], k)
            filtered += keep.count(False)
            drawn, samples = merge(drawn, more), merge(samples, select_groups(more, keep, k))
        samples = select_groups(samples, [i < target for i in range(len(samples["prompts"]))], k)
        stats = {"rollout/filtered_groups": float(filtered), "rollout/refill_rounds": float(self._round)}
        return samples, stats | {"drawn": drawn}

    def _next_prompts(self, size: int, count: int | None = None) -> list[int]:
        """The next ``count`` (default ``num_prompts``) indices of a seeded permutation of the prompt set."""
        order = random.Random(self.seed).sample(range(size), size)
        if count is None:
            count = size if self.num_prompts is None else self.num_prompts
        chosen = [order[(self.cursor + i) % size] for i in range(count)]
        self.cursor = (self.cursor + count) % size
        return chosen

    def _log(self, trainer: L.Trainer, metrics: dict[str, float], samples: dict[str, list[Any]]) -> None:
        # Logged straight to the loggers: Lightning's self.log is not allowed in on_fit_start.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        trainer.callback_metrics.update({key: torch.tensor(value) for key, value in metrics.items()})
        if trainer.is_global_zero and self.log_samples:
            write_sample_table(trainer, samples, self.sampler.num_samples, self.log_samples)
