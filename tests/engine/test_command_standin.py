"""The pulumi-resource-command stand-in (toolchain/standins/command.py) on what the engine tests do
not reach through the program: the diff rules, the echoed secrets, and, against the test host's
real sshd, stdin, environment (a refused variable fails), the previous output (a refusal only
warns) and a failing command's message; for CopyToRemote its Check and diff, and against the
host the upload (byte for byte, into a directory, the mode), the re-upload and the delete.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from integration.testhost import TestHost, booted

pytestmark = pytest.mark.engine

STANDINS = Path(__file__).resolve().parents[2] / "toolchain" / "standins"
sys.path.insert(0, str(STANDINS))
import command  # noqa: E402
import standin  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from pulumi.runtime.proto import provider_pb2  # noqa: E402

URN = "urn:pulumi:s::p::command:remote:Command::step"
COPY_URN = "urn:pulumi:s::p::command:remote:CopyToRemote::upload"


class Aborted(Exception):
    pass


class Context:
    def abort(self, code, message):
        raise Aborted(message)


def diff(olds: dict, news: dict, urn: str = URN) -> provider_pb2.DiffResponse:
    return command.Command(None).Diff(provider_pb2.DiffRequest(
        urn=urn, olds=standin.to_struct(olds), old_inputs=standin.to_struct(olds), news=standin.to_struct(news)),
        Context())


def file_asset(path: Path) -> dict:
    """A FileAsset as the engine hands it to a provider: the program's path and the content's sha256."""
    return {standin.SIG: standin.ASSET_SIG, "path": str(path), "hash": hashlib.sha256(path.read_bytes()).hexdigest()}


def string_asset(text: str) -> dict:
    return {standin.SIG: standin.ASSET_SIG, "text": text, "hash": hashlib.sha256(text.encode()).hexdigest()}


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


def test_copy_a_new_source_hash_updates_the_same_hash_is_no_op_and_triggers_replace():
    base = {"connection": {"host": "127.0.0.1"}, "remotePath": "/usr/local/sbin/x", "source": string_asset("v1")}
    changed = diff(base, {**base, "source": string_asset("v2")}, COPY_URN)
    assert list(changed.diffs) == ["source"] and not changed.replaces
    assert changed.detailedDiff["source"].kind == provider_pb2.PropertyDiff.UPDATE

    # The engine compares assets by hash: the same bytes from another path are no change.
    moved = {**base["source"], "path": "elsewhere/x"}
    del moved["text"]
    assert diff(base, {**base, "source": moved}, COPY_URN).changes == provider_pb2.DiffResponse.DIFF_NONE

    triggered = diff({**base, "triggers": ["a"]}, {**base, "triggers": ["b"]}, COPY_URN)
    assert list(triggered.replaces) == ["triggers"]


def check(news: dict, urn: str = COPY_URN) -> provider_pb2.CheckResponse:
    return command.Command(None).Check(provider_pb2.CheckRequest(urn=urn, news=standin.to_struct(news)), Context())


def test_copy_check_takes_file_and_string_assets_and_a_file_archive_and_refuses_the_rest():
    inputs = {"connection": {"host": "127.0.0.1"}, "remotePath": "/tmp/x"}
    for source in (string_asset("x"), {standin.SIG: standin.ASSET_SIG, "path": "bin/x", "hash": "0" * 64},
                   {standin.SIG: standin.ARCHIVE_SIG, "path": "dir", "hash": "0" * 64}):
        response = check({**inputs, "source": source})
        assert not response.failures
        assert standin.to_dict(response.inputs)["connection"]["user"] == "root"  # defaults, as for Command
    for source, reason in (
            ({standin.SIG: standin.ASSET_SIG, "uri": "https://example.com/x"},
             "asset must be a path-based file asset or a text asset"),
            ({standin.SIG: standin.ARCHIVE_SIG, "assets": {}}, "archive must be a path to a file or directory"),
            (standin.UNKNOWN, "either asset or archive must be set")):  # as 1.2.1 (pulumi-command#1183)
        assert [(f.property, f.reason) for f in check({**inputs, "source": source}).failures] == [("source", reason)]


# ---- against a real sshd ----

@pytest.fixture(scope="module")
def host():
    with booted(ips=()) as test_host:
        yield test_host


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


# ---- CopyToRemote against a real sshd ----

PROVIDER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import command
from google.protobuf import json_format
from pulumi.runtime.proto import provider_pb2
class Aborted(Exception):
    pass
class Context:
    def abort(self, code, message):
        raise Aborted(message)
method, request = json.load(sys.stdin)
request = json_format.ParseDict(request, getattr(provider_pb2, method + "Request")())
try:
    print(json.dumps({"response": json_format.MessageToDict(getattr(command.Command(None), method)(request, Context()))}))
except Aborted as error:
    print(json.dumps({"error": str(error)}))
"""


