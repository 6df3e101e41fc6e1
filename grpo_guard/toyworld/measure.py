"""Measure a toy pipeline: sample prompts × seeds through the real ``StableDiffusion3Pipeline`` (ODE,
20 steps, CFG 4 by default) and score the images with the analytic checker (fg colour, bg colour,
shape) and the learned scorers (fidelity, classifier confidence), on train and held-out prompts.
Ground-truth renders of the same prompts are scored too, as the ceiling.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from grpo_guard.toyworld import BASE_MODEL_DIR, checker, data, scorers
from grpo_guard.toyworld.pipeline import RESOLUTION, TEXT_LENGTH
from grpo_guard.toyworld.prompts import heldout_combinations, make_prompt, train_combinations


def load_pipeline(model: str | None = None):
    """The toy ``StableDiffusion3Pipeline`` from ``model`` (default: the shipped base), float32, eval."""
    from diffusers import StableDiffusion3Pipeline
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    path = model or BASE_MODEL_DIR
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(f"No toy pipeline in {path} (model_index.json missing): run "
                                f"`grpo-guard toy pretrain --out DIR` and pass --model DIR.")
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    pipe = StableDiffusion3Pipeline.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            comp.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample(pipe, prompts: list[str], seeds: list[int], *, steps: int = 20, cfg: float = 4.0,
           batch_size: int = 48) -> tuple[list[str], list[int], np.ndarray]:
    """Every prompt × seed, one generator per image (an image depends only on its prompt and seed).
    Returns (prompts, seeds, uint8 images (N, 32, 32, 3)) in prompt-major order."""
    jobs = [(p, s) for p in prompts for s in seeds]
    out = []
    for i in range(0, len(jobs), batch_size):
        part = jobs[i:i + batch_size]
        imgs = pipe([p for p, _ in part], num_inference_steps=steps, guidance_scale=cfg, height=RESOLUTION,
                    width=RESOLUTION, max_sequence_length=TEXT_LENGTH, output_type="np",
                    generator=[torch.Generator().manual_seed(s) for _, s in part]).images
        out.append((np.clip(imgs, 0, 1) * 255).round().astype(np.uint8))
    return [p for p, _ in jobs], [s for _, s in jobs], np.concatenate(out)


def _pick(combos: list, n: int) -> list[str]:
    """``n`` prompts spread evenly over the combination list (all of them if n ≥ len)."""
    if n >= len(combos):
        chosen = combos
    else:
        chosen = [combos[int(i)] for i in np.linspace(0, len(combos) - 1, n).round()]
    return [make_prompt(*c) for c in chosen]


def score(images: np.ndarray, prompts: list[str], fid=None, cls=None) -> dict[str, float]:
    res = checker.correctness(images, prompts)
    out = {"fg_color_acc": float(res["fg_color"].mean()), "bg_color_acc": float(res["bg_color"].mean()),
           "shape_acc": float(res["shape"].mean()), "alignment": float(res["alignment"].mean())}
    if fid is not None:
        out["fidelity"] = float(scorers.fidelity_scores(fid, images).mean())
    if cls is not None:
        fg_t, shape_t, bg_t = checker.targets(prompts)
        ps, pf, pb = scorers.classifier_probs(cls, images)
        idx = np.arange(len(images))
        out["classifier_confidence"] = float(((ps[idx, shape_t] + pf[idx, fg_t] + pb[idx, bg_t]) / 3).mean())
    return out


def measure(model: str | None = None, *, prompts_per_split: int = 24, seeds: int = 4, steps: int = 20,
            cfg: float = 4.0, grid_path: str | None = None, threads: int | None = None) -> dict:
    """Sample and score; returns a JSON-able dict with one entry per split (and the renders' scores)."""
    if threads:
        torch.set_num_threads(threads)
    path = model or BASE_MODEL_DIR
    pipe = load_pipeline(path)
    fid = cls = None
    if os.path.isdir(os.path.join(path, scorers.FIDELITY_DIR)):
        fid, _ = scorers.load_scorer(os.path.join(path, scorers.FIDELITY_DIR), "fidelity")
    if os.path.isdir(os.path.join(path, scorers.CLASSIFIER_DIR)):
        cls, _ = scorers.load_scorer(os.path.join(path, scorers.CLASSIFIER_DIR), "classifier")
    seed_list = list(range(seeds))
    result: dict = {"model": os.path.abspath(path), "steps": steps, "cfg": cfg, "seeds": seeds, "splits": {}}
    grid_rows = []
    rng = np.random.default_rng(0)
    for split, combos in (("train", train_combinations()), ("heldout", heldout_combinations())):
        prompts = _pick(combos, prompts_per_split)
        t0 = time.time()
        ps, _, imgs = sample(pipe, prompts, seed_list, steps=steps, cfg=cfg)
        elapsed = time.time() - t0
        entry = {"prompts": len(prompts), "images": len(imgs), "seconds_per_image": elapsed / len(imgs)}
        entry.update(score(imgs, ps, fid, cls))
        renders = data.render_batch([data.random_scene(rng, checker_combo(p)) for p in ps])
        entry["renders"] = score(renders, ps, fid, cls)
        result["splits"][split] = entry
        for r in sorted(set(np.linspace(0, len(prompts) - 1, 6).round().astype(int).tolist())):
            grid_rows.append(np.concatenate(list(imgs[r * seeds:(r + 1) * seeds]), axis=1))
    if grid_path and grid_rows:
        from PIL import Image

        grid = np.concatenate(grid_rows, axis=0)
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(grid_path)
    return result


def checker_combo(prompt: str) -> tuple[str, str, str]:
    from grpo_guard.toyworld.prompts import parse_prompt

    return parse_prompt(prompt)


def format_table(res: dict) -> str:
    """A markdown table of the measured numbers."""
    cols = ["fg_color_acc", "bg_color_acc", "shape_acc", "alignment", "fidelity", "classifier_confidence"]
    head = "| split | images | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for split, e in res["splits"].items():
        for label, row in ((f"{split} (model)", e), (f"{split} (renders)", e["renders"])):
            vals = " | ".join(f"{row[c]:.3f}" if c in row else "–" for c in cols)
            lines.append(f"| {label} | {e['images']} | {vals} |")
    return "\n".join(lines)
