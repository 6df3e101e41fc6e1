"""Pretrain the toy world's base model on CPU in minutes (STACK.md §4 recipe).

Stages, each on a wall-clock budget:
1. **VAE** — ``AutoencoderKL`` (block_out (32, 64), latents 4×16×16), MSE + 1e-6·KL, AdamW 2e-3,
   batch 32. Afterwards ``shift_factor`` = latent mean and ``scaling_factor`` = 1 / latent std.
2. **Scorers** — the fidelity model and the shape/colour classifier (:mod:`.scorers`), on clean
   renders, VAE reconstructions and graded corruptions.
3. **Transformer** — ``SD3Transformer2DModel`` (4 layers, 2.28 M parameters) with the rectified-
   flow loss: x_σ = (1 − σ)·x₀ + σ·ε, target ε − x₀, timestep 1000·σ, σ logit-normal; AdamW 1e-3
   with a 50-step warmup, grad clip 1, EMA 0.99, 10 % prompt dropout (the "" embedding), batch 32,
   over a bank of precomputed latents. Only the *train* prompt split is ever rendered for the
   generator (held-out combinations stay unseen); the scorers see all combinations, as judges.
4. **Save** — the EMA transformer inside a ``StableDiffusion3Pipeline`` (``save_pretrained``, fp16
   by default; loading for CPU upcasts to float32), the scorers, ``pretrain_log.jsonl`` (losses)
   and ``toyworld.json`` (settings, step counts, timings, a quick colour check).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from grpo_guard.toyworld import checker, data, scorers
from grpo_guard.toyworld.pipeline import RESOLUTION, TEXT_LENGTH, build_pipeline, build_transformer, build_vae
from grpo_guard.toyworld.prompts import COLORS, SHAPES, heldout_combinations, make_prompt, train_combinations


@dataclass
class PretrainSettings:
    out: str
    vae_seconds: float = 140.0
    scorer_seconds: float = 90.0
    transformer_seconds: float = 540.0
    seed: int = 0
    threads: int | None = None          # default: min(2, os.cpu_count()) — the measured setting
    save_dtype: str = "fp16"            # "fp16" (what ships) or "fp32"
    vae_lr: float = 2e-3
    vae_batch: int = 32
    lr: float = 1e-3
    batch_size: int = 32
    warmup_steps: int = 50
    ema_decay: float = 0.99
    prompt_dropout: float = 0.1
    num_layers: int = 4
    latent_bank: int = 8192
    scorer_batch: int = 64
    scorer_bank: int = 512              # clean VAE reconstructions (twice as many corrupted ones)
    progress: bool = True
    check_prompts: int = 12             # per split, for the quick colour/shape check at the end
    scorer_check: int = 256             # renders used for the scorers' own checks
    vae_eval: int = 512                 # renders for the VAE's eval MSE and latent statistics
    scorers_only: bool = False          # retrain only the scorers of the pipeline already in `out`
    log_every: int = 10
    extra: dict = field(default_factory=dict)


class LossLog:
    """Appends one JSON object per line: {"stage", "step", "t", "loss", ...}."""

    def __init__(self, path: str, mode: str = "w"):
        self.path = path
        self._fh = open(path, mode, encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, **row) -> None:
        self._fh.write(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class _Timer:
    """A time-budgeted loop with a tqdm bar counting seconds."""

    def __init__(self, desc: str, seconds: float, progress: bool):
        from tqdm.auto import tqdm

        self.seconds, self.t0 = float(seconds), time.time()
        self.bar = tqdm(total=round(self.seconds), desc=desc, unit="s", disable=not progress,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f}s {postfix}")

    def running(self) -> bool:
        return self.elapsed() < self.seconds

    def elapsed(self) -> float:
        return time.time() - self.t0

    def update(self, **postfix) -> None:
        self.bar.n = min(round(self.elapsed()), self.bar.total)
        self.bar.set_postfix(postfix, refresh=True)

    def close(self) -> None:
        self.bar.n = self.bar.total
        self.bar.close()


def _batch(rng: np.random.Generator, n: int, split: str) -> tuple[list[data.Scene], np.ndarray]:
    scenes = data.sample_scenes(rng, n, split)
    return scenes, data.render_batch(scenes)


# ---- 1. VAE --------------------------------------------------------------------------------

def train_vae(s: PretrainSettings, rng: np.random.Generator, log: LossLog):
    vae = build_vae()
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr)
    timer, step, ema_loss = _Timer("vae", s.vae_seconds, s.progress), 0, None
    while timer.running():
        _, imgs = _batch(rng, s.vae_batch, "train")
        x = torch.from_numpy(data.to_model_range(imgs))
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        kl = post.kl().mean()
        mse = torch.nn.functional.mse_loss(rec, x)
        loss = mse + 1e-6 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema_loss = mse.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * mse.item()
        if step % s.log_every == 0:
            log.write(stage="vae", step=step, t=timer.elapsed(), loss=mse.item(), kl=kl.item())
            timer.update(step=step, mse=f"{ema_loss:.4f}")
    timer.close()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        _, imgs = _batch(rng, s.vae_eval, "train")
        x = torch.from_numpy(data.to_model_range(imgs))
        z = vae.encode(x).latent_dist.mode()
        eval_mse = torch.nn.functional.mse_loss(vae.decode(z).sample, x).item()
        vae.register_to_config(shift_factor=float(z.mean()), scaling_factor=float(1.0 / z.std()))
    log.write(stage="vae_eval", step=step, t=timer.elapsed(), loss=eval_mse)
    return vae, {"steps": step, "seconds": round(timer.elapsed(), 1), "eval_mse": eval_mse,
                 "shift_factor": vae.config.shift_factor, "scaling_factor": vae.config.scaling_factor}


@torch.no_grad()
def _reconstruct(vae, imgs: np.ndarray, chunk: int = 256) -> np.ndarray:
    out = []
    for i in range(0, len(imgs), chunk):
        x = torch.from_numpy(data.to_model_range(imgs[i:i + chunk]))
        out.append(data.from_model_range(vae.decode(vae.encode(x).latent_dist.mode()).sample.numpy()))
    return np.concatenate(out)


# ---- 2. scorers ----------------------------------------------------------------------------

def train_scorers(s: PretrainSettings, vae, rng: np.random.Generator, log: LossLog):
    """Fidelity model and shape/colour classifier, trained side by side."""
    torch.manual_seed(s.seed + 2)
    t0 = time.time()
    # Banks of VAE reconstructions (clean and corrupted), so that "passed through the VAE" is
    # never a shortcut for "clean": the base model's samples are all VAE decodes.
    clean_scenes, clean = _batch(rng, s.scorer_bank, "all")
    clean_rec = _reconstruct(vae, clean)
    bad_scenes, bad_src = _batch(rng, 2 * s.scorer_bank, "all")
    bad, bad_t = zip(*(scorers.corrupt(sc, im, rng) for sc, im in zip(bad_scenes, bad_src, strict=True)), strict=True)
    bad_rec, bad_t = _reconstruct(vae, np.stack(bad)), np.array(bad_t, np.float32)
    bank_seconds = time.time() - t0

    fid = scorers.ConvNet(1)
    cls = scorers.ConvNet(scorers.CLASSIFIER_OUTPUTS)
    opt_f = torch.optim.AdamW(fid.parameters(), lr=2e-3, weight_decay=1e-4)
    opt_c = torch.optim.AdamW(cls.parameters(), lr=2e-3, weight_decay=1e-4)
    lab = {k: np.array(v) for k, v in _labels(clean_scenes).items()}
    timer, step, n = _Timer("scorers", s.scorer_seconds, s.progress), 0, s.scorer_batch
    lf = lc = None
    loss_c = torch.zeros(())
    while timer.running():
        q = n // 4
        # fidelity: 1/4 fresh clean, 1/4 clean reconstructions, 1/4 fresh corruptions, 1/4 corrupted reconstructions
        sc, fresh = _batch(rng, 2 * q, "all")
        cor, cor_t = zip(*(scorers.corrupt(a, b, rng) for a, b in zip(sc[q:], fresh[q:], strict=True)), strict=True)
        ri, bi = rng.integers(0, len(clean_rec), q), rng.integers(0, len(bad_rec), q)
        imgs = np.concatenate([fresh[:q], clean_rec[ri], np.stack(cor), bad_rec[bi]])
        target = torch.from_numpy(np.concatenate([np.ones(2 * q, np.float32), np.array(cor_t, np.float32), bad_t[bi]]))
        logit = fid(scorers.images_to_tensor(imgs))[:, 0]
        loss_f = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
        opt_f.zero_grad(set_to_none=True)
        loss_f.backward()
        opt_f.step()
        # classifier (converges fast; trained in the first 40 % of the stage): renders + reconstructions
        if timer.elapsed() < 0.4 * s.scorer_seconds:
            ci = rng.integers(0, len(clean_rec), n // 2)
            sc2, fresh2 = _batch(rng, n - n // 2, "all")
            lab2 = _labels(sc2)
            x = scorers.images_to_tensor(np.concatenate([fresh2, clean_rec[ci]]))
            y = {k: torch.from_numpy(np.concatenate([np.array(lab2[k]), lab[k][ci]])) for k in lab}
            ls, lfg, lbg = scorers.split_logits(cls(x))
            ce = torch.nn.functional.cross_entropy
            loss_c = (ce(ls, y["shape"], label_smoothing=0.1) + ce(lfg, y["fg"], label_smoothing=0.1)
                      + ce(lbg, y["bg"], label_smoothing=0.1)) / 3
            opt_c.zero_grad(set_to_none=True)
            loss_c.backward()
            opt_c.step()
            lc = loss_c.item() if lc is None else 0.95 * lc + 0.05 * loss_c.item()
        step += 1
        lf = loss_f.item() if lf is None else 0.95 * lf + 0.05 * loss_f.item()
        if step % s.log_every == 0:
            log.write(stage="scorers", step=step, t=timer.elapsed(), loss=loss_f.item(), loss_classifier=loss_c.item())
            timer.update(step=step, fid=f"{lf:.3f}", cls=f"{lc or 0:.3f}")
    timer.close()
    fid.eval().requires_grad_(False)
    cls.eval().requires_grad_(False)
    summary = {"steps": step, "seconds": round(timer.elapsed(), 1), "bank_seconds": round(bank_seconds, 1)}
    summary.update(_scorer_checks(fid, cls, vae, rng, s.scorer_check))
    log.write(stage="scorers_eval", step=step, t=timer.elapsed(), **{k: v for k, v in summary.items() if k.startswith(("fid", "cls"))})
    return fid, cls, summary


def _labels(scenes: list[data.Scene]) -> dict[str, list[int]]:
    return {"shape": [SHAPES.index(x.shape) for x in scenes], "fg": [COLORS.index(x.fg) for x in scenes],
            "bg": [COLORS.index(x.bg) for x in scenes]}


def _scorer_checks(fid, cls, vae, rng, n: int = 256) -> dict[str, float]:
    """Mean fidelity on clean renders, VAE reconstructions and each corruption; classifier accuracy."""
    sc, imgs = _batch(rng, n, "all")
    out = {"fidelity_clean": float(scorers.fidelity_scores(fid, imgs).mean()),
           "fidelity_vae_recon": float(scorers.fidelity_scores(fid, _reconstruct(vae, imgs)).mean())}
    for kind in scorers.CORRUPTIONS:
        bad = np.stack([scorers.corrupt(a, b, rng, kind)[0] for a, b in zip(sc[:64], imgs[:64], strict=True)])
        out[f"fidelity_{kind}"] = float(scorers.fidelity_scores(fid, bad).mean())
    ps, pf, pb = scorers.classifier_probs(cls, imgs)
    lab = _labels(sc)
    out["classifier_acc_shape"] = float((ps.argmax(1) == lab["shape"]).mean())
    out["classifier_acc_fg"] = float((pf.argmax(1) == lab["fg"]).mean())
    out["classifier_acc_bg"] = float((pb.argmax(1) == lab["bg"]).mean())
    return out


# ---- 3. transformer ------------------------------------------------------------------------

def train_transformer(s: PretrainSettings, vae, rng: np.random.Generator, log: LossLog):
    torch.manual_seed(s.seed + 3)
    transformer = build_transformer(s.num_layers)
    pipe = build_pipeline(vae=vae, transformer=transformer, seed=s.seed)
    combos = train_combinations()
    prompts = [make_prompt(*c) for c in combos]
    t0 = time.time()
    with torch.no_grad():
        pe, _, pooled, _ = pipe.encode_prompt(prompts + [""], None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=TEXT_LENGTH)
        uncond = len(prompts)
        # latent bank over the train split only
        lat_parts, idx_parts = [], []
        g = torch.Generator().manual_seed(s.seed + 4)
        for i in range(0, s.latent_bank, 512):
            n = min(512, s.latent_bank - i)
            ids = rng.integers(0, len(combos), n)
            imgs = data.render_batch([data.random_scene(rng, combos[j]) for j in ids])
            z = vae.encode(torch.from_numpy(data.to_model_range(imgs))).latent_dist.sample(generator=g)
            lat_parts.append((z - vae.config.shift_factor) * vae.config.scaling_factor)
            idx_parts.append(torch.from_numpy(ids))
        latents, prompt_idx = torch.cat(lat_parts), torch.cat(idx_parts)
    bank_seconds = time.time() - t0

    transformer.train().requires_grad_(True)
    params = [p for p in transformer.parameters()]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    ema = [p.detach().clone() for p in params]
    timer, step, avg = _Timer("transformer", s.transformer_seconds, s.progress), 0, None
    gen = torch.Generator().manual_seed(s.seed + 5)
    b = s.batch_size
    while timer.running():
        j = torch.randint(0, len(latents), (b,), generator=gen)
        x0, pi = latents[j], prompt_idx[j].clone()
        pi[torch.rand(b, generator=gen) < s.prompt_dropout] = uncond
        sigma = torch.sigmoid(torch.randn(b, generator=gen))  # logit-normal
        noise = torch.randn(x0.shape, generator=gen)
        sv = sigma[:, None, None, None]
        xt = (1 - sv) * x0 + sv * noise
        for grp in opt.param_groups:
            grp["lr"] = s.lr * min(1.0, (step + 1) / s.warmup_steps)
        pred = transformer(hidden_states=xt, timestep=sigma * 1000, encoder_hidden_states=pe[pi],
                           pooled_projections=pooled[pi], return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            d = min(s.ema_decay, (1 + step) / (10 + step))
            torch._foreach_mul_(ema, d)
            torch._foreach_add_(ema, [p.detach() for p in params], alpha=1 - d)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % s.log_every == 0:
            log.write(stage="transformer", step=step, t=timer.elapsed(), loss=loss.item(), loss_avg=avg,
                      grad_norm=float(gnorm), lr=opt.param_groups[0]["lr"])
            timer.update(step=step, loss=f"{avg:.4f}", it_s=f"{step / max(timer.elapsed(), 1e-9):.2f}")
    timer.close()
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    transformer.eval().requires_grad_(False)
    return pipe, {"steps": step, "seconds": round(timer.elapsed(), 1), "bank_seconds": round(bank_seconds, 1),
                  "latent_bank": int(len(latents)), "final_loss_avg": avg,
                  "params": sum(p.numel() for p in params)}


# ---- 4. save -------------------------------------------------------------------------------

@torch.no_grad()
def quick_check(pipe, n_per_split: int = 12, seed: int = 0, steps: int = 20) -> dict[str, float]:
    """Colour and shape accuracy of ODE samples (20 steps, CFG 4) on a few prompts per split."""
    out = {}
    for split, combos in (("train", train_combinations()), ("heldout", heldout_combinations())):
        idx = np.random.default_rng(seed).choice(len(combos), min(n_per_split, len(combos)), replace=False)
        prompts = [make_prompt(*combos[i]) for i in idx]
        imgs = pipe(prompts, num_inference_steps=steps, guidance_scale=4.0, height=RESOLUTION, width=RESOLUTION,
                    max_sequence_length=TEXT_LENGTH, generator=torch.Generator().manual_seed(seed),
                    output_type="np").images
        res = checker.correctness(data.from_model_range(imgs.transpose(0, 3, 1, 2) * 2 - 1), prompts)
        for k in ("fg_color", "bg_color", "shape"):
            out[f"{split}_{k}"] = float(res[k].mean())
    return out


def pretrain(settings: PretrainSettings) -> dict:
    """Run all stages and write ``settings.out``. Returns the summary written to toyworld.json."""
    s = settings
    if s.save_dtype not in ("fp16", "fp32"):
        raise ValueError(f"save_dtype must be 'fp16' or 'fp32', got {s.save_dtype!r}")
    t_start = time.time()
    threads = s.threads or min(2, os.cpu_count() or 1)
    torch.set_num_threads(threads)
    if s.scorers_only:
        return _retrain_scorers(s, threads, t_start)
    os.makedirs(s.out, exist_ok=True)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)
    log = LossLog(os.path.join(s.out, "pretrain_log.jsonl"))
    try:
        vae, vae_info = train_vae(s, rng, log)
        fid, cls, scorer_info = train_scorers(s, vae, rng, log)
        pipe, tr_info = train_transformer(s, vae, rng, log)
        check = quick_check(pipe, n_per_split=s.check_prompts, seed=s.seed) if s.check_prompts else {}
        log.write(stage="check", step=tr_info["steps"], t=time.time() - t_start, **check)
    finally:
        log.close()
    dtype = torch.float16 if s.save_dtype == "fp16" else torch.float32
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # silence "modules that should be kept in float32: []" on .to(fp16)
    try:
        pipe.to(dtype)
        pipe.save_pretrained(s.out, safe_serialization=True)
    finally:
        dlog.set_verbosity(level)
    scorers.save_scorer(fid, os.path.join(s.out, scorers.FIDELITY_DIR), "fidelity", dtype=dtype)
    scorers.save_scorer(cls, os.path.join(s.out, scorers.CLASSIFIER_DIR), "classifier", dtype=dtype)
    import diffusers
    import transformers

    summary = {
        "what": "GRPO-Guard Studio toy world base model (grpo-guard toy pretrain)",
        "settings": {k: v for k, v in asdict(s).items() if k not in ("out", "progress")} | {"threads": threads},
        "vae": vae_info, "scorers": scorer_info, "transformer": tr_info, "quick_check": check,
        "total_seconds": round(time.time() - t_start, 1),
        "heldout_prompts": [make_prompt(*c) for c in heldout_combinations()],
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__},
    }
    with open(os.path.join(s.out, "toyworld.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1, default=lambda o: o if not isinstance(o, float) or math.isfinite(o) else None)
    return summary


def _retrain_scorers(s: PretrainSettings, threads: int, t_start: float) -> dict:
    """Retrain the fidelity model and classifier of the pipeline in ``s.out`` (its VAE is reused);
    appends to its loss log and updates the "scorers" entry of its toyworld.json."""
    from diffusers import AutoencoderKL

    vae_dir = os.path.join(s.out, "vae")
    if not os.path.isfile(os.path.join(vae_dir, "config.json")):
        raise FileNotFoundError(f"--scorers-only needs a pretrained pipeline in {s.out} (no vae/config.json there)")
    vae = AutoencoderKL.from_pretrained(vae_dir, dtype=torch.float32).eval().requires_grad_(False)
    torch.manual_seed(s.seed)
    log = LossLog(os.path.join(s.out, "pretrain_log.jsonl"), mode="a")
    try:
        fid, cls, info = train_scorers(s, vae, np.random.default_rng(s.seed + 100), log)
    finally:
        log.close()
    dtype = torch.float16 if s.save_dtype == "fp16" else torch.float32
    scorers.save_scorer(fid, os.path.join(s.out, scorers.FIDELITY_DIR), "fidelity", dtype=dtype)
    scorers.save_scorer(cls, os.path.join(s.out, scorers.CLASSIFIER_DIR), "classifier", dtype=dtype)
    meta_path = os.path.join(s.out, "toyworld.json")
    summary: dict = {}
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as fh:
            summary = json.load(fh)
    summary["scorers"] = info | {"retrained": f"--scorers-only --scorer-seconds {s.scorer_seconds:g}",
                                 "threads": threads}
    with open(meta_path, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=1)
    summary.setdefault("total_seconds", round(time.time() - t_start, 1))
    return summary
