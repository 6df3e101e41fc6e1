"""Quality of the toy base model: sample prompts × seeds through the real pipeline (ODE, 20 steps,
CFG 4) and score with the analytic checker and the learned scorers, on train and held-out prompts.

    python benchmarks/toy_quality/measure.py [--model DIR] [--prompts-per-split 24] [--seeds 4]

Writes results.json, samples.png and README.md next to this file (README: the command, the
table, the machine). Same numbers as `grpo-guard toy measure`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="pipeline directory (default: the shipped base model)")
    ap.add_argument("--prompts-per-split", type=int, default=24)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=HERE, help="where results.json, samples.png and README.md go")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from grpo_guard.toyworld.measure import format_table, measure

    t0 = time.time()
    res = measure(args.model, prompts_per_split=args.prompts_per_split, seeds=args.seeds, steps=args.steps,
                  cfg=args.cfg, grid_path=os.path.join(args.out, "samples.png"), threads=args.threads)
    res["wall_seconds"] = round(time.time() - t0, 1)
    res["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()}
    table = format_table(res)
    print(table)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1)
    meta_path = os.path.join(res["model"], "toyworld.json")
    pretrain = {}
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as fh:
            pretrain = json.load(fh)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(readme(res, table, pretrain, " ".join(sys.argv[1:])))
    return 0


def readme(res: dict, table: str, pretrain: dict, argv: str) -> str:
    tr, vae, sc = pretrain.get("transformer", {}), pretrain.get("vae", {}), pretrain.get("scorers", {})
    lines = [
        "# Toy base model quality",
        "",
        "Samples of the shipped toy base model (`grpo_guard/toyworld/base/`) through the real",
        f"`StableDiffusion3Pipeline` (ODE, {res['steps']} steps, CFG {res['cfg']:g}, shift 3 from the saved scheduler), "
        f"{res['seeds']} seeds per",
        "prompt, scored by the analytic checker (`grpo_guard.toyworld.checker`: nearest palette colour,",
        "background = border mode, foreground = mode of the rest, shape by bounding-box fill ratio) and",
        "the learned scorers trained during `toy pretrain`. \"renders\" rows score ground-truth renders",
        "of the same prompts (random placement): the ceiling. Held-out prompts were never rendered",
        "during pretraining. Target: fg and bg colour accuracy ≥ 0.95.",
        "",
        "```",
        f"python benchmarks/toy_quality/measure.py {argv}".rstrip(),
        "# or: grpo-guard toy measure",
        "```",
        "",
        table,
        "",
        f"Sampling: {res['splits']['train']['seconds_per_image'] * 1e3:.0f} ms per image (batches of 48), "
        f"{res['machine']['threads']} torch threads, torch {res['machine']['torch']}; whole script {res['wall_seconds']} s.",
        "",
        "![samples](samples.png)",
        "",
        "`samples.png`: rows are 6 train prompts, then 6 held-out prompts (spread over each list); columns are seeds.",
        "",
    ]
    if tr:
        retrained = sc.get("retrained")
        lines += [
            "## The model measured",
            "",
            f"`grpo-guard toy pretrain --out DIR` on a shared 2-core CPU ({pretrain.get('settings', {}).get('threads')} "
            f"torch threads): VAE {vae.get('seconds')} s / {vae.get('steps')} steps (eval MSE {vae.get('eval_mse', 0):.4f}), "
            f"transformer {tr.get('seconds')} s / {tr.get('steps')} steps (final loss {tr.get('final_loss_avg', 0):.4f}), "
            f"{pretrain.get('total_seconds')} s for the whole run"
            + (f"; its scorers were then retrained with `grpo-guard toy pretrain --out DIR {retrained}` "
               f"({sc.get('steps')} steps), which is the default scorer budget now." if retrained else
               f"; scorers {sc.get('seconds')} s / {sc.get('steps')} steps."),
            "",
            "Fidelity model on its own checks (mean score): " + ", ".join(
                f"{k.removeprefix('fidelity_')} {v:.2f}" for k, v in sc.items() if k.startswith("fidelity_")) + ".",
            "Classifier accuracy on renders: " + ", ".join(
                f"{k.removeprefix('classifier_acc_')} {v:.2f}" for k, v in sc.items() if k.startswith("classifier_acc")) + ".",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
