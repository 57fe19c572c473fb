"""DkimSigner: the one OpenDKIM milter of a host, signing for every Postfix instance on it."""

from __future__ import annotations

from typing import Sequence

import pulumi
from pulumi_command import remote

from components.remote_step import remote_step
from mailfleet import remote_scripts
from mailfleet.config import Fleet


class DkimSigner(pulumi.ComponentResource):
    ready: remote.Command
    """The last step: OpenDKIM runs with this configuration."""

    def __init__(self, name: str, fleet: Fleet, private_keys: dict[str, pulumi.Output[str]],
                 connection: remote.ConnectionArgs, ssh_user: str, depends_on: Sequence[pulumi.Resource],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:DkimSigner", name, None, opts)
        by_record = {key.record_name: key for key in fleet.dkim}
        keys_script = pulumi.Output.all(**private_keys).apply(
            lambda pems: remote_scripts.dkim_keys({by_record[n]: pem for n, pem in pems.items()}))
        keys = remote_step(f"{name}-keys", connection, ssh_user, keys_script, secret=True,
                           delete_script=remote_scripts.dkim_keys_delete(),
                           parent=self, depends_on=depends_on)
        self.ready = remote_step(f"{name}-config", connection, ssh_user, remote_scripts.dkim_config(fleet),
                                 parent=self, depends_on=[keys])
        self.register_outputs({"selectors": sorted(by_record)})
