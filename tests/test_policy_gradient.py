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

from lit_align.data.batch import PairBatch
from lit_align.data.collate import StepCollator
from lit_align.data.formats import FORMATS
from lit_align.models.response_forward import response_logps
from lit_align.models.value import ValueHead
from lit_align.module import AlignModule
from lit_align.objectives.policy_gradient import KLPenalty
from lit_align.objectives.ppo import PPO
from lit_align.objectives.rloo import RLOO
from lit_align.objectives.rm import RM, bradley_terry_loss
from lit_align.rollout.experience import experience_rows, split_rollout
from lit_align.rollout.sampler import Rollout
from tests.batches import fields_of

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


def _row(prompt, responses, **per_token):
    """A rollout row: one prompt with its responses (lists of ids); per-token lists (k × T_i)."""
    width = max(len(r) for r in responses)

    def padded(rows):
        return torch.tensor([list(r) + [0] * (width - len(r)) for r in rows], dtype=torch.float32)

    k = len(responses)
    row = {"prompt_ids": torch.tensor(prompt), "response_ids": padded(responses).long(),
           "response_mask": padded([[1] * len(r) for r in responses]).long(),
           "rewards": torch.zeros(k), "truncated": torch.zeros(k, dtype=torch.bool)}  # fmt: skip
    return row | {key: padded(values) for key, values in per_token.items()}


def _batch(advantages, old_logps, ref_logps=None, returns=None, old_values=None):
    """One prompt per sample: the prompt token 1, then the response tokens (5s)."""
    rows = []
    for i, adv in enumerate(advantages):
        extra = {"advantages": [adv], "old_logps": [old_logps[i]], "ref_logps": [(ref_logps or old_logps)[i]]}
        if returns is not None:
            extra |= {"returns": [returns[i]], "old_values": [old_values[i]]}
        rows.append(_row([1], [[5] * len(adv)], **extra))
    return FORMATS["rollout"].collate(rows, pad_id=0)


def test_collate_rollout_pads_each_prompts_samples_together():
    batch = FORMATS["rollout"].collate(
        [_row([1, 2], [[3, 4]], advantages=[[0.5, 0.6]], old_logps=[[-1.0, -2.0]]),
         _row([1], [[3], [4, 5, 6]], advantages=[[0.7], [0.1, 0.2, 0.3]], old_logps=[[-3.0], [-4.0, -5.0, -6.0]])],
        pad_id=0,
    )  # fmt: skip
    assert batch.prompt_ids.tolist() == [[1, 2], [0, 1]] and batch.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert batch.prompt_index.tolist() == [0, 1, 1]
    assert batch.response_ids.tolist() == [[3, 4, 0], [3, 0, 0], [4, 5, 6]]
    assert batch.loss_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    assert_close(batch.advantages, torch.tensor([[0.5, 0.6, 0.0], [0.7, 0.0, 0.0], [0.1, 0.2, 0.3]]))
    assert batch.returns is None and batch.num_tokens == (2 + 2) + (1 + 1) + (1 + 3)  # each response with its prompt


def test_rloo_loss_by_hand():
    """On-policy (log π = log π_old = −1), ε = 0.2, ρ = 1: ℓ = −A per token. Rows A = [2, 2]
    and [−1]: token_mean = (−2 − 2 + 1)/3 = −1; seq_mean = (−2 + 1)/2 = −0.5; seq_sum =
    (−4 + 1)/2 = −1.5. Unclipped (clip=None) ℓ = −A·log π = A: token_mean = (2 + 2 − 1)/3 = 1."""
    batch = _batch([[2.0, 2.0], [-1.0]], [[-1.0, -1.0], [-1.0]])
    logps = batch.old_logps.clone()
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
    logps = batch.old_logps.clone()
    rloo = RLOO(KLPenalty(coef=0.1, estimator="k3", placement="loss"))
    assert_close(rloo(batch, logps, None, rloo.normalizer(batch)).loss, torch.tensor(0.1 * (math.exp(-0.5) - 0.5)))
    reward = RLOO(KLPenalty(coef=0.1, estimator="k3"))
    assert_close(reward(batch, logps, None, reward.normalizer(batch)).loss, torch.tensor(0.0))


def test_ppo_loss_by_hand():
    """One row, two tokens, on-policy, A = [1, −1]: policy ℓ = [−1, 1], mean 0. Values [1, 0.2],
    V_old [0.5, 0.5], R [0.8, 1] give value losses [0.02, 0.32] (mean 0.17); c_v = 0.5 →
    loss 0.085. Entropy bonus c_H = 0.1 with H = [1, 2]: 0.085 − 0.15 = −0.065."""
    batch = _batch([[1.0, -1.0]], [[-1.0, -1.0]], returns=[[0.8, 1.0]], old_values=[[0.5, 0.5]])
    logps = batch.old_logps.clone()
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
    batch = PairBatch(**fields_of([[1], [1], [1], [1]], [0, 0, 1, 1]), chosen=torch.tensor([0, 2]),
                      rejected=torch.tensor([1, 3]))  # fmt: skip
    rm = RM(center_coef=0.1)  # + 0.1·(r_c + r_r)²: 0.1·9 and 0.1·1
    out = rm(batch, torch.tensor([2.0, 1.0, 0.5, 0.5]), None, rm.normalizer(batch))
    assert_close(out.loss, torch.tensor((math.log1p(math.exp(-1)) + 0.9 + math.log(2) + 0.1) / 2))
    assert out.metrics["rm/accuracy"] == 0.5


