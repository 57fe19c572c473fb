"""The VM path: real cloud-init applies what the program gives vSphere, then the deploy runs on the guest.

A vSphere host config runs the real __main__.py under the suite's mocks. When the program registers
its VirtualMachine, the mock does what vSphere does with it: it "powers on" a cloud-init guest
(vmguest.py: Debian's cloud-init package in the test host's image, one interface named as the config
says) with the resource's own `extraConfig` handed to cloud-init's VMware datasource. The program's
steps then reach the guest as `pulumi up` does: SSH to the first instance IP as the VM user with the
generated key, sudo, network, preflight, packages, instances, signing. A changed `extraConfig`
(another address list) reaches the guest at its next boot, as a reconfigured VM; the provider does
not reboot it (`extraConfigRebootRequired` is false), so the program's network step must make the
change live. The module runs on Debian 12 and Debian 13, one guest each; the tests run in file order.
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
import yaml

from harness import run_program
from integration.real_mocks import plain
from integration.test_lifecycle import _quiet_about
from integration.test_apply import (DOMAINS, RELAY_CLIENT, SINK, StatefulMocks, file_states, listeners,
                                    master_pid, message, step_output, submit, verify_dkim, wait_for)
from integration.testhost import SUITES, TestHostUnavailable, skip_or_fail
from integration.vmguest import VmGuest
from mailfleet.render import VM_USER
from shape_mocks import ShapeMocks

pytestmark = pytest.mark.integration

VM = "mailvm"
VM_TYPE = "vsphere:index/virtualMachine:VirtualMachine"
INTERFACE, PREFIX, GATEWAY = "ens192", 24, "203.0.113.1"  # documentation addresses, in the test's namespace
NAMESERVERS = ["203.0.113.53", "203.0.113.54"]
FIRST = {"name": "postfix-43", "ip": "203.0.113.43", "hostname": "s43.mail.example.com"}
SECOND = {"name": "postfix-45", "ip": "203.0.113.45", "hostname": "s45.mail.example.com"}
ADDED = {"name": "postfix-47", "ip": "203.0.113.47", "hostname": "s47.mail.example.com"}
VSPHERE = {"datacenter": "DC1", "cluster": "Cluster1", "datastore": "datastore1", "network": "VM Network",
           "template": "debian-cloudinit"}

figures: dict[str, float] = {}


def fleet_config(instances, interface=INTERFACE) -> dict:
    """The stack config of one VM, as YAML would hold it."""
    return {
        "mailfleet:vsphere": VSPHERE,
        "mailfleet:hosts": [{"name": VM, "instances": instances, "network": {
            "interface": interface, "prefixLength": PREFIX, "gateway": GATEWAY, "nameservers": NAMESERVERS}}],
        "mailfleet:dkim": [{"domain": d, "selector": s} for d, s in DOMAINS.items()],
        "mailfleet:relayNetworks": ["198.51.100.0/24"],
        "mailfleet:relayhost": SINK,
        "mailfleet:mailName": "WebMAX",
    }


def config_for(instances, interface=INTERFACE) -> dict[str, str]:
    """The same as the SDK's mocks take it: structured values as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in fleet_config(instances, interface).items()}


class VsphereMocks(StatefulMocks):
    """StatefulMocks plus vSphere: the data sources answer like a template (shape_mocks), and the
    VirtualMachine powers the guest on with its extraConfig, or reconfigures it (no reboot)."""

    def __init__(self, guest: VmGuest, state: dict):
        super().__init__(guest.connect, state)
        self.guest = guest
        self.vm_inputs: dict | None = None

    def call(self, args):
        return ShapeMocks().call(args) if args.token.startswith("vsphere:") else super().call(args)

    def new_resource(self, args):
        if args.typ == VM_TYPE:
            self.vm_inputs = plain(args.inputs)
            extra_config = self.vm_inputs["extraConfig"]
            if self.guest.extra_config is None:
                started = time.monotonic()
                self.guest.power_on(extra_config)
                figures[f"{SUITES[self.guest.suite]} first boot to ssh s"] = round(time.monotonic() - started, 1)
            elif extra_config != self.guest.extra_config:
                assert self.vm_inputs["extraConfigRebootRequired"] is False  # the provider would reboot
                self.guest.set_extra_config(extra_config)
        return super().new_resource(args)


STATE: dict[str, dict] = {}


def apply(guest: VmGuest, instances, **kwargs):
    mocks = VsphereMocks(guest, STATE.setdefault(guest.suite, {}))
    started = time.monotonic()
    run = run_program(config_for(instances, **kwargs), mocks, stack="integration-vm")
    return run, mocks, time.monotonic() - started


