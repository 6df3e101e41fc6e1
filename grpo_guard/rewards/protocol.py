"""The reward-server protocol, version 1: JSON over HTTP (one ``POST`` per batch).

``POST {url}/v1/score`` with ``Authorization: Bearer TOKEN`` when the server has a token and
``Content-Type: application/json``::

    {"protocol": "grpo-guard-reward/1",
     "reward": "geneval",                      # the reward's name on the server
     "images": ["<base64 PNG>", ...],          # B images, RGB, all the same size
     "prompts": ["a photo of two cats", ...],  # B prompts
     "metadata": [{"tag": "counting", ...}, null, ...]}   # B per-prompt metadata (GenEval) or null

Answer ``200``::

    {"protocol": "grpo-guard-reward/1",
     "scores": [0.75, 1.0, ...],               # B finite numbers, in the order of the images
     "details": {"strict": [1.0, null, ...]}}  # optional: per-image extras (null = not applicable)

Anything else is a failure, never a score: another status (the server answers ``{"error":
"..."}``), a body that is not this JSON, a length other than B, a score that is not a finite
number (NaN, Infinity, null, a string, a boolean). ``GET {url}/v1/info`` answers ``{"protocol",
"reward", "kind", "backbones"}``; ``GET {url}/health`` answers ``{"ok": true}`` without a token.
"""

from __future__ import annotations

import base64
import io
import json
import math
from typing import Any

import numpy as np

PROTOCOL = "grpo-guard-reward/1"
MAX_SIDE = 4096  # pixels per side of one image: refuses decompression bombs before decoding


class ProtocolError(ValueError):
    """A request or an answer that does not follow the protocol; the message says how."""


def _no_constants(name: str) -> float:
    raise ProtocolError(f"the JSON holds {name}, which is not a finite number")


def loads(body: bytes | str) -> Any:
    """Strict JSON: NaN, Infinity and -Infinity are refused (Python's json accepts them)."""
    try:
        return json.loads(body, parse_constant=_no_constants)
    except ProtocolError:
        raise
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"the body is not JSON ({str(e)[:120]})") from None


def png_b64(image: np.ndarray) -> str:
    """uint8 (H, W, 3) -> base64 of its PNG (lossless: the server scores the exact pixels)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(text: Any, i: int) -> np.ndarray:
    """base64 PNG -> uint8 (H, W, 3); ProtocolError names image ``i``."""
    from PIL import Image

    if not isinstance(text, str):
        raise ProtocolError(f"images[{i}] is not a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            if im.format != "PNG":
                raise ProtocolError(f"images[{i}] is {im.format}, not PNG")
            if max(im.size) > MAX_SIDE:
                raise ProtocolError(f"images[{i}] is {im.size[0]}x{im.size[1]} px, above {MAX_SIDE} per side")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except ProtocolError:
        raise
    except Exception as e:  # binascii.Error, PIL's UnidentifiedImageError, truncated data
        raise ProtocolError(f"images[{i}] is not a base64 PNG ({type(e).__name__})") from None


def score_request(reward: str, images: np.ndarray, prompts: list[str]) -> bytes:
    """The JSON body of one scoring request."""
    meta = [dict(p.meta) if getattr(p, "meta", None) else None for p in prompts]
    return json.dumps({"protocol": PROTOCOL, "reward": reward, "images": [png_b64(im) for im in images],
                       "prompts": [str(p) for p in prompts], "metadata": meta}, allow_nan=False).encode()


def parse_request(body: bytes, *, max_images: int = 4096) -> tuple[str, np.ndarray, list[Any]]:
    """(reward name, uint8 (B, H, W, 3), B prompts carrying their metadata) of a request body."""
    from grpo_guard.prompts.prompt import Prompt

    data = loads(body)
    if not isinstance(data, dict):
        raise ProtocolError("the body must be a JSON object")
    if data.get("protocol") != PROTOCOL:
        raise ProtocolError(f"protocol must be {PROTOCOL!r}, got {str(data.get('protocol'))[:60]!r}")
    reward, images, prompts = data.get("reward"), data.get("images"), data.get("prompts")
    meta = data.get("metadata") or [None] * (len(prompts) if isinstance(prompts, list) else 0)
    if not isinstance(reward, str):
        raise ProtocolError("reward must be a string")
    if not isinstance(images, list) or not images or len(images) > max_images:
        raise ProtocolError(f"images must be a list of 1 to {max_images} base64 PNGs")
    if not isinstance(prompts, list) or len(prompts) != len(images) or not all(isinstance(p, str) for p in prompts):
        raise ProtocolError(f"prompts must be a list of {len(images)} strings (one per image)")
    if not isinstance(meta, list) or len(meta) != len(images) or not all(m is None or isinstance(m, dict) for m in meta):
        raise ProtocolError(f"metadata must be a list of {len(images)} objects or nulls")
    arrays = [decode_png(t, i) for i, t in enumerate(images)]
    if len({a.shape for a in arrays}) != 1:
        raise ProtocolError("the images of one request must all have the same size")
    return reward, np.stack(arrays), [Prompt(p, m) for p, m in zip(prompts, meta, strict=True)]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def score_answer(scores: np.ndarray, details: dict[str, np.ndarray] | None = None) -> bytes:
    """The JSON body of an answer. ValueError if a score is not finite (the server refuses to
    send it: a 500 the client retries, then fails loudly)."""
    vals = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(vals).all():
        bad = int(np.flatnonzero(~np.isfinite(vals))[0])
        raise ValueError(f"the reward returned a non-finite score ({vals[bad]}) for image {bad}")
    out: dict[str, Any] = {"protocol": PROTOCOL, "scores": vals.tolist()}
    if details:
        out["details"] = {k: [float(x) if math.isfinite(x) else None
                              for x in np.asarray(v, dtype=np.float64).reshape(-1)] for k, v in details.items()}
    return json.dumps(out, allow_nan=False).encode()


def parse_answer(body: bytes, n: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(scores (n,) float64, details {key: (n,) float64 with NaN for null}) of an answer body."""
    data = loads(body)
    if not isinstance(data, dict):
        raise ProtocolError("the answer is not a JSON object")
    if data.get("protocol") != PROTOCOL:
        raise ProtocolError(f"the answer's protocol is {str(data.get('protocol'))[:60]!r}, not {PROTOCOL!r}")
    scores = data.get("scores")
    if not isinstance(scores, list) or len(scores) != n:
        got = f"{len(scores)} scores" if isinstance(scores, list) else f"scores of type {type(scores).__name__}"
        raise ProtocolError(f"the answer has {got} for {n} images")
    for i, s in enumerate(scores):
        if not _finite(s):
            raise ProtocolError(f"score {i} is {str(s)[:40]!r}, not a finite number")
    details = data.get("details") or {}
    if not isinstance(details, dict):
        raise ProtocolError("details must be an object of per-image lists")
    extras: dict[str, np.ndarray] = {}
    for k, v in details.items():
        if not isinstance(v, list) or len(v) != n or not all(x is None or _finite(x) for x in v):
            raise ProtocolError(f"details[{str(k)[:40]!r}] must be a list of {n} finite numbers or nulls")
        extras[str(k)[:100]] = np.array([np.nan if x is None else float(x) for x in v], dtype=np.float64)
    return np.asarray(scores, dtype=np.float64), extras
