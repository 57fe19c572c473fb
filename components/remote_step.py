"""One remote step: a pulumi-command `remote.Command` that runs a mailfleet script as root.

Not a component itself: every component builds its steps with `remote_step` so they share the
same runner, the same secrecy rules and the same retry settings, and so that every step on a host,
whichever component builds it, is watched for drift (`steps_on`, components/managed_files.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pulumi
from pulumi_command import remote

from mailfleet import remote_scripts


@dataclass(frozen=True)
class Step:
    name: str
    script: pulumi.Input[str]
    """The script as the step runs it (secret when the step's is)."""
    command: remote.Command


# Connection (one per host) -> its steps, in the order they were built, which is an order they can
# run in: a step only ever depends on steps built before it.
_steps: dict[int, tuple[remote.ConnectionArgs, list[Step]]] = {}


def steps_on(connection: remote.ConnectionArgs) -> list[Step]:
    return list(_steps.get(id(connection), (connection, []))[1])


def remote_step(
    name: str,
    connection: remote.ConnectionArgs,
    ssh_user: str,
    script: pulumi.Input[str],
    *,
    parent: pulumi.Resource,
    depends_on: Sequence[pulumi.Resource] = (),
    delete_script: str | None = None,
    secret: bool = False,
) -> remote.Command:
    """The script goes in as stdin: a preview shows the text that changes, a secret script stays
    out of the process list and the state, and `create` runs again whenever the text changes. The
    script names its step, under which the host records the files it installs."""
    script = pulumi.Output.from_input(script).apply(lambda text: remote_scripts.for_step(name, text))
    if secret:
        script = pulumi.Output.secret(script)
    command = remote.Command(
        name,
        connection=connection,
        create=remote_scripts.runner(ssh_user),
        stdin=script,
        delete=(remote_scripts.inline_command(remote_scripts.for_step(name, delete_script), ssh_user)
                if delete_script else None),
        # No script reads PULUMI_COMMAND_STDOUT/STDERR. pulumi-command 1.2 sends a step's previous
        # output in them by SSH setenv, which stock sshd (AcceptEnv LANG LC_*) refuses, and then
        # warns on every update and delete: a warning nobody can act on.
        add_previous_output_in_env=False,
        # Listing stdin keeps the copy the provider echoes back encrypted in the state too, and
        # is the only secret mark a policy pack can see.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on),
                                    additional_secret_outputs=["stdin"] if secret else None),
    )
    # The connection object is kept with its steps, so that its id is never reused.
    _steps.setdefault(id(connection), (connection, []))[1].append(Step(name, script, command))
    return command
