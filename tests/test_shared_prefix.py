"""The shared-prefix forward, packed or through a prefix cache, gives the flat forward's numbers:
log-probs, every objective's loss and every gradient (fp32, 1e-5), with gradient checkpointing
and eager attention too; the chunked LM head equals a full log-softmax; models that cannot share
a prefix are refused in one line."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch.testing import assert_close

from lit_align.data.collate import encode_group, encode_pair, encode_prompt_response
from lit_align.data.formats import FORMATS
from lit_align.models import logps_head, response_forward
from lit_align.models.forward import forward_logps
from lit_align.models.logps_head import linear_logps
from lit_align.models.response_forward import Unsupported, response_logps
from lit_align.models.tiny import tiny_llama
from lit_align.module import AlignModule
from lit_align.objectives.aft import AFT
from lit_align.objectives.dpo import DPO
from lit_align.objectives.kto import KTO
from lit_align.objectives.orpo import ORPO
from lit_align.objectives.policy_gradient import KLPenalty
from lit_align.objectives.ppo import PPO
from lit_align.objectives.rloo import RLOO
from lit_align.objectives.rm import RM
from lit_align.objectives.sft import SFT
from lit_align.objectives.simpo import SimPO
from lit_align.rollout.sampler import Sampler

PROMPTS = ["Ann has 3 pens. She finds 4.\n", "12+7=?\n", "Tom has 9 cups and gives 2 away.\n"]


@pytest.fixture(params=["packed", "cache"])
def method(request, monkeypatch) -> str:
    """Each shared-forward test runs both ways: packed rows with a block mask (what SDPA and eager
    attention get) and the prefix cache (what other attention gets)."""
    monkeypatch.setattr(response_forward, "prefix_method", lambda model: request.param)
    return request.param


def _encoded(tokenizer, fmt: str) -> list[dict]:
    """Three prompts of different lengths with responses of different lengths."""
    if fmt == "sft":
        return [encode_prompt_response(tokenizer, p, "7" * (1 + i), 64, 96) for i, p in enumerate(PROMPTS)]
    if fmt == "pairs":
        return [encode_pair(tokenizer, p, "#### " + "7" * (1 + i), "#### 1", 64, 96) for i, p in enumerate(PROMPTS)]
    if fmt == "unpaired":
        rows = [{"prompt": p, "completion": "#### " + "7" * (1 + i), "label": i != 1} for i, p in enumerate(PROMPTS)]
        return [FORMATS["unpaired"].encode(tokenizer, row, 64, 96) for row in rows]
    groups = []
    for i, p in enumerate(PROMPTS):
        chains = [{"text": "1" * (j + 1 + i), "correct": j == 0, "rank": j, "reference": j == 3} for j in range(4)]
        groups.append(encode_group(tokenizer, p, chains, 64, 96))
    return groups


def _rollout(tokenizer, k=3, prepared=True):
    """Three prompts × k samples with random per-token rollout tensors (a prepared rollout) or
    with rewards only (one on-policy step)."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for i, p in enumerate(PROMPTS):
        prompt = torch.tensor([tokenizer.bos_token_id, *tokenizer(p, add_special_tokens=False)["input_ids"]])
        lengths = [2 + (i + j) % 4 for j in range(k)]
        width = max(lengths)
        mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
        row = {"prompt_ids": prompt, "response_ids": torch.randint(4, 30, (k, width), generator=gen) * mask,
               "response_mask": mask, "rewards": torch.rand(k, generator=gen),
               "truncated": torch.zeros(k, dtype=torch.bool)}  # fmt: skip
        if prepared:
            for key, scale in (("old_logps", -2.0), ("ref_logps", -2.0), ("advantages", 1.0), ("returns", 1.0),
                               ("old_values", 0.1)):  # fmt: skip
                row[key] = torch.rand(k, width, generator=gen) * scale * mask
        rows.append(row)
    return FORMATS["rollout"].collate(rows, tokenizer.pad_token_id)


