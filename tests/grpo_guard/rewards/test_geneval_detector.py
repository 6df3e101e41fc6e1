"""GenEval's detector as mmdet runs it: test scale, bilinear mask logits before the threshold,
mmdet's instance scores and boxes; and the CLIP crop that is 1 or 3 px tall."""

import numpy as np
import pytest
import torch

from grpo_guard.rewards.geneval_detector import Mask2FormerDetector, instances, mask_boxes, scaled_size
from grpo_guard.rewards.testing import tiny_clip_dir, tiny_mask2former_dir


def test_test_scale_is_mmdets_shortest_800_longest_1333_keeping_the_ratio():
    assert scaled_size(512, 512) == (800, 800)
    assert scaled_size(480, 640) == (800, 1067)       # the short side reaches 800
    assert scaled_size(100, 1000) == (133, 1333)      # the long side stops at 1333
    assert scaled_size(1024, 1024) == (800, 800)      # downscaled too


def test_instances_score_the_top_query_class_pairs_by_class_and_mask_confidence():
    cls = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))   # 2 queries, 2 classes + no-object
    masks = torch.full((2, 4, 6), -3.0)
    masks[0, 1:3, 2:5] = 2.0
    labels, scores, binary, boxes = instances(cls, masks, max_per_image=3)
    order = torch.argsort(scores, descending=True)
    sig = torch.sigmoid(torch.tensor(2.0))
    want = sorted([0.7 * sig, 0.2 * sig, 0.0], reverse=True)            # query 1 has an empty mask: score 0
    np.testing.assert_allclose(scores[order].tolist(), [float(w) for w in want], rtol=1e-5, atol=1e-6)
    top = int(order[0])
    assert int(labels[top]) == 0 and boxes[top].tolist() == [2.0, 1.0, 5.0, 3.0], "exclusive right/bottom edges"
    assert binary[top].sum() == 6
    assert mask_boxes(torch.zeros((1, 3, 3), dtype=torch.bool)).tolist() == [[0.0, 0.0, 0.0, 0.0]]


class _FakeMask2Former(torch.nn.Module):
    """Records the input size and answers with one confident 'dog' query whose mask logits are +4
    in one cell of a coarse 4x4 grid and -4 elsewhere."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.pixels = None
        self.masks = None  # (input h, w) -> (1, 1, mh, mw) logits; None: the coarse 4x4 grid

    def forward(self, pixel_values):
        self.seen.append(tuple(pixel_values.shape))
        self.pixels = pixel_values.clone()
        b, _, h, w = pixel_values.shape
        cls = torch.full((b, 1, 81), -10.0)
        cls[:, 0, 16] = 10.0  # COCO class 16 = dog
        if self.masks is not None:
            masks = self.masks(h, w).expand(b, 1, -1, -1)
        else:
            masks = torch.full((b, 1, 4, 4), -4.0)
            masks[:, 0, 1, 1] = 4.0
        return type("Out", (), {"class_queries_logits": cls, "masks_queries_logits": masks})()


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    det = Mask2FormerDetector(tiny_mask2former_dir(tmp_path_factory.mktemp("det")), device="cpu", min_score=0.3)
    det.model = _FakeMask2Former()
    return det


def test_detector_tests_at_800_and_thresholds_bilinear_logits_at_the_image_size(detector):
    img = np.zeros((1, 64, 64, 3), np.uint8)
    (dets,) = detector(img)
    assert detector.model.seen == [(1, 3, 800, 800)], "a 64 px image is tested at 800 px, as mmdet does"
    (dog,) = dets
    assert dog.label == "dog" and dog.mask.shape == (64, 64)
    # the logits cross 0 halfway between the +4 cell and its -4 neighbours: the box is the cell
    # (16..32 px), but the corners are rounded off, where nearest-neighbour upsampling of a
    # thresholded grid (what the transformers post-processing does) would fill all 256 px
    ys, xs = np.nonzero(dog.mask)
    assert dog.box == (16.0, 16.0, 32.0, 32.0) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert 120 < dog.mask.sum() < 256 and not dog.mask[16, 16] and dog.mask[24, 24]


def test_a_wide_image_is_padded_to_a_multiple_of_32_with_128_before_normalising(detector):
    detector.model.seen.clear()
    detector(np.zeros((1, 48, 100, 3), np.uint8))
    assert detector.model.seen == [(1, 3, 640, 1344)], "resized to (640, 1333), padded to /32"
    px = detector.model.pixels[0]
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    # mmdet's instance lsj test pipeline: Pad(pad_val 128) then Normalize
    np.testing.assert_allclose(px[:, :, 1333:].mean((1, 2)).numpy(), (128 - mean) / std, rtol=1e-5)
    np.testing.assert_allclose(px[:, :, :1333].mean((1, 2)).numpy(), (0 - mean) / std, rtol=1e-5)


def test_mask_logits_are_cropped_to_the_resized_image_before_the_upsampling(detector):
    """An object the logits put only in the padding is not in the image: mmdet crops the padded
    logits to the resized size before upsampling to the original (without the crop, the padding
    would be squeezed into the image's last column and the dog found there)."""
    def in_the_padding(h, w):
        m = torch.full((1, 1, h // 4, w // 4), -4.0)
        m[..., -2:] = 4.0  # input columns 1336..1343: all beyond the resized 1333
        return m

    detector.model.masks = in_the_padding
    try:
        (dets,) = detector(np.zeros((1, 48, 100, 3), np.uint8))
        assert dets == [], "an empty mask scores 0: no detection"

        def at_the_right_edge(h, w):
            m = torch.full((1, 1, h // 4, w // 4), -4.0)
            m[..., -5:] = 4.0  # input columns 1324..1343: the image's last ~9 of 1333
            return m

        detector.model.masks = at_the_right_edge
        (dets,) = detector(np.zeros((1, 48, 100, 3), np.uint8))
        (dog,) = dets
        assert dog.box[2] == 100.0 and 98.0 <= dog.box[0] <= 99.0
    finally:
        detector.model.masks = None


def test_a_crop_1_or_3_px_tall_reaches_clip_channels_last(tmp_path):
    from grpo_guard.rewards.clip import CLIPScorer

    scorer = CLIPScorer(tiny_clip_dir(tmp_path), device="cpu")
    red = np.zeros((6, 20, 3), np.uint8)
    red[..., 0] = 220
    ref = scorer.image_embeds([red])
    for h in (1, 3):
        # a uniform red crop is a uniform red CLIP input whatever its size
        torch.testing.assert_close(scorer.image_embeds([red[:h]]), ref, rtol=1e-4, atol=1e-4)
