"""GenEval's rules on injected detections (no models): each task family, GenEval's thresholds,
per-class cap and relative-position margin, and Flow-GRPO's partial credit."""

import numpy as np
import pytest

from grpo_guard.rewards.geneval_rules import (
    COCO_CLASSES,
    Detection,
    geneval_class,
    mask_colour,
    relative_position,
    score_geneval,
    select_objects,
)


def det(label, score=0.95, x=10.0, y=10.0, w=10.0, h=10.0):
    """A detection whose box is centred at (x, y)."""
    return Detection(label, score, (x - w / 2, y - h / 2, x + w / 2, y + h / 2))


def colours_by_x(table):
    """A fake colour classifier: the colour of an object is looked up by its box centre x."""
    def colour_of(image, objects, classname):
        return [table[(o.box[0] + o.box[2]) / 2] for o in objects]
    return colour_of


def inc(cls, count=1, **kw):
    return {"class": cls, "count": count, **kw}


def score(meta, dets, **kw):
    return score_geneval(meta, dets, np.zeros((64, 64, 3), np.uint8), **kw)


def test_single_object_needs_a_detection_above_the_score_threshold():
    meta = {"tag": "single_object", "include": [inc("dog")]}
    s = score(meta, [det("dog", 0.9)])
    assert s.strict and s.partial == 1.0
    assert not score(meta, [det("dog", 0.3)]).strict, "GenEval keeps scores strictly above 0.3"
    assert not score(meta, [det("cat", 0.99)]).strict
    assert score(meta, [det("dog", 0.25)], threshold=0.2).strict


def test_single_object_is_at_least_one_for_genevals_verdict_but_exact_for_partial_credit():
    s = score({"tag": "single_object", "include": [inc("dog")]}, [det("dog", x=10), det("dog", x=40)])
    assert s.strict, "GenEval counts 'at least n'"
    assert s.partial == 0.0, "Flow-GRPO's count term 1 - |1 - 2| / 1"


def test_two_objects_need_both_and_give_half_credit_for_one():
    meta = {"tag": "two_object", "include": [inc("dog"), inc("cat")]}
    assert score(meta, [det("dog"), det("cat", x=40)]).strict
    s = score(meta, [det("dog")])
    assert not s.strict and s.partial == 0.5 and "expected cat>=1, found 0" in s.reasons


def test_counting_uses_the_high_threshold_and_the_exclude_clause():
    meta = {"tag": "counting", "include": [inc("dog", 3)], "exclude": [inc("dog", 4)]}
    three = [det("dog", 0.95, x=10 + 15 * i) for i in range(3)]
    assert score(meta, three).strict and score(meta, three).partial == 1.0
    low = [det("dog", 0.8, x=10 + 15 * i) for i in range(3)]
    assert not score(meta, low).strict, "counting keeps only scores above 0.9"
    four = score(meta, [*three, det("dog", 0.95, x=55)])
    assert not four.strict and "expected dog<4, found 4" in four.reasons
    assert four.partial == pytest.approx(2 / 3)
    two = score(meta, three[:2])
    assert not two.strict and two.partial == pytest.approx(2 / 3)
    assert score(meta, [*three, det("dog", 0.95, x=55)], counting_threshold=0.99).partial == 0.0


def test_far_too_many_objects_clip_the_count_term_at_zero():
    s = score({"tag": "counting", "include": [inc("dog", 1)]}, [det("dog", x=5 + 10 * i) for i in range(4)])
    assert s.partial == 0.0, "Flow-GRPO's 1 - 3/1 = -2 is clipped to 0"


def test_at_most_sixteen_objects_per_class_are_kept():
    many = [det("dog", 0.91 + i * 1e-3, x=2 + 3 * i) for i in range(20)]
    kept = select_objects(many)["dog"]
    assert len(kept) == 16 and kept[0].score == max(d.score for d in many), "most confident first"
    meta = {"tag": "counting", "include": [inc("dog", 17)], "exclude": [inc("dog", 18)]}
    s = score(meta, many)
    assert not s.strict and "found 16" in s.reasons[0], "only 16 are counted"
    assert score({"include": [inc("dog", 17)]}, many, max_objects=20).strict


def test_nms_is_off_by_default_and_drops_overlapping_boxes_when_set():
    twins = [det("dog", 0.9), det("dog", 0.8, x=11)]
    assert len(select_objects(twins)["dog"]) == 2
    assert len(select_objects(twins, nms_threshold=0.5)["dog"]) == 1
    assert len(select_objects([det("dog"), det("cat")], nms_threshold=0.5)) == 2, "NMS is per class"


