"""AFT: Alignment Fine-Tuning, Wang et al. 2023, "Making Large Language Models Better Reasoners
with Alignment" (arXiv 2309.02144).

The score of a chain of thought c for a question q is its length-normalised log-likelihood,

    s(c) = (1/|c|) Σ_j log P(c_j | c_<j, q)          (response tokens only)

and the loss of one question's group of chains is L = w·L_VFT + w_A·L_A, where L_VFT is the
token-mean NLL of the group's positive chains (and of the reference solution when the data has
one), averaged over those chains. With P the positive and N the negative chains:

- ``constraint="none"``:     L_A = log(1 + Σ_{p∈P} Σ_{n∈N} exp(s_n − s_p))
- ``constraint="detach"``:   the same with s_n detached: only positives are pushed up.
- ``constraint="boundary"``: L_A = log(1 + Σ_p Σ_n [exp(s_n − s_p) + exp(T − s_n)]),
  with B = min_p s_p − β and T = 2B − s_p = 2·s_{p*} − 2β − s_p treated as a constant. The
  s_n-gradient of a pair's terms, exp(s_n − s_p) − exp(T − s_n), vanishes exactly at s_n = B:
  negatives are pushed down only until they reach the boundary β below the worst positive.

**Ranking feedback.** Each chain has a rank r (lower is better, ties allowed). Every ordered
pair (i, j) with r_i < r_j is a (better, worse) pair, and the worse chain's boundary is β below
the lowest score among the chains ranked above it:

    B_j = min_{k: r_k < r_j} s_k − β
    L_A = log(1 + Σ_{(i,j): r_i < r_j} [exp(s_j − s_i) + exp(sg(2·B_j − s_i) − s_j)])

(sg = stop-gradient; the second term is present with ``boundary`` only). Binary feedback is the
case of two ranks, positives 0 and negatives 1, which gives back the formulas above. Rank-0
chains are the positives of L_VFT. A group with no pair (no positive or no negative)
contributes only L_VFT. No reference model is used.

**w_A = 0** leaves L_VFT alone: fine-tuning on the sampled correct chains and the gold one, i.e.
rejection-sampling fine-tuning (RFT, Yuan et al. 2023, arXiv 2308.01825), the baseline the AFT
paper compares with, on exactly AFT's batches, so the difference is the alignment term alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_align.data.batch import GroupBatch
from lit_align.data.formats import FORMATS
from lit_align.objectives.base import Objective, ObjectiveOutput
from lit_align.objectives.reduce import masked_mean, normalize

CONSTRAINTS = ("none", "detach", "boundary")


def boundaries(scores: Tensor, better: Tensor, beta: float) -> Tensor:
    """B_j = min over chains ranked above j of their score, minus β; +inf where none is above.

    Args:
        scores: ``(n,)`` chain scores.
        better: ``(n, n)`` bool, ``better[i, j]`` when chain i is ranked above chain j.
    """
    above = torch.where(better, scores[:, None], torch.full_like(better, float("inf"), dtype=scores.dtype))
    return above.min(dim=0).values - beta


def aft_alignment_loss(scores: Tensor, ranks: Tensor, beta: float, constraint: str = "boundary") -> Tensor:
    """L_A of one group.

    Args:
        scores: ``(n,)`` chain scores s (length-normalised log-likelihoods).
        ranks: ``(n,)`` integer ranks, lower is better; binary feedback is 0 (positive) or 1.
        beta: the boundary margin β (``boundary`` only).
        constraint: ``none``, ``detach`` or ``boundary``.

    Returns:
        A scalar; 0 when the group has no (better, worse) pair.
    """
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
    better = ranks[:, None] < ranks[None, :]
    if not bool(better.any()):
        return scores.sum() * 0.0  # keeps the graph; no NaN
    worse_scores = scores.detach() if constraint == "detach" else scores
    exponents = [(worse_scores[None, :] - scores[:, None])[better]]  # s_j − s_i
    if constraint == "boundary":
        constant = scores.detach()
        target = 2 * boundaries(constant, better, beta)[None, :] - constant[:, None]  # T_ij = 2·B_j − s_i
        exponents.append((target - scores[None, :])[better])  # T_ij − s_j
    # log(1 + Σ exp(x)) = logsumexp([0, x_1, x_2, …]), stable for large x.
    return torch.logsumexp(torch.cat([scores.new_zeros(1), *exponents]), dim=0)


class AFT(Objective):
    """AFT over a batch of flattened groups.

    A micro-batch is a `GroupBatch`: questions with their chains, each chain's group its
    ``prompt_index``, with ``rank`` the ranking label, ``correct`` the binary label and
    ``reference`` true for reference solutions (trained by L_VFT only, never paired), each
    ``(chains,)``. The loss is averaged over the questions of the step.

    Args:
        beta: boundary margin β.
        constraint: ``boundary`` (default), ``detach`` or ``none``.
        feedback: ``binary`` (pairs positives with negatives) or ``ranking`` (every ordered pair
            of different ranks).
        vft_weight: weight w of L_VFT.
        alignment_weight: weight w_A of L_A; 0 is RFT on the same batches (the ablation of L_A).
    """

    row_format = FORMATS["groups"]

    def __init__(
        self,
        beta: float = 0.1,
        constraint: str = "boundary",
        feedback: str = "binary",
        vft_weight: float = 1.0,
        alignment_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
        if feedback not in ("binary", "ranking"):
            raise ValueError(f"feedback must be binary or ranking, got {feedback!r}")
        if min(beta, vft_weight, alignment_weight) < 0:
            weights = f"{beta}, {vft_weight}, {alignment_weight}"
            raise ValueError(f"beta, vft_weight and alignment_weight must be >= 0, got {weights}")
        self.beta, self.constraint, self.feedback = beta, constraint, feedback
        self.vft_weight, self.alignment_weight = vft_weight, alignment_weight

    def normalizer(self, batch: GroupBatch) -> Tensor:
        return torch.tensor(batch.num_prompts, device=batch.prompt_ids.device)

    def forward(
        self,
        batch: GroupBatch,
        logps: Tensor,
        ref_logps: Tensor | None,
        normalizer: Tensor,
    ) -> ObjectiveOutput:
        scores = masked_mean(logps, batch.loss_mask, dim=1)  # s(c), (chains,)
        reference = batch.reference.bool()
        ranks = batch.rank if self.feedback == "ranking" else (~batch.correct.bool()).long()
        positive = (ranks == 0) & ~reference
        vft_rows = positive | reference
        total = scores.new_zeros(())
        pairs = ordered = violations = worse = 0
        for g in range(batch.num_prompts):
            rows = batch.prompt_index == g
            vft = rows & vft_rows
            if vft.any():  # mean over the group's VFT chains of their token-mean NLL
                total = total - self.vft_weight * scores[vft].mean()
            ranked = rows & ~reference
            s, r = scores[ranked], ranks[ranked]
            total = total + self.alignment_weight * aft_alignment_loss(s, r, self.beta, self.constraint)
            with torch.no_grad():  # the paper's assessment accuracy, and who sits below B
                better = r[:, None] < r[None, :]
                has_above = better.any(dim=0)
                pairs += int(better.sum())
                ordered += int((better & (s[:, None] > s[None, :])).sum())
                worse += int(has_above.sum())
                violations += int((has_above & (s < boundaries(s, better, self.beta))).sum())
        score = scores.detach()
        negative = (ranks > 0) & ~reference
        metrics = {}
        if positive.any():
            metrics["aft/pos_score"] = score[positive].mean()
        if negative.any():
            metrics["aft/neg_score"] = score[negative].mean()
        if reference.any():  # the gold chains: does pushing negatives down drag them down too?
            metrics["aft/reference_score"] = score[reference].mean()
        if positive.any() and negative.any():
            metrics["aft/score_gap"] = metrics["aft/pos_score"] - metrics["aft/neg_score"]
        if pairs:
            metrics["aft/pair_accuracy"] = score.new_tensor(ordered / pairs)
            metrics["aft/boundary_violations"] = score.new_tensor(violations / worse)
        return ObjectiveOutput(normalize(total, normalizer), metrics)
