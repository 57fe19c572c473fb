"""Stand-in for pulumi-resource-command 1.2.1: `command:remote:Command` over real SSH (paramiko).

The Go module proxy refuses github.com/pulumi/pulumi-command/provider at every version, so the real
provider cannot be built here (toolchain/SOURCES.md). This stand-in does what mailfleet relies on,
with pulumi-command's documented behaviour. It is NOT the real provider (README, "Toolchain"):
- inputs: connection (host, port=22, user=root, privateKey, privateKeyPassword, password,
  dialErrorLimit=10, perDialTimeout=15, hostKey), create, update, delete, stdin, environment,
  triggers, addPreviousOutputInEnv, logging; outputs: the inputs echoed, plus stdout and stderr
  (one trailing newline trimmed); a secret input stays secret in its echo, `connection` always is;
- diff: a change of `triggers` replaces, any other changed input updates, no change is no op;
- create runs `create`; update runs `update`, or `create` again when `update` is unset; delete runs
  `delete` with the old inputs; a command gets `stdin` on its standard input;
- `environment` is sent as SSH "env" requests and a refused one fails the command
  (`could not set environment variable "X": ssh: setenv failed`, as 1.2.x); the previous stdout and
  stderr go as PULUMI_COMMAND_STDOUT/STDERR, and a refusal of those only warns;
- a failed command fails the step with `Process exited with status N: running "...":` and its output;
- the output is logged to the engine against the resource, as `logging` says (default both).
CopyToRemote and local:Command are not implemented (mailfleet does not use them).
"""

from __future__ import annotations

import io
import json
import secrets
import sys
import threading
import time

import grpc
import paramiko
from cryptography.hazmat.primitives import serialization
from google.protobuf import empty_pb2
from paramiko.common import cMSG_CHANNEL_REQUEST
from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc, provider_pb2

import standin

VERSION = "1.2.1"  # the version the pulumi-command Python package asks the engine for
TYPE = "command:remote:Command"
CONNECTION_DEFAULTS = {"user": "root", "port": 22, "dialErrorLimit": 10, "perDialTimeout": 15}
OUTPUTS = ("stdout", "stderr")


class CommandFailed(Exception):
    pass


# ---- SSH ----

def _paramiko_key(text: str, password: str | None) -> paramiko.PKey:
    """Any OpenSSH or PEM private key, re-encoded as OpenSSH (which every paramiko key class reads)."""
    data, pw = text.encode(), password.encode() if password else None
    key = (serialization.load_ssh_private_key(data, pw) if b"OPENSSH PRIVATE KEY" in data
           else serialization.load_pem_private_key(data, pw))
    openssh = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    for cls in (paramiko.Ed25519Key, paramiko.RSAKey, paramiko.ECDSAKey):
        try:
            return cls.from_private_key(io.StringIO(openssh))
        except (paramiko.SSHException, ValueError):
            continue
    raise CommandFailed("connection.privateKey: unsupported key type")


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """No hostKey: accept any (pulumi-command's default); a hostKey: accept only that one."""

    def __init__(self, expected: str | None):
        self.expected = expected.split()[:2] if expected else None

    def missing_host_key(self, client, hostname, key):
        if self.expected and [key.get_name(), key.get_base64()] != self.expected:
            raise paramiko.SSHException(f"ssh: host key mismatch for {hostname}")


def dial(connection: dict) -> paramiko.SSHClient:
    """Connect, retrying like pulumi-command: dialErrorLimit failed dials allowed (-1: no limit)."""
    c = {**CONNECTION_DEFAULTS, **connection}
    limit, timeout = int(c["dialErrorLimit"]), int(c["perDialTimeout"])
    pkey = _paramiko_key(c["privateKey"], c.get("privateKeyPassword")) if c.get("privateKey") else None
    failures = 0
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_HostKeyPolicy(c.get("hostKey")))
        try:
            client.connect(c["host"], int(c["port"]), username=c["user"], pkey=pkey, password=c.get("password"),
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           look_for_keys=False, allow_agent=bool(c.get("agentSocketPath")))
            return client
        except (OSError, paramiko.SSHException) as error:
            client.close()
            failures += 1
            if limit >= 0 and failures > limit:
                raise CommandFailed(f"Dial: failed {failures} times: {error}") from None
            time.sleep(min(0.5 * failures, 5))