def decoded(extra_config: dict[str, str], key: str) -> dict:
    assert extra_config[f"guestinfo.{key}.encoding"] == "base64"
    return yaml.safe_load(base64.b64decode(extra_config[f"guestinfo.{key}"]))


@pytest.fixture(scope="module")
def guest(suite):
    guest = VmGuest(INTERFACE, PREFIX, GATEWAY, NAMESERVERS, lo_ips=[RELAY_CLIENT], suite=suite)
    started = time.monotonic()
    try:
        guest.start()  # the namespace and the image; powered on by the program's VirtualMachine
    except TestHostUnavailable as error:
        skip_or_fail(f"no test guest: {error}")
    figures[f"{SUITES[suite]} image ready s"] = round(time.monotonic() - started, 1)
    try:
        yield guest
    finally:
        guest.stop()


@pytest.fixture(scope="module")
def deployed(guest):
    run, mocks, seconds = apply(guest, [FIRST, SECOND])
    figures[f"{SUITES[guest.suite]} first deploy (boot included) s"] = round(seconds, 1)
    return {"run": run, "mocks": mocks}


def addresses(guest: VmGuest) -> list[str]:
    out = guest.run(f"ip -4 -o addr show dev {INTERFACE}")[1]
    return sorted(line.split()[3] for line in out.splitlines())


# cloud-init 22.4 (Debian 12) warns whenever the default route's interface has several IPv4
# addresses, which is the point of a mailfleet VM; it only means that no single local-ipv4 is
# advertised back to vSphere. Later versions log it at debug level.
KNOWN_WARNINGS = re.compile(r"DataSourceVMware.py\[WARNING\]: device \S+ has more than one ipv4 address")


def cloud_init_warnings(guest: VmGuest) -> list[str]:
    log = guest.run("cat /var/log/cloud-init.log")[1]
    return [line for line in log.splitlines()
            if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line) and not KNOWN_WARNINGS.search(line)]


def boot_id(guest: VmGuest) -> str:
    return guest.run("cat /proc/sys/kernel/random/boot_id; stat -c %Y /proc/1")[1]


# ---- 1. first boot: cloud-init applied the guestinfo ----

def test_cloud_init_read_the_vms_guestinfo_through_the_vmware_datasource(guest, deployed):
    extra = deployed["mocks"].vm_inputs["extraConfig"]
    metadata, userdata = decoded(extra, "metadata"), decoded(extra, "userdata")
    environ = guest.run("tr '\\0' '\\n' </proc/1/environ")[1].splitlines()
    assert f"VMX_GUESTINFO_METADATA={extra['guestinfo.metadata']}" in environ
    rc, status, _ = guest.run("cloud-init status --long", check=False)
    version = guest.run("cloud-init --version 2>&1")[1].strip()
    print(f"{version}\n{status}")
    assert rc == 0 and re.search(r"^status: done$", status, re.M), status
    result = json.loads(guest.run("cat /run/cloud-init/result.json")[1])["v1"]
    assert result["datasource"].startswith("DataSourceVMware") and result["errors"] == [], result
    instance = json.loads(guest.run("cat /run/cloud-init/instance-data.json")[1])["v1"]
    assert instance["subplatform"] == "envvar (VMX_GUESTINFO_METADATA)"  # guestinfo, not a fallback
    assert instance["instance_id"] == metadata["instance-id"]
    assert instance["local_hostname"] == VM
    assert userdata["users"][0]["name"] == VM_USER
    assert cloud_init_warnings(guest) == []


def test_every_ip_on_the_named_interface_the_route_and_the_resolver(guest, deployed):
    assert addresses(guest) == sorted(f"{i['ip']}/{PREFIX}" for i in (FIRST, SECOND))
    assert guest.run(f"ip -4 -o addr show scope global | grep -v ' {INTERFACE} ' | grep -v ' lo '", check=False)[1] == ""
    route = guest.run("ip -4 route show default")[1].split()
    assert route[:5] == ["default", "via", GATEWAY, "dev", INTERFACE], route
    assert guest.run(f"ip -4 route get {GATEWAY}")[1].split()[:3] == [GATEWAY, "dev", INTERFACE]
    dns = guest.run(f"resolvectl dns {INTERFACE}")[1]
    assert all(ns in dns for ns in NAMESERVERS), dns
    resolv = guest.run("cat /run/systemd/resolve/resolv.conf")[1]
    assert all(f"nameserver {ns}" in resolv for ns in NAMESERVERS), resolv
    # cloud-init did it, not the program's network step, which found nothing to add.
    assert not re.search(r"^(added|removed) ", step_output(deployed["mocks"]), re.M)


