import torch
from torch.testing import assert_close

from lit_align.data.collate import pad
from lit_align.models.forward import forward_logps
from lit_align.rollout.sampler import Sampler


def _prompts(tokenizer):
    texts = ["Ann has 3 pens. Then Ann finds 4 more. How many pens does Ann have now?\n", "Tom has 9 cups.\n"]
    ids = [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
    return pad(ids, tokenizer.pad_token_id, left=True)


def test_shapes_masks_and_truncation(tokenizer, tiny_model):
    prompt_ids, prompt_mask = _prompts(tokenizer)
    rollout = Sampler(num_samples=12, max_new_tokens=30, temperature=2.0, seed=0)(
        tiny_model, tokenizer, prompt_ids, prompt_mask
    )
    n, width = 24, prompt_ids.shape[1]
    assert rollout.input_ids.shape[0] == n and rollout.logps.shape == rollout.completion_ids.shape
    assert rollout.prompt_index.tolist() == [0] * 12 + [1] * 12 and len(rollout.completions) == n
    assert torch.equal(rollout.input_ids[:, :width], prompt_ids.repeat_interleave(12, 0))
    assert rollout.response_mask[:, :width].sum() == 0
    eos = tokenizer.eos_token_id
    for i in range(n):
        completion, mask = rollout.input_ids[i, width:], rollout.response_mask[i, width:]
        if rollout.truncated[i]:
            assert eos not in completion.tolist() and mask.sum() == 30
        else:
            first = completion.tolist().index(eos)
            assert mask.tolist() == [1] * (first + 1) + [0] * (len(mask) - first - 1)
            assert (completion[first + 1 :] == tokenizer.pad_token_id).all()
    assert 0 < int(rollout.truncated.sum()) < n  # both cases occur at this seed
    assert torch.equal(rollout.prompt_ids, prompt_ids)  # each prompt once
    assert (rollout.logps[rollout.completion_mask == 0] == 0).all()
    assert (rollout.logps[rollout.completion_mask == 1] < 0).all()
    assert tiny_model.training  # eval mode only while sampling


def test_seeded_sampling_is_deterministic(tokenizer, tiny_model):
    prompt_ids, prompt_mask = _prompts(tokenizer)
    run = [
        Sampler(num_samples=3, max_new_tokens=8, seed=s)(tiny_model, tokenizer, prompt_ids, prompt_mask)
        for s in (1, 1, 2)
    ]
    assert torch.equal(run[0].input_ids, run[1].input_ids) and run[0].completions == run[1].completions
    assert not torch.equal(run[0].input_ids, run[2].input_ids)


def test_old_logps_match_generation_and_ignore_padding(tokenizer, tiny_model):
    """The rollout's log-probs (training forward, left-padded) equal log-softmax of generate's own
    raw logits at each sampled token, and each row's log-probs equal those of the row alone."""
    prompt_ids, prompt_mask = _prompts(tokenizer)
    rollout = Sampler(num_samples=1, max_new_tokens=6, seed=0)(tiny_model, tokenizer, prompt_ids, prompt_mask)
    tiny_model.eval()
    with torch.no_grad():
        out = tiny_model.generate(
            input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=6, do_sample=False,
            output_logits=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=2,
        )  # fmt: skip
        width = prompt_ids.shape[1]
        greedy_ids = out.sequences
        mask = torch.cat([prompt_mask, torch.ones_like(greedy_ids[:, width:])], dim=1)
        ours = forward_logps(tiny_model, greedy_ids, mask)[:, width - 1 :]
        theirs = torch.stack([torch.log_softmax(step.float(), -1) for step in out.logits], dim=1)
        theirs = theirs.gather(-1, greedy_ids[:, width:, None]).squeeze(-1)
        assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

        for i in range(2):  # the same row alone, without any padding
            real = rollout.attention_mask[i].bool()
            alone = forward_logps(tiny_model, rollout.input_ids[i, real][None], torch.ones(1, int(real.sum())))
            alone_response = rollout.response_mask[i, real][1:].bool()
            ours = rollout.logps[i, rollout.completion_mask[i].bool()]
            assert_close(ours, alone[0, alone_response], atol=1e-5, rtol=1e-5)


def test_forward_logps_ignore_left_padding_with_absolute_positions():
    """GPT-2 adds absolute position embeddings: only explicit position ids keep a left-padded
    row's log-probs equal to the row alone (Llama's rotary embedding would hide the bug)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=1, n_head=2)).eval()
    row = torch.tensor([[5, 6, 7, 8, 9]])
    padded, mask = torch.tensor([[0, 0, 5, 6, 7, 8, 9]]), torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = forward_logps(model, row, torch.ones_like(row))
        assert_close(forward_logps(model, padded, mask)[:, 2:], alone)
        naive = torch.log_softmax(model(input_ids=padded, attention_mask=mask).logits[:, 2:-1], -1)
        assert not torch.allclose(naive.gather(-1, row[:, 1:, None]).squeeze(-1), alone, atol=1e-3)
