"""A stored experiment with known curves, for the report and page tests: 2 arms × 3 seeds +
controls, each run's eval proxy / gold written through the store's recorder from closed-form
values (:func:`curve`), so a test can compute every statistic by hand."""

from __future__ import annotations

from grpo_guard.experiments.config import ExperimentConfig
from grpo_guard.store import queries
from grpo_guard.store.db import session_scope
from grpo_guard.store.models import Run
from grpo_guard.store.recorder import StoreRecorder
from grpo_guard.training.recording import StepStat

STEPS = (0, 4, 8, 12)
EXP = {
    "name": "synthetic study", "tags": ["synthetic"],
    "base": {"epochs": 12, "group_size": 2, "prompts_per_epoch": 2, "rewards": {"toy_fg_share": 1.0}},
    "arms": {"flow": {"algorithm": "flow_grpo"}, "guard": {"algorithm": "grpo_guard"}},
    "seeds": [0, 1, 2], "controls": True,
}


def curve(arm: str, seed: int, i: int) -> tuple[float, float, float]:
    """(eval proxy, eval gold, eval toy_fg_share) of a run at its i-th eval point: arms raise
    their proxy, Guard a little slower and losing less gold; controls' proxy (null_noise) is
    flat and their own toy_fg_share barely moves."""
    if arm.endswith("/control"):
        fg = 0.30 + 0.01 * i + 0.002 * seed
        return 0.50 + 0.001 * seed, 0.70 - 0.010 * i - 0.003 * seed, fg
    rise, loss = (0.10, 0.030) if arm == "flow" else (0.08, 0.015)
    proxy = 0.30 + rise * i + 0.01 * seed * i
    return proxy, 0.70 - loss * i + 0.004 * seed * (i % 2), proxy


def stored_experiment() -> int:
    """Store the experiment and its 12 finished runs; return the experiment id."""
    exp = ExperimentConfig.from_dict(EXP)
    eid = queries.create_experiment(exp.to_dict(), name=exp.name, tags=exp.tags)
    for r in exp.expand():
        rid = queries.create_run(r.config, name=f"{exp.name} [{r.label}]", experiment=(eid, r.arm, r.seed))
        rec = StoreRecorder(rid)
        for i, step in enumerate(STEPS):
            proxy, gold, fg = curve(r.arm, r.seed, i)
            rec.log_scalars(step, {"eval/proxy": proxy, "eval/gold": gold, "eval/toy_fg_share": fg})
            if step:
                rec.log_step_stats([StepStat(step, j, 0.5, 0.1, {"r_mean_minus_1": 1e-5 * (j + 1), "r_std": 1e-4,
                                                                 "rhat_mean_minus_1": 2e-6, "rhat_std": 5e-5,
                                                                 "pos_adv_clipped": 0.01, "neg_adv_clipped": 0.02})
                                    for j in range(3)])
        rec.close()
        with session_scope(write=True) as s:
            row = s.get(Run, rid)
            row.status, row.step, row.last_proxy, row.last_gold = "succeeded", 12, proxy, gold
    return eid
