"""ops/alerts.yml and the Grafana dashboards, checked by promtool.

promtool parses a rules file as Prometheus does; written as recording rules, the
dashboards' queries get the same parser. Each check first shows it can fail.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.ops.promql import (
    OPS,
    RULES,
    alert_names,
    dashboard_expressions,
    rule_expressions,
)


def _promtool(promtool: str, *args: str, cwd: Path = OPS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _as_rules(path: Path, expressions: list[str]) -> Path:
    """Each expression as a recording rule of one group."""
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(expressions)]
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return path


def test_alert_rules_are_valid(promtool: str) -> None:
    done = _promtool(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"SUCCESS: (\d+) rules found", done.stdout)
    assert found is not None, done.stdout
    assert int(found.group(1)) == len(rule_expressions())


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    done = _promtool(promtool, "test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_promtool_test() -> None:
    tests = yaml.safe_load((OPS / "alerts_test.yml").read_text("utf-8"))
    tested = {
        case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])
    }
    assert sorted(alert_names() - tested) == []


def test_every_dashboard_query_parses(promtool: str, tmp_path: Path) -> None:
    expressions = dashboard_expressions()
    assert len(expressions) >= 30
    # promtool tells a broken query from a good one, naming it.
    broken = _promtool(
        promtool,
        "check",
        "rules",
        str(_as_rules(tmp_path / "broken.yml", ["sum(rate(x[5m])", "up"])),
    )
    assert broken.returncode != 0
    assert "dashboard:query_0" in broken.stdout + broken.stderr
    for expression in expressions:
        # One file per query: a failure names the panel it comes from.
        path = _as_rules(tmp_path / "query.yml", [expression.expr])
        done = _promtool(promtool, "check", "rules", str(path))
        assert done.returncode == 0, f"{expression.where}: {expression.expr}\n{done.stdout}"


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-compose.yml"])
def test_prometheus_configs_are_valid(promtool: str, name: str) -> None:
    done = _promtool(promtool, "check", "config", name)
    assert done.returncode == 0, done.stdout + done.stderr
