"""The pulumi-resource-command stand-in (toolchain/standins/command.py) on what the engine tests do
not reach through the program: the diff rules, the echoed secrets, and, against the test host's
real sshd, stdin, environment (a refused variable fails), the previous output (a refusal only
warns) and a failing command's message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from integration.testhost import TestHost, TestHostUnavailable, skip_or_fail

pytestmark = pytest.mark.engine

STANDINS = Path(__file__).resolve().parents[2] / "toolchain" / "standins"
sys.path.insert(0, str(STANDINS))
import command  # noqa: E402
import standin  # noqa: E402
from pulumi.runtime.proto import provider_pb2  # noqa: E402

URN = "urn:pulumi:s::p::command:remote:Command::step"


class Aborted(Exception):
    pass


class Context:
    def abort(self, code, message):
        raise Aborted(message)


def diff(olds: dict, news: dict) -> provider_pb2.DiffResponse:
    return command.Command(None).Diff(provider_pb2.DiffRequest(
        urn=URN, olds=standin.to_struct(olds), old_inputs=standin.to_struct(olds), news=standin.to_struct(news)),
        Context())


BASE = {"connection": {"host": "127.0.0.1", "user": "root"}, "create": "bash -s", "stdin": "echo one"}


def test_a_changed_input_updates_a_changed_trigger_replaces_and_no_change_is_no_op():
    changed = diff(BASE, {**BASE, "stdin": "echo two"})
    assert changed.changes == provider_pb2.DiffResponse.DIFF_SOME
    assert list(changed.diffs) == ["stdin"] and not changed.replaces
    assert changed.detailedDiff["stdin"].kind == provider_pb2.PropertyDiff.UPDATE

    triggered = diff({**BASE, "triggers": ["a"]}, {**BASE, "triggers": ["b"]})
    assert list(triggered.replaces) == ["triggers"]
    assert triggered.detailedDiff["triggers"].kind == provider_pb2.PropertyDiff.UPDATE_REPLACE

    # The same value, once arriving secret: no change (and stdout/stderr are outputs, not inputs).
    same = diff({**BASE, "stdout": "old"}, {**BASE, "stdin": standin.secret("echo one")})
    assert same.changes == provider_pb2.DiffResponse.DIFF_NONE


def test_a_secret_input_stays_secret_in_its_echo_and_the_connection_always_is():
    inputs = {**BASE, "stdin": standin.secret("the DKIM key")}
    response = command.Command(None).Create(provider_pb2.CreateRequest(
        urn=URN, properties=standin.to_struct(inputs), preview=True), Context())
    outputs = standin.to_dict(response.properties)
    assert standin.is_secret(outputs["stdin"]) and outputs["stdin"]["value"] == "the DKIM key"
    assert standin.is_secret(outputs["connection"])
    assert outputs["create"] == "bash -s"
    assert outputs["stdout"] == standin.UNKNOWN  # a preview cannot know what the command prints


# ---- against a real sshd ----

@pytest.fixture(scope="module")
def host():
    test_host = TestHost()
    try:
        test_host.start()
    except TestHostUnavailable as error:
        skip_or_fail(f"no test host: {error}")
    yield test_host
    test_host.stop()


RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
import command
request, logs = json.load(sys.stdin), []
try:
    result = {"outputs": command.run(request["state"], request["command"], lambda severity, text: logs.append(text))}
except command.CommandFailed as error:
    result = {"error": str(error)}
print(json.dumps({**result, "logs": logs}))
"""


def run(host: TestHost, command_line: str, **state) -> dict:
    """command.run in a process inside the host's namespace, where its sshd is 127.0.0.1:22."""
    state["connection"] = {"host": "127.0.0.1", "privateKey": host.ssh_private_key, "dialErrorLimit": 2}
    result = subprocess.run(["ip", "netns", "exec", host.netns, sys.executable, "-c", RUN, str(STANDINS)],
                            input=json.dumps({"state": state, "command": command_line}),
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)


def test_stdin_reaches_the_command_and_outputs_lose_one_trailing_newline(host):
    result = run(host, "cat; echo to-stderr >&2", stdin="line one\nline two\n")
    assert result["outputs"] == {"stdout": "line one\nline two", "stderr": "to-stderr"}
    assert "line one" in result["logs"][0]  # logged to the engine (logging: stdoutAndStderr)


def test_an_environment_variable_sshd_refuses_fails_the_command_an_accepted_one_arrives(host):
    refused = run(host, "echo ran", environment={"MAILFLEET_X": "1"})
    assert refused["error"] == 'could not set environment variable "MAILFLEET_X": ssh: setenv failed'
    accepted = run(host, 'echo "$LC_MAILFLEET"', environment={"LC_MAILFLEET": "through AcceptEnv"})
    assert accepted["outputs"]["stdout"] == "through AcceptEnv"


def test_a_refused_previous_output_only_warns_and_the_command_runs(host):
    result = run(host, "echo ran", stdout="the previous output")
    assert result["outputs"]["stdout"] == "ran"
    assert any("PULUMI_COMMAND_STDOUT" in line for line in result["logs"])


def test_a_failing_command_reports_its_status_command_and_output(host):
    result = run(host, "echo it broke; exit 3")
    assert result["error"].startswith('Process exited with status 3: running "echo it broke; exit 3":')
    assert "it broke" in result["error"]
