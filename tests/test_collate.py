import torch

from lit_align.data.collate import (
    StepCollator,
    collate_groups,
    collate_pairs,
    collate_prompts,
    collate_sft,
    encode_group,
    encode_pair,
    encode_prompt,
    encode_prompt_response,
    pad,
)


def test_loss_mask_covers_exactly_the_response(tokenizer):
    row = encode_prompt_response(tokenizer, "Q?\n", "12", max_prompt_length=16, max_length=32)
    # bos Q ? \n | 1 2 eos
    assert row["input_ids"] == [1, *tokenizer("Q?\n", add_special_tokens=False)["input_ids"], 21, 22, 2]
    assert row["prompt_len"] == 4
    other = encode_prompt_response(tokenizer, "A\n", "345", max_prompt_length=16, max_length=32)
    batch = collate_sft([row, other], pad_id=0)
    assert batch["input_ids"].shape == (2, 7)
    assert batch["loss_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1] * 7, [1] * 7]
    assert batch["num_tokens"] == 14


def test_padding_is_masked(tokenizer):
    rows = [encode_prompt_response(tokenizer, "Q\n", r, 8, 16) for r in ("1", "1234")]
    batch = collate_sft(rows, pad_id=0)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
    assert batch["loss_mask"][0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]  # '1' and eos; never padding
    assert batch["input_ids"][0, 5:].tolist() == [0, 0, 0]


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
    assert [len(m["input_ids"]) for m in micro] == [3, 3, 1]
    assert sum(m["num_tokens"] for m in micro) == sum(len(r["input_ids"]) for r in rows)
    assert micro[0]["input_ids"].shape[1] == 3 + 3 + 1  # padded to its own longest row
    assert torch.equal(micro[2]["loss_mask"].sum(), torch.tensor(8))


def test_collate_pairs_puts_chosen_first_and_keeps_ref_order(tokenizer):
    rows = [encode_pair(tokenizer, "Q\n", "12", "3", 8, 16), encode_pair(tokenizer, "Q\n", "4", "567", 8, 16)]
    rows[0]["ref_logps"], rows[1]["ref_logps"] = [-1.0, -2.0], [-3.0, -4.0]
    batch = collate_pairs(rows, pad_id=0)
    assert batch["input_ids"].shape[0] == 4
    assert batch["loss_mask"].sum(1).tolist() == [3, 2, 2, 4]  # response + eos: chosen 0, 1, rejected 0, 1
    assert batch["ref_logps"].tolist() == [-1.0, -3.0, -2.0, -4.0]


def test_collate_groups_flattens_with_group_index(tokenizer):
    responses = [{"text": "1", "correct": True, "rank": 0}, {"text": "22", "correct": False, "rank": 2}]
    rows = [encode_group(tokenizer, "Q\n", responses, 8, 16), encode_group(tokenizer, "R\n", responses[:1], 8, 16)]
    batch = collate_groups(rows, pad_id=0)
    assert batch["num_groups"] == 2 and batch["group"].tolist() == [0, 0, 1]
    assert batch["correct"].tolist() == [1, 0, 1] and batch["rank"].tolist() == [0, 2, 0]
    assert batch["reference"].tolist() == [0, 0, 0] and batch["loss_mask"].sum(1).tolist() == [2, 3, 2]