def _rollout_rows(n=4, k=2):
    """``n`` prompts with ``k`` samples each, of different lengths (micro-batches hold different
    token counts)."""
    torch.manual_seed(0)
    rows = []
    for i in range(n):
        lengths = [2 + (i + j) % 4 for j in range(k)]
        responses = [[20 + (i + j + t) % 50 for t in range(length)] for j, length in enumerate(lengths)]
        per_token = {key: [(scale * f(length)).tolist() for length in lengths] for key, f, scale in (
            ("old_logps", torch.rand, -3.0), ("ref_logps", torch.rand, -3.0), ("advantages", torch.randn, 1.0),
            ("returns", torch.randn, 1.0), ("old_values", torch.randn, 0.1))}  # fmt: skip
        rows.append(_row([1, 10 + i, 11], responses, **per_token))
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
    """One SGD step on 4 prompts × 2 samples as one micro-batch equals the same step in
    micro-batches of 1 or 3 prompts (the policy and the critic); every trainable parameter moves."""
    rows, sgd = _rollout_rows(), partial(torch.optim.SGD, lr=0.5)
    modules = [AlignModule(copy.deepcopy(tiny_model), objective(), tokenizer, optimizer=sgd, grad_clip=None)
               for _ in range(2)]  # fmt: skip
    modules[1].load_state_dict(modules[0].state_dict())  # the same critic head to start
    start = copy.deepcopy(modules[0])
    for module, size in zip(modules, [4, micro_batch_size], strict=True):
        collate = StepCollator(partial(FORMATS["rollout"].collate, pad_id=0), size)
        loader = DataLoader(rows, batch_size=4, collate_fn=collate)
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
    inputs = {"prompt_ids": torch.tensor([[1, 5]]), "prompt_mask": torch.ones(1, 2, dtype=torch.long),
              "response_ids": torch.tensor([[6, 7]]), "response_mask": torch.ones(1, 2, dtype=torch.long),
              "prompt_index": torch.tensor([0])}  # fmt: skip
    hidden = tiny_model(input_ids=torch.tensor([[1, 5, 6, 7]]), output_hidden_states=True).hidden_states[-1]
    separate.head.load_state_dict(shared.head.state_dict())
    # The states before the response tokens 6 and 7: positions 1 and 2 of the whole sequence.
    assert_close(separate(inputs), shared(inputs, hidden[:, 1:3]))  # a copy of the same trunk
    assert separate(inputs).shape == (1, 2)
    assert_close(separate(inputs, shared=False), separate(inputs))
    with pytest.raises(ValueError, match="hidden states"):
        shared(inputs)


def test_split_rollout_keeps_the_sampled_tokens_and_their_log_probs():
    """Two samples of a left-padded prompt [pad, bos, 7] with completions [8, eos] and [9, 9, eos]:
    the prompt loses its padding, each response keeps its tokens up to eos, and the per-token
    tensors stay aligned with the response tokens."""
    completion = torch.tensor([[8, 2, 0], [9, 9, 2]])
    keep = torch.tensor([[1, 1, 0], [1, 1, 1]])
    logps = torch.arange(6.0).view(2, 3).neg() * keep
    rollout = Rollout(torch.tensor([[0, 1, 7]]), torch.tensor([[0, 1, 1]]), torch.tensor([0, 0]), completion, keep,
                      torch.tensor([False, True]), None, ["", ""])  # fmt: skip
    (group,) = split_rollout(rollout, (logps, logps - 1, None))
    assert group["prompt_ids"].tolist() == [1, 7]
    assert group["response_ids"].tolist() == [[8, 2, 0], [9, 9, 2]] and group["response_mask"].tolist() == keep.tolist()
    assert group["old_logps"].tolist() == [[0.0, -1.0, 0.0], [-3.0, -4.0, -5.0]]
    rows, kl = experience_rows(RLOO(KLPenalty(coef=0.0)), [group], [1.0, 0.0], 2)
    assert_close(rows[0]["advantages"], torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]]))
    assert kl == [2.0, 3.0] and rows[0]["truncated"].tolist() == [False, True]  # k1: log π − log π_ref = 1 per token
    unscored, no_kl = experience_rows(RLOO(), split_rollout(rollout), [1.0, None], 2)
    assert no_kl == [] and "advantages" not in unscored[0] and unscored[0]["rewards"][1].isnan()


