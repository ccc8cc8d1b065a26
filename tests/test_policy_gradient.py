"""RLOO, PPO and the reward model as objectives: rollout preparation and losses by hand, rollout
rows through collation, and updates invariant to micro-batching."""

from __future__ import annotations

import copy
import math
from functools import partial

import lightning as L
import pytest
import torch
from torch.testing import assert_close
from torch.utils.data import DataLoader

from lit_align.data.collate import StepCollator, collate_rollout
from lit_align.models.forward import policy_forward
from lit_align.models.value import ValueHead
from lit_align.module import AlignModule
from lit_align.objectives.policy_gradient import KLPenalty
from lit_align.objectives.ppo import PPO
from lit_align.objectives.rloo import RLOO
from lit_align.objectives.rm import RM, bradley_terry_loss
from lit_align.rollout.experience import experience_rows, split_rollout
from lit_align.rollout.sampler import Rollout

NAN = float("nan")


def _prepare_args(rewards):
    """Two response tokens per sample; sample 0 has KL k1 = 0.5 at its first token."""
    n = len(rewards)
    logps = torch.full((n, 2), -1.0)
    ref = logps.clone()
    ref[0, 0] = -1.5
    return torch.tensor(rewards), logps, ref, torch.ones(n, 2)


def test_rloo_prepare_puts_kl_in_the_reward_by_hand():
    """k = 2, r = [1, 0], KL = [0.5, 0], β = 0.1: R = [0.95, 0], A = [0.95, −0.95] on every
    response token; with placement=loss the reward is r alone: A = [1, −1]."""
    rloo = RLOO(KLPenalty(coef=0.1, estimator="k1"))
    exp = rloo.prepare(*_prepare_args([1.0, 0.0]), num_samples=2)
    assert_close(exp.advantages, torch.tensor([[0.95, 0.95], [-0.95, -0.95]]))
    assert_close(exp.kl, torch.tensor([0.5, 0.0]))
    in_loss = RLOO(KLPenalty(coef=0.1, estimator="k1", placement="loss"))
    assert_close(
        in_loss.prepare(*_prepare_args([1.0, 0.0]), num_samples=2).advantages, torch.tensor([[1.0] * 2, [-1.0] * 2])
    )


def test_rloo_prepare_leaves_unscorable_samples_at_zero():
    rloo = RLOO(KLPenalty(coef=0.0))
    exp = rloo.prepare(*_prepare_args([1.0, NAN, 0.0, NAN]), num_samples=2)
    assert torch.equal(exp.advantages, torch.zeros(4, 2))  # each prompt has one scorable sample
    assert exp.keep.all()


def test_ppo_prepare_by_hand():
    """β = 0.1, k1: sample 0's token rewards are [−0.05, 1] (KL penalty, then r = 1 at the last
    token); with V = 0, γ = λ = 1: A = [0.95, 1]. Sample 1 (r = 0, no KL): A = [0, 0]. The
    unscorable sample 2 is dropped."""
    ppo = PPO(KLPenalty(coef=0.1), gamma=1.0, lam=1.0, whiten_advantages=False)
    rewards, logps, ref, mask = _prepare_args([1.0, 0.0, NAN])
    exp = ppo.prepare(rewards, logps, ref, mask, num_samples=3, values=torch.zeros(3, 2))
    assert_close(exp.advantages[:2], torch.tensor([[0.95, 1.0], [0.0, 0.0]]))
    assert_close(exp.returns[:2], exp.advantages[:2])
    assert exp.keep.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="critic"):
        ppo.prepare(rewards, logps, ref, mask, num_samples=3)


def test_ppo_reward_lands_on_the_last_token_of_shorter_responses():
    ppo = PPO(KLPenalty(coef=0.0), gamma=1.0, lam=1.0, whiten_advantages=False)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    exp = ppo.prepare(torch.tensor([2.0, 3.0]), torch.zeros(2, 3), torch.zeros(2, 3), mask, 2, torch.zeros(2, 3))
    assert_close(exp.advantages, torch.tensor([[2.0, 2.0, 2.0], [3.0, 0.0, 0.0]]))


def test_adaptive_controller_updates_the_checkpointed_coefficient():
    ppo = PPO(KLPenalty(coef=0.1, controller="adaptive", target=6.0, horizon=1000))
    ppo.update_kl_coef(12.0, 100)
    assert float(ppo.kl_coef) == pytest.approx(0.102)
    assert "kl_coef" in ppo.state_dict()
    fixed = RLOO(KLPenalty(coef=0.1))
    fixed.update_kl_coef(12.0, 100)
    assert float(fixed.kl_coef) == pytest.approx(0.1)


