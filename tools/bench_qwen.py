"""The Qwen-shaped model of `tools/bench.py`: Qwen2.5-0.5B where it matters for cost, random
rows of realistic lengths, and the local files every contender reads them from.

The model is a randomly initialised (seeded) `Qwen2ForCausalLM` with Qwen2.5-0.5B's vocabulary
(151,936), width 896, 14 query / 2 KV heads, MLP 4,864 and tied embeddings, but 2 layers instead
of 24, so a step fits a 2-core CPU. With so few layers the LM head (896 × 151,936) is most of a
step's compute, which is the cost the shared-prefix forward and response-only log-probs address.

Rows are random token ids written as text: id ``i`` is the word ``t<i>`` of a word-level
tokenizer (`word_tokenizer`: ``WordLevel`` over ``WhitespaceSplit``), so tokenising a row's text
gives back exactly its ids in every contender, and the ids line up with the model's embedding.
Ids 0..151,642 are ordinary words (Qwen2.5's byte-level range); after them come Qwen2.5's special
tokens at their own ids (``<|endoftext|>`` pads, ``<|im_end|>`` ends a response; no bos, as
Qwen2.5 has none), then ``####`` (GSM8K's answer marker) and ``<unk>``; the rest of the
embedding is unused, as in Qwen2.5. Shapes (prompt, response tokens):

- ``math`` (SFT, RLOO, GRPO, AFT, generation): prompts 80–120, responses 120–180 (~100 / ~150);
- ``preference`` (DPO, RM): prompts 160–240, responses 200–400 (~200 / ~300).

`prepare` writes the model, its tokenizer (in a folder of its own, see `tokenizer_dir`) and the
rows (one JSON Lines file per data config: ``data=gsm8k`` for SFT and the RLOO and GRPO prompts,
``data=preference`` for DPO and RM pairs, ``data=cot_ranking`` for AFT groups) to a cache folder
once; every contender reads them there, and lit_align through its own ``model=hf`` and file
datamodules, as a user with local files would.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

VOCAB = 151_936  # Qwen2.5's embedding rows
WORDS = 151_643  # ids below this are ordinary words
PAD, EOS, MARK, UNK = "<|endoftext|>", "<|im_end|>", "####", "<unk>"
SPECIAL = {151_643: PAD, 151_644: "<|im_start|>", 151_645: EOS, 151_646: MARK, 151_647: UNK}
CONFIG = dict(
    vocab_size=VOCAB, hidden_size=896, intermediate_size=4864, num_hidden_layers=2, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    tie_word_embeddings=True, pad_token_id=151_643, eos_token_id=151_645, bos_token_id=None, num_labels=1,
)  # fmt: skip
SHAPES = {"math": ((80, 120), (120, 180)), "preference": ((160, 240), (200, 400))}
FAMILY = {"sft": "math", "rloo": "math", "grpo": "math", "generate": "math", "aft": "math", "dpo": "preference",
          "rm": "preference"}  # fmt: skip
HELD_OUT = 2  # rows each for validation and test, carved off the file's start (never evaluated)
VERSION = 1  # bump when the files' contents change, so stale caches are not reused


def word(i: int) -> str:
    return SPECIAL.get(i, f"t{i}")


def text(ids: list[int]) -> str:
    """Token ids as the words that tokenise back to them."""
    return " ".join(map(word, ids))


def word_tokenizer():
    """A word-level tokenizer whose word ``t<i>`` is id ``i``, with Qwen2.5's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab={word(i): i for i in range(VOCAB)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # no decoder: decode joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, pad_token=PAD, unk_token=UNK, model_max_length=32768
    )


def cache_dir(seed: int) -> Path:
    """Where `prepare` writes (``LIT_ALIGN_BENCH_CACHE``, default the system's temp folder)."""
    root = Path(os.environ.get("LIT_ALIGN_BENCH_CACHE", Path(tempfile.gettempdir()) / "lit_align_bench"))
    return root / f"qwen-v{VERSION}-seed{seed}"


def model_dir(seed: int) -> Path:
    return cache_dir(seed) / "model"


def tokenizer_dir(seed: int) -> Path:
    """The tokenizer's own folder: next to the model's ``config.json`` (``model_type: qwen2``),
    transformers 5's ``AutoTokenizer`` would load it as a ``Qwen2Tokenizer``, which rebuilds Qwen's
    byte-level pipeline around the vocabulary and tokenises ``t5`` to nothing."""
    return cache_dir(seed) / "tokenizer"


def data_file(workload: str, seed: int, num_train: int) -> Path:
    """The JSON Lines file of a workload's rows: ``num_train`` training rows after the held-out ones."""
    kind = {"sft": "gsm8k", "rloo": "gsm8k", "grpo": "gsm8k", "generate": "gsm8k", "dpo": "pairs", "rm": "pairs",
            "aft": "groups"}  # fmt: skip
    return cache_dir(seed) / f"{kind[workload]}-n{num_train}.jsonl"


