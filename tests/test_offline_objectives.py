"""SimPO, ORPO and KTO: hand-worked losses and gradients, and TRL 1.16's numbers on the same inputs."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from lit_align.data.batch import PairBatch, UnpairedBatch
from lit_align.objectives.kto import KTO, kto_losses, kto_reference_point
from lit_align.objectives.orpo import ORPO, log1mexp, orpo_losses
from lit_align.objectives.simpo import SimPO, simpo_losses
from tests.batches import fields_of


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# -- SimPO --------------------------------------------------------------------------------------


def test_simpo_loss_and_gradient_by_hand():
    """β=2, γ=1, chosen avg −1, rejected avg −2: h = 2·(−1 + 2) − 1 = 1, loss = −log σ(1) = 0.31326;
    ∂/∂chosen = −β·σ(−h) = −2·0.26894 = −0.53788, ∂/∂rejected = +0.53788.
    With ε = 0.1: 0.9·0.31326 + 0.1·(−log σ(−1) = 1.31326) = 0.41326."""
    chosen = torch.tensor([-1.0], requires_grad=True)
    rejected = torch.tensor([-2.0], requires_grad=True)
    losses, cr, rr = simpo_losses(chosen, rejected, beta=2.0, gamma=1.0)
    assert_close(losses, torch.tensor([0.313262]), atol=1e-5, rtol=0)
    assert_close((cr, rr), (torch.tensor([-2.0]), torch.tensor([-4.0])))
    losses.sum().backward()
    assert_close(chosen.grad, torch.tensor([-0.537883]), atol=1e-5, rtol=0)
    assert_close(rejected.grad, torch.tensor([0.537883]), atol=1e-5, rtol=0)
    smoothed = simpo_losses(torch.tensor([-1.0]), torch.tensor([-2.0]), 2.0, 1.0, label_smoothing=0.1)[0]
    assert_close(smoothed, torch.tensor([0.413262]), atol=1e-5, rtol=0)


def test_simpo_objective_length_normalises_and_averages_pairs():
    """Pair 0: chosen tokens (−1, −1) → avg −1, rejected (−3, −1, −2) → avg −2 → h = 1.
    Pair 1: chosen (−2) → −2, rejected (−2, −2) → −2 → h = −1. Step of 4 pairs:
    (−log σ(1) − log σ(−1)) / 4 = (0.31326 + 1.31326) / 4 = 0.40663."""
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    logps = torch.tensor([[-1.0, -1, 9], [-3, -1, -2], [-2, 9, 9], [-2, -2, 9]])
    batch = PairBatch(**fields_of(mask, [0, 0, 1, 1]), chosen=torch.tensor([0, 2]), rejected=torch.tensor([1, 3]))
    out = SimPO(beta=2.0, gamma=1.0)(batch, logps, None, torch.tensor(4.0))
    assert_close(out.loss, torch.tensor(0.406630), atol=1e-5, rtol=0)
    assert out.metrics["rewards/accuracies"] == 0.5
    assert not SimPO().needs_reference


def test_simpo_matches_trl_cpo_simpo_loss():
    """TRL's ``CPOTrainer.cpo_loss`` (trl/experimental/cpo/cpo_trainer.py, loss_type="simpo",
    alpha=0) called on a minimal object, with the token-mean log-probs its concatenated_forward
    passes for simpo (``average_log_prob=True``)."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    gen = torch.Generator().manual_seed(0)
    chosen, rejected = -torch.rand(16, generator=gen) * 3, -torch.rand(16, generator=gen) * 3
    for smoothing in (0.0, 0.2):
        trl = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=0.8, beta=2.5, label_smoothing=smoothing,
                              accelerator=SimpleNamespace(device="cpu"))  # fmt: skip
        expected, exp_chosen, exp_rejected = CPOTrainer.cpo_loss(trl, chosen, rejected)
        ours, our_chosen, our_rejected = simpo_losses(chosen, rejected, 2.5, 0.8, smoothing)
        assert_close(ours, expected, rtol=1e-6, atol=1e-7)
        assert_close((our_chosen, our_rejected), (exp_chosen, exp_rejected))