def _batch(advantages, old_logps, ref_logps=None, returns=None, old_values=None):
    """One prompt token then the response tokens; per-token lists over the response."""
    rows = []
    for i, adv in enumerate(advantages):
        row = {"input_ids": [1] + [5] * len(adv), "prompt_len": 1, "advantages": adv, "old_logps": old_logps[i],
               "ref_logps": (ref_logps or old_logps)[i]}  # fmt: skip
        if returns is not None:
            row |= {"returns": returns[i], "old_values": old_values[i]}
        rows.append(row)
    return collate_rollout(rows, pad_id=0)


def test_collate_rollout_aligns_per_token_values_with_logps():
    batch = collate_rollout(
        [{"input_ids": [1, 2, 3, 4], "prompt_len": 2, "advantages": [0.5, 0.6], "old_logps": [-1.0, -2.0]},
         {"input_ids": [1, 2, 3], "prompt_len": 1, "advantages": [0.7, 0.8], "old_logps": [-3.0, -4.0]}],
        pad_id=0,
    )  # fmt: skip
    # log-probs index p − 1 scores token p: row 0's response (tokens 2, 3) sits at 1, 2.
    assert_close(batch["advantages"], torch.tensor([[0.0, 0.5, 0.6], [0.7, 0.8, 0.0]]))
    assert batch["loss_mask"][:, 1:].tolist() == [[0, 1, 1], [1, 1, 0]]
    assert batch["old_logps"].tolist() == [[0.0, -1.0, -2.0], [-3.0, -4.0, 0.0]]
    assert "returns" not in batch


def test_rloo_loss_by_hand():
    """On-policy (log π = log π_old = −1), ε = 0.2, ρ = 1: ℓ = −A per token. Rows A = [2, 2]
    and [−1]: token_mean = (−2 − 2 + 1)/3 = −1; seq_mean = (−2 + 1)/2 = −0.5; seq_sum =
    (−4 + 1)/2 = −1.5. Unclipped (clip=None) ℓ = −A·log π = A: token_mean = (2 + 2 − 1)/3 = 1."""
    batch = _batch([[2.0, 2.0], [-1.0]], [[-1.0, -1.0], [-1.0]])
    logps = batch["old_logps"].clone()
    for aggregation, expected in [("token_mean", -1.0), ("seq_mean", -0.5), ("seq_sum", -1.5)]:
        rloo = RLOO(KLPenalty(coef=0.0), aggregation=aggregation)
        out = rloo(batch, logps, None, rloo.normalizer(batch))
        assert_close(out.loss, torch.tensor(expected), msg=aggregation)
    plain = RLOO(KLPenalty(coef=0.0), clip=None)
    assert_close(plain(batch, logps, None, plain.normalizer(batch)).loss, torch.tensor(1.0))


def test_rloo_kl_in_the_loss_by_hand():
    """A = 0, log π − log π_ref = 0.5 on every token, k3 = e^(−0.5) − 0.5, β = 0.1: the loss is
    0.1·k3 (token mean); in the reward placement the loss ignores the reference."""
    batch = _batch([[0.0, 0.0]], [[-1.0, -1.0]], ref_logps=[[-1.5, -1.5]])
    logps = batch["old_logps"].clone()
    rloo = RLOO(KLPenalty(coef=0.1, estimator="k3", placement="loss"))
    assert_close(rloo(batch, logps, None, rloo.normalizer(batch)).loss, torch.tensor(0.1 * (math.exp(-0.5) - 0.5)))
    reward = RLOO(KLPenalty(coef=0.1, estimator="k3"))
    assert_close(reward(batch, logps, None, reward.normalizer(batch)).loss, torch.tensor(0.0))


def test_ppo_loss_by_hand():
    """One row, two tokens, on-policy, A = [1, −1]: policy ℓ = [−1, 1], mean 0. Values [1, 0.2],
    V_old [0.5, 0.5], R [0.8, 1] give value losses [0.02, 0.32] (mean 0.17); c_v = 0.5 →
    loss 0.085. Entropy bonus c_H = 0.1 with H = [1, 2]: 0.085 − 0.15 = −0.065."""
    batch = _batch([[1.0, -1.0]], [[-1.0, -1.0]], returns=[[0.8, 1.0]], old_values=[[0.5, 0.5]])
    logps = batch["old_logps"].clone()
    values, entropy = torch.tensor([[1.0, 0.2]]), torch.tensor([[1.0, 2.0]])
    ppo = PPO(KLPenalty(coef=0.0), vf_coef=0.5)
    out = ppo(batch, logps, None, ppo.normalizer(batch), values=values, entropy=entropy)
    assert_close(out.loss, torch.tensor(0.085))
    assert_close(out.metrics["ppo/value_loss"], torch.tensor(0.17))
    assert_close(out.metrics["ppo/approx_kl"], torch.tensor(0.0))
    assert_close(out.metrics["ppo/entropy"], torch.tensor(1.5))
    bonus = PPO(KLPenalty(coef=0.0), vf_coef=0.5, entropy_coef=0.1)
    assert_close(bonus(batch, logps, None, 2, values=values, entropy=entropy).loss, torch.tensor(-0.065))


