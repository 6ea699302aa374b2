"""deploy/prometheus/alerts.yml: valid for promtool, tested by it, and about metrics we export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from aias.core.grpc_server import RpcMetrics
from aias.gateway.metrics import HttpMetrics
from aias.services.execution.metrics import RunMetrics

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
# What Prometheus adds itself; everything else must come from an AIAS process.
SCRAPE_METRICS = {"up"}
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset"}
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def _rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def _exported() -> set[str]:
    """Every metric name an AIAS process exposes (gateway, gRPC servers, workers)."""
    registries = [HttpMetrics().registry, RpcMetrics(CollectorRegistry()).registry]
    runs = CollectorRegistry()
    RunMetrics(runs)
    names = set()
    for registry in [*registries, runs]:
        for family in registry.collect():
            names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    return names


def _metrics_in(expression: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    keywords, label matchers, strings or ranges."""
    bare = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]', " ", expression)
    names = re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare)
    return {name for name in names if name not in _KEYWORDS}


def test_the_four_alerts_are_there_with_a_severity_and_words_for_whoever_is_paged() -> None:
    rules = _rules()
    assert [rule["alert"] for rule in rules] == [
        "AiasServiceDown",
        "AiasFailedRunRatioHigh",
        "AiasRunQueueOld",
        "AiasGateway5xxRatioHigh",
    ]
    for rule in rules:
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["for"], rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]


def test_every_metric_an_alert_reads_is_one_aias_exports() -> None:
    exported = _exported() | SCRAPE_METRICS
    for rule in _rules():
        read = _metrics_in(rule["expr"])
        assert read, rule["alert"]
        assert read <= exported, f"{rule['alert']} reads {read - exported}, which nothing exports"


@pytest.mark.skipif(
    PROMTOOL is None, reason="no promtool on PATH (make test installs Debian's prometheus as root)"
)
@pytest.mark.parametrize(
    "command", [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]]
)
def test_promtool_accepts_the_rules_and_their_tests_pass(command: list[str]) -> None:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *command], cwd=RULES_DIR, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
