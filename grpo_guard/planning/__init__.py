"""Planning a run against a GPU before launch: ``grpo-guard plan`` (:mod:`.plan`), the fake-tensor
measurements it rests on (:mod:`.measure`), the shipped architectures (:mod:`.spec`), GPU presets
(:mod:`.gpus`, torch-free), and where a run meets its GPU (:mod:`.runtime`: ``auto`` rows per
forward, the worker's refusal, the out-of-memory message). Importing this package loads no torch."""
