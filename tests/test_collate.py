import torch

from lit_align.data.collate import (
    StepCollator,
    collate_prompts,
    encode_group,
    encode_pair,
    encode_prompt,
    encode_prompt_response,
    pad,
)
from lit_align.data.formats import FORMATS

collate_sft, collate_pairs, collate_groups = (FORMATS[f].collate for f in ("sft", "pairs", "groups"))


def test_loss_mask_covers_exactly_the_response(tokenizer):
    row = encode_prompt_response(tokenizer, "Q?\n", "12", max_prompt_length=16, max_length=32)
    # bos Q ? \n | 1 2 eos
    assert row["input_ids"] == [1, *tokenizer("Q?\n", add_special_tokens=False)["input_ids"], 21, 22, 2]
    assert row["prompt_len"] == 4
    other = encode_prompt_response(tokenizer, "A\n", "345", max_prompt_length=16, max_length=32)
    batch = collate_sft([row, other], pad_id=0)
    # Prompts left-padded to 4, responses right-padded to 4: "12"+eos and "345"+eos.
    assert batch.prompt_ids.tolist() == [row["input_ids"][:4], [0, *other["input_ids"][:3]]]
    assert batch.prompt_mask.tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert batch.response_ids.tolist() == [[21, 22, 2, 0], other["input_ids"][3:]]
    assert batch.loss_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch.prompt_index.tolist() == [0, 1]
    assert batch.num_tokens == 14


def test_padding_is_masked(tokenizer):
    rows = [encode_prompt_response(tokenizer, "Q\n", r, 8, 16) for r in ("1", "1234")]
    batch = collate_sft(rows, pad_id=0)
    assert batch.response_mask[0].tolist() == [1, 1, 0, 0, 0]
    assert batch.loss_mask[0].tolist() == [1, 1, 0, 0, 0]  # '1' and eos; never padding
    assert batch.response_ids[0, 2:].tolist() == [0, 0, 0]


def test_truncation_policy(tokenizer):
    ids, cut = encode_prompt(tokenizer, "abcdefgh", max_prompt_length=4)
    assert cut and ids == [1, *tokenizer("fgh", add_special_tokens=False)["input_ids"]]  # bos + the end
    row = encode_prompt_response(tokenizer, "ab", "123456", max_prompt_length=4, max_length=6)
    assert row["response_truncated"] and not row["prompt_truncated"]
    assert len(row["input_ids"]) == 6 and row["input_ids"][-1] != tokenizer.eos_token_id


def test_left_padding_for_generation():
    ids, mask = pad([[5, 6, 7], [8]], pad_id=0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    batch = collate_prompts([{"prompt_ids": [5, 6], "answer": "3"}, {"prompt_ids": [7], "answer": "4"}], pad_id=0)
    assert batch["prompt_ids"].tolist() == [[5, 6], [0, 7]] and batch["answer"] == ["3", "4"]


def test_step_collator_splits_into_micro_batches(tokenizer):
    rows = [encode_prompt_response(tokenizer, "Q\n", "1" * n, 8, 32) for n in range(1, 8)]
    micro = StepCollator(lambda r: collate_sft(r, pad_id=0), micro_batch_size=3)(rows)
    assert [m.num_responses for m in micro] == [3, 3, 1]
    assert sum(m.num_tokens for m in micro) == sum(len(r["input_ids"]) for r in rows)
    assert micro[0].response_ids.shape[1] == 3 + 1  # padded to its own longest row
    assert torch.equal(micro[2].loss_mask.sum(), torch.tensor(8))


def test_collate_pairs_shares_the_prompt_and_names_each_side(tokenizer):
    rows = [encode_pair(tokenizer, "Q\n", "12", "3", 8, 16), encode_pair(tokenizer, "RR\n", "4", "567", 8, 16)]
    rows[0]["ref_logps"], rows[1]["ref_logps"] = [-1.0, -2.0], [-3.0, -4.0]
    batch = collate_pairs(rows, pad_id=0)
    assert batch.num_prompts == 2 and batch.num_responses == 4
    assert batch.prompt_index.tolist() == [0, 0, 1, 1]
    assert batch.loss_mask[batch.chosen].sum(1).tolist() == [3, 2]  # response + eos
    assert batch.loss_mask[batch.rejected].sum(1).tolist() == [2, 4]
    assert batch.ref_logps.tolist() == [[-1.0, -2.0], [-3.0, -4.0]]


def test_collate_groups_flattens_with_group_index(tokenizer):
    responses = [{"text": "1", "correct": True, "rank": 0}, {"text": "22", "correct": False, "rank": 2}]
    rows = [encode_group(tokenizer, "Q\n", responses, 8, 16), encode_group(tokenizer, "R\n", responses[:1], 8, 16)]
    batch = collate_groups(rows, pad_id=0)
    assert batch.num_prompts == 2 and batch.prompt_index.tolist() == [0, 0, 1]
    assert batch.correct.tolist() == [1, 0, 1] and batch.rank.tolist() == [0, 2, 0]
    assert batch.reference.tolist() == [0, 0, 0] and batch.loss_mask.sum(1).tolist() == [2, 3, 2]
