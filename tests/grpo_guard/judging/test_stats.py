"""Human-gold statistics against hand-computed values: Wilson intervals (ties half),
Bradley–Terry by MM with ties, Cohen's and Fleiss' kappa, and the fairness of the side coin."""

from __future__ import annotations

import math
import random

import pytest

from grpo_guard.judging import pairs as P
from grpo_guard.judging.sessions import coin
from grpo_guard.judging.stats import bradley_terry, cohen_kappa, fleiss_kappa, wilson, win_rate


def test_wilson_interval_of_eight_in_ten_matches_the_hand_computation():
    # p = 0.8, z² = 3.8415: centre = (0.8 + 0.19207) / 1.38415 = 0.71674,
    # half = 1.95996 / 1.38415 * sqrt(0.016 + 0.0096037) = 0.22658  -> [0.4902, 0.9433]
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.49016, abs=2e-5) and hi == pytest.approx(0.94332, abs=2e-5)


def test_ties_count_half_in_the_win_rate():
    r = win_rate(wins=6, losses=0, ties=4)  # 6 + 4/2 = 8 of 10: the same interval as 8 in 10
    assert r.rate == pytest.approx(0.8) and r.n == 10
    assert (r.lo, r.hi) == pytest.approx(wilson(8, 10))
    assert win_rate(0, 0, 0).rate is None


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError):
        wilson(3, 0)
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_bradley_terry_two_items_is_the_odds_of_the_record():
    bt = bradley_terry([("A", "B", "a")] * 3 + [("A", "B", "b")])
    assert bt.scores == pytest.approx({"A": 0.75, "B": 0.25}, abs=1e-8) and not bt.regularised


def test_bradley_terry_chain_matches_the_hand_solved_likelihood_equations():
    # A-B 2:1 and B-C 2:1 (A and C never meet). MLE: 2 = 3 pA/(pA+pB) -> pA = 2 pB;
    # 1 = 3 pC/(pB+pC) -> pC = pB/2; so pA:pB:pC = 4:2:1.
    out = [("A", "B", "a"), ("A", "B", "a"), ("A", "B", "b"), ("B", "C", "a"), ("C", "B", "b"), ("B", "C", "b")]
    bt = bradley_terry(out)
    assert bt.scores == pytest.approx({"A": 4 / 7, "B": 2 / 7, "C": 1 / 7}, abs=1e-7)


def test_bradley_terry_counts_a_tie_as_half_a_win_each():
    # one win each way plus two ties = 2 : 2, so equal strength; 2 wins + 2 ties = 3 : 1
    assert bradley_terry([("A", "B", "a"), ("A", "B", "b"), ("A", "B", "tie"), ("B", "A", "tie")]).scores == \
        pytest.approx({"A": 0.5, "B": 0.5})
    assert bradley_terry([("A", "B", "a"), ("A", "B", "a"), ("A", "B", "tie"), ("A", "B", "tie")]).scores == \
        pytest.approx({"A": 0.75, "B": 0.25}, abs=1e-8)


def test_bradley_terry_stays_finite_when_one_item_wins_everything():
    bt = bradley_terry([("A", "B", "a"), ("A", "B", "a")])
    # one virtual tie: A 2.5 of 3, B 0.5 of 3 -> 5:1
    assert bt.regularised and bt.scores == pytest.approx({"A": 5 / 6, "B": 1 / 6}, abs=1e-8)


def test_cohen_kappa_of_the_textbook_table():
    # 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no: p_o = 0.7, p_e = 0.5·0.6 + 0.5·0.4 = 0.5 -> 0.4
    items = [("y", "y")] * 20 + [("y", "n")] * 5 + [("n", "y")] * 10 + [("n", "n")] * 15
    assert cohen_kappa(items) == pytest.approx(0.4)
    assert cohen_kappa([]) is None
    assert cohen_kappa([("a", "a")] * 3) == 1.0


