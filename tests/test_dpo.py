import math

import pytest
import torch
from torch.testing import assert_close

from lit_align.data.batch import PairBatch
from lit_align.objectives.dpo import DPO, dpo_losses

T = torch.tensor


def test_dpo_losses_by_hand():
    """Pair 1: π_c=-1, π_r=-3, ref -2/-2, β=0.5 → h = (−1+2) − (−3+2) = 2, βh = 1.
    Pair 2: π_c=-2, π_r=-1, ref -2/-2 → h = 0 − 1 = −1, βh = −0.5.

    sigmoid: −log σ(1) = log(1+e^−1) = 0.313262;  −log σ(−0.5) = log(1+e^0.5) = 0.974077
    ε = 0.1:  0.9·0.313262 + 0.1·log(1+e^1) = 0.413262
    ipo:      (2 − 1/(2·0.5))² = 1;  (−1 − 1)² = 4
    hinge:    max(0, 1 − 1) = 0;  max(0, 1 + 0.5) = 1.5
    rewards:  chosen β(−1+2) = 0.5, rejected β(−3+2) = −0.5 (pair 1)
    """
    args = T([-1.0, -2.0]), T([-3.0, -1.0]), T([-2.0, -2.0]), T([-2.0, -2.0])
    losses, chosen, rejected = dpo_losses(*args, beta=0.5)
    assert_close(losses, T([0.313262, 0.974077]), atol=1e-6, rtol=0)
    assert_close(chosen, T([0.5, 0.0]))
    assert_close(rejected, T([-0.5, 0.5]))
    assert_close(dpo_losses(*args, beta=0.5, label_smoothing=0.1)[0][0], T(0.413262), atol=1e-6, rtol=0)
    assert_close(dpo_losses(*args, beta=0.5, loss_type="ipo")[0], T([1.0, 4.0]))
    assert_close(dpo_losses(*args, beta=0.5, loss_type="hinge")[0], T([0.0, 1.5]))


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_preferred_pair_has_lower_loss(loss_type):
    better = dpo_losses(T([-1.0]), T([-4.0]), T([-2.0]), T([-2.0]), beta=0.1, loss_type=loss_type)[0]
    worse = dpo_losses(T([-4.0]), T([-1.0]), T([-2.0]), T([-2.0]), beta=0.1, loss_type=loss_type)[0]
    assert better.item() < worse.item()


def test_gradient_pushes_chosen_up_and_rejected_down_and_skips_the_reference():
    chosen, rejected = T([-2.0], requires_grad=True), T([-2.0], requires_grad=True)
    ref_c, ref_r = T([-2.0], requires_grad=True), T([-2.0], requires_grad=True)
    losses, rc, rr = dpo_losses(chosen, rejected, ref_c.detach(), ref_r.detach(), beta=1.0)
    losses.sum().backward()
    # At h = 0: d/dπ_c −log σ(h) = −σ(−0) = −0.5, and +0.5 for π_r.
    assert_close(chosen.grad, T([-0.5]))
    assert_close(rejected.grad, T([0.5]))
    assert ref_c.grad is None and not rc.requires_grad and not rr.requires_grad


