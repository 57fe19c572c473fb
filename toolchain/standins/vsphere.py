"""Stand-in for pulumi-resource-vsphere: an in-memory vCenter for `pulumi preview`/`up` of a stack
that creates VMs. Not the real provider: nothing is cloned.

The data sources answer any name with stable ids made from it; a VirtualMachine exists only in the
stack's state and reports the IPv4 addresses its cloud-init network metadata (guestinfo.metadata)
gives it, as a booted VM's VMware Tools would. With MAILFLEET_STANDIN_VSPHERE_GUESTS set to a
directory (the tests' cloud-init guest, tests/integration/vmguest.py), creating a VirtualMachine
also hands its extraConfig to a real guest: it is written to DIR/NAME.json, and the create waits
for DIR/NAME.on, which whoever boots the guest with it writes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path

import standin

VERSION = "4.18.2"


def _id(kind: str, *parts: str) -> str:
    return f"{kind}-" + hashlib.sha1("/".join(parts).encode()).hexdigest()[:8]


def _need(args: dict, key: str) -> str:
    if not args.get(key):
        raise LookupError(f"stand-in vsphere: {key} is required")
    return args[key]


def get_datacenter(args: dict) -> dict:
    name = args.get("name") or "Datacenter"
    return {"id": _id("datacenter", name), "name": name}


def get_compute_cluster(args: dict) -> dict:
    name = _need(args, "name")
    cluster = _id("domain-c", args.get("datacenterId", ""), name)
    return {"id": cluster, "name": name, "datacenterId": args.get("datacenterId"),
            "resourcePoolId": _id("resgroup", cluster)}


def get_datastore(args: dict) -> dict:
    name = _need(args, "name")
    return {"id": _id("datastore", args.get("datacenterId", ""), name), "name": name,
            "datacenterId": args.get("datacenterId"), "stats": {}}


def get_network(args: dict) -> dict:
    name = _need(args, "name")
    return {"id": _id("network", args.get("datacenterId", ""), name), "name": name,
            "datacenterId": args.get("datacenterId"), "type": "Network"}


def get_resource_pool(args: dict) -> dict:
    name = _need(args, "name")
    return {"id": _id("resgroup", args.get("datacenterId", ""), name), "name": name}


def get_virtual_machine(args: dict) -> dict:
    """A cloud-init template: one vmxnet3 NIC and a 20 GB thin disk."""
    name = _need(args, "name")
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"vsphere-template/{args.get('datacenterId')}/{name}")),
        "name": name, "datacenterId": args.get("datacenterId"),
        "guestId": "ubuntu64Guest", "scsiType": "pvscsi", "firmware": "efi",
        "networkInterfaceTypes": ["vmxnet3"],
        "disks": [{"label": "disk0", "size": 20, "thinProvisioned": True, "eagerlyScrub": False, "unitNumber": 0}],
        "numCpus": 2, "memory": 2048,
    }


def _metadata_ips(extra_config: dict) -> list[str]:
    data = extra_config.get("guestinfo.metadata", "")
    encoding = extra_config.get("guestinfo.metadata.encoding", "")
    text = base64.b64decode(data) if "base64" in encoding else data.encode()
    if "gzip" in encoding:
        text = gzip.decompress(text)
    return re.findall(r"\b(\d{1,3}(?:\.\d{1,3}){3})/\d{1,2}\b", text.decode())


GUESTS = "MAILFLEET_STANDIN_VSPHERE_GUESTS"
POWER_ON_TIMEOUT = 600  # seconds: a first boot runs cloud-init before anything answers


def _power_on(name: str, extra_config: dict):
    directory = os.environ.get(GUESTS)
    if not directory:
        return
    path, on = Path(directory) / f"{name}.json", Path(directory) / f"{name}.on"
    on.unlink(missing_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(extra_config))
    partial.rename(path)
    deadline = time.monotonic() + POWER_ON_TIMEOUT
    while not on.exists():
        if time.monotonic() > deadline:
            raise ValueError(f"stand-in vsphere: VM {name} was not powered on within {POWER_ON_TIMEOUT} s")
        time.sleep(0.5)


class VirtualMachine(standin.Resource):
    defaults = {"waitForGuestNetTimeout": 5}
    outputs = ("uuid", "moid", "defaultIpAddress", "guestIpAddresses", "powerState", "vmwareToolsStatus")

    def compute(self, inputs: dict) -> dict:
        _power_on(inputs.get("name") or "vm", inputs.get("extraConfig") or {})
        ips = _metadata_ips(inputs.get("extraConfig") or {})
        vm_uuid = str(uuid.uuid4())
        return {"uuid": vm_uuid, "moid": _id("vm", vm_uuid), "defaultIpAddress": ips[0] if ips else "",
                "guestIpAddresses": ips, "powerState": "on", "vmwareToolsStatus": "guestToolsRunning"}

    def make_id(self, inputs: dict, outputs: dict) -> str:
        return outputs["uuid"]


class Vsphere(standin.Servicer):
    name = "vsphere"
    version = VERSION
    resources = {"vsphere:index/virtualMachine:VirtualMachine": VirtualMachine()}
    functions = {
        "vsphere:index/getDatacenter:getDatacenter": get_datacenter,
        "vsphere:index/getComputeCluster:getComputeCluster": get_compute_cluster,
        "vsphere:index/getDatastore:getDatastore": get_datastore,
        "vsphere:index/getNetwork:getNetwork": get_network,
        "vsphere:index/getResourcePool:getResourcePool": get_resource_pool,
        "vsphere:index/getVirtualMachine:getVirtualMachine": get_virtual_machine,
    }


if __name__ == "__main__":
    standin.serve(Vsphere())
