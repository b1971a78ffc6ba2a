"""docs/operations.md's alert rules (issue 35): valid Prometheus rules, on metrics the service exports, and firing
when they should (promtool's own rule tests, when promtool is installed: `.ci/run` installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.api.metrics import Metrics
from worker.metrics import REGISTRY as WORKER_REGISTRY

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
SUFFIXES = ("", "_total", "_count", "_sum", "_bucket", "_created")


def _rules_text() -> str:
    section = DOC.read_text().split("## Alert rules", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def _exported() -> set[str]:
    names = set()
    for registry in (Metrics().registry, WORKER_REGISTRY):
        for family in registry.collect():
            names |= {family.name + s for s in SUFFIXES}
    return names


def test_the_rules_load_and_use_only_exported_metrics() -> None:
    doc = yaml.safe_load(_rules_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"UnlearndPartialVerdictsPilingUp", "UnlearndRequestNearDueStillApproximate",
                                          "UnlearndNoLiveWorker", "UnlearndRetrainsFailing"}
    exported = _exported()
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"} and r["labels"]["severity"], r
        assert r["annotations"]["summary"], r
        used = set(re.findall(r"\bunlearnd_[a-z_]+", r["expr"]))
        assert used and used <= exported, (r["alert"], used - exported)


SERIES = {  # one sample a minute from t = 0
    "unlearnd_live_workers": "1 1 0 0 0 0 0 0",
    'unlearnd_approximate_requests{verdict="partial"}': "2 3 6x60",
    'unlearnd_worker_exact_retrains_total{reason="due_date",outcome="failed"}': "0 0 0 1 1 1 1 1",
    "unlearnd_seconds_to_nearest_approximate_due": "90000-1000x60",
}
EXPECT = [  # (minute, alert, fires, the value its summary shows)
    (2, "UnlearndNoLiveWorker", False, None), (6, "UnlearndNoLiveWorker", True, None),
    (20, "UnlearndPartialVerdictsPilingUp", False, None), (40, "UnlearndPartialVerdictsPilingUp", True, "6"),
    (1, "UnlearndRetrainsFailing", False, None), (5, "UnlearndRetrainsFailing", True, None),
    (2, "UnlearndRequestNearDueStillApproximate", False, None),
    (30, "UnlearndRequestNearDueStillApproximate", True, None),
]


def _promtool_tests(rules: dict[str, dict[str, object]]) -> str:
    cases = []
    for minute, name, fires, value in EXPECT:
        rule = rules[name]
        summary = str(rule["annotations"]["summary"]).replace("{{ $value }}", value or "")  # type: ignore[index]
        alerts = [{"exp_labels": rule["labels"], "exp_annotations": {"summary": summary}}] if fires else []
        cases.append({"eval_time": f"{minute}m", "alertname": name, "exp_alerts": alerts})
    return yaml.safe_dump({"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": k, "values": v} for k, v in SERIES.items()],
        "alert_rule_test": cases}]})


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_checks_the_rules_and_they_fire_when_they_should(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(_rules_text())
    rules = {r["alert"]: r for g in yaml.safe_load(_rules_text())["groups"] for r in g["rules"]}
    (tmp_path / "tests.yml").write_text(_promtool_tests(rules))
    check = subprocess.run(["promtool", "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
