"""VsphereVm: the VM of a host without an address, cloned from a cloud-init template.

vSphere's guest customization gives one IPv4 per NIC, so all the instance IPs go on one
interface through cloud-init instead: netplan v2 in guestinfo metadata, the deploy user and its
keys in guestinfo userdata.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_vsphere as vsphere

from mailfleet import render
from mailfleet.config import Host, Vsphere


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def guestinfo(metadata: str, userdata: str) -> dict[str, str]:
    return {
        "guestinfo.metadata": _b64(metadata),
        "guestinfo.metadata.encoding": "base64",
        "guestinfo.userdata": _b64(userdata),
        "guestinfo.userdata.encoding": "base64",
    }


@dataclass(frozen=True)
class VsphereVmArgs:
    host: Host
    """The host without an address: its name (also the VM's), `vm` sizing, `network` and instance IPs."""
    site: Vsphere
    """`mailfleet:vsphere`: where the VM goes and the cloud-init template it is cloned from."""
    authorized_keys: pulumi.Input[list[str]]
    """Public keys for the deploy user cloud-init creates: the program's own and people's."""


class VsphereVm(pulumi.ComponentResource):
    vm: vsphere.VirtualMachine

    def __init__(self, name: str, args: VsphereVmArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:VsphereVm", name, None, opts)
        host, site, authorized_keys = args.host, args.site, args.authorized_keys
        invoke = pulumi.InvokeOptions(parent=self)
        datacenter = vsphere.get_datacenter_output(name=site.datacenter, opts=invoke)
        dc_id = datacenter.id
        cluster = vsphere.get_compute_cluster_output(name=site.cluster, datacenter_id=dc_id, opts=invoke)
        datastore = vsphere.get_datastore_output(name=site.datastore, datacenter_id=dc_id, opts=invoke)
        network = vsphere.get_network_output(name=site.network, datacenter_id=dc_id, opts=invoke)
        template = vsphere.get_virtual_machine_output(name=site.template, datacenter_id=dc_id, opts=invoke)
        resource_pool_id = (
            vsphere.get_resource_pool_output(name=site.resource_pool, datacenter_id=dc_id, opts=invoke).id
            if site.resource_pool else cluster.resource_pool_id
        )
        metadata = render.cloud_init_metadata(host)
        extra_config = pulumi.Output.from_input(authorized_keys).apply(
            lambda keys: guestinfo(metadata, render.cloud_init_userdata(host, keys)))

        self.vm = vsphere.VirtualMachine(
            host.name,
            name=host.name,
            resource_pool_id=resource_pool_id,
            datastore_id=datastore.id,
            folder=site.folder,
            num_cpus=host.vm.cpus,
            memory=host.vm.memory_mb,
            guest_id=template.guest_id,
            scsi_type=template.scsi_type,
            firmware=template.firmware,
            network_interfaces=[vsphere.VirtualMachineNetworkInterfaceArgs(
                network_id=network.id,
                adapter_type=template.network_interface_types[0],
            )],
            disks=[vsphere.VirtualMachineDiskArgs(
                label="disk0",
                size=template.disks[0].size.apply(lambda size: max(size, host.vm.disk_gb)),
                thin_provisioned=template.disks[0].thin_provisioned,
            )],
            # No clone.customize: it would fight cloud-init over the network.
            clone=vsphere.VirtualMachineCloneArgs(template_uuid=template.id),
            extra_config=extra_config,
            # The network step applies a changed address list on the running guest; the new
            # guestinfo is for the next boot. The provider's default would reboot the VM for it.
            extra_config_reboot_required=False,
            wait_for_guest_net_timeout=10,
            opts=pulumi.ResourceOptions(
                parent=self,
                # The provider reports these as changed on every refresh of a cloned VM.
                ignore_changes=["eptRviMode", "hvMode"],
            ),
        )
        self.register_outputs({"vmId": self.vm.id, "defaultIpAddress": self.vm.default_ip_address})
