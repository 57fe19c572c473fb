"""PostfixInstance: one independent sender, a postmulti instance bound to one IP and hostname."""

from __future__ import annotations

from typing import Sequence

import pulumi
from pulumi_command import remote

from components.remote_step import remote_step
from mailfleet import remote_scripts
from mailfleet.config import Fleet, Instance


class PostfixInstance(pulumi.ComponentResource):
    ip: str
    hostname: str

    def __init__(self, fleet: Fleet, instance: Instance, tls_bundle: pulumi.Output[str],
                 connection: remote.ConnectionArgs, ssh_user: str, depends_on: Sequence[pulumi.Resource],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:PostfixInstance", instance.name, None, opts)
        name = instance.name
        tls_step = remote_step(
            f"{name}-tls", connection, ssh_user,
            tls_bundle.apply(lambda pem: remote_scripts.instance_tls(instance, pem)), secret=True,
            delete_script=remote_scripts.instance_tls_delete(instance),
            parent=self, depends_on=depends_on)
        # Removing the instance from the config runs this step's delete: stop, disable, destroy.
        self.config = remote_step(
            f"{name}-config", connection, ssh_user, remote_scripts.instance_config(fleet, instance),
            delete_script=remote_scripts.instance_delete(instance),
            parent=self, depends_on=[tls_step])
        self.ip, self.hostname = instance.ip, instance.hostname
        self.register_outputs({"ip": instance.ip, "hostname": instance.hostname})
