"""ManagedFiles: the files mailfleet installed on one host, as Pulumi sees them (drift).

A remote step (pulumi-command's remote.Command) runs again only when its script changes, so an
edit made on the host is invisible to Pulumi. This dynamic resource reads the host: its `read`
(`pulumi refresh`, `pulumi up --refresh`) reports every managed file that differs from what its
step installed, by path, and its `update` (the next `pulumi up`) runs the steps that installed
those files again: they put them back and reload what uses them, as on any apply.

The host keeps what each step installed in /var/lib/mailfleet/checksums (remote_lib.sh), keyed by
the step's name: checksums, owners and modes, never contents. The outputs are the drift (paths and
what differs) and the connection (secret); the inputs also carry the steps' scripts to run again,
the secret ones encrypted as the steps' own stdin is.

Why a dynamic resource and not `triggers` on the steps: a changed `triggers` replaces a
remote.Command, and a replaced step runs its delete (an instance's stops and destroys it).
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import paramiko
import pulumi
import pulumi.dynamic
from pulumi_command import remote

from components.remote_step import Step
from mailfleet import drift, remote_scripts
from mailfleet.ssh_keys import paramiko_key


@dataclass(frozen=True)
class ManagedFilesArgs:
    host_name: str
    """The host's name in the config, as the messages name it."""
    connection: remote.ConnectionArgs
    """The steps' own SSH connection (host, port, user, private key)."""
    steps: Sequence[Step]
    """Every step on the host, in the order they run: the files they record are watched."""


class ManagedFiles(pulumi.dynamic.Resource, module="mailfleet", name="ManagedFiles"):
    drift: pulumi.Output[dict[str, str]]
    """Path -> what differs from what its step installed; empty after an apply."""

    def __init__(self, name: str, args: ManagedFilesArgs, opts: pulumi.ResourceOptions | None = None):
        connection = args.connection
        props = {
            "host": args.host_name,
            # Secret as a whole, as pulumi-command keeps its connection.
            "connection": pulumi.Output.secret({"host": connection.host, "port": connection.port or 22,
                                                "user": connection.user, "privateKey": connection.private_key}),
            "stepNames": [step.name for step in args.steps],
            # The scripts (secret where the step's is) are what `update` runs again; they stay out of
            # the outputs, and the library, two thirds of each, out of the state.
            "steps": [pulumi.Output.from_input(step.script).apply(remote_scripts.without_library)
                      for step in args.steps],
            "drift": None,
        }
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            depends_on=[step.command for step in args.steps],
            # What the policy pack reads as secret: the key and the secret steps' scripts.
            additional_secret_outputs=["connection", "steps"]))
        super().__init__(_Provider(), name, props, opts)


class _Provider(pulumi.dynamic.ResourceProvider):
    # It captures no secret (the key arrives as an input), so its code need not be encrypted.
    serialize_as_secret_always = False
    dial: Callable[[str, int], socket.socket] | None = None
    """How to reach host:port; tests set it to open the socket inside the test host's namespace."""

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        connection = props["connection"]
        return pulumi.dynamic.CreateResult(f"{connection['host']}:{int(connection['port'])}", self._converge(props))

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        found = self._drift(props["connection"], props["stepNames"])
        # The CLI shows what a provider prints among the diagnostics, so that `pulumi refresh`
        # names each file, not only "~ updated" (`--diff` shows the `drift` output as well).
        for d in found:
            _say(f"{props['host']}: {d.path}: {d.what}; `pulumi up` puts it back")
        return pulumi.dynamic.ReadResult(id_, {**props, "drift": {d.path: d.what for d in found}})

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        # A changed script is its own step's business; what matters here is drift that a refresh
        # found, or which steps (and host) are watched.
        changes = (bool(olds.get("drift")) or olds.get("stepNames") != news.get("stepNames")
                   or olds.get("connection") != news.get("connection") or olds.get("host") != news.get("host"))
        return pulumi.dynamic.DiffResult(changes=changes, replaces=[], delete_before_replace=False)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        return pulumi.dynamic.UpdateResult(self._converge(news))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        pass  # the steps' own deletes clean the host

    def _converge(self, props: dict[str, Any]) -> dict[str, Any]:
        """Run again the steps whose files drifted (in the order they run), then read again."""
        connection, names = props["connection"], props["stepNames"]
        found = self._drift(connection, names)
        if found:
            owners = {d.step for d in found}
            for name, script in zip(names, props["steps"]):
                if name not in owners:
                    continue
                paths = ", ".join(d.path for d in found if d.step == name)
                status, out, err = self._run(connection, remote_scripts.with_library(script))
                if status != 0:
                    raise RuntimeError(f"step {name} failed while putting back {paths}:\n{out}{err}")
                _say(f"{props['host']}: ran step {name} again to put back {paths}")
            left = self._drift(connection, names)
            if left:
                raise RuntimeError("still not as installed after running their steps again: "
                                   + "; ".join(f"{d.path}: {d.what}" for d in left))
        return {"host": props["host"], "connection": connection, "stepNames": names, "drift": {}}

    def _drift(self, connection: dict[str, Any], names: list[str]) -> list[drift.Drift]:
        status, out, err = self._run(connection, remote_scripts.checksum_report())
        if status != 0:
            raise RuntimeError(f"could not read the checksums on {connection['host']}: {err or out}")
        return drift.drift(out, names)

    def _run(self, connection: dict[str, Any], script: str) -> tuple[int, str, str]:
        """Run a script as root over SSH, as the steps do (the runner, the script on stdin):
        (exit status, stdout, stderr)."""
        host, port, user = connection["host"], int(connection["port"]), connection["user"]
        with self._ssh(host, port, user, connection["privateKey"]) as client:
            channel = client.get_transport().open_session()
            channel.exec_command(remote_scripts.runner(user))
            err: list[bytes] = []
            # stderr drains beside stdout, so that neither can fill its window and stall the other.
            reader = threading.Thread(target=lambda: err.append(channel.makefile_stderr("rb").read()))
            reader.start()
            channel.sendall(script.encode())
            channel.shutdown_write()
            out = channel.makefile("rb").read()
            reader.join()
            return channel.recv_exit_status(), out.decode(errors="replace"), err[0].decode(errors="replace")

    def _ssh(self, host: str, port: int, user: str, private_key: str, attempts: int = 5) -> paramiko.SSHClient:
        key = paramiko_key(private_key)
        for attempt in range(1, attempts + 1):
            client = paramiko.SSHClient()
            # As the steps' connection: pulumi-command checks no host key unless one is given.
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                client.connect(host, port, username=user, pkey=key, timeout=15, banner_timeout=15,
                               auth_timeout=15, look_for_keys=False, allow_agent=False,
                               sock=self.dial(host, port) if self.dial else None)
                return client
            except (OSError, paramiko.SSHException) as error:
                client.close()
                if attempt == attempts:
                    raise RuntimeError(f"could not reach {user}@{host}:{port} over SSH: {error}") from None
                time.sleep(attempt)
        raise AssertionError("unreachable")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