def provider(host: TestHost, method: str, **request) -> dict:
    """One provider call (Create, Update, Delete) in a process inside the host's namespace."""
    result = subprocess.run(["ip", "netns", "exec", host.netns, sys.executable, "-c", PROVIDER, str(STANDINS)],
                            input=json.dumps([method, {"urn": COPY_URN, **request}]),
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout)


def upload(host: TestHost, source: dict, remote_path: str) -> dict:
    connection = {"host": "127.0.0.1", "privateKey": host.ssh_private_key, "dialErrorLimit": 2}
    return {"connection": connection, "source": source, "remotePath": remote_path}


def remote(host: TestHost, shell: str) -> str:
    return host.run(shell)[1].strip()


def test_a_file_asset_lands_byte_identical_parents_created_and_with_the_servers_default_mode(host, tmp_path):
    binary = tmp_path / "some-binary"
    binary.write_bytes(os.urandom(5 * 1024 * 1024))
    binary.chmod(0o755)
    inputs = upload(host, file_asset(binary), "/opt/copy-test/new/some-binary")
    created = provider(host, "Create", properties=inputs)["response"]
    assert created["id"] and created["properties"]["remotePath"] == inputs["remotePath"]
    assert standin.is_secret(created["properties"]["connection"])
    assert remote(host, "sha256sum /opt/copy-test/new/some-binary").split()[0] == inputs["source"]["hash"]
    # pulumi-command does not carry the mode over (Go's sftp.Create): the program must chmod.
    assert remote(host, "stat -c %a /opt/copy-test/new/some-binary") == "644"


def test_a_remote_path_that_is_a_directory_receives_the_file_inside_it(host, tmp_path):
    (tmp_path / "policy.conf").write_text("inside\n")
    host.run("mkdir -p /opt/copy-dir")
    assert "error" not in provider(host, "Create", properties=upload(host, file_asset(tmp_path / "policy.conf"),
                                                                     "/opt/copy-dir"))
    assert remote(host, "cat /opt/copy-dir/policy.conf") == "inside"
    refused = provider(host, "Create", properties=upload(host, string_asset("text"), "/opt/copy-dir"))
    assert "is a directory; when using a text asset, remotePath must be a file path" in refused["error"]


def test_an_update_uploads_again_only_for_a_new_hash_and_delete_leaves_the_file(host):
    path = "/opt/copy-update/file"
    first = upload(host, string_asset("one\n"), path)
    state = provider(host, "Create", properties=first)["response"]["properties"]
    assert remote(host, f"cat {path}") == "one"

    host.run(f"echo changed-on-the-host > {path}")
    provider(host, "Update", olds=state, news=first)  # the same hash: nothing uploaded
    assert remote(host, f"cat {path}") == "changed-on-the-host"

    second = upload(host, string_asset("two\n"), path)
    state = provider(host, "Update", olds=state, news=second)["response"]["properties"]
    assert remote(host, f"cat {path}") == "two"

    assert provider(host, "Delete", id="x", properties=state) == {"response": {}}
    assert remote(host, f"cat {path}") == "two"


def test_a_directory_archive_goes_under_its_name_and_with_a_trailing_slash_its_contents_go(host, tmp_path):
    (tmp_path / "conf" / "sub").mkdir(parents=True)
    (tmp_path / "conf" / "sub" / "a").write_text("a\n")
    archive = {standin.SIG: standin.ARCHIVE_SIG, "path": str(tmp_path / "conf"), "hash": "0" * 64}
    assert "error" not in provider(host, "Create", properties=upload(host, archive, "/opt/copy-archive"))
    assert "error" not in provider(host, "Create", properties=upload(host, {**archive, "path": f"{archive['path']}/"},
                                                                     "/opt/copy-contents"))
    assert remote(host, "cat /opt/copy-archive/conf/sub/a /opt/copy-contents/sub/a") == "a\na"
