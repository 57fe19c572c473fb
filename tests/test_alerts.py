"""The alerting rules shipped in monitoring/alerts.yml, checked and unit-tested by Prometheus's own
promtool: each alert fires on series made to trip it and stays quiet on healthy ones
(tests/alerts_test.yml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from skips import skip_or_fail

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "monitoring/alerts.yml"
TESTS = REPO / "tests/alerts_test.yml"


def promtool(*args) -> subprocess.CompletedProcess:
    if not shutil.which("promtool"):
        skip_or_fail("promtool is not installed (Debian's prometheus package; scripts/test installs it)")
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_the_rules_are_valid():
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_on_its_series_and_stays_quiet_on_healthy_ones():
    result = promtool("test", "rules", TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_test():
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    fired = {case["alertname"] for test in yaml.safe_load(TESTS.read_text())["tests"]
             for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == alerts
