import torch
from torch.testing import assert_close

from lit_align.objectives.logps import shifted_logps, token_logps
from lit_align.objectives.reduce import masked_mean, masked_sum, normalize
from lit_align.objectives.sft import SFT, sft_loss
from tests.batches import sft_batch


def test_token_logps_matches_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11)
    labels = torch.randint(0, 11, (3, 5))
    expected = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    assert_close(token_logps(logits, labels), expected)
    assert_close(token_logps(logits.bfloat16(), labels), expected, atol=0.05, rtol=0.0)
    assert token_logps(logits.bfloat16(), labels).dtype == torch.float32


def test_shifted_logps_predicts_the_next_token():
    # Uniform logits over 4 tokens: every next token has log-prob log(1/4).
    logits = torch.zeros(1, 3, 4)
    out = shifted_logps(logits, torch.tensor([[0, 1, 2]]))
    assert out.shape == (1, 2)
    assert_close(out, torch.full((1, 2), -torch.log(torch.tensor(4.0)).item()))


def test_sft_loss_by_hand():
    """logps [[-1, -2, -3], [-4, -5, -6]], mask [[0, 1, 1], [1, 0, 0]]:
    masked NLL sum = 2 + 3 + 4 = 9 over 3 tokens → 3.0; with a step normalizer of 6 → 1.5."""
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    assert_close(sft_loss(logps, mask, mask.sum()), torch.tensor(3.0))
    assert_close(sft_loss(logps, mask, 6), torch.tensor(1.5))


def test_sft_gradient_only_on_response_tokens():
    logps = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    sft_loss(logps, torch.tensor([[0, 1, 1]]), 2).backward()
    assert_close(logps.grad, torch.tensor([[0.0, -0.5, -0.5]]))


def test_fully_masked_gives_zero_not_nan():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    mask = torch.zeros(1, 2)
    loss = sft_loss(logps, mask, mask.sum())
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logps.grad).all()
    assert masked_mean(logps, mask).item() == 0.0
    assert_close(masked_mean(torch.tensor([[1.0, 3.0], [2.0, 2.0]]), torch.tensor([[1, 1], [0, 0]]), dim=1),
                 torch.tensor([2.0, 0.0]))  # fmt: skip


def test_micro_batch_losses_add_up_to_the_step_loss():
    torch.manual_seed(0)
    logps = -torch.rand(8, 6)
    mask = (torch.rand(8, 6) > 0.4).long()
    whole = sft_loss(logps, mask, mask.sum())
    parts = sum(sft_loss(logps[i : i + 2], mask[i : i + 2], mask.sum()) for i in range(0, 8, 2))
    assert_close(parts, whole)
    assert_close(whole, -masked_sum(logps, mask) / mask.sum())
    assert_close(normalize(torch.tensor(0.0), 0), torch.tensor(0.0))


def test_sft_objective_normalizer_counts_response_tokens():
    batch = sft_batch([[1, 1, 0], [1, 1, 1]])
    objective = SFT()
    assert objective.normalizer(batch).item() == 5
    assert not objective.needs_reference
