"""GenEval's detector as mmdet runs it, on transformers weights.

GenEval scores with mmdet 2.x's Mask2Former (``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``);
its test pipeline and ``MaskFormerFusionHead`` post-processing are what move the numbers, so they
are reproduced here rather than taken from the transformers image processor (which tests at
384×384 and thresholds the masks at that size):

- test scale: resize keeping the aspect ratio so the long side is at most 1333 and the short side
  at most 800 (mmcv ``rescale_size``: factor = min(1333 / long, 800 / short), sides rounded
  half up), bilinear on the uint8 image (OpenCV's ``INTER_LINEAR``, as ``mmcv.imresize``);
  pad bottom/right to a multiple of 32 with the pixel value 128, then normalise with the ImageNet
  mean/std (so the padding is (128 − mean) / std, not 0);
- post-processing: mask logits upsampled bilinearly to the padded input, cropped to the resized
  image, upsampled bilinearly to the original image size, and only then thresholded at 0
  (sigmoid 0.5); scores = softmax class probability (no-object column dropped) of the top-100
  (query, class) pairs × the mean sigmoid inside the binary mask; boxes from the masks with
  exclusive right/bottom edges (``mask2bbox``).

The padding follows the instance-segmentation ``mask2former_r50_lsj_8x2_50e_coco.py`` of mmdet's
``2.x`` branch (which GenEval installs and whose swin-s config inherits it): Resize (keep ratio),
Pad (``size_divisor=32, pad_val=pad_cfg``, ``img=(128, 128, 128)``), then Normalize. That file's
``2.x`` head is not in the stored sources; the order and value were read from the configs derived
from it (the earlier panoptic-era version normalised first and padded with zeros). It matters only
where a resized side is not a multiple of 32: a square image resizes to 800 × 800, no padding.

What still differs from GenEval: the weights are the transformers port of the same checkpoint
(``facebook/mask2former-swin-small-coco-instance``), so its floating-point path is not mmdet's.
"""

from __future__ import annotations

import numpy as np

from grpo_guard.rewards.geneval_rules import DETECTOR_SCALE, THRESHOLD, Detection, geneval_class
from grpo_guard.rewards.weights import default_device

TEST_SCALE = DETECTOR_SCALE  # mmdet img_scale: (longest side, shortest side)
SIZE_DIVISOR = 32
PAD_VALUE = 128.0          # mmdet pad_cfg img=(128, 128, 128), padded before normalising
MAX_PER_IMAGE = 100        # mmdet test_cfg.max_per_image


def scaled_size(height: int, width: int, scale: tuple[int, int] = TEST_SCALE) -> tuple[int, int]:
    """(height, width) mmdet resizes an image to at test time (aspect ratio kept)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (height, width, 3), OpenCV bilinear as mmcv.imresize."""
    import cv2

    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)


def mask_boxes(masks):
    """(N, H, W) bool tensor -> (N, 4) float boxes (x0, y0, x1, y1), right/bottom exclusive; an
    empty mask gets (0, 0, 0, 0) (mmdet's ``mask2bbox``)."""
    import torch

    n = masks.shape[0]
    boxes = torch.zeros((n, 4), dtype=torch.float32)
    cols, rows = masks.any(dim=1), masks.any(dim=2)
    for i in range(n):
        xs, ys = torch.nonzero(cols[i])[:, 0], torch.nonzero(rows[i])[:, 0]
        if len(xs) and len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def instances(class_logits, mask_logits, *, max_per_image: int = MAX_PER_IMAGE):
    """One image's instances from Mask2Former outputs, mmdet's ``instance_postprocess``.

    class_logits (Q, C + 1); mask_logits (Q, H, W) at the original image size.
    Returns (labels (K,), scores (K,), masks (K, H, W) bool, boxes (K, 4))."""
    import torch

    n_classes = class_logits.shape[1] - 1
    probs = torch.softmax(class_logits.float(), dim=-1)[:, :-1]
    k = min(max_per_image, probs.numel())
    top_scores, top = probs.flatten().topk(k, sorted=False)
    labels, queries = top % n_classes, top // n_classes
    logits = mask_logits[queries].float()
    binary = logits > 0
    fg = binary.float()
    mask_scores = (logits.sigmoid() * fg).flatten(1).sum(1) / (fg.flatten(1).sum(1) + 1e-6)
    return labels, top_scores * mask_scores, binary, mask_boxes(binary)


