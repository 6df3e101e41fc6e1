"""``check.md``: the GPU check's figures as the tables README.md and the benchmark READMEs quote."""

from __future__ import annotations

import os
from typing import Any


def _f(x: Any, fmt: str, scale: float = 1.0) -> str:
    return "–" if x is None else format(x * scale, fmt)


def backbone_lines(stage: dict[str, Any]) -> list[str]:
    lines = ["| backbone | algorithm | img/s | upd s/step | peak GiB | planned GiB | Guard ovh | upd TFLOP/s | MFU | "
             "peak bf16 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in stage.get("results", []):
        ovh = _f(r.get("guard_update_overhead"), "+.1f", 100) + ("%" if "guard_update_overhead" in r else "")
        lines.append(f"| {r['backbone']} | {r['algorithm']} | {r['sampling_images_per_s']:.3f} | "
                     f"{r['update_s_per_denoising_step']:.4f} | {_f(r['peak_memory_gib'], '.1f')} | "
                     f"{_f(r.get('planned_peak_gib'), '.1f')} | "
                     f"{ovh if 'guard_update_overhead' in r else ''} | {r['update_tflops']:.3g} | "
                     f"{_f(r['mfu'], '.1f', 100)}{'%' if r['mfu'] is not None else ''} | "
                     f"{_f(r['peak_bf16_tflops'], 'g')} |")
    notes = sorted({r["peak_note"] for r in stage.get("results", [])})
    lines += ["", "TFLOP/s: model FLOPs of one update micro-batch (forward + backward, counted with "
              "`torch.utils.flop_counter`; with gradient checkpointing the recomputed forward is left out) "
              "over the measured time per micro-batch. " + "; ".join(notes) + ". Planned GiB: `grpo-guard plan`'s "
              "peak for the same run (fake tensors, no weights), against `torch.cuda.max_memory_allocated` in peak GiB."]
    for kind, run in stage.get("runs", {}).items():
        if run["timed_out"] or run["rc"]:
            lines.append(f"- {kind}: {'stopped by its time box' if run['timed_out'] else 'exit code ' + str(run['rc'])}"
                         f" after {run['wall_s']:.0f}s (see check.log)")
    return lines


def correctness_lines(stage: dict[str, Any]) -> list[str]:
    res = stage.get("result")
    if not res:
        return [f"Did not complete ({stage.get('run')}); see check.log."]
    lines = ["| setting | device | worst value/gradient rel. error | log-ratio error / ε_c | rows clipped | "
             "near a clip boundary | pass |", "|---|---|---|---|---|---|---|"]
    for r in res["step_math"]:
        lines.append(f"| {r['setting']} | {r['device']} | {r['errors'][r['worst']]:.1e} ({r['worst']}; tol "
                     f"{r['rtol']:g}) | {r['log_ratio_error_over_clip_range']:.1e} (tol {r['log_ratio_tol']:g}) | "
                     f"{r['rows_clipped']}/{r['rows']} | {r['rows_near_clip_boundary']} | "
                     f"{'yes' if r['passed'] else 'NO'} |")
    rs = res["resume"]
    # Only a GPU run measures the run-to-run floor (on the CPU the runs are bit-identical).
    repeat = "" if rs["device"] == "cpu" else f"; two uninterrupted runs differ by {rs['repeat_max_rel_diff']:.1e}"
    lines += ["", f"Resume equals uninterrupted ({rs['device']}): stopped at epoch {rs['stopped_at']} "
              f"({rs['stopped_status']}), resumed from {rs['resumed_from']} to epoch {rs['resumed_to']}; "
              f"{rs['scalars_compared']} logged scalars compared, {rs['exactly_equal']} bit-equal, max relative "
              f"difference {rs['max_rel_diff']:.1e} (tol {rs['rtol']:g}{repeat}): {'pass' if rs['passed'] else 'FAIL'}."]
    return lines


def overopt_lines(stage: dict[str, Any], out: str) -> list[str]:
    reached = [e[0] for e in stage.get("epochs", {}).values()]
    total = max((e[1] or 0 for e in stage.get("epochs", {}).values()), default=0)
    lines = [f"Arms {', '.join(stage.get('arms', []))}; seeds {stage.get('seeds')}; epochs reached "
             f"{min(reached, default=0)}–{max(reached, default=0)} of {total} "
             f"({'finished' if stage.get('status') == 'done' else 'continues on the next call'}). "
             "Full tables: `overopt/table.md`, figure: `overopt/figure.png`.", ""]
    try:
        with open(os.path.join(out, "overopt", "table.md"), encoding="utf-8") as fh:
            table = fh.read().splitlines()
    except OSError:
        return lines + ["No report yet (no run reached its first eval)."]
    # The headline tables: up to the equal-proxy section.
    stop = next((i for i, line in enumerate(table) if line.startswith(("Mean gold difference", "Gold at equal"))),
                len(table))
    return lines + [line.replace("# Results", "#### Report") for line in table[:stop]]


def write_markdown(state: dict[str, Any], out: str) -> str:
    env = state.get("environment", {})
    where = ("CPU, tiny models (`--tiny`: checks the code path; the numbers mean nothing)" if state.get("tiny")
             else f"{env.get('gpu')} ({env.get('gpu_memory_gib', 0):.0f} GiB, CUDA {env.get('cuda')})")
    lines = ["# GPU check", "", f"Where: {where}; torch {env.get('torch')}, {env.get('cpu_cores')} CPU cores; "
             f"commit {env.get('commit')}.", "", "| call | started (UTC) | budget s | wall s | stages |",
             "|---|---|---|---|---|"]
    for i, c in enumerate(state.get("calls", []), 1):
        lines.append(f"| {i} | {c['started']} | {c['budget_s']:.0f} | {_f(c.get('wall_s'), '.0f')} | "
                     f"{', '.join(c['stages'])} |")
    sections = {"backbones": ("1. Backbones at full size (random weights, paper settings)", backbone_lines),
                "correctness": ("2. Correctness on the device", correctness_lines),
                "overopt": ("3. Toy over-optimisation at the paper's batch",
                            lambda st: overopt_lines(st, out))}
    for name, (title, fn) in sections.items():
        stage = state.get("stages", {}).get(name)
        lines += ["", f"## {title}", ""]
        lines += [f"Status: {stage['status']}.", ""] + fn(stage) if stage else ["Not run yet."]
    path = os.path.join(out, "check.md")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
