"""The VM path under the real engine: `pulumi up` of a vSphere host config with the toolchain's CLI.

The stand-in vSphere provider (toolchain/standins/vsphere.py) hands each VirtualMachine's
`extraConfig` to the test's cloud-init guest (tests/integration/vmguest.py, Debian 12) through a
directory: the fixture below boots the guest with it, as vSphere powers a clone on, and the create
returns. pulumi-command then reaches the guest as the VM user at its first instance IP; the CLI runs
inside the guest's network namespace.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from engine.test_engine import Pulumi, build_toolchain, copy_project, figures
from integration.test_apply import message, submit, verify_dkim, wait_for
from integration.test_vm_guest import (FIRST, GATEWAY, INTERFACE, NAMESERVERS, PREFIX, RELAY_CLIENT, SECOND, VM,
                                       addresses, cloud_init_warnings, fleet_config)
from integration.testhost import TestHostUnavailable, skip_or_fail
from integration.vmguest import VmGuest

pytestmark = pytest.mark.engine

STACK = "engine-vm"
GUESTS = "MAILFLEET_STANDIN_VSPHERE_GUESTS"  # toolchain/standins/vsphere.py


def power_on_when_asked(guest: VmGuest, directory: Path, stop: threading.Event):
    """vSphere's part: the VM named VM boots with the extraConfig the provider was given."""
    request, on = directory / f"{VM}.json", directory / f"{VM}.on"
    while not stop.is_set():
        if request.exists() and not on.exists():
            guest.power_on(json.loads(request.read_text()))
            on.touch()
        time.sleep(0.5)


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    guest = VmGuest(INTERFACE, PREFIX, GATEWAY, NAMESERVERS, lo_ips=[RELAY_CLIENT])
    try:
        guest.start()
    except TestHostUnavailable as error:
        skip_or_fail(f"no test guest: {error}")
    directory = tmp_path_factory.mktemp("vsphere-guests")
    stop = threading.Event()
    watcher = threading.Thread(target=power_on_when_asked, args=(guest, directory, stop), daemon=True)
    watcher.start()
    try:
        yield guest, directory
    finally:
        stop.set()
        watcher.join(timeout=60)
        guest.stop()


@pytest.fixture(scope="module")
def pulumi(guest, tmp_path_factory) -> Pulumi:
    test_guest, directory = guest
    cli = Pulumi(build_toolchain(), copy_project(tmp_path_factory.mktemp("engine-vm")), test_guest.netns)
    cli.env[GUESTS] = str(directory)
    cli("login", f"file://{cli.project.parent / 'state'}")
    cli("stack", "init", STACK, "--secrets-provider", "passphrase")
    cli.write_config(fleet_config([FIRST, SECOND]), stack=STACK)
    return cli


def test_up_creates_the_vm_through_cloud_init_and_deploys_on_it(guest, pulumi):
    test_guest, _ = guest
    started = time.monotonic()
    result = pulumi("up", "--yes", "--skip-preview", stack=STACK, check=False)
    figures["vm: pulumi up s"] = round(time.monotonic() - started, 1)
    if result.returncode != 0:
        seen = test_guest.run("ip -4 addr; cloud-init status --long; systemctl --failed --no-legend",
                              check=False)[1] if test_guest.extra_config else "the guest was never powered on"
        pytest.fail(f"pulumi up failed:\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}\nguest:\n{seen}\n"
                    f"{test_guest.console_log()[-2000:] if test_guest.workdir else ''}")
    outputs = json.loads(pulumi("stack", "output", "--json", "--show-secrets", stack=STACK).stdout)
    assert test_guest.run("cloud-init status --long", check=False)[0] == 0
    assert cloud_init_warnings(test_guest) == []
    assert addresses(test_guest) == sorted(f"{i['ip']}/{PREFIX}" for i in (FIRST, SECOND))
    assert test_guest.run("hostname")[1].strip() == VM
    test_guest.clear_sink()
    for instance in (FIRST, SECOND):
        subject = f"engine vm {instance['name']}"
        submit(test_guest, instance["ip"], message("news@example.com", subject))
        received = wait_for(test_guest, subject)
        assert received["peer"] == instance["ip"] and verify_dkim(received["data"], outputs["dkimRecords"])
    # The second `up` finds nothing to change, the VM included.
    result = pulumi("preview", "--expect-no-changes", stack=STACK, check=False)
    assert result.returncode == 0, result.stdout[-3000:]
    print(json.dumps(figures, indent=1))
