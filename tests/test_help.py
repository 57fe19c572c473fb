"""Every script and tool answers --help and -h with its usage, exits 0 and does nothing else.

Each runs in a copy of the repository without a venv, with HOME, the toolchain cache and the
local host's state directory pointed at empty temp directories: afterwards not one file in any of
them may be new, gone or changed (a `scripts/setup` would create venv/, a toolchain build the
cache, `scripts/run` the file backend in HOME).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def executables() -> list[str]:
    """Every file git keeps executable, and every Python tool a user is told to run."""
    listed = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True)
    found = {line.split("\t", 1)[1] for line in listed.stdout.splitlines() if line.startswith("100755")}
    found |= {str(path.relative_to(REPO)) for path in (REPO / "tools").glob("*.py")}
    found |= {"policy/check_stack_file.py", "tests/integration/benchmark_signing.py"}
    return sorted(found)


TOOLS = executables()


def test_the_list_holds_the_scripts_and_tools():
    assert {"scripts/run", "scripts/setup", "scripts/test", "scripts/toolchain", "scripts/benchmark",
            "scripts/benchmark-signing", "tools/local_host.py", "tools/publish_dns.py"} <= set(TOOLS)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("help")
    copy = root / "repo"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    for name in ("home", "cache", "local"):
        (root / name).mkdir()
    env = {**os.environ, "HOME": str(root / "home"), "MAILFLEET_TOOLCHAIN_CACHE": str(root / "cache" / "toolchain"),
           "MAILFLEET_LOCAL_DIR": str(root / "local" / "state"), "PULUMI_HOME": str(root / "home" / ".pulumi")}
    env.pop("PULUMI_BACKEND_URL", None)
    return {"root": root, "copy": copy, "env": env}


def snapshot(root: Path) -> dict[str, tuple]:
    return {str(path.relative_to(root)): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in root.rglob("*") if "__pycache__" not in path.parts}


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("tool", TOOLS)
def test_help_prints_usage_exits_0_and_changes_nothing(sandbox, tool, flag):
    before = snapshot(sandbox["root"])
    command = [sys.executable, "-B", tool, flag] if tool.endswith(".py") else [f"./{tool}", flag]
    # Its own process group: a tool that wrongly starts real work is stopped whole, not left running.
    process = subprocess.Popen(command, cwd=sandbox["copy"], env=sandbox["env"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"{tool} {flag} was still running after 30 s")
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "usage" in result.stdout.lower(), result.stdout
    assert result.stderr == ""
    after = snapshot(sandbox["root"])
    assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == set()
    assert not (sandbox["copy"] / "venv").exists()
