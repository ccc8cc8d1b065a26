import math

import pytest
import torch
from torch.testing import assert_close

from lit_align.objectives.aft import AFT, aft_alignment_loss, boundaries
from tests.batches import group_batch

T = torch.tensor


def test_binary_constraints_by_hand():
    """s_p = −1, s_n = −2, β = 0.5.
    none/detach: log(1 + e^(−2+1)) = log(1 + e^−1) = 0.313262
    boundary: B = −1 − 0.5 = −1.5, T = 2B − s_p = −2, exp(T − s_n) = e^0 = 1,
              L = log(1 + e^−1 + 1) = 0.861995, dL/ds_n = (e^−1 − 1)/(2 + e^−1) = −0.266956
    """
    ranks = T([0, 1])
    for constraint in ("none", "detach"):
        assert_close(aft_alignment_loss(T([-1.0, -2.0]), ranks, 0.5, constraint), T(0.313262), atol=1e-6, rtol=0)
    s = T([-1.0, -2.0], requires_grad=True)
    loss = aft_alignment_loss(s, ranks, 0.5, "boundary")
    assert_close(loss, T(0.861995), atol=1e-6, rtol=0)
    loss.backward()
    assert_close(s.grad[1], T(-0.266956), atol=1e-6, rtol=0)  # below B: pulled back up


def test_detach_gives_negatives_zero_gradient():
    s = T([-1.0, -0.5, -2.0, -3.0], requires_grad=True)
    aft_alignment_loss(s, T([0, 0, 1, 1]), 0.5, "detach").backward()
    assert (s.grad[2:] == 0).all() and (s.grad[:2] < 0).all()


@pytest.mark.parametrize("positives", [[-1.0], [-1.0, -0.4, -0.7]])
def test_boundary_gradient_vanishes_exactly_at_b(positives):
    beta = 0.3
    b = min(positives) - beta
    s = T([*positives, b, b + 0.5, b - 0.5], requires_grad=True)
    aft_alignment_loss(s, T([0] * len(positives) + [1, 1, 1]), beta, "boundary").backward()
    n = len(positives)
    assert_close(s.grad[n], T(0.0), atol=1e-7, rtol=0)
    assert s.grad[n + 1] > 0 and s.grad[n + 2] < 0  # above B pushed down, below B pulled up
    assert_close(boundaries(s.detach(), T([0] * n + [1] * 3)[:, None] < T([0] * n + [1] * 3)[None, :], beta)[n:],
                 T([b] * 3))  # fmt: skip


def test_ranking_by_hand():
    """s = [−1, −2, −3], ranks [0, 1, 2], β = 0.5. B_1 = −1.5, B_2 = min(−1, −2) − 0.5 = −2.5.
    (0,1): e^−1 + exp((2·−1.5 + 1) + 2) = e^−1 + 1
    (0,2): e^−2 + exp((2·−2.5 + 1) + 3) = e^−2 + e^−1
    (1,2): e^−1 + exp((2·−2.5 + 2) + 3) = e^−1 + 1
    L = log(1 + 3e^−1 + e^−2 + 2) = 1.444321
    """
    loss = aft_alignment_loss(T([-1.0, -2.0, -3.0]), T([0, 1, 2]), 0.5, "boundary")
    assert_close(loss, T(1.444321), atol=1e-6, rtol=0)
    # Ties make no pair: two chains of equal rank give 0.
    assert aft_alignment_loss(T([-1.0, -2.0]), T([1, 1]), 0.5).item() == 0.0


def test_binary_is_ranking_with_two_levels():
    s = T([-1.0, -0.5, -2.0, -1.2])
    assert_close(aft_alignment_loss(s, T([0, 0, 1, 1]), 0.2), aft_alignment_loss(s, T([0, 0, 3, 3]), 0.2))


