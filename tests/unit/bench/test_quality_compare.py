"""A trial beside a saved run: the same averaging as the benchmark's tables (tasks per seed,
then seeds), changes per set and per group, and a clear error for a file that is not one."""

import json
from pathlib import Path

import pytest

from bench import detection_quality
from bench.quality_compare import comparison_table, load_means


def _row(dataset: str, task: str, seed: int, roc: float, pr: float) -> dict[str, object]:
    return {"dataset": dataset, "task": task, "seed": seed, "method": "ae", "roc_auc": roc,
            "pr_auc": pr, "fit_s": 1.0}  # fmt: skip


def test_a_saved_run_averages_tasks_per_seed_then_seeds(tmp_path: Path) -> None:
    rows = [
        _row("digits", "0", 0, 0.90, 0.5),
        _row("digits", "1", 0, 0.70, 0.3),  # seed 0: 0.80
        _row("digits", "0", 1, 1.00, 0.6),  # seed 1: 1.00
        _row("wine", "class 2", 0, 0.60, 0.2),
    ]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(rows))
    roc, pr = load_means(str(path))
    assert roc == pytest.approx({("digits", "ae"): 0.90, ("wine", "ae"): 0.60})
    assert pr[("digits", "ae")] == pytest.approx(0.5)


def test_the_table_gives_each_set_s_change_and_each_group_s_over_the_shared_sets() -> None:
    before = (
        {("digits", "ae"): 0.90, ("wine", "ae"): 0.60},
        {("digits", "ae"): 0.5, ("wine", "ae"): 0.2},
    )
    now = (
        {("digits", "ae"): 0.95, ("mnist", "ae"): 0.80},
        {("digits", "ae"): 0.4, ("mnist", "ae"): 0.7},
    )
    groups = {"tuning": ["digits", "wine"], "untuned": ["mnist"]}
    table = comparison_table(now, before, groups, ["ae"], "run.json")
    assert "| digits | ae | 0.950 | 0.900 | +0.050 | -0.100 |" in table
    assert "| wine |" not in table and "| mnist |" not in table  # in one run only
    assert "tuning, ae: mean ROC-AUC 0.900 -> 0.950 (+0.050) over 1 sets" in table
    assert "untuned, ae: no set in both runs" in table


def test_a_file_that_is_not_a_saved_run_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps([{"dataset": "digits"}]))
    with pytest.raises(SystemExit, match=r"other\.json: not a --json file"):
        load_means(str(path))
    with pytest.raises(SystemExit, match=r"missing\.json"):
        load_means(str(tmp_path / "missing.json"))


def test_the_benchmark_prints_a_trial_beside_its_saved_run(tmp_path: Path, capsys) -> None:
    saved = tmp_path / "default.json"
    tiny = ["--datasets", "breast_cancer", "--methods", "iforest", "--seeds", "1"]
    detection_quality.main([*tiny, "--max-rows", "80", "--quiet", "--json", str(saved)])
    capsys.readouterr()
    detection_quality.main([*tiny, "--max-rows", "80", "--quiet", "--compare", str(saved)])
    out = capsys.readouterr().out
    assert f"## Against {saved}" in out
    assert "| breast_cancer | iforest |" in out and "| +0.000 | +0.000 |" in out
    assert "tuning, iforest: mean ROC-AUC" in out
