"""Export: a checkpoint -> a diffusers LoRA (``pytorch_lora_weights.safetensors``) or a complete
``save_pretrained`` pipeline, with a model card (``README.md``) that tells the truth about the run.

- ``facts``: which checkpoint (run id + best/last/N, or a file) and what the store knows about it
  (no torch);
- ``card``: the card and the diffusers snippet, pure functions of the facts (no torch);
- ``build``: the model rebuilt from the checkpoint and written (torch, diffusers, peft);
- ``exporter``: one export, atomic (temporary directory beside ``--out``, renamed at the end),
  and the hub upload;
- ``cli``: ``grpo-guard export``.
"""
