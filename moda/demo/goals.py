"""The demo's quality goals: `make demo` checks each against its own metrics, prints the verdicts and saves them in
metrics.json, so that a run says by itself whether the demo model is as truthful (and the run as quick) as meant."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Goal:
    """One figure of metrics.json (`split`, then `key`) and the value it should reach: at least `target`, or at
    most it when `at_most`."""

    name: str
    split: str
    key: str
    target: float
    at_most: bool = False

    def met(self, value: float) -> bool:
        return value <= self.target if self.at_most else value >= self.target


DEMO_GOALS = (
    Goal("test items: colour named right", "test", "colour_accuracy", 0.98),
    Goal("test items: product type named right", "test", "product_type_accuracy", 0.98),
    Goal("test items: pattern named right", "test", "pattern_accuracy", 0.98),
    Goal("test items: descriptions that contradict nothing", "test", "contradiction_free_rate", 0.98),
    Goal("held-out combinations: colour + type named right", "holdout", "colour_and_type_accuracy", 0.90),
    Goal("the run, catalogue to report, in seconds", "run", "seconds", 600, at_most=True),
)


def check_goals(metrics: dict, goals: tuple[Goal, ...] = DEMO_GOALS) -> list[dict]:
    """Each goal with the run's value and whether it is met; a figure the run did not measure is not met."""
    results = []
    for goal in goals:
        value = metrics.get(goal.split, {}).get(goal.key)
        results.append(
            {
                "goal": goal.name,
                "value": value,
                "target": goal.target,
                "at_most": goal.at_most,
                "met": value is not None and goal.met(value),
            }
        )
    return results


def report_goals(results: list[dict]) -> None:
    """One line per goal: the run's value, the target and the verdict."""
    print("Against the demo's goals:")
    width = max(len(result["goal"]) for result in results) + 2
    for result in results:
        value, target = result["value"], result["target"]
        shown = "not measured" if value is None else _shown(value, target)
        bound = "<=" if result["at_most"] else ">="
        verdict = "met" if result["met"] else "MISSED"
        print(f"  {result['goal']:{width}}{shown:>12}  (goal {bound} {_shown(target, target)})  {verdict}")


def _shown(value: float, target: float) -> str:
    """Rates as percentages, counts (a target above 1) as they are."""
    return f"{value:.1%}" if target <= 1 else f"{value:.0f}"
