"""Offline tokenizers: no <unk> for any toy prompt, and they survive save/load."""

from grpo_guard.prompts import resolve_prompts
from grpo_guard.toyworld.tokenizers import make_clip_tokenizer, make_t5_tokenizer


def test_no_unknown_tokens_for_any_prompt():
    clip, t5 = make_clip_tokenizer(), make_t5_tokenizer()
    for p in resolve_prompts("toy:all"):
        ids = clip(p).input_ids
        assert clip.unk_token_id not in ids[1:-1], p  # unk = endoftext for CLIP; only at the end
        assert t5.unk_token_id not in t5(p).input_ids, p
        assert len(ids) <= 16 and len(t5(p).input_ids) <= 16, p
    assert clip.tokenize("a purple triangle on a orange background") == [
        "a</w>", "purple</w>", "triangle</w>", "on</w>", "a</w>", "orange</w>", "background</w>"]


def test_any_ascii_text_tokenizes_without_unk():
    clip, t5 = make_clip_tokenizer(), make_t5_tokenizer()
    text = "Zebra, quokka & 42 stars!"
    assert clip.unk_token_id not in clip(text).input_ids[1:-1]
    assert t5.unk_token_id not in t5(text).input_ids


def test_tokenizers_round_trip_through_save_pretrained(tmp_path):
    from transformers import CLIPTokenizer, T5Tokenizer

    clip, t5 = make_clip_tokenizer(), make_t5_tokenizer()
    clip.save_pretrained(tmp_path / "c")
    t5.save_pretrained(tmp_path / "t")
    assert (tmp_path / "c" / "tokenizer.json").exists()
    c2, t2 = CLIPTokenizer.from_pretrained(tmp_path / "c"), T5Tokenizer.from_pretrained(tmp_path / "t")
    p = "a white square on a black background"
    assert c2(p).input_ids == clip(p).input_ids and t2(p).input_ids == t5(p).input_ids
    assert c2.model_max_length == 16
