"""The demo's goals: each read from the run's metrics, met or missed on the right side of its target, and printed."""

from moda.demo.goals import DEMO_GOALS, Goal, check_goals, report_goals


def _metrics(rate: float, seconds: float) -> dict:
    keys = {goal.key for goal in DEMO_GOALS if goal.split in ("test", "holdout")}
    return {"test": dict.fromkeys(keys, rate), "holdout": dict.fromkeys(keys, rate), "run": {"seconds": seconds}}


def test_every_goal_is_met_by_a_good_quick_run_and_missed_by_a_poor_slow_one():
    assert all(result["met"] for result in check_goals(_metrics(0.99, 480.0)))
    assert not any(result["met"] for result in check_goals(_metrics(0.5, 700.0)))


def test_a_goal_at_its_target_is_met_from_either_side():
    at_least = Goal("rate", "test", "rate", 0.9)
    at_most = Goal("time", "run", "seconds", 600, at_most=True)
    results = check_goals({"test": {"rate": 0.9}, "run": {"seconds": 600}}, (at_least, at_most))
    assert [result["met"] for result in results] == [True, True]
    results = check_goals({"test": {"rate": 0.899}, "run": {"seconds": 600.5}}, (at_least, at_most))
    assert [result["met"] for result in results] == [False, False]


def test_a_figure_the_run_did_not_measure_is_not_met():
    results = check_goals({"test": {}}, (Goal("rate", "test", "rate", 0.9), Goal("held out", "holdout", "rate", 0.9)))
    assert [(result["value"], result["met"]) for result in results] == [(None, False), (None, False)]


def test_the_report_prints_each_goal_with_its_value_and_verdict(capsys):
    metrics = _metrics(0.99, 480.0)
    metrics["test"]["pattern_accuracy"] = 0.975
    report_goals(check_goals(metrics))
    lines = {line.split("  ")[1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(lines) == {goal.name for goal in DEMO_GOALS}
    assert "97.5%" in lines["test items: pattern named right"] and lines["test items: pattern named right"].endswith("MISSED")
    assert "480" in lines["the run, catalogue to report, in seconds"] and "<= 600" in lines[DEMO_GOALS[-1].name]
    assert lines["test items: colour named right"].endswith("met")
