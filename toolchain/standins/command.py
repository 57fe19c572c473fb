"""Stand-in for pulumi-resource-command 1.2.1: `command:remote:Command` and `command:remote:CopyToRemote`
over real SSH (paramiko).

The Go module proxy refuses github.com/pulumi/pulumi-command/provider at every version, so the real
provider cannot be built here (toolchain/SOURCES.md). This stand-in does what mailfleet relies on,
with pulumi-command's documented behaviour. It is NOT the real provider (docs/toolchain.md):
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
CopyToRemote (pulumi-command's remote/copy.go and copyController.go at v1.2.1; the program no
longer uploads anything, but stacks deployed with mailfleet-signer hold a `HOST-opendkim-binary`
CopyToRemote that the engine deletes on their next `pulumi up`):
- inputs: connection, source, remotePath, triggers; outputs: the inputs echoed, `connection` secret;
- source: a FileAsset, a StringAsset or a FileArchive (a path); Check refuses any other, and an
  unknown source too (as 1.2.1 does: fixed after it, pulumi-command#1184); a relative path is the
  program directory's (the engine starts the plugin there);
- diff: a change of `triggers` replaces, any other changed input updates; an asset or archive
  compares by the hash the engine computed (sha256 of the content), not by its path;
- create uploads over SFTP; update uploads again only when the source's hash or remotePath changed
  (a changed connection alone uploads nothing); delete does nothing: the remote file stays;
- upload: a file into an existing directory lands inside it under its own name, else at remotePath
  (an existing file is overwritten, missing parents created); a directory `d` goes to remotePath/d,
  `d/` (trailing slash) into remotePath; a StringAsset needs a file path. The mode is not carried
  over: a new file gets sftp-server's default (0666 less the umask), an overwritten one keeps its own.
local:Command and CopyFile are not implemented (mailfleet does not use them).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import secrets
import stat
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
COMMAND, COPY = "command:remote:Command", "command:remote:CopyToRemote"
CONNECTION_DEFAULTS = {"user": "root", "port": 22, "dialErrorLimit": 10, "perDialTimeout": 15}
OUTPUTS = ("stdout", "stderr")


class CommandFailed(Exception):
    pass


# ---- SSH ----

def paramiko_key(text: str, password: str | None) -> paramiko.PKey:
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
    pkey = paramiko_key(c["privateKey"], c.get("privateKeyPassword")) if c.get("privateKey") else None
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


def setenv(channel: paramiko.Channel, name: str, value: str) -> None:
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
        setenv(channel, name, value)
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
                    setenv(channel, name, value)
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


# ---- CopyToRemote ----

def source_problem(source) -> str | None:
    """Why pulumi-command 1.2.1's Check refuses this `source` (its reasons), or None."""
    if isinstance(source, dict) and source.get(standin.SIG) == standin.ASSET_SIG:
        return None if "path" in source or "text" in source else \
            "asset must be a path-based file asset or a text asset"
    if isinstance(source, dict) and source.get(standin.SIG) == standin.ARCHIVE_SIG:
        return None if "path" in source else "archive must be a path to a file or directory"
    return "either asset or archive must be set"


