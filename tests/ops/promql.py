"""The PromQL of ops/: every expression of the Grafana dashboards and of the rules, and
the helpers the tests that check them with a real Prometheus share."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

OPS = Path(__file__).resolve().parents[2] / "ops"
DASHBOARDS = sorted((OPS / "grafana").glob("*.json"))
RULES = OPS / "alerts.yml"
PORTS_ENV = "PRIVACY_PIPELINE_TEST_PORTS"

# What Grafana puts in place of its variables before a query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$controller": ".*",
}


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it comes from (for messages)."""

    where: str
    expr: str


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row keeps its panels


def dashboard_expressions() -> list[Expression]:
    """Every target expression of every dashboard, Grafana's variables filled in."""
    out: list[Expression] = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text("utf-8"))
        for panel in _panels(dashboard["panels"]):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, value)
                assert "$" not in expr, f"{path.name}: a variable left in {expr!r}"
                where = f"{path.name} panel {panel['id']} ({panel['title']}) {target['refId']}"
                out.append(Expression(where, expr))
    return out


def rule_expressions() -> list[Expression]:
    """Every recording and alerting rule expression of ops/alerts.yml."""
    rules = yaml.safe_load(RULES.read_text("utf-8"))
    return [
        Expression(f"alerts.yml {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def alert_names() -> set[str]:
    rules = yaml.safe_load(RULES.read_text("utf-8"))
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports, from PRIVACY_PIPELINE_TEST_PORTS (LOW-HIGH) when set."""
    spec = os.environ.get(PORTS_ENV, "").strip()
    if spec:
        low, _, high = spec.partition("-")
        candidates: list[int] = list(range(int(low), int(high or low) + 1))
    else:
        candidates = []
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        # Each port stays bound until all are picked, so none is picked twice.
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            if not candidates:
                sock.bind(("127.0.0.1", 0))
            else:
                while True:
                    if not candidates:
                        raise OSError(f"no free port left in {PORTS_ENV}={spec}")
                    port = candidates.pop(0)
                    try:
                        sock.bind(("127.0.0.1", port))
                        break
                    except OSError:
                        continue
            ports.append(int(sock.getsockname()[1]))
    finally:
        for sock in held:
            sock.close()
    return ports