def random_ids(rng: random.Random, lengths: tuple[int, int]) -> list[int]:
    return [rng.randrange(WORDS) for _ in range(rng.randint(*lengths))]


def make_rows(workload: str, seed: int, n: int) -> list[dict[str, Any]]:
    """``n`` rows of a workload's file, each with its text fields and the ``ids`` they encode."""
    rng = random.Random(f"{FAMILY[workload]}-{seed}")
    prompt_lengths, response_lengths = SHAPES[FAMILY[workload]]
    rows = []
    for _ in range(n):
        prompt = random_ids(rng, prompt_lengths)
        if workload in ("sft", "rloo", "grpo", "generate"):  # GSM8K: a solution ending "#### <answer>"; the
            # question ends in a newline, as TRL joins prompt and response as text
            solution = random_ids(rng, (response_lengths[0] - 2, response_lengths[1] - 2))
            answer = rng.randrange(WORDS)
            row = {"question": text(prompt) + "\n", "answer": f"{text(solution)} {MARK} {word(answer)}"}
            ids = {"prompt": prompt, "response": [*solution, 151_646, answer]}
        elif workload in ("dpo", "rm"):  # the prompt ends in a newline, for the same reason
            chosen, rejected = random_ids(rng, response_lengths), random_ids(rng, response_lengths)
            row = {"prompt": text(prompt) + "\n", "chosen": text(chosen), "rejected": text(rejected)}
            ids = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        else:  # AFT: 4 sampled chains, 1 to 3 of them correct, and the gold solution (a reference chain)
            chains = [random_ids(rng, response_lengths) for _ in range(5)]
            correct = [True] * rng.randint(1, 3)
            correct += [False] * (4 - len(correct))
            rng.shuffle(correct)
            responses = [{"text": text(c), "correct": ok} for c, ok in zip(chains[:4], correct, strict=True)]
            row = {"question": text(prompt), "solution": text(chains[4]), "responses": responses}
            ids = {"prompt": prompt, "responses": chains}
        rows.append({**row, "ids": ids})
    return rows


def prepare(seed: int, files: list[tuple[str, int]] = (), model: bool = True) -> Path:
    """Writes the tokenizer, the model (unless ``model`` is false; ~660 MB, ~30 s) and each
    ``(workload, num_train)`` file, unless already there; returns the model's folder. Each is
    written to a temporary name and renamed, so a half-written cache is never read."""
    if not tokenizer_dir(seed).is_dir():
        tokenizer_dir(seed).parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=tokenizer_dir(seed).parent))
        word_tokenizer().save_pretrained(partial)
        _publish(partial, tokenizer_dir(seed))
    out = model_dir(seed)
    if model and not out.is_dir():
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(seed)
        partial = Path(tempfile.mkdtemp(dir=out.parent))
        Qwen2ForCausalLM(Qwen2Config(**CONFIG)).save_pretrained(partial)
        _publish(partial, out)
    for workload, num_train in files:
        path = data_file(workload, seed, num_train)
        if not path.is_file():
            rows = make_rows(workload, seed, num_train + 2 * HELD_OUT)
            partial_file = path.with_suffix(f".{os.getpid()}.tmp")
            partial_file.write_text(
                "".join(json.dumps({k: v for k, v in r.items() if k != "ids"}) + "\n" for r in rows)
            )
            partial_file.rename(path)
    return out


def _publish(partial: Path, final: Path) -> None:
    try:
        partial.rename(final)
    except OSError:  # another process got there first
        shutil.rmtree(partial, ignore_errors=True)


def lit_data_overrides(workload: str, source: Path) -> list[str]:
    """lit_align's data config for a workload's file."""
    config = {"sft": "gsm8k", "rloo": "gsm8k", "grpo": "gsm8k", "generate": "gsm8k", "dpo": "preference",
              "rm": "preference", "aft": "cot_ranking"}[workload]  # fmt: skip
    out = [f"data={config}", f"data.source={source}", f"data.num_val={HELD_OUT}", f"data.num_test={HELD_OUT}"]
    if config == "gsm8k":  # the question as written, ending in a newline (the default adds English words)
        out.append("data.prompt_template='{question}'")
    return out


def datamodule(workload: str, source: Path, tok, batch_format: str, batch_size: int, max_length: int):
    """lit_align's datamodule for the file, as `lit_data_overrides` configures it."""
    from lit_align.data.files import CotRankingDataModule, PreferenceDataModule
    from lit_align.data.gsm8k import Gsm8kDataModule

    kind = {"gsm8k": Gsm8kDataModule, "pairs": PreferenceDataModule, "groups": CotRankingDataModule}
    extra = {"prompt_template": "{question}"} if source.name.startswith("gsm8k") else {}
    return kind[source.name.split("-")[0]](
        tok, source=str(source), num_val=HELD_OUT, num_test=HELD_OUT, batch_format=batch_format,
        batch_size=batch_size, max_length=max_length, max_prompt_length=max_length // 2, **extra,
    )  # fmt: skip