def test_colours_are_checked_on_the_most_confident_objects():
    meta = {"tag": "colors", "include": [inc("dog", color="red")]}
    colour_of = colours_by_x({10.0: "red", 40.0: "blue"})
    s = score(meta, [det("dog", 0.9, x=10)], colour_of=colour_of)
    assert s.strict and s.partial == 1.0
    s = score(meta, [det("dog", 0.9, x=40)], colour_of=colour_of)
    assert not s.strict and s.partial == 0.5 and "expected red dog>=1, found 0 red" in s.reasons
    s = score(meta, [det("dog", 0.9, x=10), det("dog", 0.8, x=40)], colour_of=colour_of)
    assert s.strict, "the top-1 dog is red"
    assert s.partial == 0.0, "two dogs: the count is not exact, so the colour term is 0 too"
    assert not score(meta, [det("dog", 0.8, x=10), det("dog", 0.9, x=40)], colour_of=colour_of).strict


def test_colour_attribution_needs_each_object_in_its_colour():
    meta = {"tag": "color_attr", "include": [inc("dog", color="red"), inc("cat", color="blue")]}
    right = colours_by_x({10.0: "red", 40.0: "blue"})
    swapped = colours_by_x({10.0: "blue", 40.0: "red"})
    dets = [det("dog", x=10), det("cat", x=40)]
    assert score(meta, dets, colour_of=right).strict and score(meta, dets, colour_of=right).partial == 1.0
    s = score(meta, dets, colour_of=swapped)
    assert not s.strict and s.partial == 0.5, "both counts right, both colours wrong: 2 of 4 terms"


def test_the_default_colour_classifier_reads_the_masked_pixels():
    img = np.full((64, 64, 3), 255, np.uint8)
    img[8:24, 4:20] = (220, 30, 30)
    mask = np.zeros((64, 64), bool)
    mask[8:24, 4:20] = True
    assert mask_colour(img, mask) == "red"
    red_dog = Detection("dog", 0.9, (4, 8, 20, 24), mask)
    assert score_geneval({"include": [inc("dog", color="red")]}, [red_dog], img).strict
    assert score_geneval({"include": [inc("dog", color="white")]}, [Detection("dog", 0.9, (40, 40, 60, 60))], img).strict
    with pytest.raises(ValueError, match="colour checks need the image"):
        score_geneval({"include": [inc("dog", color="red")]}, [red_dog])


@pytest.mark.parametrize("dx,dy,want", [
    (-5, 0, {"left of"}), (5, 0, {"right of"}), (0, -5, {"above"}), (0, 5, {"below"}),
    (-20, -20, {"left of", "above"}), (20, 15, {"right of", "below"}), (20, 2, {"right of"}),
    (-3.9, 0, set()),   # margin 0.1 x (10 + 10) = 2 px leaves 1.9 / 3.9 < 0.5 of the offset
    (-4.1, 0, {"left of"}), (0, 0, set()), (1.5, -1.5, set()),
])
def test_relative_position_margin_and_direction(dx, dy, want):
    assert relative_position(det("dog", x=30 + dx, y=30 + dy), det("cat", x=30, y=30)) == want


def test_relative_position_margin_scales_with_both_objects_sizes():
    small = relative_position(det("dog", x=20, w=4), det("cat", x=30, w=4))
    big = relative_position(det("dog", x=20, w=40), det("cat", x=30, w=40))
    assert small == {"left of"} and big == set(), "0.1 x (40 + 40) = 8 px of the 10 px offset is margin"


@pytest.mark.parametrize("relation,cat_x,cat_y", [
    ("left of", 10, 30), ("right of", 50, 30), ("above", 30, 10), ("below", 30, 50)])
def test_position_family_each_relation(relation, cat_x, cat_y):
    meta = {"tag": "position", "include": [inc("dog"), inc("cat", position=[relation, 0])]}
    dets = [det("dog", x=30, y=30), det("cat", x=cat_x, y=cat_y)]
    assert score(meta, dets).strict and score(meta, dets).partial == 1.0
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]
    bad = score({**meta, "include": [inc("dog"), inc("cat", position=[opposite, 0])]}, dets)
    assert not bad.strict and bad.partial == pytest.approx(2 / 3), "both counts right, position wrong"


