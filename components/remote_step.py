"""One remote step: a pulumi-command `remote.Command` that runs a mailfleet script as root.

Not a component itself: every component builds its steps with `remote_step` so they share the
same runner, the same secrecy rules and the same retry settings.
"""

from __future__ import annotations

from typing import Sequence

import pulumi
from pulumi_command import remote

from mailfleet import remote_scripts


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
    out of the process list and the state, and `create` runs again whenever the text changes."""
    return remote.Command(
        name,
        connection=connection,
        create=remote_scripts.runner(ssh_user),
        stdin=pulumi.Output.secret(script) if secret else script,
        delete=remote_scripts.inline_command(delete_script, ssh_user) if delete_script else None,
        # No script reads PULUMI_COMMAND_STDOUT/STDERR. pulumi-command 1.2 sends a step's previous
        # output in them by SSH setenv, which stock sshd (AcceptEnv LANG LC_*) refuses, and then
        # warns on every update and delete: a warning nobody can act on.
        add_previous_output_in_env=False,
        # Listing stdin keeps the copy the provider echoes back encrypted in the state too, and
        # is the only secret mark a policy pack can see.
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on),
                                    additional_secret_outputs=["stdin"] if secret else None),
    )