def test_k3_in_the_loss_ignores_very_unlikely_padding():
    """A padding position at log-prob −100 would overflow k3's exp (inf · 0 = NaN); off the
    response the KL is not computed at all."""
    batch = FORMATS["rollout"].collate([_row([1], [[3, 5], [5]], advantages=[[1.0, -1.0], [1.0]],
                                             old_logps=[[-1.0, -1.0], [-1.0]], ref_logps=[[-1.5, -1.5], [-1.5]])],
                                       pad_id=0)  # fmt: skip
    logps = batch.old_logps.clone()
    logps[1, 1] = -100.0  # the second sample's padding, outside the loss mask
    logps.requires_grad_()
    rloo = RLOO(KLPenalty(coef=0.1, estimator="k3", placement="loss"))
    out = rloo(batch, logps, None, rloo.normalizer(batch))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(logps.grad).all() and logps.grad[1, 1] == 0


def test_in_step_rloo_equals_rloo_on_a_prepared_rollout():
    """A rollout trained in one on-policy step carries only rewards: the objective's advantages
    from the step's own (detached) log-probs and the reference's equal `prepare`'s on the same
    numbers, so the losses and gradients are the same."""
    torch.manual_seed(1)
    rows = _rollout_rows(n=2, k=3)
    rewards = torch.tensor([1.0, 0.0, 0.5, NAN, 2.0, 1.0])
    prepared = FORMATS["rollout"].collate(rows, pad_id=0)
    objective = RLOO(KLPenalty(coef=0.2, estimator="k1"), aggregation="seq_mean")
    mask = prepared.loss_mask.float()
    exp = objective.prepare(rewards, prepared.old_logps, prepared.ref_logps, mask, 3)
    prepared.advantages = exp.advantages
    in_step = FORMATS["rollout"].collate(rows, pad_id=0)
    in_step.old_logps = in_step.advantages = None
    in_step.rewards = rewards
    grads = []
    for batch, ref in ((prepared, None), (in_step, prepared.ref_logps)):
        logps = prepared.old_logps.clone().requires_grad_()
        out = objective(batch, logps, ref, objective.normalizer(batch))
        out.loss.backward()
        grads.append((out.loss.detach(), logps.grad))
    assert_close(grads[0][0], grads[1][0])
    assert_close(grads[0][1], grads[1][1])


def test_ppo_reports_the_kl_of_unscorable_samples_too():
    ppo = PPO(KLPenalty(coef=0.1), whiten_advantages=False)
    rewards, logps, ref, mask = _prepare_args([NAN, 0.0])  # the unscorable sample 0 has KL 0.5
    exp = ppo.prepare(rewards, logps, ref, mask, num_samples=2, values=torch.zeros(2, 2))
    assert_close(exp.kl, torch.tensor([0.5, 0.0]))
    assert exp.keep.tolist() == [False, True]


def test_entropy_has_a_gradient_only_for_an_entropy_bonus(tiny_model):
    inputs = {"prompt_ids": torch.tensor([[1, 5]]), "prompt_mask": torch.ones(1, 2, dtype=torch.long),
              "response_ids": torch.tensor([[6, 7]]), "response_mask": torch.ones(1, 2, dtype=torch.long),
              "prompt_index": torch.tensor([0])}  # fmt: skip
    logged = response_logps(tiny_model, **inputs, entropy=True, entropy_grad=False).entropy
    bonus = response_logps(tiny_model, **inputs, entropy=True, entropy_grad=True).entropy
    assert not logged.requires_grad and bonus.requires_grad
    assert_close(logged, bonus.detach())
    logits = tiny_model(input_ids=torch.tensor([[1, 5, 6, 7]])).logits[0, 1:3].float()
    expected = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)  # the states before 6 and 7
    assert_close(logged[0], expected.detach())
    assert not PPO().entropy_grad and PPO(entropy_coef=0.01).entropy_grad


def test_a_separate_critic_sends_no_gradient_to_the_policy(tokenizer, tiny_model):
    """The value loss's path alone (values of a rollout batch, backward): a separate critic's
    reaches its own trunk and none of the policy; a shared critic's reaches the policy's trunk
    (its head reads the policy's hidden states)."""
    inputs = FORMATS["rollout"].collate(_rollout_rows(n=2), pad_id=0).forward_inputs()
    for critic in ("separate", "shared"):
        module = AlignModule(copy.deepcopy(tiny_model), PPO(critic=critic), tokenizer, optimizer=torch.optim.SGD)
        hidden = None if critic == "separate" else response_logps(module.policy, **inputs, hidden=True).hidden
        module.critic(inputs, hidden).square().sum().backward()
        policy_grads = [p.grad for p in module.policy.model.layers.parameters()]
        if critic == "separate":
            assert all(g is None for g in policy_grads)
            assert all(p.grad is not None for p in module.critic.trunk.layers.parameters())
        else:
            assert all(g is not None for g in policy_grads)
        assert module.critic.head.weight.grad is not None
