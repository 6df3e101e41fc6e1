"""The generated sets (ocr:*, geneval:*): sizes, determinism across processes, disjoint splits,
one quoted text per OCR prompt, GenEval metadata in GenEval's format for every family."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter

import pytest

from grpo_guard.prompts import geneval as gv
from grpo_guard.prompts import item_problem, ocr, prompt_to_item, resolve_prompts
from grpo_guard.rewards.ocr import quoted_text

QUOTED = re.compile(r'"([^"]*)"')


def test_ocr_sizes_and_speed():
    ocr.ocr_set.cache_clear()
    ocr.target_texts.cache_clear()
    t = time.perf_counter()
    train = resolve_prompts("ocr:train")
    took = time.perf_counter() - t
    test = resolve_prompts("ocr:test")
    assert (len(train), len(test)) == (20_000, 1_000)
    assert len(set(train)) == len(train) and len(set(test)) == len(test), "prompts repeat within a split"
    assert took < 1.0, f"building ocr:train took {took:.2f} s"


def test_every_ocr_prompt_has_exactly_one_double_quoted_text():
    for p in [*resolve_prompts("ocr:train"), *resolve_prompts("ocr:test")]:
        texts = QUOTED.findall(p)
        assert p.count('"') == 2 and len(texts) == 1 and texts[0].strip(), p
        assert quoted_text(p) == texts[0], "the ocr reward reads a different text"


def test_ocr_train_and_test_ask_for_disjoint_texts():
    def texts(name):
        return {QUOTED.findall(p)[0].lower() for p in resolve_prompts(name)}

    train, test = texts("ocr:train"), texts("ocr:test")
    assert not train & test, f"{len(train & test)} target texts are in both splits"
    assert len(test) >= 250 and len(train) >= 4000, "too few distinct texts"


def test_ocr_prompts_use_many_scenes():
    scenes = Counter(QUOTED.sub('""', p) for p in resolve_prompts("ocr:train"))
    assert len(scenes) >= 40 and max(scenes.values()) < 0.05 * 20_000


def test_geneval_sizes_and_disjoint_splits():
    train, test = resolve_prompts("geneval:train"), resolve_prompts("geneval:test")
    assert len(test) == sum(n for n, _ in gv.SIZES.values()) == 494
    assert 10_000 <= len(train) <= 15_000
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test), "a test prompt text is also in train"
    assert Counter(p.meta["tag"] for p in test) == Counter({t: n for t, (n, _) in gv.SIZES.items()})
    # every single-object prompt (80 classes) is an official benchmark prompt, so none trains
    assert set(Counter(p.meta["tag"] for p in train)) == set(gv.SIZES) - {"single_object"}


def test_geneval_train_holds_none_of_the_553_official_benchmark_prompts():
    import hashlib

    official = gv.official_prompt_hashes()
    assert len(official) == 553 and all(len(h) == 64 for h in official)
    # rows of the official evaluation_metadata.jsonl, one per family
    for text in ("a photo of a bench", "a photo of four giraffes", "a photo of a purple elephant",
                 "a photo of a bus below a toothbrush", "a photo of a purple wine glass and a black apple"):
        assert gv.is_official_prompt(text), text
    assert not gv.is_official_prompt("a photo of a bench ")
    train = resolve_prompts("geneval:train")
    hits = [p for p in train if hashlib.sha256(str(p).encode()).hexdigest() in official]
    assert hits == [], f"{len(hits)} official prompts in geneval:train, e.g. {hits[:3]}"


def _check_row(p) -> None:
    m, tag = p.meta, p.meta["tag"]
    assert item_problem(prompt_to_item(p), geneval=True) is None, p
    inc = m["include"]
    classes = [o["class"] for o in inc]
    assert all(c in gv.CLASSES for c in classes)
    assert str(p).startswith("a photo of ")
    if tag == "single_object":
        assert inc == [{"class": classes[0], "count": 1}] and "exclude" not in m
    elif tag == "two_object":
        assert len(inc) == 2 and classes[0] != classes[1] and str(p) == gv.two_object(*classes)["prompt"]
    elif tag == "counting":
        (obj,) = inc
        assert obj["count"] in (2, 3, 4) and m["exclude"] == [{"class": obj["class"], "count": obj["count"] + 1}]
        assert gv.NUMBERS[obj["count"]] in str(p)
    elif tag == "colors":
        (obj,) = inc
        assert obj["color"] in gv.COLORS and obj["class"] != "person"
        assert str(p) == gv.colors(obj["class"], obj["color"])["prompt"]
    elif tag == "position":
        ref, moved = inc
        assert "position" not in ref and moved["position"][0] in gv.POSITIONS and moved["position"][1] == 0
        assert str(p) == f"a photo of {gv.with_article(moved['class'])} {moved['position'][0]} {gv.with_article(ref['class'])}"
    elif tag == "color_attr":
        a, b = inc
        assert a["color"] != b["color"] and a["class"] != b["class"] and "person" not in classes
    else:  # pragma: no cover - a new family would need its own checks
        pytest.fail(f"unexpected tag {tag}")


@pytest.mark.parametrize("name", ["geneval:train", "geneval:test"])
def test_geneval_metadata_is_well_formed_for_every_family(name):
    for p in resolve_prompts(name):
        _check_row(p)


def test_geneval_vocabulary_follows_geneval():
    assert len(gv.CLASSES) == len(set(gv.CLASSES)) == 80
    assert gv.COLORS == ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
    assert gv.POSITIONS == ("left of", "right of", "above", "below")
    assert gv.make_plural("bus") == "buses" and gv.make_plural("dog") == "dogs"
    assert gv.with_article("apple") == "an apple" and gv.with_article("dog") == "a dog"


def test_generated_sets_are_the_same_in_a_fresh_process():
    code = ("import hashlib, json; from grpo_guard.prompts import resolve_prompts as r, prompt_to_item as i; "
            "print(hashlib.sha256(json.dumps([i(p) for n in ('ocr:train','ocr:test','geneval:train','geneval:test') "
            "for p in r(n)]).encode()).hexdigest())")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(seed), "PATH": "", "PYTHONPATH": ":".join(sys.path)}).stdout
            for seed in (1, 2)}
    assert len(runs) == 1, "the generated sets depend on the process (hash seed or time)"
