"""MailHost: one server and everything on it, in order.

preflight -> packages -> default Postfix instance and the DKIM signer (OpenDKIM) -> one
PostfixInstance per IP -> the one-time retirement of mailfleet-signer (a no-op where it never
ran). A host without an address is first created as a vSphere VM (VsphereVm, a child).
"""

from __future__ import annotations

import pulumi
from pulumi_command import remote

from components.dkim_signer import DkimSigner, DkimSignerArgs
from components.postfix_instance import PostfixInstance
from components.remote_step import remote_step
from components.vsphere_vm import VsphereVm
from mailfleet import remote_scripts, signing
from mailfleet.config import Fleet, Host
from mailfleet.render import VM_USER, mynetworks


class MailHost(pulumi.ComponentResource):
    instances: dict[str, PostfixInstance]

    def __init__(self, host: Host, fleet: Fleet, *, ssh_private_key: pulumi.Output[str],
                 dkim_private_keys: dict[str, pulumi.Output[str]], tls_bundles: dict[str, pulumi.Output[str]],
                 vm_authorized_keys: pulumi.Input[list[str]] | None = None,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:MailHost", host.name, None, opts)
        first_steps_after: list[pulumi.Resource] = []
        if host.existing:
            address, ssh_user, port = host.address, host.ssh_user, host.ssh_port
        else:
            vm = VsphereVm(host, fleet.vsphere, vm_authorized_keys, opts=pulumi.ResourceOptions(parent=self))
            first_steps_after = [vm]
            # The first instance IP is known before the VM exists, unlike default_ip_address,
            # which may be any of the VM's addresses.
            address, ssh_user, port = host.instances[0].ip, VM_USER, 22
        connection = remote.ConnectionArgs(
            host=address, port=port, user=ssh_user, private_key=ssh_private_key,
            # A new VM boots and runs cloud-init before sshd answers.
            dial_error_limit=30 if not host.existing else 10,
        )

        def step(name: str, script: str, after: list[pulumi.Resource]) -> remote.Command:
            return remote_step(f"{host.name}-{name}", connection, ssh_user, script, parent=self, depends_on=after)

        preflight = step("preflight", remote_scripts.preflight(host), first_steps_after)
        packages = step("packages", remote_scripts.packages(), [preflight])
        default_instance = step("postfix-default", remote_scripts.default_instance(fleet, host), [packages])
        signer = DkimSigner(f"{host.name}-opendkim", DkimSignerArgs(
            keys=list(fleet.dkim), private_keys=dkim_private_keys, networks=mynetworks(fleet),
            connection=connection, ssh_user=ssh_user), opts=pulumi.ResourceOptions(parent=self, depends_on=[packages]))
        self.instances = {
            instance.name: PostfixInstance(
                fleet, instance, tls_bundles[instance.name], connection, ssh_user,
                depends_on=[default_instance, signer.ready], opts=pulumi.ResourceOptions(parent=self))
            for instance in host.instances
        }
        # Once, on a host that mailfleet-signer signed for: it goes when no instance names it any more.
        step("retire-mailfleet-signer", signing.migrate_signer_step(ssh_user),
             [instance.config for instance in self.instances.values()])
        self.register_outputs({"address": address, "instances": sorted(self.instances)})