def _assert_same_grads(grads: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every gradient equal to 1e-5 of its own scale (fp32 sums in another order differ in the
    last bits, and IPO's summed log-ratios make gradients in the hundreds)."""
    assert grads.keys() == expected.keys()
    for name, grad in grads.items():
        assert_close(grad, expected[name], rtol=1e-5, atol=1e-5 * float(expected[name].abs().max()), msg=name)


def _loss_and_grads(module: AlignModule, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    normalizer = module.objective.normalizer(batch).float()
    out = module.objective_step(batch, normalizer)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads


CASES = {
    "sft": (SFT, "sft"),
    "dpo-sigmoid": (partial(DPO, beta=0.1), "pairs"),
    "dpo-ipo": (partial(DPO, loss_type="ipo"), "pairs"),
    "dpo-hinge": (partial(DPO, loss_type="hinge"), "pairs"),
    "dpo-nll": (partial(DPO, sft_weight=1.0), "pairs"),
    "simpo": (partial(SimPO, label_smoothing=0.1), "pairs"),
    "orpo": (partial(ORPO, lam=0.5), "pairs"),
    "kto": (partial(KTO, desirable_weight=1.3), "unpaired"),
    "aft-binary": (AFT, "groups"),
    "aft-ranking": (partial(AFT, feedback="ranking"), "groups"),
    "rloo": (partial(RLOO, KLPenalty(coef=0.1, estimator="k3", placement="loss")), "rollout"),
    "rloo-in-step": (partial(RLOO, KLPenalty(coef=0.1)), "rollout-in-step"),
    "ppo-shared": (partial(PPO, KLPenalty(coef=0.1), entropy_coef=0.01), "rollout"),
    "ppo-separate": (partial(PPO, KLPenalty(coef=0.1), critic="separate"), "rollout"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_objective_gets_the_flat_forwards_loss_and_gradients(tokenizer, tiny_model, case, method):
    objective, fmt = CASES[case]
    if fmt.startswith("rollout"):
        batch = _rollout(tokenizer, prepared=fmt == "rollout")
    else:
        batch = FORMATS[fmt].collate(_encoded(tokenizer, fmt), tokenizer.pad_token_id)
    results = []
    for shared in (True, False):
        torch.manual_seed(0)  # the same critic head
        module = AlignModule(copy.deepcopy(tiny_model), objective(), tokenizer, optimizer=torch.optim.SGD,
                             shared_prefix=shared)  # fmt: skip
        with torch.no_grad():  # a policy that moved away from its reference
            for p in module.policy.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
        results.append(_loss_and_grads(module, batch))
    (loss, grads), (flat_loss, flat_grads) = results
    assert_close(loss, flat_loss, rtol=1e-5, atol=1e-6)
    assert len(grads) >= len(list(tiny_model.parameters()))
    _assert_same_grads(grads, flat_grads)


def test_dpo_with_precomputed_reference_gets_the_flat_forwards_numbers(tokenizer, tiny_model, method):
    batch = FORMATS["pairs"].collate(_encoded(tokenizer, "pairs"), tokenizer.pad_token_id)
    batch.ref_logps = torch.tensor([[-30.0, -20.0], [-25.0, -21.0], [-40.0, -19.0]])
    shared, flat = (
        _loss_and_grads(
            AlignModule(
                copy.deepcopy(tiny_model),
                DPO(precompute_ref=True),
                tokenizer,
                optimizer=torch.optim.SGD,
                shared_prefix=s,
            ),
            batch,
        )
        for s in (True, False)
    )
    assert_close(shared[0], flat[0])
    _assert_same_grads(shared[1], flat[1])


def test_reward_model_scores_equal_the_flat_forward(tokenizer):
    torch.manual_seed(0)
    classifier = tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, head="score")
    batch = FORMATS["pairs"].collate(_encoded(tokenizer, "pairs"), tokenizer.pad_token_id)
    shared, flat = (
        _loss_and_grads(
            AlignModule(copy.deepcopy(classifier), RM(), tokenizer, optimizer=torch.optim.SGD, shared_prefix=s), batch
        )
        for s in (True, False)
    )
    assert_close(shared[0], flat[0])
    assert len(shared[1]) == len(list(classifier.parameters()))
    _assert_same_grads(shared[1], flat[1])


def test_response_logps_equal_each_sequence_alone_with_gradients(tokenizer, tiny_model, method):
    """Against the plainest reference: each prompt + response as its own unpadded sequence
    through the model's full logits."""
    batch = FORMATS["groups"].collate(_encoded(tokenizer, "groups"), tokenizer.pad_token_id)
    weights = torch.rand(batch.response_ids.shape, generator=torch.Generator().manual_seed(0))
    tiny_model.zero_grad()
    out = response_logps(tiny_model, **batch.forward_inputs())
    (out.logps * weights).sum().backward()
    ours = {n: p.grad.clone() for n, p in tiny_model.named_parameters()}
    tiny_model.zero_grad()
    total, expected = 0, torch.zeros_like(out.logps)
    for r in range(batch.num_responses):
        p = int(batch.prompt_index[r])
        prompt = batch.prompt_ids[p][batch.prompt_mask[p].bool()]
        response = batch.response_ids[r][batch.response_mask[r].bool()]
        seq = torch.cat([prompt, response])[None]
        logps = forward_logps(tiny_model, seq, torch.ones_like(seq))[0, len(prompt) - 1 :]
        expected[r, : len(response)] = logps.detach()
        total = total + (logps * weights[r, : len(response)]).sum()
    total.backward()
    assert_close(out.logps.detach(), expected, rtol=1e-5, atol=1e-5)
    for name, p in tiny_model.named_parameters():
        assert_close(ours[name], p.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_one_response_per_prompt_runs_one_forward(tokenizer, tiny_model, method):
    """SFT rows share nothing: the shared setting takes the flat forward (one model call); pairs
    take one packed call, or a prompt pass and a response pass through the cache. The log-probs
    are the same."""
    calls = []
    hook = tiny_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        sft = FORMATS["sft"].collate(_encoded(tokenizer, "sft"), tokenizer.pad_token_id)
        shared = response_logps(tiny_model, **sft.forward_inputs(), shared=True).logps
        assert len(calls) == 1
        flat = response_logps(tiny_model, **sft.forward_inputs(), shared=False).logps
        assert_close(shared, flat)
        calls.clear()
        pairs = FORMATS["pairs"].collate(_encoded(tokenizer, "pairs"), tokenizer.pad_token_id)
        response_logps(tiny_model, **pairs.forward_inputs(), shared=True)
        assert len(calls) == {"packed": 1, "cache": 2}[method]
    finally:
        hook.remove()


def test_sdpa_and_eager_attention_take_the_packed_forward(tokenizer):
    """The packed forward runs where the attention reads a 4D mask: a boolean one for SDPA, an
    additive one for eager attention (which adds it to the scores); both equal the flat forward.
    Other attention (flash-attention) gets the prefix cache."""
    batch = FORMATS["groups"].collate(_encoded(tokenizer, "groups"), tokenizer.pad_token_id)
    for attention in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
        model.config._attn_implementation = attention
        assert response_forward.prefix_method(model) == "packed"
        packed = response_logps(model, **batch.forward_inputs(), shared=True).logps
        flat = response_logps(model, **batch.forward_inputs(), shared=False).logps
        assert_close(packed, flat, rtol=1e-5, atol=1e-5)
    model.config._attn_implementation = "flash_attention_2"
    assert response_forward.prefix_method(model) == "cache"


def test_packed_rows_hold_each_prompt_then_its_responses(tokenizer):
    """The packed layout by hand: two prompts (lengths 2 and 3, left-padded to 3), prompt 0 with
    responses 0 and 2 (lengths 2 and 2; given out of order), prompt 1 with response 1 (length 1):
    each row the prompt, then its responses back to back, right-padded to the longest row."""
    from lit_align.models.packing import pack

    prompt_ids = torch.tensor([[0, 11, 12], [21, 22, 23]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    response_ids = torch.tensor([[31, 32], [41, 0], [51, 52]])
    response_mask = torch.tensor([[1, 1], [1, 0], [1, 1]])
    packed = pack(prompt_ids, prompt_mask, response_ids, response_mask, torch.tensor([0, 1, 0]))
    assert packed.input_ids.tolist() == [[0, 11, 12, 31, 32, 51, 52], [21, 22, 23, 41, 0, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 0, 1, 2, 3, 2, 3], [0, 1, 2, 3, 0, 0, 0]]
    assert packed.rows.tolist() == [[0, 0], [1, 1], [0, 0]]
    assert packed.columns.tolist() == [[2, 3], [2, 3], [2, 5]]  # before each token: prompt end, then own
    mask = packed.attention_mask[0, 0].long().tolist()
    assert mask[4] == [0, 1, 1, 1, 1, 0, 0]  # response 0's 2nd token: the prompt's real tokens, itself
    assert mask[6] == [0, 1, 1, 0, 0, 1, 1]  # response 2's 2nd token: never response 0
    assert packed.attention_mask[1, 0, 5].long().tolist() == [1, 1, 1, 0, 0, 1, 0]  # an empty block: prompt, itself


def test_gradient_checkpointing_keeps_the_shared_prefix_exact(tokenizer, tiny_model, method):
    batch = FORMATS["pairs"].collate(_encoded(tokenizer, "pairs"), tokenizer.pad_token_id)
    plain = AlignModule(copy.deepcopy(tiny_model), DPO(sft_weight=1.0), tokenizer, optimizer=torch.optim.SGD)
    checkpointed = AlignModule(copy.deepcopy(tiny_model), DPO(sft_weight=1.0), tokenizer, optimizer=torch.optim.SGD,
                               gradient_checkpointing=True)  # fmt: skip
    checkpointed.configure_model()
    loss, grads = _loss_and_grads(plain, batch)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, batch)
    assert_close(loss_ckpt, loss)
    _assert_same_grads(grads_ckpt, grads)


def test_chunked_head_equals_a_full_log_softmax(monkeypatch):
    """Several chunks (forced small): log-probs, entropies and the gradients of hidden states
    and weight equal plain autograd through a full log-softmax; in bf16 autocast, close."""
    monkeypatch.setattr(logps_head, "CHUNK_BYTES", 4 * 50 * 3)  # 3 rows of a 50-token vocabulary
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 8, generator=gen, requires_grad=True)
    weight = torch.randn(50, 8, generator=gen, requires_grad=True)
    labels = torch.randint(0, 50, (10,), generator=gen)
    upstream = torch.randn(10, generator=gen)
    logps, entropy = linear_logps(hidden, weight, labels, entropy=True)
    (logps * upstream).sum().backward()
    ours = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    full = torch.log_softmax(hidden @ weight.T, dim=-1)
    (full.gather(-1, labels[:, None]).squeeze(-1) * upstream).sum().backward()
    assert_close(logps, full.gather(-1, labels[:, None]).squeeze(-1).detach())
    assert_close(entropy, -(full.exp() * full).sum(-1).detach())
    assert not entropy.requires_grad
    assert_close(ours[0], hidden.grad)
    assert_close(ours[1], weight.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = linear_logps(hidden, weight, labels)
    assert_close(low, logps.detach(), rtol=0.05, atol=0.05)


def test_best_of_n_scoring_shares_the_prompt(tokenizer, tiny_model):
    prompts = [[tokenizer.bos_token_id, *tokenizer(p, add_special_tokens=False)["input_ids"]] for p in PROMPTS]
    from lit_align.data.collate import pad

    ids, mask = pad(prompts, tokenizer.pad_token_id, left=True)
    sampler = Sampler(num_samples=4, max_new_tokens=8, seed=0)
    shared = sampler(tiny_model, tokenizer, ids, mask, shared_prefix=True)
    flat = sampler(tiny_model, tokenizer, ids, mask, shared_prefix=False)
    assert torch.equal(shared.completion_ids, flat.completion_ids)
    assert_close(shared.logps, flat.logps, rtol=1e-5, atol=1e-6)


def test_an_encoder_reward_model_scores_flat_rows_as_each_sequence_alone(tokenizer, tmp_path):
    """An encoder attends both ways, so its flat rows keep the padding mask (a causal decoder's
    run without one): each pair's scores equal each prompt + response scored alone."""
    from transformers import AutoModelForSequenceClassification

    from lit_align.models.response_forward import response_scores
    from tests.fixtures_models import save_tiny_deberta_rm

    deberta = AutoModelForSequenceClassification.from_pretrained(save_tiny_deberta_rm(tmp_path / "rm")).eval()
    batch = FORMATS["pairs"].collate(_encoded(tokenizer, "pairs"), tokenizer.pad_token_id)
    scores = response_scores(deberta, **batch.forward_inputs(), shared=False)
    for r in range(batch.num_responses):
        p = int(batch.prompt_index[r])
        seq = torch.cat([batch.prompt_ids[p][batch.prompt_mask[p].bool()],
                         batch.response_ids[r][batch.response_mask[r].bool()]])[None]  # fmt: skip
        assert_close(scores[r], deberta(input_ids=seq).logits[0, 0].float(), rtol=1e-5, atol=1e-5)


def test_a_model_without_a_causal_cache_is_refused_in_one_line(tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from tests.fixtures_models import save_tiny_deberta_rm

    deberta = AutoModelForSequenceClassification.from_pretrained(save_tiny_deberta_rm(tmp_path / "rm"))
    with pytest.raises(Unsupported, match=r"^DebertaV2ForSequenceClassification .*model.shared_prefix=false$"):
        AlignModule(deberta, RM(), tokenizer, optimizer=torch.optim.SGD)
    assert AlignModule(deberta, RM(), tokenizer, optimizer=torch.optim.SGD, shared_prefix=False).shared_prefix is False


@pytest.mark.parametrize("case", ["dpo-nll", "aft-ranking", "rm"])
def test_shared_prefix_updates_are_invariant_to_micro_batching(tokenizer, tiny_model, case, method):
    """One SGD step on three prompts (pairs, groups) as one micro-batch equals the same step in
    micro-batches of one prompt each: the shared forward's prompt sharing stays inside a
    micro-batch, and each loss is divided by the step's count."""
    import lightning as L
    from torch.utils.data import DataLoader

    from lit_align.data.collate import StepCollator

    objective, fmt = {"dpo-nll": CASES["dpo-nll"], "aft-ranking": CASES["aft-ranking"], "rm": (RM, "pairs")}[case]
    model = tiny_model
    if case == "rm":
        torch.manual_seed(0)
        model = tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, head="score")
    rows = _encoded(tokenizer, fmt)
    params = []
    for size in (3, 1):
        module = AlignModule(copy.deepcopy(model), objective(), tokenizer, optimizer=partial(torch.optim.SGD, lr=1.0),
                             grad_clip=None)  # fmt: skip
        collate = StepCollator(partial(FORMATS[fmt].collate, pad_id=tokenizer.pad_token_id), size)
        L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, accelerator="cpu").fit(
            module, train_dataloaders=DataLoader(rows, batch_size=3, collate_fn=collate)
        )  # fmt: skip
        params.append(dict(module.policy.named_parameters()))
    moved = 0
    for name, p in params[0].items():
        assert_close(params[1][name], p, rtol=1e-5, atol=1e-6, msg=name)
        moved += not torch.equal(p, dict(model.named_parameters())[name])
    assert moved >= len(params[0]) - 1  # every weight moved (a tied or unused embedding row aside)


def test_flat_rows_pad_to_the_longest_prompt_plus_response(tokenizer):
    """The flat layout by hand (the rows of the packed test): each prompt + response right-padded
    as one sequence, 4 columns (the longest prompt + response), not 3 + 2."""
    from lit_align.models.packing import flat_rows

    flat = flat_rows(torch.tensor([[0, 11, 12], [21, 22, 23]]), torch.tensor([[0, 1, 1], [1, 1, 1]]),
                     torch.tensor([[31, 32], [41, 0], [51, 52]]), torch.tensor([[1, 1], [1, 0], [1, 1]]),
                     torch.tensor([0, 1, 0]))  # fmt: skip
    assert flat.input_ids.tolist() == [[11, 12, 31, 32], [21, 22, 23, 41], [11, 12, 51, 52]]
    assert flat.attention_mask.tolist() == [[1, 1, 1, 1]] * 3
    assert flat.columns.tolist() == [[1, 2], [2, 3], [1, 2]]  # before each response token


def test_packed_forward_in_bf16_autocast_is_close_to_the_flat_one(tokenizer, tiny_model):
    batch = FORMATS["pairs"].collate(_encoded(tokenizer, "pairs"), tokenizer.pad_token_id)
    assert response_forward.prefix_method(tiny_model) == "packed"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        packed = response_logps(tiny_model, **batch.forward_inputs(), shared=True).logps
        flat = response_logps(tiny_model, **batch.forward_inputs(), shared=False).logps
    assert packed.dtype == torch.float32
    assert_close(packed, flat, rtol=0.0, atol=0.05)
