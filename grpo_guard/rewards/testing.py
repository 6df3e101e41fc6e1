"""Tiny random reward models built in code, for tests (no hub access): a CLIP model + processor
saved like a real checkpoint, so the rewards' real loading code runs against it."""

from __future__ import annotations

import os


def tiny_clip_dir(tmp_path, *, seed: int = 0, projection_dim: int = 32, image_size: int = 32,
                  name: str = "tiny_clip") -> str:
    """Save a random ``CLIPModel`` (2 layers, hidden 32) and a ``CLIPProcessor`` (offline BPE
    tokenizer, 16 tokens; ``image_size`` px centre crop) under ``tmp_path/name``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from grpo_guard.toyworld.tokenizers import make_clip_tokenizer

    torch.manual_seed(seed)
    tok = make_clip_tokenizer(model_max_length=16)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, projection_dim=projection_dim),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=8, projection_dim=projection_dim),
        projection_dim=projection_dim)
    model = CLIPModel(cfg).eval()
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                                            crop_size={"height": image_size, "width": image_size}),
                         tokenizer=tok)
    out = os.path.join(str(tmp_path), name)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def tiny_mlp_head_state(in_dim: int, *, seed: int = 0) -> dict:
    """Random weights in the aesthetic / ImageReward MLP layout (keys ``layers.{0,2,4,6,7}.*``),
    with the official hidden sizes 1024, 128, 64, 16."""
    import torch

    g = torch.Generator().manual_seed(seed)
    dims = [in_dim, 1024, 128, 64, 16, 1]
    state = {}
    for k, (i, o) in zip((0, 2, 4, 6, 7), zip(dims[:-1], dims[1:], strict=True), strict=True):
        state[f"layers.{k}.weight"] = torch.randn(o, i, generator=g) / i ** 0.5
        state[f"layers.{k}.bias"] = torch.zeros(o)
    return state


def tiny_blip_dir(tmp_path, *, seed: int = 0, name: str = "tiny_blip") -> str:
    """Save a random ``BlipForImageTextRetrieval`` (hidden 32), a word-level ``BertTokenizer``,
    a 32 px ``BlipImageProcessor`` and ``mlp_head.safetensors`` under ``tmp_path/name``: the
    directory layout the ``imagereward`` reward loads."""
    import torch
    from safetensors.torch import save_file
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor

    from grpo_guard.toyworld.tokenizers import EXTRA_WORDS

    torch.manual_seed(seed)
    words = sorted(set(EXTRA_WORDS) | {"a", "red", "green", "blue", "circle", "square", "on", "background"})
    chars = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789" if c not in words]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *chars])}
    tok = BertTokenizer(vocab=vocab)
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=40,
                         bos_token_id=2, sep_token_id=3, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8), projection_dim=16)
    out = os.path.join(str(tmp_path), name)
    BlipForImageTextRetrieval(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    save_file(tiny_mlp_head_state(32, seed=seed), os.path.join(out, "mlp_head.safetensors"))
    return out


def tiny_mask2former_dir(tmp_path, *, seed: int = 0, image_size: int = 64, num_queries: int = 8,
                         name: str = "tiny_mask2former") -> str:
    """Save a random ``Mask2FormerForUniversalSegmentation`` (tiny Swin backbone, hidden 32) with
    the 80 COCO classes in its ``id2label`` and a ``Mask2FormerImageProcessor`` (``image_size`` px)
    under ``tmp_path/name``: the layout of ``facebook/mask2former-swin-small-coco-instance``."""
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    from grpo_guard.rewards.geneval_rules import COCO_CLASSES

    torch.manual_seed(seed)
    swin = SwinConfig(image_size=image_size, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                            encoder_feedforward_dim=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                            dim_feedforward=32, num_queries=num_queries,
                            id2label=dict(enumerate(COCO_CLASSES)), label2id={c: i for i, c in enumerate(COCO_CLASSES)})
    out = os.path.join(str(tmp_path), name)
    Mask2FormerForUniversalSegmentation(cfg).eval().save_pretrained(out)
    Mask2FormerImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size * 2},
                              size_divisor=32).save_pretrained(out)
    return out


QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>")


def tiny_qwen_vl_dir(tmp_path, *, seed: int = 0, name: str = "tiny_qwen_vl", arch: str = "qwen2_5_vl") -> str:
    """Save a random Qwen-VL judge (2 text layers, hidden 32; a 1-block vision tower), a byte-level
    BPE tokenizer trained in code on the toy prompts (Qwen's special tokens, the digits 1–5 as
    tokens) and a ``Qwen2VLImageProcessor`` (32 px images: 16 patches, 4 merged tokens) under
    ``tmp_path/name``: the layout of ``CodeGoat24/UnifiedReward-qwen-7b``. ``arch`` picks the model
    class: ``qwen2_5_vl`` (``Qwen2_5_VLForConditionalGeneration``, the 7B judge's) or ``qwen2_vl``
    (``Qwen2VLForConditionalGeneration``, the earlier UnifiedReward judges')."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
    )

    from grpo_guard.toyworld.tokenizers import toy_corpus

    if arch not in ("qwen2_5_vl", "qwen2_vl"):
        raise ValueError(f"arch must be 'qwen2_5_vl' or 'qwen2_vl', got {arch!r}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([*toy_corpus(), "Final Score: 1 2 3 4 5 caption image"], trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(QWEN_SPECIAL), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIAL}
    special = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024,
                rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, **special)
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if arch == "qwen2_vl":  # the vision tower's width is embed_dim; hidden_size is what it hands the LM
        cfg = Qwen2VLConfig(text_config=text, vision_config=dict(depth=1, embed_dim=32, hidden_size=32, mlp_ratio=2,
                                                                 num_heads=2, patch_size=14, spatial_merge_size=2,
                                                                 temporal_patch_size=2), **tokens)
        model_cls = Qwen2VLForConditionalGeneration
    else:
        cfg = Qwen2_5_VLConfig(
            text_config=text,
            vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                               fullatt_block_indexes=[0]), **tokens, **special)
        model_cls = Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    out = os.path.join(str(tmp_path), name)
    model_cls(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, patch_size=14, merge_size=2,
                          temporal_patch_size=2).save_pretrained(out)
    return out
