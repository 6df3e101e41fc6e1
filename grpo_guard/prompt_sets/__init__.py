"""Built-in prompt sets generated in code (``ocr:*``, ``geneval:*``) and the ``hf:`` resolver.

Each generator module registers its sets in :mod:`grpo_guard.prompts` when imported; the
registry imports them on its first lookup. Generation is deterministic (fixed seeds, no time or
hash-dependent order) and cached, and imports no numpy, torch or datasets.
"""