def test_hostname_the_vm_user_its_key_sudo_and_no_passwords(guest, deployed):
    assert guest.run("hostname")[1].strip() == VM
    key = deployed["mocks"].state[("tls:index/privateKey:PrivateKey", "vm-ssh-key")][1][1]["publicKeyOpenssh"]
    authorized = guest.run(f"cat ~{VM_USER}/.ssh/authorized_keys")[1]
    assert key.strip() in authorized.splitlines()
    assert guest.run(f"runuser -u {VM_USER} -- sudo -n true", check=False)[0] == 0
    assert guest.run(f"passwd -S {VM_USER}")[1].split()[1] == "L"  # no usable password
    assert "passwordauthentication no" in guest.run("sshd -T")[1].splitlines()
    connections = {json.dumps(c["connection"], sort_keys=True) for c in deployed["mocks"].commands.values()}
    assert {(json.loads(c)["user"], json.loads(c)["host"]) for c in connections} == {(VM_USER, FIRST["ip"])}


# ---- 2. the deploy on the guest passes the existing-host checks ----

def test_each_instance_answers_and_sends_signed_mail_from_its_own_ip(guest, deployed):
    found = listeners(guest)
    dkim_records = deployed["run"].outputs["dkimRecords"]
    guest.clear_sink()
    for instance in (FIRST, SECOND):
        with guest.connect(instance["ip"], 25) as sock:
            banner = sock.recv(512).decode()
            sock.sendall(b"QUIT\r\n")
        assert banner.startswith(f"220 {instance['hostname']} ESMTP WebMAX"), banner
        assert found.get(f"{instance['ip']}:25") == {master_pid(guest, instance["name"])}
        subject = f"vm {instance['name']}"
        submit(guest, instance["ip"], message("news@example.com", subject))
        received = wait_for(guest, subject)
        assert verify_dkim(received["data"], dkim_records), subject
        assert received["peer"] == instance["ip"] and received["helo"] == instance["hostname"]


def test_reapply_changes_nothing_on_the_guest(guest, deployed):
    files = file_states(guest)
    boot = boot_id(guest)
    _, mocks, seconds = apply(guest, [FIRST, SECOND])
    figures[f"{SUITES[guest.suite]} re-apply s"] = round(seconds, 1)
    assert file_states(guest) == files and boot_id(guest) == boot
    output = step_output(mocks)
    assert not re.search(r"^(changed|created|installed|started|reloaded|restarted|enabled|removed|added) ",
                         output, re.M), output


# ---- 3. day 2: an IP added and removed without a reboot; a reboot keeps exactly the config ----

def test_an_added_ip_works_at_once_without_a_reboot(guest, deployed):
    boot, boots = boot_id(guest), len(guest.boots)
    started = time.monotonic()
    _, mocks, _ = apply(guest, [FIRST, SECOND, ADDED])
    figures[f"{SUITES[guest.suite]} add an IP s"] = round(time.monotonic() - started, 1)
    assert boot_id(guest) == boot and len(guest.boots) == boots  # the guest kept running
    assert f"added {ADDED['ip']}/{PREFIX} on {INTERFACE}" in step_output(mocks)
    assert addresses(guest) == sorted(f"{i['ip']}/{PREFIX}" for i in (FIRST, SECOND, ADDED))
    guest.clear_sink()
    submit(guest, ADDED["ip"], message("news@example.net", "from the added IP"))
    received = wait_for(guest, "from the added IP")
    assert received["peer"] == ADDED["ip"] and verify_dkim(received["data"], deployed["run"].outputs["dkimRecords"])
    # The next boot's guestinfo says the same, under a new instance id.
    metadata = decoded(mocks.vm_inputs["extraConfig"], "metadata")
    assert metadata["network"]["ethernets"][INTERFACE]["addresses"] == [
        f"{i['ip']}/{PREFIX}" for i in (FIRST, SECOND, ADDED)]


def reboot(guest: VmGuest, instances):
    started = time.monotonic()
    guest.restart()
    state = guest.run("systemctl is-system-running --wait", check=False, timeout=180)[1].strip()
    figures[f"{SUITES[guest.suite]} reboot s"] = round(time.monotonic() - started, 1)
    # Every unit's start job ended: none waits forever (an ordering cycle drops a job and leaves
    # what waits for it "starting"; seen with cloud-init's network stage).
    assert state in ("running", "degraded"), (state, guest.run("systemctl list-jobs --no-legend", check=False)[1])
    # Every instance is back by itself, on its address that cloud-init put back.
    found = listeners(guest)
    missing = [i["name"] for i in instances if f"{i['ip']}:25" not in found]
    assert not missing, (state, missing, guest.run("systemctl --failed --no-legend; journalctl -b --no-pager "
                                                   "-u 'postfix*' -u systemd-networkd | tail -n 60", check=False)[1])