def test_simpo_with_the_nll_anchor_by_hand_and_as_trl_cpo_simpo():
    """The pairs of the test above with α = 0.5, the step being these 2 pairs: the SimPO part is
    (0.31326 + 1.31326) / 2 = 0.81326. ``token``: the chosen tokens −1, −1, −2 give NLL 4/3, so
    0.81326 + 0.5·4/3 = 1.47993. ``pair``: per-pair token means 1 and 2, mean 1.5, so 0.81326 +
    0.75 = 1.56326. TRL's CPO-SimPO (``losses.mean() + cpo_alpha * nll_loss``, the cross-entropy
    mean over the chosen tokens) on the same per-token log-probs is the ``token`` number."""
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    logps = torch.tensor([[-1.0, -1, 9], [-3, -1, -2], [-2, 9, 9], [-2, -2, 9]])
    batch = PairBatch(**fields_of(mask, [0, 0, 1, 1]), chosen=torch.tensor([0, 2]), rejected=torch.tensor([1, 3]))
    token = SimPO(beta=2.0, gamma=1.0, sft_weight=0.5, sft_normalize="token")
    normalizer = token.normalizer(batch)
    assert normalizer.tolist() == [2, 3]
    out = token(batch, logps, None, normalizer)
    assert_close(out.loss, torch.tensor(1.479930), atol=1e-5, rtol=0)
    assert_close(out.metrics["logps/chosen_nll"], torch.tensor(4 / 3))
    pair = SimPO(beta=2.0, gamma=1.0, sft_weight=0.5, sft_normalize="pair")
    assert_close(pair(batch, logps, None, pair.normalizer(batch)).loss, torch.tensor(1.563262), atol=1e-5, rtol=0)
    trl = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=1.0, beta=2.0, label_smoothing=0.0,
                          accelerator=SimpleNamespace(device="cpu"))  # fmt: skip
    avg = (logps * mask).sum(1) / mask.sum(1)
    losses = CPOTrainer.cpo_loss(trl, avg[batch.chosen], avg[batch.rejected])[0]
    chosen_tokens = logps[batch.chosen][mask[batch.chosen].bool()]
    assert_close(out.loss, losses.mean() + 0.5 * -chosen_tokens.mean())


def test_simpo_nll_anchor_does_not_change_with_micro_batching():
    """Each pair alone, divided by the step's counts, adds up to the two-pair step's loss."""
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])
    logps = torch.tensor([[-1.0, -1, 9], [-3, -1, -2], [-2, 9, 9], [-2, -2, 9]])
    both = PairBatch(**fields_of(mask, [0, 0, 1, 1]), chosen=torch.tensor([0, 2]), rejected=torch.tensor([1, 3]))
    for how in ("token", "pair"):
        objective = SimPO(beta=2.0, gamma=1.0, sft_weight=0.5, sft_normalize=how)
        step = objective.normalizer(both)
        whole = objective(both, logps, None, step).loss
        halves = [
            objective(PairBatch(**fields_of(mask[rows], [0, 0]), chosen=torch.tensor([0]), rejected=torch.tensor([1])),
                      logps[rows], None, step).loss
            for rows in (slice(0, 2), slice(2, 4))
        ]  # fmt: skip
        assert_close(halves[0] + halves[1], whole)


# -- ORPO ---------------------------------------------------------------------------------------


