"""The built-in instruction-following task: generated instructions whose compliance a program
checks (`lit_align.data.instruct_checks`), with no download.

An instruction is a task ("Repeat the word cat 3 times.", "Count down from 9 to 5.", "Spell the
word mango backwards.", "Name 3 fruits other than kiwi, separated by commas.") and up to
``max_modifiers`` format constraints ("Use capital letters only.", "Put your answer in square
brackets.", "End with the word done."). The gold response complies with all of them.

The space is large (133 words, countdowns ending anywhere in 1..60, an excluded item in every
list) so that the held-out instructions, which training never shows, are a small share of each
task (a test holds it under 15%): held-out accuracy then measures the skill (copying and
reversing a word, counting, stopping, avoiding an item), which a 0.87M model needs about 1,500
SFT steps to learn, rather than recall of the few instructions a small space would hold out.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from lit_align.data.generated import GeneratedTaskDataModule
from lit_align.data.instruct_checks import CATEGORIES, MODIFIERS, constraints_met, content, render

WORDS = (
    "cat", "sun", "tree", "blue", "river", "stone", "cloud", "lamp", "bird", "paper", "moon", "apple",
    "chair", "snow", "road", "glass", "wind", "bread", "ship", "leaf", "coin", "door", "fish", "rain",
    "book", "hat", "cup", "box", "key", "ring", "rock", "sand", "salt", "milk", "egg", "cake", "tea",
    "map", "pen", "bell", "bag", "bed", "bus", "car", "boat", "drum", "fan", "fork", "gate", "gift",
    "goat", "horse", "house", "king", "lake", "lion", "mouse", "nest", "nose", "ocean", "plant",
    "queen", "rose", "seed", "sheep", "shoe", "sock", "star", "table", "tiger", "toy", "train",
    "truck", "wall", "watch", "water", "whale", "wheel", "wolf", "wood", "yard", "baby", "ball",
    "bank", "barn", "beach", "bone", "brick", "bush", "candy", "clock", "coat", "corn", "cow", "desk",
    "dish", "dress", "duck", "farm", "field", "flag", "floor", "frog", "girl", "grass", "hill", "jar",
    "kite", "knife", "lamb", "light", "mask", "nail", "night", "oven", "park", "pig", "plate", "pond",
    "rope", "skirt", "smoke", "spoon", "stick", "storm", "sugar", "tent", "tooth", "towel", "town",
    "wave", "web", "wing",
)  # fmt: skip
# 133 words of at most five letters: enough that a word's instructions cannot all be learnt by
# heart (held-out instructions then test the skill, not recall), short enough that six of them
# with every modifier fit in eval.max_new_tokens.
END_WORDS = ("done", "end", "stop", "over")


def make_instruction(rng: random.Random, max_count: int, max_modifiers: int) -> dict[str, Any]:
    """One instruction: ``{"instruction", "spec", "response"}`` (the spec as a dict)."""
    task = rng.choice(("repeat", "countdown", "reverse", "list"))
    if task == "repeat":
        spec: dict[str, Any] = {"task": task, "word": rng.choice(WORDS), "n": rng.randint(2, max_count)}
        text = f"Repeat the word {spec['word']} {spec['n']} times."
    elif task == "countdown":
        stop = rng.randint(1, 60)
        spec = {"task": task, "start": stop + rng.randint(2, max_count - 1), "stop": stop}
        text = f"Count down from {spec['start']} to {spec['stop']}."
    elif task == "reverse":
        spec = {"task": task, "word": rng.choice(WORDS)}
        text = f"Spell the word {spec['word']} backwards."
    else:
        category = rng.choice(sorted(CATEGORIES))
        vocabulary = CATEGORIES[category]
        k, excluded = rng.randint(2, min(max_count, 5)), rng.randrange(len(vocabulary))
        # any k distinct items but the excluded one comply; the gold lists a random k in the
        # category's order, so a greedy decoder learns a next item that always comes later
        items = sorted(rng.sample([i for i in range(len(vocabulary)) if i != excluded], k))
        spec = {"task": task, "category": category, "k": k, "exclude": vocabulary[excluded]}
        spec["items"] = [vocabulary[i] for i in items]
        text = f"Name {k} {category} other than {spec['exclude']}, separated by commas."
    modifiers = list(MODIFIERS) if task != "countdown" else ["brackets", "end"]  # no letters to capitalise
    for modifier in rng.sample(modifiers, rng.randint(0, min(max_modifiers, len(modifiers)))):
        if modifier == "upper":
            spec["upper"] = True
            text += " Use capital letters only."
        elif modifier == "brackets":
            spec["brackets"] = True
            text += " Put your answer in square brackets."
        else:
            spec["end"] = rng.choice(END_WORDS)
            text += f" End with the word {spec['end']}."
    return {"instruction": text, "spec": spec, "response": render(content(spec), spec)}


def violate(rng: random.Random, spec: dict[str, Any], broken: set[str]) -> str:
    """A response that meets every constraint of ``spec`` except those in ``broken``.

    A broken task is one of the mistakes a small model makes: a count one off, another word
    repeated, a list item twice or the excluded one, a word only partly reversed; a broken
    modifier is left out.
    """
    answer = content(spec)
    if "task" in broken:
        answer = _wrong_content(rng, spec)
    kept = {key: value for key, value in spec.items() if key not in broken or key == "task"}
    return render(answer, kept)


def _wrong_content(rng: random.Random, spec: dict[str, Any]) -> str:
    words, task, coin = content(spec).split(), spec["task"], rng.random()
    if task == "reverse":
        word = spec["word"][::-1]
        if coin < 0.5 or len(set(word)) < 2:
            return spec["word"] if spec["word"] != word else word + "s"  # not reversed
        i = rng.choice([j for j in range(len(word) - 1) if word[j] != word[j + 1]])
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # two letters swapped
    if task == "list":
        items = spec["items"]
        if coin < 1 / 3:
            return ", ".join(items[:-1])  # one item short
        if coin < 2 / 3:
            extra = [i for i in CATEGORIES[spec["category"]] if i not in items and i != spec.get("exclude")]
            return ", ".join([*items, rng.choice(extra)])  # one too many
        if spec.get("exclude") and coin < 5 / 6:
            return ", ".join([*items[:-1], spec["exclude"]])  # the excluded item
        return ", ".join([*items[:-1], items[0]])  # an item twice
    if task == "repeat" and coin < 1 / 3:
        return " ".join([rng.choice([w for w in WORDS if w != spec["word"]])] * spec["n"])  # another word
    if coin < 2 / 3:
        return " ".join(words + words[-1:])  # one too many
    return " ".join(words[:-1] if len(words) > 1 else words * 2)  # one too few


class InstructDataModule(GeneratedTaskDataModule):
    """The instruction task in every batch format; held-out rows carry the spec as ``answer``
    and are scored all-or-nothing (every constraint met) by `verify`.

    - ``sft``: instruction → the compliant response.
    - ``pairs``: the compliant response is chosen; rejected breaks 1 to all of its constraints.
    - ``groups``: the compliant response and ``group_size - 1`` others, ranked by how many
      constraints they break.

    Args:
        seed: the task instance (fixed, not the training seed).
        num_train, num_val, num_test: split sizes.
        max_count: the largest count or range length asked for (difficulty).
        max_modifiers: format constraints per instruction, 0 to 3 (difficulty).
        group_size: responses per instruction in the ``groups`` format.
        demo_modifier_rate: the chance an SFT demonstration applies each format modifier its
            instruction asks for (1: always). Below 1 the demonstrations, like people's, often
            skip them, and an SFT model learns to: the room the preference and RL objectives,
            whose pairs and rewards judge every constraint, are there to take.
        prompt_template: how an instruction becomes the user's message; ``{instruction}`` is
            replaced.
        chat_template: send that message through the tokenizer's chat template (when it has
            one, as the tiny tokenizer and instruct models do); false uses it as the prompt.
        **loader: batch and length settings of `AlignDataModule`.
    """

    prompt_field = "instruction"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        seed: int = 0,
        num_train: int = 20000,
        num_val: int = 200,
        num_test: int = 300,
        max_count: int = 6,
        max_modifiers: int = 2,
        group_size: int = 4,
        demo_modifier_rate: float = 0.3,
        prompt_template: str = "{instruction}",
        chat_template: bool = True,
        **loader: Any,
    ) -> None:
        super().__init__(tokenizer, seed, group_size, prompt_template, **loader)
        self.use_chat_template = chat_template
        if not 0.0 <= demo_modifier_rate <= 1.0:
            raise ValueError(f"demo_modifier_rate is a probability, got {demo_modifier_rate}")
        self.demo_modifier_rate = demo_modifier_rate
        if max_count < 3 or not 0 <= max_modifiers <= 3:
            raise ValueError(f"need max_count >= 3 and max_modifiers in 0..3, got {max_count}, {max_modifiers}")
        self.sizes = (num_train, num_val, num_test)
        self.max_count, self.max_modifiers = max_count, max_modifiers

    def generate(self) -> DatasetDict:
        """Instructions with ``instruction``, ``answer`` (the spec as JSON) and ``solution`` (the
        compliant response). Held-out instructions are drawn first and are distinct; training
        draws from the same distribution without them, so the held-out splits test unseen
        combinations (a word with a new count or new modifiers)."""
        rng, held_out = random.Random(self.seed), set()
        num_train, num_val, num_test = self.sizes
        splits = {}
        for name, size in (("validation", num_val), ("test", num_test), ("train", num_train)):
            rows = []
            for _ in range(1000 * size):
                if len(rows) == size:
                    break
                row = make_instruction(rng, self.max_count, self.max_modifiers)
                if row["instruction"] in held_out:
                    continue
                if name != "train":
                    held_out.add(row["instruction"])
                spec = json.dumps(row["spec"], sort_keys=True)
                rows.append({"instruction": row["instruction"], "answer": spec, "solution": row["response"]})
            if len(rows) < size:
                raise ValueError(f"only {len(rows)} distinct {name} instructions; lower num_val/num_test")
            splits[name] = Dataset.from_list(rows)
        return DatasetDict(splits)

    def demonstration(self, rng: random.Random, row: dict[str, Any]) -> str:
        """The SFT response: the compliant one with each format modifier left out with probability
        ``1 - demo_modifier_rate``, as demonstrations written by people skip instructions.
        Pairs, groups and held-out rows keep the compliant response."""
        spec = json.loads(row["answer"])
        skipped = {m for m in MODIFIERS if spec.get(m) and rng.random() >= self.demo_modifier_rate}
        return violate(rng, spec, skipped) if skipped else row["solution"]

    def wrong_responses(self, rng: random.Random, row: dict[str, Any], n: int) -> list[tuple[str, int]]:
        """Responses that break 1 to all of the instruction's constraints, ranked by how many."""
        spec = json.loads(row["answer"])
        constraints = ["task", *(m for m in MODIFIERS if spec.get(m))]
        wrong = []
        for _ in range(n):
            broken = set(rng.sample(constraints, rng.randint(1, len(constraints))))
            wrong.append((violate(rng, spec, broken), len(broken)))
        return wrong

    def verify(self, completion: str, answer: str) -> float | None:
        score = _instruction_accuracy(completion, answer)
        return None if score is None else score[0]

    def eval_metrics(self) -> dict[str, Callable[[str, str], tuple[float, float] | None]]:
        """IFEval's two accuracies (Zhou et al. 2023, §3): ``instruction_accuracy``, the share of
        instructions with every constraint met (the same as ``accuracy``), and
        ``constraint_accuracy``, the share of all constraints met, pooled over instructions."""
        return {"instruction_accuracy": _instruction_accuracy, "constraint_accuracy": _constraint_accuracy}


def _instruction_accuracy(completion: str, answer: str) -> tuple[float, float] | None:
    count = constraints_met(completion, answer)
    return None if count is None else (float(count[0] == count[1]), 1.0)


def _constraint_accuracy(completion: str, answer: str) -> tuple[float, float] | None:
    count = constraints_met(completion, answer)
    return None if count is None else (count[0] / count[1], float(count[1]))
