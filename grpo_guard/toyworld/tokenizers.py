"""Offline tokenizers built in code (STACK.md §2): a CLIP-style byte-level BPE and a T5-style
Unigram vocabulary. No vocab files, sentencepiece models or hub downloads.

Both are trained/built from the toy prompts plus a small list of common words, and every
printable ASCII character is in the vocabulary, so any English prompt tokenizes without
``<unk>`` (unknown words fall back to sub-words or characters).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from grpo_guard.toyworld.prompts import all_combinations, corpus_words, make_prompt

# A few generic words so that non-toy prompts (tests, tiny fixtures) tokenize into words too.
EXTRA_WORDS = ["the", "of", "and", "with", "in", "photo", "cat", "dog", "astronaut", "riding", "horse",
               "hello", "world", "text", "sign", "star", "cross", "big", "small", "left", "right", "top",
               "bottom", "image", "picture"]

_CLIP_SPLIT = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
               r"|[^\s\p{L}\p{N}]+")
_T5_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()\"/&%+=*#@"


def toy_corpus() -> list[str]:
    return [make_prompt(*c) for c in all_combinations()] + [" ".join(EXTRA_WORDS)]


def make_clip_tokenizer(corpus: Iterable[str] | None = None, *, vocab_size: int = 600,
                        model_max_length: int = 16):
    """A ``CLIPTokenizer`` with CLIP's pre-tokenization and ``</w>`` word ends (STACK.md T2/T3)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>",
                               unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
        show_progress=False)
    words = list(corpus) if corpus is not None else toy_corpus()
    # Each printable ASCII character as its own word, so it also exists with the </w> suffix.
    tok.train_from_iterator(words + [chr(c) for c in range(33, 127)], trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=model_max_length)


def make_t5_tokenizer(words: Iterable[str] | None = None, *, model_max_length: int = 16):
    """A ``T5Tokenizer`` over a Unigram vocabulary: specials, ``▁``, ``▁word`` pieces, then single
    characters as fallback (STACK.md T4)."""
    from transformers import T5Tokenizer

    words = sorted(set(words)) if words is not None else sorted(set(corpus_words()) | set(EXTRA_WORDS))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -5.0) for w in words]
    vocab += [(ch, -10.0) for ch in _T5_CHARS]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