def test_bradley_terry_by_hand():
    """r_c − r_r = 1: −log σ(1) = log(1 + e^(−1)) = 0.3132617; equal scores give log 2."""
    assert_close(bradley_terry_loss(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 0.5])),
                 torch.tensor([math.log1p(math.exp(-1)), math.log(2)]))  # fmt: skip
    batch = {"input_ids": torch.zeros(4, 3, dtype=torch.long)}
    rm = RM(center_coef=0.1)  # + 0.1·(r_c + r_r)²: 0.1·9 and 0.1·1
    out = rm(batch, torch.tensor([2.0, 0.5, 1.0, 0.5]), None, rm.normalizer(batch))
    assert_close(out.loss, torch.tensor((math.log1p(math.exp(-1)) + 0.9 + math.log(2) + 0.1) / 2))
    assert out.metrics["rm/accuracy"] == 0.5


def _rollout_rows(n=8):
    torch.manual_seed(0)
    rows = []
    for i in range(n):
        length = 2 + i % 4  # different response lengths: micro-batches hold different token counts
        rows.append({
            "input_ids": [1, 10 + i, 11] + [20 + (i + j) % 50 for j in range(length)], "prompt_len": 3,
            "old_logps": (-torch.rand(length) * 3).tolist(), "ref_logps": (-torch.rand(length) * 3).tolist(),
            "advantages": torch.randn(length).tolist(), "returns": torch.randn(length).tolist(),
            "old_values": (torch.randn(length) * 0.1).tolist(),
        })  # fmt: skip
    return rows


@pytest.mark.parametrize(
    "objective",
    [
        lambda: RLOO(KLPenalty(coef=0.1, estimator="k3", placement="loss"), aggregation="seq_mean"),
        lambda: RLOO(KLPenalty(coef=0.1), aggregation="token_mean"),
        lambda: PPO(KLPenalty(coef=0.1), entropy_coef=0.01, aggregation="token_mean"),
        lambda: PPO(KLPenalty(coef=0.1), critic="separate", aggregation="seq_sum"),
    ],
    ids=["rloo-seq_mean-kl_loss", "rloo-token_mean", "ppo-shared-entropy", "ppo-separate-seq_sum"],
)
@pytest.mark.parametrize("micro_batch_size", [1, 3])
def test_policy_gradient_update_is_invariant_to_micro_batching(tokenizer, tiny_model, objective, micro_batch_size):
    """One SGD step on 8 rollout rows as 1×8 equals the same step in micro-batches (the policy
    and the critic); every trainable parameter moves."""
    rows, sgd = _rollout_rows(), partial(torch.optim.SGD, lr=0.5)
    modules = [AlignModule(copy.deepcopy(tiny_model), objective(), tokenizer, optimizer=sgd, grad_clip=None)
               for _ in range(2)]  # fmt: skip
    modules[1].load_state_dict(modules[0].state_dict())  # the same critic head to start
    start = copy.deepcopy(modules[0])
    for module, size in zip(modules, [8, micro_batch_size], strict=True):
        loader = DataLoader(rows, batch_size=8, collate_fn=StepCollator(partial(collate_rollout, pad_id=0), size))
        L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, accelerator="cpu").fit(module, train_dataloaders=loader)  # fmt: skip
    whole, split = (dict(m.named_parameters()) for m in modules)
    trainable = {name for name, p in start.named_parameters() if p.requires_grad}
    assert any(name.startswith("critic.") for name in trainable) == isinstance(modules[0].objective, PPO)
    for name in trainable:
        assert_close(whole[name], split[name], rtol=1e-5, atol=1e-6, msg=name)
        if not name.endswith("embed_tokens.weight"):  # ids outside the rows keep their embeddings
            assert not torch.equal(whole[name], dict(start.named_parameters())[name]), name