def _by_hash(value):
    """The value with each asset or archive reduced to its hash, which is how the engine compares them."""
    if isinstance(value, dict):
        if value.get(standin.SIG) in (standin.ASSET_SIG, standin.ARCHIVE_SIG):
            return ("asset or archive", value.get("hash"))
        return {k: _by_hash(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_hash(v) for v in value]
    return value


def _remote_stat(sftp: paramiko.SFTPClient, path: str):
    """The remote path's attributes, or None when it does not exist."""
    try:
        return sftp.stat(path)
    except FileNotFoundError:
        return None


def _is_dir(attributes) -> bool:
    return attributes is not None and stat.S_ISDIR(attributes.st_mode)


def _mkdir_all(sftp: paramiko.SFTPClient, path: str) -> None:
    attributes = _remote_stat(sftp, path)
    if attributes is not None:
        if not _is_dir(attributes):
            raise CommandFailed(f"remote path {path} exists but is not a directory")
        return
    parent = posixpath.dirname(path.rstrip("/"))
    if parent and parent != path:
        _mkdir_all(sftp, parent)
    sftp.mkdir(path)


def _parents(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        _mkdir_all(sftp, posixpath.dirname(path) or ".")
    except (CommandFailed, OSError) as error:
        raise CommandFailed(f"failed to create parent directories for {path}: {error}") from None


def _copy_file(sftp: paramiko.SFTPClient, local: str, remote: str) -> None:
    """One file's bytes; a new remote file gets the server's default mode (no chmod, as Go's sftp.Create)."""
    try:
        with open(local, "rb") as source:
            sftp.putfo(source, remote, confirm=True)
    except OSError as error:
        raise CommandFailed(f"failed to copy file {local} to remote path {remote}: {error}") from None


def _copy_dir(sftp: paramiko.SFTPClient, local: str, remote: str) -> None:
    for directory, _, files in os.walk(local):
        relative = os.path.relpath(directory, local)
        target = remote if relative == "." else posixpath.join(remote, relative)
        attributes = _remote_stat(sftp, target)
        if attributes is None:
            sftp.mkdir(target)
        elif not _is_dir(attributes):
            raise CommandFailed(f"remote path {target} exists but is not a directory")
        for name in sorted(files):
            _copy_file(sftp, os.path.join(directory, name), posixpath.join(target, name))


def copy(state: dict) -> None:
    """Upload `source` to `remotePath` over SFTP, as pulumi-command 1.2.1's copyToRemote does."""
    source, dest = state["source"], state["remotePath"]
    with dial(state["connection"]) as client, client.open_sftp() as sftp:
        attributes = _remote_stat(sftp, dest)
        if "text" in source:  # a StringAsset
            if _is_dir(attributes):
                raise CommandFailed(f"remote path {dest} is a directory; when using a text asset, "
                                    "remotePath must be a file path")
            _parents(sftp, dest)
            with sftp.open(dest, "wb") as remote:
                remote.write(source["text"].encode())
        elif os.path.isdir(source["path"]):  # a FileArchive of a directory
            local = source["path"]
            if attributes is None:
                _mkdir_all(sftp, dest)
            if not local.endswith("/"):  # `d` goes to dest/d, `d/` into dest
                dest = posixpath.join(dest, os.path.basename(local))
                inner = _remote_stat(sftp, dest)
                if inner is not None and not _is_dir(inner):
                    raise CommandFailed(f"remote path {dest} exists but is not a directory")
                if inner is None:
                    sftp.mkdir(dest)
            _copy_dir(sftp, local, dest)
        else:  # a FileAsset, or a FileArchive of a file (copied as it is, not unpacked)
            if _is_dir(attributes):
                dest = posixpath.join(dest, os.path.basename(source["path"]))
            elif attributes is None:
                _parents(sftp, dest)
            _copy_file(sftp, source["path"], dest)


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

    def _type(self, urn: str, context) -> str:
        type_token = urn.split("::")[2].split("$")[-1]
        if type_token not in (COMMAND, COPY):
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"stand-in command has no resource {type_token}")
        return type_token

    def Check(self, request, context):
        news = standin.to_dict(request.news)
        connection = news.get("connection")
        inner = connection["value"] if standin.is_secret(connection) else connection
        if isinstance(inner, dict):  # the defaults, inside any secret wrapper (not into an unknown)
            filled = {**CONNECTION_DEFAULTS, **inner}
            news["connection"] = standin.secret(filled) if standin.is_secret(connection) else filled
        failures = []
        if self._type(request.urn, context) == COPY:
            problem = source_problem(standin.plain(news.get("source")))
            if problem:
                failures.append(provider_pb2.CheckFailure(property="source", reason=problem))
        return provider_pb2.CheckResponse(inputs=standin.to_struct(news), failures=failures)

    def Diff(self, request, context):
        news = standin.to_dict(request.news)
        olds = standin.to_dict(request.old_inputs) if request.HasField("old_inputs") else standin.to_dict(request.olds)
        keys = (set(news) | set(olds)) - set(OUTPUTS) - set(request.ignoreChanges)
        changed = sorted(k for k in keys
                         if _by_hash(standin.plain(news.get(k))) != _by_hash(standin.plain(olds.get(k))))
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

    def _copy(self, state: dict, context) -> None:
        try:
            copy(standin.plain(state))
        except (CommandFailed, paramiko.SSHException, OSError) as error:
            context.abort(grpc.StatusCode.UNKNOWN, str(error) or repr(error))

    def Create(self, request, context):
        inputs = standin.to_dict(request.properties)
        if self._type(request.urn, context) == COPY:
            if request.preview:  # the real provider's preview id is empty too
                return provider_pb2.CreateResponse(id="", properties=standin.to_struct(self._echo(inputs, {})))
            self._copy(inputs, context)
            return provider_pb2.CreateResponse(id=secrets.token_hex(4),
                                               properties=standin.to_struct(self._echo(inputs, {})))
        resource_id = request.urn.rsplit("::", 1)[1] + secrets.token_hex(4)
        if request.preview:
            return provider_pb2.CreateResponse(id=resource_id, properties=standin.to_struct(
                self._echo(inputs, {k: standin.UNKNOWN for k in OUTPUTS})))
        outputs = self._run(request.urn, {**inputs, "stdout": "", "stderr": ""}, standin.plain(inputs.get("create")),
                            context)
        return provider_pb2.CreateResponse(id=resource_id, properties=standin.to_struct(self._echo(inputs, outputs)))

    def Update(self, request, context):
        news, olds = standin.to_dict(request.news), standin.to_dict(request.olds)
        if self._type(request.urn, context) == COPY:
            new, old = standin.plain(news), standin.plain(olds)
            moved = new["remotePath"] != old.get("remotePath")
            if not request.preview and (moved or _by_hash(new["source"]) != _by_hash(old.get("source"))):
                self._copy(news, context)
            return provider_pb2.UpdateResponse(properties=standin.to_struct(self._echo(news, {})))
        previous = {k: olds.get(k, "") for k in OUTPUTS}
        if request.preview:
            return provider_pb2.UpdateResponse(properties=standin.to_struct(self._echo(news, previous)))
        command = standin.plain(news.get("update")) or standin.plain(news.get("create"))
        outputs = self._run(request.urn, {**news, **previous}, command, context)
        return provider_pb2.UpdateResponse(properties=standin.to_struct(self._echo(news, outputs)))

    def Delete(self, request, context):
        if self._type(request.urn, context) == COPY:
            return empty_pb2.Empty()  # as pulumi-command: the uploaded file stays on the host
        state = standin.to_dict(request.properties)  # the old inputs and outputs
        self._run(request.urn, state, standin.plain(state.get("delete")), context)
        return empty_pb2.Empty()


if __name__ == "__main__":
    # The engine starts a plugin with its own address as the last argument (after any flags).
    standin.serve(Command(next((a for a in reversed(sys.argv[1:]) if not a.startswith("-")), None)))
