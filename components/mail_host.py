"""MailHost: one server and everything on it, in order.

preflight -> packages -> default Postfix instance, the DKIM signer (OpenDKIM), the tenants'
credentials (Dovecot), the shaping map, warm-up and the delivery log (and its webhook) -> one PostfixInstance per IP ->
the one-time retirement of mailfleet-signer (a no-op where it never ran) and the metrics endpoints,
and last ManagedFiles, which watches what all of
them installed for drift. A host without an address is first created as a vSphere VM (VsphereVm,
a child), and its network step (cloud-init's result, the instance IPs on its
interface) runs before preflight.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.dkim_signer import DkimSigner, DkimSignerArgs
from components.managed_files import ManagedFiles, ManagedFilesArgs
from components.postfix_instance import PostfixInstance, PostfixInstanceArgs
from components.remote_step import remote_step, steps_on
from components.vsphere_vm import VsphereVm, VsphereVmArgs
from mailfleet import metrics, remote_scripts, signing
from mailfleet.config import Fleet, Host
from mailfleet.render import VM_USER, mynetworks


@dataclass(frozen=True)
class MailHostArgs:
    host: Host
    """The host: its address (or VM), SSH user and port, and its instances."""
    fleet: Fleet
    """The settings every host shares: they render the default instance, the signer and each
    instance's files, and give the vSphere site of a host without an address."""
    ssh_private_key: pulumi.Output[str]
    """The key that reaches the host (secret): `mailfleet:sshPrivateKey`, or the VMs' generated one."""
    dkim_private_keys: dict[str, pulumi.Output[str]]
    """Record name -> DKIM private key PEM (secret), from DkimKeys."""
    tls_bundles: dict[str, pulumi.Output[str]]
    """Instance name -> key, certificate and chain PEM (secret), from TlsCertificates."""
    vm_authorized_keys: pulumi.Input[list[str]] | None = None
    """Public keys for a created VM's deploy user; None for a host with an address."""


class MailHost(pulumi.ComponentResource):
    instances: dict[str, PostfixInstance]

    def __init__(self, name: str, args: MailHostArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:MailHost", name, None, opts)
        host, fleet = args.host, args.fleet
        first_steps_after: list[pulumi.Resource] = []
        if host.existing:
            address, ssh_user, port = host.address, host.ssh_user, host.ssh_port
        else:
            vm = VsphereVm(host.name, VsphereVmArgs(host=host, site=fleet.vsphere,
                                                    authorized_keys=args.vm_authorized_keys),
                           opts=pulumi.ResourceOptions(parent=self))
            first_steps_after = [vm]
            # The first instance IP is known before the VM exists, unlike default_ip_address,
            # which may be any of the VM's addresses.
            address, ssh_user, port = host.instances[0].ip, VM_USER, 22
        connection = remote.ConnectionArgs(
            host=address, port=port, user=ssh_user, private_key=args.ssh_private_key,
            # A new VM boots and runs cloud-init before sshd answers.
            dial_error_limit=30 if not host.existing else 10,
        )

        def step(step_name: str, script: str, after: list[pulumi.Resource]) -> remote.Command:
            return remote_step(f"{name}-{step_name}", connection, ssh_user, script, parent=self, depends_on=after)

        if not host.existing:
            # cloud-init's result checked, and the addresses converged live: a VM takes a new or
            # removed IP without a reboot (its guestinfo carries the same for the next boot).
            first_steps_after = [step("network", remote_scripts.network(host), first_steps_after)]
        preflight = step("preflight", remote_scripts.preflight(host), first_steps_after)
        packages = step("packages", remote_scripts.packages(), [preflight])
        default_instance = step("postfix-default", remote_scripts.default_instance(fleet, host), [packages])
        signer = DkimSigner(f"{name}-opendkim", DkimSignerArgs(
            keys=list(fleet.dkim), private_keys=args.dkim_private_keys, networks=mynetworks(fleet),
            by_envelope=bool(fleet.tenants), connection=connection, ssh_user=ssh_user, after=[packages]),
            opts=pulumi.ResourceOptions(parent=self))
        # Secret when it carries tenants' password hashes. After the default instance (postmap reads
        # /etc/postfix/main.cf) and before the instances, whose 587 and 465 ask its Dovecot; deleted
        # after them.
        tenants = remote_step(f"{name}-tenants", connection, ssh_user,
                              remote_scripts.tenant_credentials(fleet, host), secret=bool(fleet.tenants),
                              delete_script=remote_scripts.tenant_credentials_delete(),
                              parent=self, depends_on=[default_instance])
        # Before the instances, whose transport_maps ask it; removed after them.
        shaping_map = remote_step(f"{name}-shaping-map", connection, ssh_user, remote_scripts.shaping_map(fleet),
                                  delete_script=remote_scripts.shaping_map_delete(), parent=self, depends_on=[packages])
        # Before the instances, whose smtpd asks it; removed after them (releasing what it held).
        warmup = remote_step(f"{name}-warmup", connection, ssh_user, remote_scripts.warmup(fleet, host),
                             delete_script=remote_scripts.warmup_delete(), parent=self, depends_on=[shaping_map])
        # The delivery log reads the journal only: it needs no instance, and no instance waits for it.
        deliveries = remote_step(f"{name}-deliveries", connection, ssh_user, remote_scripts.deliveries(fleet, host),
                                 delete_script=remote_scripts.deliveries_delete(), parent=self, depends_on=[packages])
        # After the delivery log, whose file it reads; nothing waits for it. Secret when its
        # settings carry the signing secret.
        webhook = fleet.delivery_webhook
        remote_step(f"{name}-webhook", connection, ssh_user, remote_scripts.webhook(fleet), parent=self,
                    secret=bool(webhook and webhook.secret), delete_script=remote_scripts.webhook_delete(),
                    depends_on=[deliveries])
        self.instances = {
            instance.name: PostfixInstance(instance.name, PostfixInstanceArgs(
                instance=instance, config_script=remote_scripts.instance_config(fleet, instance),
                tls_bundle=args.tls_bundles[instance.name], connection=connection, ssh_user=ssh_user,
                after=[default_instance, signer.ready, tenants, shaping_map, warmup]), opts=pulumi.ResourceOptions(parent=self))
            for instance in host.instances
        }
        # Once, on a host that mailfleet-signer signed for: it goes when no instance names it any more.
        step("retire-mailfleet-signer", signing.migrate_signer_step(ssh_user),
             [instance.config for instance in self.instances.values()])
        # Once the instances run (each exporter reads its instance's queue) and the delivery log
        # exists (mtail reads a file that appears later from its end). Removed before them.
        remote_step(f"{name}-metrics", connection, ssh_user,
                    metrics.step(host, fleet.metrics_networks, fleet.dkim),
                    delete_script=metrics.delete_step(), parent=self,
                    depends_on=[deliveries, *(instance.config for instance in self.instances.values())])
        ManagedFiles(f"{name}-managed-files", ManagedFilesArgs(
            host_name=host.name, connection=connection, steps=steps_on(connection)),
            opts=pulumi.ResourceOptions(parent=self))
        self.register_outputs({"address": address, "instances": sorted(self.instances)})