def test_fleiss_kappa_of_fleiss_worked_example():
    # 10 subjects x 14 raters x 5 categories (Fleiss 1971 as reproduced on Wikipedia): 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1], [7, 7, 0, 0, 0],
             [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[str(k) for k, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.20993, abs=1e-5)
    assert fleiss_kappa([["a"]]) is None


def assert_fair_coin(flips: list[bool]) -> None:
    """A fair coin: the number of heads passes a two-sided exact binomial test at 1e-4, and the
    number of runs a Wald–Wolfowitz test at 4.5 sigma (a strictly alternating side is balanced
    but not random)."""
    n = len(flips)
    k = sum(flips)
    p_two = min(1.0, 2 * sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n)
    assert p_two > 1e-4, f"A shown left {k} times of {n}: the side coin is biased"
    runs = 1 + sum(a != b for a, b in zip(flips, flips[1:], strict=False))  # ~N(501, 15.8²) for n = 1000
    mu = 1 + 2 * k * (n - k) / n
    sd = math.sqrt(2 * k * (n - k) * (2 * k * (n - k) - n) / (n * n * (n - 1)))
    assert abs(runs - mu) < 4.5 * sd, f"{runs} runs of sides in {n} trials (expected {mu:.0f} ± {sd:.1f})"


def test_side_coin_is_fair_over_1000_flips_and_the_check_catches_bias():
    assert_fair_coin([coin() for _ in range(1000)])
    rng = random.Random(0)
    for biased in ([True] * 1000, [i % 2 == 0 for i in range(1000)], [rng.random() < 0.4 for _ in range(1000)]):
        with pytest.raises(AssertionError):
            assert_fair_coin(biased)


class S:
    def __init__(self, id, run_id, step, prompt, seed, gold=None):
        self.id, self.run_id, self.step, self.prompt, self.seed, self.gold = id, run_id, step, prompt, seed, gold


def _samples():
    out, i = [], 0
    for run in (1, 2):
        for step in (0, 10, 20):
            for prompt in ("p1", "p2", "p3"):
                for seed in (0, 1):
                    i += 1
                    out.append(S(i, run, step, prompt, seed, gold=float(step == 10) + run))
    return out


def test_matched_steps_pair_the_same_prompt_and_seed_and_draws_balance_prompts():
    samples = _samples()
    comps = P.comparisons("matched", [1, 2], None, samples)
    assert comps == [((1, 0), (2, 0)), ((1, 10), (2, 10)), ((1, 20), (2, 20))]
    pool = P.candidates(comps, samples)
    by_id = {s.id: s for s in samples}
    assert len(pool) == 3 * 3 * 2
    assert all((by_id[c.a].prompt, by_id[c.a].seed) == (by_id[c.b].prompt, by_id[c.b].seed) for c in pool)
    drawn = P.draw(pool, 9, random.Random(0))
    assert sorted(c.prompt for c in drawn) == ["p1"] * 3 + ["p2"] * 3 + ["p3"] * 3
    assert {c.comparison for c in drawn if c.prompt == "p1"} == set(comps), "comparisons take turns per prompt"
    assert len({(c.a, c.b) for c in P.draw(pool, None, random.Random(1))}) == len(pool)


def test_step_modes_best_last_and_base():
    samples = _samples()
    assert P.comparisons("steps", [1], None, samples) == [((1, 10), (1, 20))], "best (10) against last (20)"
    assert P.comparisons("base", [2], None, samples) == [((2, 10), (2, 0)), ((2, 20), (2, 0))]
    with pytest.raises(ValueError, match="no eval samples at step 15"):
        P.comparisons("matched", [1, 2], ["15"], samples)
    with pytest.raises(ValueError, match="exactly one run"):
        P.comparisons("steps", [1, 2], ["0", "10"], samples)
    with pytest.raises(ValueError, match="run 3 has no eval samples"):
        P.comparisons("matched", [1, 3], None, samples)


def _row(judge, a, b, outcome, pair=(1, 2), family=""):
    from grpo_guard.store.judgments import JudgmentRow

    left = pair[0] if outcome != "b" else pair[1]  # pressed "left" always: the outcome follows the side
    return JudgmentRow(0, 1, judge, pair[0], pair[1], a[0], a[1], b[0], b[1], "p", 0, family, left,
                       "tie" if outcome == "tie" else "left", (), 100, None)


def test_summary_scores_each_group_of_checkpoints_the_judged_pairs_connect():
    from grpo_guard.judging.sessions import summarize

    islands = [_row("ann", (1, 0), (2, 0), "a"), _row("ann", (1, 10), (2, 10), "b")]
    assert summarize(islands).bradley_terry == (), "two checkpoints per island: their win rate says it all"
    chain = [_row("ann", (1, 0), (1, 10), "a", (1, 2)), _row("ann", (1, 10), (1, 20), "a", (2, 3)),
             _row("ann", (1, 0), (1, 20), "b", (1, 3))]
    (bt,) = summarize(chain).bradley_terry
    assert set(bt.scores) == {(1, 0), (1, 10), (1, 20)}
    assert [r.outcome for r in chain] == ["a", "a", "b"]
    # three runs at matched steps 0 and 10: one group per step, each fitted on its own judgments.
    # Step 0: run 1 beats run 2 2:1 and run 2 beats run 3 2:1 -> 4:2:1 (the chain solved by hand
    # above); step 10: run 3 beats run 1 once and loses once, ties run 2 twice -> all equal.
    step0 = [("a", (1, 0), (2, 0)), ("a", (1, 0), (2, 0)), ("b", (1, 0), (2, 0)),
             ("a", (2, 0), (3, 0)), ("a", (2, 0), (3, 0)), ("b", (2, 0), (3, 0))]
    step10 = [("a", (3, 10), (1, 10)), ("b", (3, 10), (1, 10)), ("tie", (3, 10), (2, 10)), ("tie", (2, 10), (3, 10))]
    rows = [_row("ann", a, b, out, (i, 100 + i)) for i, (out, a, b) in enumerate(step0 + step10)]
    first, second = summarize(rows).bradley_terry
    assert first.scores == pytest.approx({(1, 0): 4 / 7, (2, 0): 2 / 7, (3, 0): 1 / 7}, abs=1e-7)
    assert second.scores == pytest.approx(dict.fromkeys([(1, 10), (2, 10), (3, 10)], 1 / 3), abs=1e-7)
    assert [len(g["scores"]) for g in summarize(rows).to_dict()["bradley_terry"]] == [3, 3]


def test_win_rates_per_task_family_count_each_familys_judgments():
    from grpo_guard.judging.sessions import summarize, summary_text

    a, b = (1, 10), (2, 10)
    rows = [_row("ann", a, b, "a", (1, 2), "color"), _row("ann", a, b, "a", (3, 4), "color"),
            _row("ann", a, b, "b", (5, 6), "count"), _row("ann", a, b, "tie", (7, 8), "count"),
            _row("ann", a, b, "a", (9, 10))]  # a prompt without metadata: in the pair's rate only
    s = summarize(rows)
    assert [(p.family, p.rate.wins, p.rate.losses, p.rate.ties) for p in s.families] == [("color", 2, 0, 0),
                                                                                        ("count", 0, 1, 1)]
    count = s.families[1].rate
    assert count.rate == pytest.approx(0.25) and (count.lo, count.hi) == pytest.approx(wilson(0.5, 2))
    assert (s.pairs[0].rate.wins, s.pairs[0].rate.n) == (3, 5)
    assert "[count] run 1 step 10 vs run 2 step 10: 0.250" in summary_text(s)


def test_two_judges_give_cohen_and_three_give_fleiss():
    from grpo_guard.judging.sessions import agreement, summarize, summary_text

    a, b = (1, 0), (2, 0)
    two = [_row("ann", a, b, "a", (1, 2)), _row("bob", a, b, "a", (1, 2)),
           _row("ann", a, b, "b", (3, 4)), _row("bob", a, b, "tie", (3, 4))]
    ag = agreement(two)
    # p_o = 1/2; ann a,b  bob a,tie: p_e = (1·1)/4 = 1/4 -> (1/2 − 1/4) / (3/4) = 1/3
    assert ag.method == "cohen" and ag.items == 2 and ag.kappa == pytest.approx(1 / 3)
    three = two + [_row("cy", a, b, "a", (1, 2))]
    assert agreement(three).method == "fleiss" and agreement(three).judges == 3
    assert "Fleiss' kappa" in summary_text(summarize(three)) and "Cohen's kappa" in summary_text(summarize(two))
    assert agreement(two[:1]) is None
