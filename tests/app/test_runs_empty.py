"""Runs page on an empty store (its own module, so the store starts empty): the empty state says
what to do and its one button enqueues the toy A/B pair and goes to the pair's Compare page."""

from __future__ import annotations

from app.pages import runs as RU


def test_runs_empty_state_says_what_to_do_and_only_filters_say_nothing_matches():
    first = RU.empty_note(0, [], None, "")
    assert "No runs yet" in first and "toy A/B pair" in first
    assert "No run matches" in RU.empty_note(0, ["failed"], None, None)
    assert RU.empty_note(0, [], "sweep", None) == RU.empty_note(0, [], None, "x") == RU.empty_note(0, ["failed"], None, None)
    assert RU.empty_note(3, [], None, None) == "", "a table with rows needs no note"


def test_runs_page_hides_the_table_and_offers_the_toy_pair_on_an_empty_store(store):
    from grpo_guard.store import queries

    assert queries.list_runs() == [], "this module's store starts empty"
    table, _, _, box, note, toy, actions = RU.redraw([], None, "", "created", True)
    assert table.visible is False and box.visible is True and toy.visible is True and "No runs yet" in note
    assert actions.visible is False, "no 'Selected run / click a row' box without a row to click"
    table, _, _, box, note, toy, actions = RU.redraw(["failed"], None, "", "created", True)
    assert box.visible is True and toy.visible is False and "No run matches" in note and actions.visible is False


def test_toy_pair_button_enqueues_the_toy_preset_as_an_ab_pair_and_goes_to_compare(store, monkeypatch):
    from app.run_form import load_preset
    from grpo_guard.config import RunConfig
    from grpo_guard.store import queries

    monkeypatch.delenv("GG_BROKER_URL", raising=False)
    monkeypatch.setenv("GG_QUEUE", "app-tests")
    message, url = RU.start_toy_pair()
    runs = sorted(queries.list_runs(), key=lambda r: r.id)
    assert [r.algorithm for r in runs] == ["flow_grpo", "grpo_guard"] and runs[0].pair_id == runs[1].pair_id
    assert url == f"compare?runs={runs[0].id},{runs[1].id}" and "Queued the toy A/B pair" in message
    stored = RunConfig.from_dict(queries.get_run(runs[1].id).config)
    assert stored == RunConfig.from_dict(load_preset("toy GRPO-Guard")), "the Guard arm is the preset itself"
    table, _, _, box, note, _, actions = RU.redraw([], None, "", "created", True)
    assert table.visible is True and box.visible is False and note == "" and actions.visible is True
    for r in runs:
        queries.delete_run(r.id)
