"""Best-of-N evaluation: what sampling N completions per held-out prompt buys over greedy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import lightning as L

from lit_align.data.answers import extract_answer
from lit_align.rewards.base import score
from lit_align.rollout.sampler import Sampler


def majority(answers: list[str | None]) -> int | None:
    """Index of the first sample whose extracted answer is the most common one; ``None`` if no
    sample has an answer. Ties go to the answer seen first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == best)
    return answers.index(winner)


class BestOfN(L.Callback):
    """At test time, for every held-out prompt with a gold answer: the greedy completion and
    ``num_samples`` sampled ones, judged by the datamodule's verifier. Logs

    - ``eval/greedy_accuracy``: the greedy completion is correct;
    - ``eval/pass@N``: any of the N samples is correct;
    - ``eval/maj@N``: the majority final answer (over extracted answers) is correct;
    - ``eval/bon@N``: the sample the scorer ranks highest is correct. ``scorer="policy"`` ranks
      by the policy's own length-normalised log-likelihood; a reward callable
      ``(prompts, completions, answer=...) -> scores`` ranks by reward; ``None`` skips it.

    Args:
        num_samples: N.
        max_new_tokens, temperature, top_p, top_k: sampling settings.
        seed: sampling seed (reproducible evaluation).
        scorer: ``"policy"``, a reward callable, or ``None``.
    """

    def __init__(
        self,
        num_samples: int = 8,
        max_new_tokens: int = 48,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        scorer: str | Callable[..., list[float | None]] | None = "policy",
    ) -> None:
        if isinstance(scorer, str) and scorer != "policy":
            raise ValueError(f"scorer must be 'policy', a reward callable or None, got {scorer!r}")
        self.n = num_samples
        self.sampler = Sampler(num_samples, max_new_tokens, temperature, top_p, top_k, seed)
        self.scorer = scorer

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.totals: Counter[str] = Counter()

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        """Samples for the prompts of this test batch; the greedy completions are the ones the
        module's ``test_step`` just generated (``outputs["completions"]``), not a second pass."""
        if not isinstance(outputs, dict) or "completions" not in outputs:
            return  # held-out rows without answers: nothing to judge
        self.totals += self._judge(pl_module, trainer.datamodule.verify, batch, outputs["completions"])

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        keys = ["greedy_accuracy", f"pass@{self.n}", f"maj@{self.n}"] + ([f"bon@{self.n}"] if self.scorer else [])
        for key in keys if self.totals["prompts"] else []:
            pl_module.log(f"eval/{key}", self.totals[key] / self.totals["prompts"])

    def _judge(self, pl_module: Any, verify: Callable, batch: dict[str, Any], greedy: list[str]) -> Counter[str]:
        tokenizer, answers = pl_module.tokenizer, batch["answer"]
        rollout = self.sampler(pl_module.policy, tokenizer, batch["prompt_ids"], batch["prompt_mask"],
                               with_logps=self.scorer == "policy", shared_prefix=pl_module.shared_prefix)  # fmt: skip
        texts = rollout.completions
        if rollout.logps is not None:  # scorer "policy": mean log-prob per completion token
            lengths = rollout.completion_mask.sum(-1).clamp(min=1)
            ranking = (rollout.logps.sum(-1) / lengths).tolist()
        elif self.scorer is not None:
            prompts = tokenizer.batch_decode(batch["prompt_ids"].repeat_interleave(self.n, 0), skip_special_tokens=True)
            ranking = score(self.scorer, prompts, texts, answer=[a for a in answers for _ in range(self.n)])
        out: Counter[str] = Counter()
        for p, answer in enumerate(answers):
            if verify(greedy[p], answer) is None:
                continue  # no gold to judge against
            samples = texts[p * self.n : (p + 1) * self.n]
            correct = [verify(s, answer) == 1.0 for s in samples]
            out["prompts"] += 1
            out["greedy_accuracy"] += verify(greedy[p], answer) == 1.0
            out[f"pass@{self.n}"] += any(correct)
            voted = majority([extract_answer(s) for s in samples])
            out[f"maj@{self.n}"] += voted is not None and correct[voted]
            if self.scorer is not None:
                scores = [s if s is not None else float("-inf") for s in ranking[p * self.n : (p + 1) * self.n]]
                out[f"bon@{self.n}"] += correct[max(range(self.n), key=scores.__getitem__)]
        return out
