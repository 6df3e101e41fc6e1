"""Prompt sets: the registry (``toy:*``, ``ocr:*``, ``geneval:*``, ``hf:``, ``file:``) and the
sets built in code. ``catalog`` resolves specs; ``prompt`` is the metadata-carrying string; ``ocr``,
``geneval`` (with ``geneval_vocab``) and ``hf`` build sets. Imports no torch, numpy or datasets."""

from grpo_guard.prompts.catalog import (
    GENEVAL_KEYS,
    GENEVAL_TAGS,
    SPEC_FORMS,
    PromptSet,
    has_geneval_meta,
    item_problem,
    known_sets,
    parse_hf_spec,
    prompt_from_item,
    prompt_to_item,
    read_prompt_file,
    register,
    registry,
    resolve_prompts,
    run_prompt_errors,
    spec_has_geneval_meta,
    spec_problem,
    write_prompts,
)
from grpo_guard.prompts.prompt import Prompt

__all__ = ["GENEVAL_KEYS", "GENEVAL_TAGS", "Prompt", "PromptSet", "SPEC_FORMS", "has_geneval_meta", "item_problem", "known_sets", "parse_hf_spec", "prompt_from_item", "prompt_to_item", "read_prompt_file", "register", "registry", "resolve_prompts", "run_prompt_errors", "spec_has_geneval_meta", "spec_problem", "write_prompts"]