def _setenv(channel: paramiko.Channel, name: str, value: str) -> None:
    """An SSH "env" request that waits for sshd's answer, as Go's Session.Setenv does (paramiko's
    own update_environment does not ask for one, so a refusal would pass unseen)."""
    message = paramiko.Message()
    message.add_byte(cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("env")
    message.add_boolean(True)
    message.add_string(name)
    message.add_string(value)
    channel._event_pending()
    channel.transport._send_user_message(message)
    try:
        channel._wait_for_event()
    except paramiko.SSHException:
        raise CommandFailed(f"could not set environment variable {json.dumps(name)}: ssh: setenv failed") from None


def _session(client: paramiko.SSHClient, environment: dict) -> paramiko.Channel:
    channel = client.get_transport().open_session()
    for name, value in environment.items():
        _setenv(channel, name, value)
    return channel


def run(state: dict, command: str, log) -> dict:
    """Run `command` with the state's connection, environment and stdin; returns stdout and stderr."""
    environment = state.get("environment") or {}
    with dial(state["connection"]) as client:
        channel = _session(client, environment)
        previous = {name: state[key] for name, key in (("PULUMI_COMMAND_STDOUT", "stdout"),
                                                       ("PULUMI_COMMAND_STDERR", "stderr")) if state.get(key)}
        if state.get("addPreviousOutputInEnv", True) and previous:
            try:
                for name, value in previous.items():
                    _setenv(channel, name, value)
            except CommandFailed as error:  # pulumi-command only warns for these
                log(engine_pb2.WARNING, f"{error} (sshd's AcceptEnv refuses it): the command runs without "
                                        "PULUMI_COMMAND_STDOUT/STDERR")
                # paramiko closes a channel whose request was refused (Go's ssh does not): a new one.
                channel.close()
                channel = _session(client, environment)
        channel.exec_command(command)
        stderr: list[bytes] = []
        # Drain stderr beside stdout so that neither can fill its window and stall the other.
        reader = threading.Thread(target=lambda: stderr.append(channel.makefile_stderr("rb").read()))
        reader.start()
        try:
            if state.get("stdin"):
                channel.sendall(state["stdin"].encode())
            channel.shutdown_write()
        except OSError:
            pass  # the command exited without reading all its stdin: its status tells
        stdout = channel.makefile("rb").read().decode(errors="replace")
        reader.join()
        status = channel.recv_exit_status()
    err = stderr[0].decode(errors="replace")
    logging = state.get("logging") or "stdoutAndStderr"
    shown = (stdout if logging in ("stdout", "stdoutAndStderr") else "") + \
        (err if logging in ("stderr", "stdoutAndStderr") else "")
    if shown.strip():
        log(engine_pb2.INFO, shown.rstrip("\n"))
    if status != 0:
        raise CommandFailed(f"Process exited with status {status}: running {json.dumps(command)}:\n{stdout}{err}")
    return {"stdout": stdout.removesuffix("\n"), "stderr": err.removesuffix("\n")}


# ---- the provider ----

class Command(standin.Servicer):
    name = "command"
    version = VERSION

    def __init__(self, engine_address: str | None):
        super().__init__()
        self.engine = engine_pb2_grpc.EngineStub(grpc.insecure_channel(engine_address)) if engine_address else None

    def _logger(self, urn: str):
        def log(severity, message: str) -> None:
            if self.engine:
                self.engine.Log(engine_pb2.LogRequest(severity=severity, message=message, urn=urn))
        return log

    def _check_type(self, urn: str, context) -> None:
        type_token = urn.split("::")[2].split("$")[-1]
        if type_token != TYPE:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"stand-in command has no resource {type_token}")

    def Check(self, request, context):
        self._check_type(request.urn, context)
        news = standin.to_dict(request.news)
        connection = news.get("connection")
        inner = connection["value"] if standin.is_secret(connection) else connection
        if isinstance(inner, dict):  # the defaults, inside any secret wrapper (not into an unknown)
            filled = {**CONNECTION_DEFAULTS, **inner}
            news["connection"] = standin.secret(filled) if standin.is_secret(connection) else filled
        return provider_pb2.CheckResponse(inputs=standin.to_struct(news))

    def Diff(self, request, context):
        news = standin.to_dict(request.news)
        olds = standin.to_dict(request.old_inputs) if request.HasField("old_inputs") else standin.to_dict(request.olds)
        keys = (set(news) | set(olds)) - set(OUTPUTS) - set(request.ignoreChanges)
        changed = sorted(k for k in keys if standin.plain(news.get(k)) != standin.plain(olds.get(k)))
        if not changed:
            return provider_pb2.DiffResponse(changes=provider_pb2.DiffResponse.DIFF_NONE)
        replaces = [k for k in changed if k == "triggers"]

        def kind(key: str):
            if key not in olds:
                return provider_pb2.PropertyDiff.ADD_REPLACE if key in replaces else provider_pb2.PropertyDiff.ADD
            if key not in news:
                return provider_pb2.PropertyDiff.DELETE_REPLACE if key in replaces else provider_pb2.PropertyDiff.DELETE
            return provider_pb2.PropertyDiff.UPDATE_REPLACE if key in replaces else provider_pb2.PropertyDiff.UPDATE

        detailed = {k: provider_pb2.PropertyDiff(kind=kind(k), inputDiff=True) for k in changed}
        return provider_pb2.DiffResponse(changes=provider_pb2.DiffResponse.DIFF_SOME, replaces=replaces,
                                         diffs=changed, detailedDiff=detailed, hasDetailedDiff=True)

    @staticmethod
    def _echo(inputs: dict, outputs: dict) -> dict:
        """The state: the inputs as they came (secret ones stay wrapped), `connection` always secret."""
        state = {k: v for k, v in inputs.items() if k not in OUTPUTS}
        if "connection" in state and not standin.is_secret(state["connection"]):
            state["connection"] = standin.secret(state["connection"])
        return {**state, **outputs}

    def _run(self, urn: str, state: dict, command: str | None, context) -> dict:
        if not command:
            return {"stdout": state.get("stdout", ""), "stderr": state.get("stderr", "")}
        try:
            return run(standin.plain(state), command, self._logger(urn))
        except (CommandFailed, paramiko.SSHException, OSError) as error:
            context.abort(grpc.StatusCode.UNKNOWN, str(error) or repr(error))

    def Create(self, request, context):
        self._check_type(request.urn, context)
        inputs = standin.to_dict(request.properties)
        resource_id = request.urn.rsplit("::", 1)[1] + secrets.token_hex(4)
        if request.preview:
            return provider_pb2.CreateResponse(id=resource_id, properties=standin.to_struct(
                self._echo(inputs, {k: standin.UNKNOWN for k in OUTPUTS})))
        outputs = self._run(request.urn, {**inputs, "stdout": "", "stderr": ""}, standin.plain(inputs.get("create")),
                            context)
        return provider_pb2.CreateResponse(id=resource_id, properties=standin.to_struct(self._echo(inputs, outputs)))

    def Update(self, request, context):
        news, olds = standin.to_dict(request.news), standin.to_dict(request.olds)
        previous = {k: olds.get(k, "") for k in OUTPUTS}
        if request.preview:
            return provider_pb2.UpdateResponse(properties=standin.to_struct(self._echo(news, previous)))
        command = standin.plain(news.get("update")) or standin.plain(news.get("create"))
        outputs = self._run(request.urn, {**news, **previous}, command, context)
        return provider_pb2.UpdateResponse(properties=standin.to_struct(self._echo(news, outputs)))

    def Delete(self, request, context):
        state = standin.to_dict(request.properties)  # the old inputs and outputs
        self._run(request.urn, state, standin.plain(state.get("delete")), context)
        return empty_pb2.Empty()


if __name__ == "__main__":
    # The engine starts a plugin with its own address as the last argument (after any flags).
    standin.serve(Command(next((a for a in reversed(sys.argv[1:]) if not a.startswith("-")), None)))