def test_a_reboot_keeps_exactly_the_configured_addresses(guest, deployed):
    reboot(guest, [FIRST, SECOND, ADDED])
    assert addresses(guest) == sorted(f"{i['ip']}/{PREFIX}" for i in (FIRST, SECOND, ADDED))
    assert guest.run("ip -4 route show default")[1].split()[:3] == ["default", "via", GATEWAY]
    metadata = decoded(guest.extra_config, "metadata")
    assert guest.run("cat /var/lib/cloud/data/instance-id")[1].strip() == metadata["instance-id"]
    assert guest.run("cloud-init status --long", check=False)[0] == 0
    assert cloud_init_warnings(guest) == []
    found = listeners(guest)
    for instance in (FIRST, SECOND, ADDED):
        assert found.get(f"{instance['ip']}:25") == {master_pid(guest, instance["name"])}
    # Re-applying after the reboot changes nothing: cloud-init rendered what the step wrote.
    files = file_states(guest)
    _, mocks, _ = apply(guest, [FIRST, SECOND, ADDED])
    assert file_states(guest) == files
    assert not re.search(r"^(changed|added|removed|reloaded|restarted) ", step_output(mocks), re.M)


def test_a_removed_ip_is_gone_at_once_with_its_instance_and_after_a_reboot(guest, deployed):
    boot = boot_id(guest)
    _, mocks, _ = apply(guest, [FIRST, ADDED])
    # The engine deletes what left the program, dependents first: the instance, then its TLS file.
    # Until then its address stays: Postfix refuses an inet_interfaces address that is not there.
    assert f"kept {SECOND['ip']}/{PREFIX} on {INTERFACE} while /etc/{SECOND['name']}/main.cf uses it" \
        in step_output(mocks)
    removed = {name: inputs for name, inputs in deployed["mocks"].commands.items()}
    deleted = ""
    for name in (f"{SECOND['name']}-config", f"{SECOND['name']}-tls"):
        assert name not in mocks.commands
        rc, out, err = mocks.run_remote(removed[name]["connection"], removed[name]["delete"])
        assert rc == 0, err
        deleted += out
    assert boot_id(guest) == boot
    assert f"removed {SECOND['ip']}/{PREFIX} from {INTERFACE}" in deleted
    assert addresses(guest) == sorted(f"{i['ip']}/{PREFIX}" for i in (FIRST, ADDED))
    assert not any(a.startswith(f"{SECOND['ip']}:") for a in listeners(guest))
    assert SECOND["name"] not in guest.run("postmulti -l")[1]
    reboot(guest, [FIRST, ADDED])
    assert addresses(guest) == sorted(f"{i['ip']}/{PREFIX}" for i in (FIRST, ADDED))
    guest.clear_sink()
    submit(guest, ADDED["ip"], message("news@example.com", "after removing one"))
    assert wait_for(guest, "after removing one")["peer"] == ADDED["ip"]


# ---- 4. a template the VM path cannot use is refused before Postfix is touched ----

def test_a_wrong_interface_name_or_no_cloud_init_fails_before_postfix(guest, deployed):
    files = file_states(guest)
    with pytest.raises(Exception) as failed:
        apply(guest, [FIRST, ADDED], interface="ens224")
    _quiet_about(str(failed.value))
    assert f"VM {VM} has no interface ens224 (it has: lo {INTERFACE} )" in str(failed.value)
    assert "set network.interface to the template's NIC name" in str(failed.value)
    assert file_states(guest) == files
    guest.run("mv /usr/bin/cloud-init /usr/bin/cloud-init.hidden")
    try:
        with pytest.raises(Exception) as failed:
            apply(guest, [FIRST, ADDED])
    finally:
        guest.run("mv /usr/bin/cloud-init.hidden /usr/bin/cloud-init")
    _quiet_about(str(failed.value))
    assert f"VM {VM} has no cloud-init: the vSphere template must have cloud-init" in str(failed.value)
    assert file_states(guest) == files


def test_report_figures(guest, deployed):
    figures[f"{SUITES[guest.suite]} boots s"] = guest.boots
    print(json.dumps(figures, indent=1))