def _pair_batch(logps_rows, mask_rows, ref_logps=None):
    """One pair per two rows (chosen, rejected), ``ref_logps`` flat (c0, r0, c1, r1 …)."""
    rows, width = len(mask_rows), len(mask_rows[0])
    pairs = torch.arange(rows // 2)
    batch = PairBatch(
        prompt_ids=torch.ones(rows // 2, 1, dtype=torch.long), prompt_mask=torch.ones(rows // 2, 1, dtype=torch.long),
        response_ids=torch.zeros(rows, width, dtype=torch.long), response_mask=torch.tensor(mask_rows),
        loss_mask=torch.tensor(mask_rows), prompt_index=torch.arange(rows) // 2,
        chosen=2 * pairs, rejected=2 * pairs + 1,
        ref_logps=None if ref_logps is None else T(ref_logps).view(-1, 2),
    )  # fmt: skip
    return batch, T(logps_rows)


def test_dpo_objective_sums_response_tokens_and_averages_pairs():
    """Chosen row: tokens −0.5, −0.5 (a masked −9 ignored) → −1; rejected: −3. Ref −2, −2.
    h = 2, β = 0.5 → loss 0.313262 for the one pair, normalizer 1 pair."""
    batch, logps = _pair_batch([[-0.5, -0.5, -9.0], [-1.0, -2.0, -9.0]], [[1, 1, 0], [1, 1, 0]], [-2.0, -2.0])
    objective = DPO(beta=0.5, precompute_ref=True)
    assert not objective.needs_reference and DPO().needs_reference
    assert objective.normalizer(batch).item() == 1
    out = objective(batch, logps, None, objective.normalizer(batch))
    assert_close(out.loss, T(0.313262), atol=1e-6, rtol=0)
    assert out.metrics["rewards/accuracies"].item() == 1.0
    assert_close(out.metrics["rewards/margins"], T(1.0))
    assert_close(out.metrics["logps/chosen"], T(-1.0))
    assert_close(out.metrics["logps/rejected"], T(-3.0))
    # A step of 4 pairs: this micro-batch carries a quarter of the mean.
    assert_close(objective(batch, logps, None, T(4.0)).loss, T(0.313262 / 4), atol=1e-6, rtol=0)


def test_sft_weight_adds_token_mean_nll_of_chosen():
    batch, logps = _pair_batch([[-0.5, -1.5, -9.0], [-1.0, -2.0, -9.0]], [[1, 1, 0], [1, 1, 0]], [-2.0, -2.0])
    plain = DPO(beta=0.5, precompute_ref=True)(batch, logps, None, T(1.0)).loss
    mixed = DPO(beta=0.5, sft_weight=2.0, precompute_ref=True)(batch, logps, None, T(1.0)).loss
    assert_close(mixed - plain, T(2.0 * 1.0))  # chosen NLL token mean = (0.5 + 1.5)/2 = 1


def _two_pairs_of_unequal_length():
    # Pair 0: chosen tokens −0.5, −1.5 (2); pair 1: chosen −1, −2, −3 (3). Rejected rows: −4 each.
    rows = [[-0.5, -1.5, -9.0], [-4.0, -9.0, -9.0], [-1.0, -2.0, -3.0], [-4.0, -9.0, -9.0]]
    masks = [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]
    return _pair_batch(rows, masks, [-2.0, -2.0, -2.0, -2.0])


def test_sft_normalize_token_is_the_mean_over_all_chosen_tokens_of_the_step():
    """pair: (1 + 2) / 2 = 1.5 (each pair's token mean, averaged); token: (0.5 + 1.5 + 1 + 2 + 3) / 5
    = 1.6, TRL's ``-chosen_per_token_logps[chosen_mask].mean()`` (trl/trainer/dpo_trainer.py,
    loss_type "sft") on the same inputs."""
    batch, logps = _two_pairs_of_unequal_length()
    plain = DPO(beta=0.5, precompute_ref=True)
    per_pair = DPO(beta=0.5, sft_weight=1.0, precompute_ref=True)
    per_token = DPO(beta=0.5, sft_weight=1.0, precompute_ref=True, sft_normalize="token")
    assert per_token.normalizer(batch).tolist() == [2, 5]
    base = plain(batch, logps, None, plain.normalizer(batch)).loss
    assert_close(per_pair(batch, logps, None, per_pair.normalizer(batch)).loss - base, T(1.5))
    out = per_token(batch, logps, None, per_token.normalizer(batch).float())
    chosen_logps, chosen_mask = logps[batch.chosen], batch.loss_mask[batch.chosen]
    trl_sft = -chosen_logps[chosen_mask.bool()].mean()
    assert_close(trl_sft, T(1.6))
    assert_close(out.loss - base, trl_sft)
    assert_close(out.metrics["logps/chosen_nll"], T(1.6))


def test_sft_normalize_token_does_not_change_with_micro_batching():
    """Each micro-batch divides by the step's counts (2 pairs, 5 chosen tokens): the two halves
    add up to the whole step's loss, which a per-micro-batch token mean (TRL's) would not."""
    batch, logps = _two_pairs_of_unequal_length()
    objective = DPO(beta=0.5, sft_weight=1.0, precompute_ref=True, sft_normalize="token")
    step = objective.normalizer(batch).float()
    whole = objective(batch, logps, None, step).loss
    halves = []
    for pair in (0, 1):
        rows = [2 * pair, 2 * pair + 1]
        half, _ = _pair_batch(logps[rows].tolist(), batch.loss_mask[rows].tolist(), [-2.0, -2.0])
        halves.append(objective(half, logps[rows], None, step).loss)
    assert_close(halves[0] + halves[1], whole)


def test_fully_masked_rows_give_finite_zero_margin():
    batch, logps = _pair_batch([[-1.0, -1.0], [-2.0, -2.0]], [[0, 0], [0, 0]], [0.0, 0.0])
    logps.requires_grad_(True)
    out = DPO(beta=0.5, sft_weight=1.0, precompute_ref=True)(batch, logps, None, T(1.0))
    assert_close(out.loss, T(math.log(2.0)))  # h = 0 → −log σ(0); NLL of an empty chosen is 0
    out.loss.backward()
    assert torch.isfinite(logps.grad).all() and logps.grad.abs().sum() == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [({"beta": 0}, "beta"), ({"loss_type": "kto"}, "loss_type"), ({"label_smoothing": 0.5}, "label_smoothing"),
     ({"loss_type": "ipo", "label_smoothing": 0.1}, "sigmoid only")],
)  # fmt: skip
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DPO(**kwargs)


def test_ipo_is_on_per_token_log_ratios_as_trl_computes_it():
    """TRL 1.16, trl/trainer/dpo_trainer.py, ``loss_type == "ipo"``: the summed log-ratios
    divided by each completion's token count, then (Δ − 1/(2β))². Pair: chosen 3 tokens
    (−0.5, −0.5, −1.0; reference −1 each), rejected 2 tokens (−2, −2; reference −1.5 each).
    Per token: chosen (−2 + 3)/3 = 1/3, rejected (−4 + 3)/2 = −1/2, Δ = 5/6; β = 0.1:
    (5/6 − 5)² = (−25/6)² = 17.3611. Summed (ipo_normalize=false): Δ = 1 + 1 = 2: (2 − 5)² = 9."""
    mask = [[1, 1, 1], [1, 1, 0]]
    batch, logps = _pair_batch([[-0.5, -0.5, -1.0], [-2.0, -2.0, -9.0]], mask, [-3.0, -3.0])
    normalized = DPO(beta=0.1, loss_type="ipo", precompute_ref=True)(batch, logps, None, T(1.0)).loss
    summed = DPO(beta=0.1, loss_type="ipo", precompute_ref=True, ipo_normalize=False)(batch, logps, None, T(1.0)).loss
    assert_close(normalized, T((5 / 6 - 5) ** 2))
    assert_close(summed, T(9.0))
    # TRL's lines on the same per-token inputs (scores = summed log-ratios, completion_mask).
    completion_mask = T(mask).float()
    chosen_scores, rejected_scores = T([-2.0 + 3.0]), T([-4.0 + 3.0])
    chosen_avg = chosen_scores / completion_mask[:1].sum(dim=1).clamp(min=1.0)
    rejected_avg = rejected_scores / completion_mask[1:].sum(dim=1).clamp(min=1.0)
    trl_loss = ((chosen_avg - rejected_avg - 1 / (2 * 0.1)) ** 2).mean()
    assert_close(normalized, trl_loss)
