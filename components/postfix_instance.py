"""PostfixInstance: one independent sender, a postmulti instance bound to one IP and hostname."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pulumi
from pulumi_command import remote

from components.remote_step import remote_step
from mailfleet import remote_scripts
from mailfleet.config import Instance


@dataclass(frozen=True)
class PostfixInstanceArgs:
    instance: Instance
    """The instance: its name (postfix-NAME), the IP it binds and the hostname it speaks as."""
    config_script: str
    """Its config step (remote_scripts.instance_config): what the fleet's settings make of its files."""
    tls_bundle: pulumi.Output[str]
    """Its private key, certificate and chain, PEM (secret), from TlsCertificates."""
    connection: remote.ConnectionArgs
    """How to reach the host over SSH."""
    ssh_user: str
    """The SSH user, root or one that runs the steps through sudo."""
    after: Sequence[pulumi.Resource] = ()
    """The steps that must be done on the host first (the default instance, the signer, the tenants'
    credentials)."""


class PostfixInstance(pulumi.ComponentResource):
    ip: str
    hostname: str

    def __init__(self, name: str, args: PostfixInstanceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:PostfixInstance", name, None, opts)
        instance, connection, ssh_user = args.instance, args.connection, args.ssh_user
        tls_step = remote_step(
            f"{name}-tls", connection, ssh_user,
            args.tls_bundle.apply(lambda pem: remote_scripts.instance_tls(instance, pem)), secret=True,
            delete_script=remote_scripts.instance_tls_delete(instance),
            parent=self, depends_on=args.after)
        # Removing the instance from the config runs this step's delete: stop, disable, destroy.
        self.config = remote_step(
            f"{name}-config", connection, ssh_user, args.config_script,
            delete_script=remote_scripts.instance_delete(instance),
            parent=self, depends_on=[tls_step])
        self.ip, self.hostname = instance.ip, instance.hostname
        self.register_outputs({"ip": instance.ip, "hostname": instance.hostname})
