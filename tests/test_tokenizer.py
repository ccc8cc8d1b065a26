from transformers import AutoTokenizer

from lit_align.models.tiny import CHARACTERS, SPECIAL_TOKENS


def test_round_trip_is_character_level(tokenizer):
    text = "Mia has 12 marbles.\nThen Mia loses 5.  #### 7"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text


def test_special_ids_and_vocab(tokenizer):
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(CHARACTERS) == 100
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    ids = tokenizer("a\u00e9b", add_special_tokens=False)["input_ids"]
    assert ids[1] == tokenizer.unk_token_id
    assert (
        tokenizer.decode([1, *tokenizer("ok", add_special_tokens=False)["input_ids"], 2], skip_special_tokens=True)
        == "ok"
    )


def test_save_and_load_with_auto_tokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "7+8=15\n#### 15"
    assert loaded(text, add_special_tokens=False)["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert loaded.pad_token_id == 0 and loaded.eos_token_id == 2 and loaded.decode(loaded(text)["input_ids"]) == text