def test_value_head_shared_or_separate(tokenizer, tiny_model):
    shared, separate = ValueHead(tiny_model), ValueHead(tiny_model, separate=True)
    assert shared.trunk is None and sum(p.numel() for p in shared.parameters()) == 33
    assert sum(p.numel() for p in separate.parameters()) > 1000
    ids, mask = torch.tensor([[1, 5, 6, 7]]), torch.ones(1, 4, dtype=torch.long)
    hidden = tiny_model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    separate.head.load_state_dict(shared.head.state_dict())
    assert_close(separate(ids, mask), shared(ids, mask, hidden))  # a copy of the same trunk
    assert separate(ids, mask).shape == (1, 3)
    with pytest.raises(ValueError, match="hidden states"):
        shared(ids, mask)


def test_split_rollout_keeps_the_sampled_tokens_and_their_log_probs():
    """Two samples of a left-padded prompt [pad, bos, 7] with completions [8, eos] and [9, 9, eos]:
    the prompt loses its padding, each response keeps its tokens up to eos, and the per-token
    lists are the log-probs at indices P − 1 … (P = 3 prompt columns)."""
    ids = torch.tensor([[0, 1, 7, 8, 2, 0], [0, 1, 7, 9, 9, 2]])
    attention = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]])
    response = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
    logps = torch.arange(10.0).view(2, 5).neg()
    rollout = Rollout(torch.tensor([0, 0]), ids, attention, response, torch.tensor([False, False]), None, ["", ""])
    samples = split_rollout(rollout, logps, logps - 1, None)
    assert [s["prompt_ids"] for s in samples] == [[1, 7], [1, 7]]
    assert [s["response_ids"] for s in samples] == [[8, 2], [9, 9, 2]]
    assert samples[0]["old_logps"] == [-2.0, -3.0] and samples[1]["old_logps"] == [-7.0, -8.0, -9.0]
    assert samples[1]["ref_logps"] == [-8.0, -9.0, -10.0]
    rows, kl = experience_rows(RLOO(KLPenalty(coef=0.0)), samples, [1.0, 0.0], 2, [False, True])
    assert [r["input_ids"] for r in rows] == [[1, 7, 8, 2], [1, 7, 9, 9, 2]] and [r["prompt_len"] for r in rows] == [
        2,
        2,
    ]
    assert rows[0]["advantages"] == [1.0, 1.0] and rows[1]["advantages"] == [-1.0, -1.0, -1.0]
    assert kl == [2.0, 3.0] and rows[1]["response_truncated"]  # k1: log π − log π_ref = 1 per token


def test_k3_in_the_loss_ignores_very_unlikely_prompt_tokens():
    """A prompt token at log-prob −100 would overflow k3's exp (inf · 0 = NaN); off the response
    the KL is not computed at all."""
    row = {"input_ids": [1, 3, 5, 5], "prompt_len": 2, "advantages": [1.0, -1.0], "old_logps": [-1.0, -1.0],
           "ref_logps": [-1.5, -1.5]}  # fmt: skip
    batch = collate_rollout([row], pad_id=0)
    logps = batch["old_logps"].clone()
    logps[0, 0] = -100.0  # the prompt token 3, outside the loss mask
    logps.requires_grad_()
    rloo = RLOO(KLPenalty(coef=0.1, estimator="k3", placement="loss"))
    out = rloo(batch, logps, None, rloo.normalizer(batch))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logps.grad).all() and logps.grad[0, 0] == 0


def test_ppo_reports_the_kl_of_unscorable_samples_too():
    ppo = PPO(KLPenalty(coef=0.1), whiten_advantages=False)
    rewards, logps, ref, mask = _prepare_args([NAN, 0.0])  # the unscorable sample 0 has KL 0.5
    exp = ppo.prepare(rewards, logps, ref, mask, num_samples=2, values=torch.zeros(2, 2))
    assert_close(exp.kl, torch.tensor([0.5, 0.0]))
    assert exp.keep.tolist() == [False, True]


def test_entropy_has_a_gradient_only_for_an_entropy_bonus(tiny_model):
    ids, mask = torch.tensor([[1, 5, 6, 7]]), torch.ones(1, 4, dtype=torch.long)
    logged = policy_forward(tiny_model, ids, mask, entropy=True, entropy_grad=False).entropy
    bonus = policy_forward(tiny_model, ids, mask, entropy=True, entropy_grad=True).entropy
    assert not logged.requires_grad and bonus.requires_grad and torch.equal(logged, bonus.detach())
    assert logged.shape == (1, 3) and (logged > 0).all()
    assert not PPO().entropy_grad and PPO(entropy_coef=0.01).entropy_grad
