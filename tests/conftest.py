import sys
from pathlib import Path

import pytest

# The program's packages (mailfleet/, components/) and the test helpers import from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pytest_terminal_summary(terminalreporter):
    """The apply-for-real figures (first apply, re-apply, remote commands), when that suite ran."""
    apply_suite = sys.modules.get("integration.test_apply")
    if apply_suite is not None and apply_suite.figures:
        figures = ", ".join(f"{name} {value:g}" for name, value in apply_suite.figures.items())
        terminalreporter.write_line(f"apply for real: {figures}")
    engine_suite = sys.modules.get("test_engine") or sys.modules.get("engine.test_engine")
    if engine_suite is not None and engine_suite.figures:
        figures = ", ".join(f"{name} {value:g}" for name, value in engine_suite.figures.items())
        terminalreporter.write_line(f"real engine: {figures}")