def test_orpo_loss_and_gradient_by_hand():
    """log P_w = log 0.5, log P_l = log 0.25: log odds_w = log(0.5/0.5) = 0, log odds_l =
    log(0.25/0.75) = −log 3, so the log odds ratio is log 3 = 1.09861 and L_OR = −log σ(log 3) =
    −log(3/4) = 0.28768. NLL 0.69315 (= −log P_w), λ = 0.5: loss = 0.69315 + 0.14384 = 0.83698.
    d(log odds)/d(log P) = 1/(1 − P): 2 for the chosen, 4/3 for the rejected; dL_OR/d(log odds) =
    −σ(−log 3) = −1/4, so ∂loss/∂log P_w = −1 (from the NLL term, which we pass as −log P_w) +
    0.5·(−1/4)·2 = −1.25, and ∂loss/∂log P_l = 0.5·(1/4)·(4/3) = 1/6."""
    chosen = torch.tensor([math.log(0.5)], requires_grad=True)
    rejected = torch.tensor([math.log(0.25)], requires_grad=True)
    losses, or_losses, log_odds = orpo_losses(chosen, rejected, -chosen, lam=0.5)
    assert_close(log_odds, torch.tensor([math.log(3)]))
    assert_close(or_losses, torch.tensor([-math.log(0.75)]))
    assert_close(losses, torch.tensor([0.836988]), atol=1e-5, rtol=0)
    losses.sum().backward()
    assert_close(chosen.grad, torch.tensor([-1.25]))
    assert_close(rejected.grad, torch.tensor([1 / 6]))


def test_log1mexp_is_stable_on_both_branches():
    x = torch.tensor([-1e-6, -0.5, -0.7, -5.0, -50.0], dtype=torch.float64)
    assert_close(log1mexp(x.float()), torch.log1p(-torch.exp(x)).float(), rtol=1e-5, atol=0)  # float64 exact enough


def test_orpo_objective_reads_token_means_and_averages_pairs():
    """Pair 0: chosen tokens (log 0.5, log 0.5) → log P = log 0.5; rejected one token log 0.25:
    the hand-worked pair above (λ = 0.5) → 0.83698. Pair 1 the same pair again, swapped in
    order (rejected listed first): also 0.83698. A step of 2 pairs → 0.83698."""
    a, b = math.log(0.5), math.log(0.25)
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 1]])
    logps = torch.tensor([[a, a], [b, 0.0], [b, 0.0], [a, a]])
    batch = PairBatch(**fields_of(mask, [0, 0, 1, 1]), chosen=torch.tensor([0, 3]), rejected=torch.tensor([1, 2]))
    out = ORPO(lam=0.5)(batch, logps, None, torch.tensor(2.0))
    assert_close(out.loss, torch.tensor(0.836988), atol=1e-5, rtol=0)
    assert_close(out.metrics["logps/chosen_nll"], torch.tensor(-a))
    assert not ORPO().needs_reference


def test_orpo_matches_trl_orpo_loss():
    """TRL's ``ORPOTrainer.odds_ratio_loss`` (trl/experimental/orpo/orpo_trainer.py) on a minimal
    object, and its ``get_batch_loss_metrics`` total ``policy_nll_loss − losses.mean()`` with its
    NLL (``nn.CrossEntropyLoss``, a token mean over the micro-batch's chosen tokens). With every
    chosen response of one length and only response tokens counted, TRL's NLL is the mean of our
    per-pair token means, so the totals agree (see the module docstring for the differences)."""
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    gen = torch.Generator().manual_seed(1)
    pairs, length = 6, 5
    chosen_tokens = -torch.rand(pairs, length, generator=gen) * 2  # per-token log-probs
    rejected_avg = -torch.rand(pairs, generator=gen) * 3
    chosen_avg = chosen_tokens.mean(-1)
    trl = SimpleNamespace(beta=0.3, accelerator=SimpleNamespace(device="cpu"))
    losses, _, _, _, log_odds_mean = ORPOTrainer.odds_ratio_loss(trl, chosen_avg, rejected_avg)
    ours, or_losses, log_odds = orpo_losses(chosen_avg, rejected_avg, -chosen_avg, lam=0.3)
    assert_close(0.3 * or_losses, -losses, rtol=1e-6, atol=1e-7)
    assert_close(log_odds.mean(), log_odds_mean, rtol=1e-6, atol=1e-7)
    trl_nll = -chosen_tokens.flatten().mean()  # CrossEntropyLoss over the chosen response tokens
    assert_close(ours.mean(), trl_nll - losses.mean(), rtol=1e-6, atol=1e-7)