def test_position_needs_every_pair_and_a_found_target():
    meta = {"tag": "position", "include": [inc("dog", 2), inc("cat", position=["right of", 0])]}
    assert score(meta, [det("dog", x=5), det("dog", x=15, y=40), det("cat", x=50)]).strict
    assert not score(meta, [det("dog", x=5), det("dog", x=60, y=40), det("cat", x=50)]).strict
    no_target = score(meta, [det("dog", x=5), det("cat", x=50)])
    assert not no_target.strict and no_target.partial == 0.5, "(dog 1/2 + cat 1 + position 0) / 3"


def test_exclude_fails_at_the_given_count():
    meta = {"include": [inc("dog")], "exclude": [inc("cat", 2)]}
    assert score(meta, [det("dog"), det("cat", x=40)]).strict
    s = score(meta, [det("dog"), det("cat", x=40), det("cat", x=55)])
    assert not s.strict and s.partial == 1.0, "excludes are not part of Flow-GRPO's partial credit"


def test_detector_labels_map_to_genevals_eighty_class_names():
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == 80
    assert geneval_class("mouse") == "computer mouse" and geneval_class("remote") == "tv remote"
    assert geneval_class("Dining Table") == "dining table" and geneval_class("dog") == "dog"


# ---- Flow-GRPO's reward-server partial credit, hand-computed from its evaluate_reward -----------

def test_flow_grpo_count_term_goes_negative_with_too_many_objects():
    meta = {"tag": "counting", "include": [inc("dog", 2)], "exclude": [inc("dog", 3)]}
    s = score(meta, [det("dog", x=10 * i) for i in range(1, 6)])        # 5 dogs for 2: 1 - 3/2
    assert s.flow_grpo == pytest.approx(-0.5) and s.partial == 0.0
    assert score(meta, [det("dog", x=5), det("dog", x=30)]).flow_grpo == 1.0
    two = {"tag": "two_object", "include": [inc("dog"), inc("cat")]}
    # 3 dogs for 1 (1 - 2 = -1) and the cat (1): mean 0
    assert score(two, [det("dog", x=5), det("dog", x=20), det("dog", x=40), det("cat", x=50)]).flow_grpo == 0.0


def test_flow_grpo_colour_terms():
    meta = {"tag": "colors", "include": [inc("cat", color="red")]}
    red, blue = colours_by_x({10.0: "red"}), colours_by_x({10.0: "blue"})
    assert score(meta, [det("cat")], colour_of=red).flow_grpo == 1.0            # [1, 1]
    assert score(meta, [det("cat")], colour_of=blue).flow_grpo == 0.5           # [1, 0]
    assert score(meta, []).flow_grpo == 0.0                                     # [0, 0]
    # two cats for one: count 1 - 1 = 0, then one 0 for the colour not checked
    assert score(meta, [det("cat"), det("cat", x=40)], colour_of=red).flow_grpo == 0.0


def test_flow_grpo_position_terms_count_a_failure_as_0_then_1():
    meta = {"tag": "position", "include": [inc("bench"), inc("dog", position=["left of", 0])]}
    bench = det("bench", x=40)
    left, right = det("dog", x=5), det("dog", x=60)
    held = score(meta, [bench, left])
    assert held.flow_grpo == 1.0 and held.partial == 1.0                        # [1], [1, 1]
    failed = score(meta, [bench, right])
    assert failed.flow_grpo == pytest.approx(3 / 4)                             # [1], [1, 0, 1]
    assert failed.partial == pytest.approx(2 / 3)                               # ours: [1], [1, 0]
    assert score(meta, [right]).flow_grpo == pytest.approx(1 / 3)               # no target: [0], [1, 0]
    # two dogs for one: count 1 - 1/1 = 0, and one 0 for the position not checked: [1], [0, 0]
    assert score(meta, [bench, left, det("dog", x=8)]).flow_grpo == pytest.approx(1 / 3)


def test_flow_grpo_ignores_excludes_and_uses_every_kept_object():
    meta = {"tag": "single_object", "include": [inc("dog")], "exclude": [inc("dog", 2)]}
    s = score(meta, [det("dog"), det("dog", x=40, score=0.5)])
    assert not s.strict and s.flow_grpo == 0.0                                  # 1 - 1/1
    assert score(meta, [det("dog"), det("dog", x=40, score=0.2)]).flow_grpo == 1.0, "0.2 is under the 0.3 cut"
