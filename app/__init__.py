"""Gradio UI. Never imports torch, diffusers or grpo_guard.models."""