# -- KTO ----------------------------------------------------------------------------------------


def test_kto_losses_and_gradient_by_hand():
    """β = 1, z₀ = 0.5. Desirable, r = 1.5: λ_D·(1 − σ(1)) = 2·0.26894 = 0.53788, ∂/∂log π =
    −λ_D·β·σ(1)σ(−1) = −2·0.19661 = −0.39322. Undesirable, r = −0.5: λ_U·(1 − σ(0.5 + 0.5)) =
    0.26894, ∂/∂log π = +σ(1)σ(−1) = 0.19661. No gradient reaches z₀ or the reference."""
    policy = torch.tensor([1.0, -1.5], requires_grad=True)
    ref = torch.tensor([-0.5, -1.0], requires_grad=True)
    z0 = torch.tensor(0.5, requires_grad=True)
    losses, rewards = kto_losses(policy, ref.detach(), torch.tensor([True, False]), z0, 1.0, 2.0, 1.0)
    assert_close(losses, torch.tensor([0.537883, 0.268941]), atol=1e-5, rtol=0)
    assert_close(rewards, torch.tensor([1.5, -0.5]))
    losses.sum().backward()
    assert_close(policy.grad, torch.tensor([-0.393224, 0.196612]), atol=1e-5, rtol=0)
    assert z0.grad is None and ref.grad is None
    assert kto_reference_point(torch.tensor(-0.3)) == 0 and kto_reference_point(torch.tensor(0.3)) == 0.3


def _unpaired(mask, desirable, kl_mask) -> UnpairedBatch:
    kl_mask = torch.as_tensor(kl_mask)
    return UnpairedBatch(**fields_of(mask, list(range(len(mask)))), desirable=torch.tensor(desirable),
                         kl_response_ids=torch.zeros_like(kl_mask), kl_response_mask=kl_mask)  # fmt: skip


def test_kto_objective_sums_tokens_and_averages_responses():
    """Row 0 desirable, tokens (0.5, 0.5) − ref (0, 0) → r = 1; row 1 undesirable, token −1 − ref
    0 → r = −1. KL estimate 0.5 → z₀ = 0.5, β = 1: 1 − σ(0.5) = 0.37754 and 1 − σ(1.5) = 0.18243;
    a step of 4 responses: (0.37754 + 0.18243) / 4 = 0.13999. A negative estimate gives z₀ = 0:
    (1 − σ(1) + 1 − σ(1)) / 4 = 0.13447."""
    batch = _unpaired([[1, 1], [1, 0]], [True, False], [[1], [1]])
    logps, ref = torch.tensor([[0.5, 0.5], [-1.0, 7.0]]), torch.zeros(2, 2)
    out = KTO(beta=1.0)(batch, logps, ref, torch.tensor(4.0), kl_estimate=torch.tensor(0.5))
    assert_close(out.loss, torch.tensor(0.139993), atol=1e-5, rtol=0)
    assert_close(out.metrics["rewards/chosen"], torch.tensor(1.0))
    assert_close(out.metrics["rewards/rejected"], torch.tensor(-1.0))
    out = KTO(beta=1.0)(batch, logps, ref, torch.tensor(4.0), kl_estimate=torch.tensor(-2.0))
    assert_close(out.loss, torch.tensor(0.134470), atol=1e-5, rtol=0)
    assert out.metrics["kto/kl"] == 0


