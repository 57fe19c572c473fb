"""The CI workflows users copy for their stacks: .github/workflows/preview.yml and up.yml."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from skips import skip_or_fail

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"
STACKS = ["dev", "prod"]


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean True; GitHub reads it as "on".
    workflow["on"] = workflow.pop(True)
    return workflow


def only_job(workflow: dict) -> dict:
    [job] = workflow["jobs"].values()
    return job


def pulumi_step_index(job: dict) -> int:
    [index] = [i for i, step in enumerate(job["steps"]) if step.get("uses", "").startswith("pulumi/actions@")]
    return index


def common_checks(job: dict) -> dict:
    """What both workflows share; returns the pulumi/actions step."""
    assert job["strategy"]["matrix"]["stack"] == STACKS
    # one job per stack, and a failing stack does not cancel the other
    assert job["strategy"]["fail-fast"] is False

    steps = job["steps"]
    assert steps[0]["uses"] == "actions/checkout@v4"
    assert steps[1]["uses"] == "actions/setup-python@v5"
    assert steps[1]["with"]["python-version"] == "3.11"  # a string: 3.11 unquoted would be the number 3.11

    pulumi_index = pulumi_step_index(job)
    pulumi_step = steps[pulumi_index]
    assert pulumi_step["uses"] == "pulumi/actions@v6"
    install = [i for i, step in enumerate(steps)
               if "venv/bin/pip install -r requirements.txt" in step.get("run", "")]
    assert install and install[0] < pulumi_index, "dependencies must be installed before pulumi runs"
    assert "python -m venv venv" in steps[install[0]]["run"]
    assert "policy/venv/bin/pip install -r policy/requirements.txt" in steps[install[0]]["run"]

    check = [i for i, step in enumerate(steps) if "policy/check_stack_file.py" in step.get("run", "")]
    assert check and check[0] < pulumi_index
    assert "Pulumi.${{ matrix.stack }}.yaml" in steps[check[0]]["run"]

    assert job["env"]["PULUMI_ACCESS_TOKEN"] == "${{ secrets.PULUMI_ACCESS_TOKEN }}"
    assert job["env"]["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"
    assert pulumi_step["with"]["stack-name"] == "${{ matrix.stack }}"
    assert pulumi_step["with"]["policyPacks"] == "policy"
    return pulumi_step


def test_preview_runs_on_every_pull_request():
    workflow = load("preview.yml")
    assert set(workflow["on"]) == {"pull_request"}
    assert workflow["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_preview_comments_each_stack_diff_on_the_pr():
    job = only_job(load("preview.yml"))
    step = common_checks(job)
    assert step["with"] == {
        "command": "preview",
        "stack-name": "${{ matrix.stack }}",
        "diff": True,
        "policyPacks": "policy",
        "comment-on-pr": True,
        "edit-pr-comment": True,
        "always-include-summary": True,  # a diff over GitHub's 64 KB comment limit keeps its summary
        "comment-on-summary": True,
    }
    assert job["concurrency"]["group"] == "preview-${{ github.event.pull_request.number }}-${{ matrix.stack }}"


def test_up_runs_on_push_to_main_only():
    workflow = load("up.yml")
    assert workflow["on"] == {"push": {"branches": ["main"]}}
    assert workflow["permissions"] == {"contents": "read"}


def test_up_runs_each_stack_one_at_a_time():
    job = only_job(load("up.yml"))
    step = common_checks(job)
    assert step["with"]["command"] == "up"
    assert step["with"]["diff"] is True
    assert "comment-on-pr" not in step["with"]
    # a group per stack: two ups of one stack never race, and a running up is never cancelled
    assert job["concurrency"] == {"group": "pulumi-up-${{ matrix.stack }}", "cancel-in-progress": False}


ACTIONLINT_VERSION = "v1.7.12"
TOOLS = Path(os.environ.get("MAILFLEET_TOOLS_CACHE", "/var/cache/mailfleet-tools"))


@pytest.fixture(scope="module")
def actionlint() -> str:
    """actionlint at a pinned version, built once from the Go module proxy into TOOLS (about 30 s)."""
    binary = TOOLS / "bin" / f"actionlint-{ACTIONLINT_VERSION}"
    go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
    if not binary.exists():
        if go is None:
            skip_or_fail("actionlint is not built and there is no Go toolchain to build it")
        try:
            (TOOLS / "bin").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            skip_or_fail(f"cannot create the tool cache {TOOLS}: {error}")
        with open(TOOLS / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it
            if not binary.exists():
                build = TOOLS / "build"
                env = {**os.environ, "GOPATH": str(TOOLS / "go"), "GOMODCACHE": str(TOOLS / "go/pkg/mod"),
                       "GOCACHE": str(TOOLS / "go-build"), "GOBIN": str(build), "GOFLAGS": "-modcacherw",
                       "CGO_ENABLED": "0"}
                result = subprocess.run([go, "install", f"github.com/rhysd/actionlint/cmd/actionlint@{ACTIONLINT_VERSION}"],
                                        capture_output=True, text=True, env=env, timeout=900)
                if result.returncode != 0:
                    skip_or_fail(f"building actionlint {ACTIONLINT_VERSION} failed: {result.stderr[-2000:]}")
                (build / "actionlint").rename(binary)
    return str(binary)


def run_actionlint(binary: str, *files: Path) -> subprocess.CompletedProcess:
    # -shellcheck= and -pyflakes=: judge the workflows alone, not whichever linters this machine has.
    return subprocess.run([binary, "-no-color", "-shellcheck=", "-pyflakes=", *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def test_actionlint_accepts_the_workflows(actionlint):
    result = run_actionlint(actionlint, *sorted(WORKFLOWS.glob("*.yml")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(actionlint, tmp_path):
    """The check above is not blind: a misspelt matrix key and an unknown event are reported."""
    text = (WORKFLOWS / "up.yml").read_text()
    assert "${{ matrix.stack }}" in text and "\n  push:\n" in text
    broken = tmp_path / "up.yml"
    broken.write_text(text.replace("${{ matrix.stack }}", "${{ matrix.stak }}").replace("\n  push:\n", "\n  psuh:\n"))
    result = run_actionlint(actionlint, broken)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'property "stak" is not defined' in result.stdout, result.stdout
    assert 'unknown Webhook event "psuh"' in result.stdout, result.stdout