class Mask2FormerDetector:
    """``detect(images uint8 (B, H, W, 3)) -> list of B lists of Detection`` at mmdet's test scale
    (module docstring), labels in GenEval's class names, at most 100 per image, score > ``min_score``.

    ``scale``: (longest, shortest) test sides; ``(1333, 800)`` is GenEval's."""

    def __init__(self, model_dir: str, *, device: str | None = None, dtype: str = "fp32", batch_size: int = 8,
                 min_score: float = THRESHOLD, scale: tuple[int, int] = TEST_SCALE):
        import torch
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        self.device = torch.device(default_device(device))
        self.dtype = torch.float16 if dtype == "fp16" and self.device.type == "cuda" else torch.float32
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(model_dir, dtype=self.dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        processor = AutoImageProcessor.from_pretrained(model_dir)
        self.mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.labels = {int(k): geneval_class(v) for k, v in self.model.config.id2label.items()}
        self.batch_size, self.min_score = int(batch_size), float(min_score)
        self.scale = (int(scale[0]), int(scale[1]))

    def _inputs(self, chunk: list[np.ndarray]):
        """Normalised (B, 3, Hp, Wp) float32, padded with 128 before normalising, and each image's
        resized (h, w)."""
        import torch

        sizes = [scaled_size(*im.shape[:2], self.scale) for im in chunk]
        hp = -(-max(h for h, _ in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR
        wp = -(-max(w for _, w in sizes) // SIZE_DIVISOR) * SIZE_DIVISOR
        pad = (PAD_VALUE - self.mean) / self.std  # (1, 3, 1, 1)
        batch = pad.expand(len(chunk), 3, hp, wp).clone()
        for i, (im, (h, w)) in enumerate(zip(chunk, sizes, strict=True)):
            px = torch.from_numpy(resize_bilinear(im, h, w)).permute(2, 0, 1).float()[None]
            batch[i, :, :h, :w] = ((px - self.mean) / self.std)[0]
        return batch, sizes

    def __call__(self, images: np.ndarray) -> list[list[Detection]]:
        import torch
        import torch.nn.functional as F

        out: list[list[Detection]] = []
        for a in range(0, len(images), self.batch_size):
            chunk = [np.asarray(im, dtype=np.uint8) for im in images[a:a + self.batch_size]]
            pixels, sizes = self._inputs(chunk)
            with torch.no_grad():
                pred = self.model(pixel_values=pixels.to(self.device, self.dtype))
                masks = F.interpolate(pred.masks_queries_logits.float(), size=pixels.shape[-2:], mode="bilinear",
                                      align_corners=False)
                for i, (im, (h, w)) in enumerate(zip(chunk, sizes, strict=True)):
                    m = F.interpolate(masks[i:i + 1, :, :h, :w], size=im.shape[:2], mode="bilinear",
                                      align_corners=False)[0]
                    labels, scores, binary, boxes = instances(pred.class_queries_logits[i], m)
                    order = torch.argsort(scores, descending=True).cpu()
                    labels, scores, binary, boxes = labels.cpu(), scores.cpu(), binary.cpu(), boxes.cpu()
                    out.append([Detection(self.labels.get(int(labels[j]), str(int(labels[j]))), float(scores[j]),
                                          tuple(float(v) for v in boxes[j]), binary[j].numpy())  # type: ignore[arg-type]
                                for j in order.tolist() if float(scores[j]) > self.min_score])
        return out