def _groups_batch():
    """Two questions: q0 has a reference solution, a correct and two wrong chains (one and two
    wrong steps); q1 has only correct chains. Each row's log-probs are constant per token."""
    per_token = [-0.2, -0.5, -1.0, -2.0, -0.3, -0.4]
    mask = [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 1]]
    batch = group_batch(mask, [0, 0, 0, 0, 1, 1], reference=T([1, 0, 0, 0, 0, 0]), correct=T([1, 1, 0, 0, 1, 1]),
                        rank=T([0, 0, 1, 2, 0, 0]))  # fmt: skip
    logps = T(per_token)[:, None].expand(6, 3).clone()
    return batch, logps


def test_aft_objective_combines_vft_and_alignment_per_group():
    """Scores are the per-token values. q0: VFT over the reference (−0.2) and the correct chain
    (−0.5) → mean NLL 0.35; L_A binary none over p=−0.5, n ∈ {−1, −2}: log(1 + e^−0.5 + e^−1.5).
    q1: VFT only, mean NLL (0.3 + 0.4)/2 = 0.35. Loss = sum / 2 groups."""
    batch, logps = _groups_batch()
    objective = AFT(beta=0.5, constraint="none", feedback="binary")
    assert not objective.needs_reference and objective.normalizer(batch).item() == 2
    out = objective(batch, logps, None, objective.normalizer(batch))
    expected = (0.35 + math.log(1 + math.exp(-0.5) + math.exp(-1.5)) + 0.35) / 2
    assert_close(out.loss, T(expected), atol=1e-6, rtol=0)
    assert_close(out.metrics["aft/pos_score"], T((-0.5 - 0.3 - 0.4) / 3))
    assert_close(out.metrics["aft/neg_score"], T(-1.5))
    assert out.metrics["aft/pair_accuracy"].item() == 1.0
    # B = −0.5 − 0.5 = −1: the chain at −2 is below it, the one at −1 is not.
    assert out.metrics["aft/boundary_violations"].item() == 0.5


def test_alignment_weight_scales_l_a_and_zero_is_rft():
    """The batch of the test above: L_VFT is 0.35 in both groups and q0's L_A is
    log(1 + e^−0.5 + e^−1.5); w_A = 0 leaves L_VFT alone (RFT on the same chains)."""
    batch, logps = _groups_batch()
    l_a = math.log(1 + math.exp(-0.5) + math.exp(-1.5))
    rft = AFT(beta=0.5, constraint="none", alignment_weight=0.0)(batch, logps, None, T(2.0))
    half = AFT(beta=0.5, constraint="none", alignment_weight=0.5)(batch, logps, None, T(2.0))
    assert_close(rft.loss, T(0.35), atol=1e-6, rtol=0)
    assert_close(half.loss, T((0.35 + 0.5 * l_a + 0.35) / 2), atol=1e-6, rtol=0)
    # The gold chain's score is logged on its own: q0's reference, −0.2 per token.
    assert_close(rft.metrics["aft/reference_score"], T(-0.2))


def test_aft_ranking_feedback_uses_ranks():
    batch, logps = _groups_batch()
    binary = AFT(beta=0.5, feedback="binary")(batch, logps, None, T(2.0)).loss
    ranking = AFT(beta=0.5, feedback="ranking")(batch, logps, None, T(2.0)).loss
    # q0's ranking adds the pair (one wrong step, two wrong steps) and moves its boundary.
    s = T([-0.5, -1.0, -2.0])
    expected = (0.35 + aft_alignment_loss(s, T([0, 1, 2]), 0.5).item() + 0.35) / 2
    assert_close(ranking, T(expected), atol=1e-6, rtol=0)
    assert not torch.isclose(binary, ranking)


def test_fully_masked_rows_give_zero_not_nan():
    batch, logps = _groups_batch()
    batch.loss_mask = torch.zeros_like(batch.loss_mask)
    logps.requires_grad_(True)
    out = AFT(beta=0.5)(batch, logps, None, T(2.0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(logps.grad).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="constraint"):
        AFT(constraint="soft")
    with pytest.raises(ValueError, match="feedback"):
        AFT(feedback="pairwise")
    with pytest.raises(ValueError, match="alignment_weight"):
        AFT(alignment_weight=-1.0)
