"""``ocr:train`` / ``ocr:test``: text-rendering prompts, one double-quoted target text each (the
``ocr`` reward reads it), from our own templates and word lists (:mod:`.ocr_words`).

The target texts are split first, so train and test never ask for the same text (compared
case-insensitively); each split's prompts are distinct (text, template) pairs drawn with a fixed
seed. Casing varies by text (UPPER, Title, lower) as it does on real signs.
"""

from __future__ import annotations

import random
from functools import lru_cache

from grpo_guard.prompts.catalog import register
from grpo_guard.prompts.ocr_words import MODIFIERS, NOUNS, TEMPLATES, WORDS
from grpo_guard.prompts.prompt import Prompt

SEED = 20251026
N_TRAIN, N_TEST = 20_000, 1_000
N_TEST_TEXTS = 300


@lru_cache(maxsize=1)
def target_texts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train texts, test texts): disjoint, in a fixed shuffled order."""
    texts = list(dict.fromkeys([*WORDS, *(f"{m} {n}" for m in MODIFIERS for n in NOUNS if m != n)]))
    cased = [t.upper() if i % 3 == 0 else t.title() if i % 3 == 1 else t for i, t in enumerate(texts)]
    random.Random(SEED).shuffle(cased)
    return tuple(cased[N_TEST_TEXTS:]), tuple(cased[:N_TEST_TEXTS])


def _prompts(texts: tuple[str, ...], n: int, seed: int) -> tuple[Prompt, ...]:
    pairs = random.Random(seed).sample(range(len(texts) * len(TEMPLATES)), n)
    return tuple(Prompt(TEMPLATES[k % len(TEMPLATES)].format(text=texts[k // len(TEMPLATES)])) for k in pairs)


@lru_cache(maxsize=2)
def ocr_set(split: str) -> tuple[Prompt, ...]:
    """The prompts of ``split`` ('train' or 'test')."""
    train, test = target_texts()
    if split == "train":
        return _prompts(train, N_TRAIN, SEED + 1)
    if split == "test":
        return _prompts(test, N_TEST, SEED + 2)
    raise ValueError(f"no OCR split {split!r}; use train or test")


register("ocr:train", f"{N_TRAIN:,} text-rendering prompts (signs, posters, neon, shirts, covers, ...), "
         "one double-quoted text each", lambda: ocr_set("train"))
register("ocr:test", f"{N_TEST:,} text-rendering prompts whose texts never appear in ocr:train", lambda: ocr_set("test"))