def test_kto_nll_anchor_averages_the_desirable_responses_of_the_step():
    """The batch above, in a step of 4 responses of which 2 are desirable: row 0's token-mean NLL
    is −0.5, so the anchor at weight 2 adds 2 · (−0.5) / 2 = −0.5 to 0.139993. The undesirable
    row (token −1) is not anchored."""
    batch = _unpaired([[1, 1], [1, 0]], [True, False], [[1], [1]])
    logps, ref = torch.tensor([[0.5, 0.5], [-1.0, 7.0]]), torch.zeros(2, 2)
    objective = KTO(beta=1.0, sft_weight=2.0)
    assert objective.normalizer(batch).tolist() == [2, 1]  # (responses, desirable) of this micro-batch
    out = objective(batch, logps, ref, torch.tensor([4.0, 2.0]), kl_estimate=torch.tensor(0.5))
    assert_close(out.loss, torch.tensor(0.139993 - 0.5), atol=1e-5, rtol=0)
    assert_close(out.metrics["kto/desirable_nll"], torch.tensor(-0.5))


def _trl_kto_loss(policy, ref, labels, kl_logps, ref_kl_logps, beta, dw, uw):
    """TRL 1.16's KTO loss, transcribed from trl/trainer/kto_trainer.py ``_compute_loss`` (lines
    1399–1405, 1442–1484, 1544: the ``loss_type="kto"`` branch on one process, where
    ``gather_for_metrics`` is the identity). It is inline in a 200-line method that needs a model
    forward, so it cannot be called on tensors; this copies its statements in order."""
    bool_labels = torch.as_tensor(labels, dtype=torch.bool)
    chosen_idx = torch.nonzero(bool_labels, as_tuple=False).view(-1)
    rejected_idx = torch.nonzero(~bool_labels, as_tuple=False).view(-1)
    chosen_logps, rejected_logps = policy.index_select(0, chosen_idx), policy.index_select(0, rejected_idx)
    ref_chosen_logps, ref_rejected_logps = ref.index_select(0, chosen_idx), ref.index_select(0, rejected_idx)
    kl = (kl_logps - ref_kl_logps).mean().detach()
    kl = kl.mean().clamp(min=0)
    chosen_losses = 1 - F.sigmoid(beta * ((chosen_logps - ref_chosen_logps) - kl))
    rejected_losses = 1 - F.sigmoid(beta * (kl - (rejected_logps - ref_rejected_logps)))
    losses = torch.cat((dw * chosen_losses, uw * rejected_losses), 0)
    return losses.nanmean(), kl


@pytest.mark.parametrize("kl_shift", [0.0, -3.0])  # a positive and a clamped (negative) KL estimate
def test_kto_matches_trl_kto_loss(kl_shift):
    """Our per-response losses averaged over the step equal TRL's micro-batch loss on the same
    sequence log-probs (policy, reference, and the mismatched pairs' under both)."""
    gen = torch.Generator().manual_seed(2)
    n = 10
    policy, ref = -torch.rand(n, generator=gen) * 20, -torch.rand(n, generator=gen) * 20
    kl_policy, kl_ref = -torch.rand(n, generator=gen) * 20, -torch.rand(n, generator=gen) * 20 - kl_shift
    labels = [bool(x) for x in (torch.rand(n, generator=gen) > 0.4)]
    expected, expected_kl = _trl_kto_loss(policy, ref, labels, kl_policy, kl_ref, 0.1, 1.33, 0.7)
    z0 = kto_reference_point((kl_policy - kl_ref).mean())
    losses, _ = kto_losses(policy, ref, torch.tensor(labels), z0, 0.1, 1.33, 0.7)
    assert_close(z0, expected_kl)
    assert_close(losses.mean(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [(SimPO, {"beta": 0}, "beta"), (SimPO, {"label_smoothing": 0.5}, "label_smoothing"), (ORPO, {"lam": -1}, "lam"),
     (KTO, {"beta": -1}, "beta"), (KTO, {"undesirable_weight": -1}, "weights")],
)  # fmt: skip
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)
