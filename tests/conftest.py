"""Shared test setup: offline hubs, no analytics, a private data dir per test session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Fixed torch threads in trainer tests: the governor (grpo_guard/training/threads.py) follows the
# machine's load, and a thread count that changes between two runs can change float rounding in
# tests that compare runs exactly. Its own tests turn it back on.
os.environ.setdefault("GG_THREAD_GOVERNOR", "0")
