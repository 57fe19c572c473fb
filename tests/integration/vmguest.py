"""A cloud-init VM guest for integration tests: the test host's Debian image with Debian's cloud-init,
booted with the guestinfo that the program gives vSphere.

`VmGuest(...).start()` makes the network namespace (as TestHost does) with one more interface in it,
`interface` (e.g. ens192): one end of a veth pair whose other end, in a small "gateway" namespace of
its own, carries the gateway and the nameserver addresses. Nothing is configured on `interface`: the guest's cloud-init
must do that. `power_on(extra_config)` then boots the image with the VirtualMachine's `extraConfig`
handed to cloud-init's VMware datasource through its container transport: each `guestinfo.KEY`
becomes the environment variable `VMX_GUESTINFO_KEY` (dots to underscores, upper case; cloud-init's
`get_guestinfo_envvar_key_name`) and `VMX_GUESTINFO=1`, set on the container's PID 1 with nspawn's
`--setenv`. cloud-init then runs its real VMware code path: decode, metadata, network config, user
data. `set_extra_config` changes what the next boot sees, as a reconfiguration of the VM does;
`restart()` reboots.

Two things differ from a VM and are the image's, not the program's:
- systemd gives services a clean environment, so the image's cloud-init units carry
  `PassEnvironment=` for the `VMX_GUESTINFO*` variables (the datasource reads them from its own
  environment);
- cloud-init's generator (ds-identify) runs without PID 1's environment either, and cannot detect
  VMware in a container (it looks for `vmware-rpctool` on a VMware hypervisor), so the image names
  the datasource: `datasource_list: [VMware]`, as a vSphere template may.
The test keeps root SSH access with its own key (for assertions only); the program reaches the
guest as the VM user that cloud-init creates from the user data.

Per suite the guest renders the network with what Debian's cloud-init picks on such an image:
Debian 12 (no ifupdown, no netplan) cloud-init's own systemd-networkd renderer; Debian 13 netplan
(netplan.io, as Debian 13's cloud images) on systemd-networkd. systemd-resolved holds the DNS
servers. The image is cached beside the test host's, as SUITE-vIMAGE_VERSION-cloudinitVM_IMAGE_VERSION.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import paramiko

from integration import testhost
from integration.testhost import NSPAWN, TAR, TestHost, TestHostUnavailable, _run, _write

VM_IMAGE_VERSION = "2"  # bump whenever the recipe below changes
# Debian 13 cloud images render with netplan; Debian 12 ones with what is there (networkd here).
# sudo: cloud-init recommends it, and the VM user reaches root through it.
VM_PACKAGES = {"bookworm": ["cloud-init", "sudo", "systemd-resolved"],
               "trixie": ["cloud-init", "sudo", "systemd-resolved", "netplan.io"]}
GUESTINFO_ENV = ["VMX_GUESTINFO"] + [f"VMX_GUESTINFO_{key}" for key in (
    "METADATA", "METADATA_ENCODING", "USERDATA", "USERDATA_ENCODING", "VENDORDATA", "VENDORDATA_ENCODING")]
# Every unit that runs a cloud-init stage, across versions (24.4 and later run the stages in
# cloud-init-main; 24.3 renamed cloud-init.service to cloud-init-network.service).
CLOUD_INIT_UNITS = ["cloud-init-main", "cloud-init-local", "cloud-init", "cloud-init-network",
                    "cloud-config", "cloud-final"]


def guestinfo_environment(extra_config: dict[str, str]) -> dict[str, str]:
    """The VMware datasource's container transport for a VM's guestinfo extraConfig."""
    env = {"VMX_GUESTINFO": "1"}
    for key, value in extra_config.items():
        if key.startswith("guestinfo."):
            env[("vmx." + key).upper().replace(".", "_")] = value
    return env


def _configure_guest(rootfs: Path, suite: str):
    _write(rootfs / "etc/cloud/cloud.cfg.d/90-mailfleet-testhost.cfg",
           "# The test guest is a container: ds-identify cannot detect VMware here (see vmguest.py).\n"
           "datasource_list: [ VMware ]\n")
    for unit in CLOUD_INIT_UNITS:
        dropin = rootfs / f"etc/systemd/system/{unit}.service.d"
        dropin.mkdir(parents=True, exist_ok=True)
        _write(dropin / "mailfleet-testhost-guestinfo.conf",
               "# The VMware datasource's container transport: PID 1's VMX_GUESTINFO* variables.\n"
               f"[Service]\nPassEnvironment={' '.join(GUESTINFO_ENV)}\n")
    # A template that allows password logins, so that the user data's `ssh_pwauth: false` shows.
    _write(rootfs / "etc/ssh/sshd_config.d/mailfleet-testhost.conf", "PermitRootLogin prohibit-password\n")
    config = (rootfs / "etc/ssh/sshd_config").read_text()
    _write(rootfs / "etc/ssh/sshd_config", config + "PasswordAuthentication yes\n")
    resolv = rootfs / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")


def _build_vm_image(tarball: Path, base: Path, suite: str):
    build_dir = Path(tempfile.mkdtemp(prefix="build-", dir=tarball.parent))
    rootfs = build_dir / "rootfs"
    rootfs.mkdir()
    # Online for the install: the host's resolver copied in (the image's own points at loopback).
    in_rootfs = [*NSPAWN, "--setenv=DEBIAN_FRONTEND=noninteractive", "--resolv-conf=replace-host",
                 "-D", rootfs, "--"]
    try:
        _run([*TAR, "-C", rootfs, "-xf", base])
        packages = list(VM_PACKAGES[suite])
        probe = "apt-cache show systemd-networkd >/dev/null 2>&1 && echo networkd-split || true"
        if "networkd-split" in _run([*in_rootfs, "sh", "-c", probe], timeout=120).split():
            packages.append("systemd-networkd")  # a package of its own from Debian 13 on
        # No apt-get clean: the mail packages stay cached for the program's offline install.
        _run([*in_rootfs, "apt-get", "install", "-y", "--no-install-recommends", *packages], timeout=900)
        _run([*in_rootfs, "systemctl", "enable", "systemd-networkd", "systemd-resolved"])
        _configure_guest(rootfs, suite)
        partial = tarball.with_suffix(".partial")
        _run([*TAR, "-C", rootfs, "-cf", partial, "."])
        partial.rename(tarball)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        output = (getattr(error, "output", None) or "")[-3000:]
        raise TestHostUnavailable(f"building the cloud-init guest image failed: {error}\n{output}") from error
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


def ensure_vm_image(suite: str) -> Path:
    """The cached cloud-init guest image of a suite, built from the test host's image if needed."""
    base = testhost.ensure_image(suite)
    # Named after the base image too: a new test host image makes a new guest image.
    tarball = base.parent / base.name.replace(".tar.zst", f"-cloudinit{VM_IMAGE_VERSION}.tar.zst")
    with open(base.parent / "build.lock", "w") as lock:
        testhost.wait_for_lock(lock)
        if not tarball.exists():
            _build_vm_image(tarball, base, suite)
    return tarball


class VmGuest(TestHost):
    """A TestHost booted from the cloud-init image with guestinfo, on a named interface."""

    __test__ = False

    def __init__(self, interface: str, prefix_length: int, gateway: str, nameservers=(), lo_ips=(),
                 suite=testhost.SUITE):
        super().__init__(ips=lo_ips, suite=suite)
        self.interface, self.prefix_length, self.gateway = interface, prefix_length, gateway
        self.nameservers = list(nameservers)
        self.extra_config: dict[str, str] | None = None
        self.gateway_netns = None
        self.boots: list[float] = []  # seconds from power-on to SSH, per boot

    def _image(self):
        return ensure_vm_image(self.suite)

    def _create_netns(self):
        super()._create_netns()
        name = f"{self.netns}gw"
        _run(["ip", "netns", "add", name], timeout=30)
        self.gateway_netns = name
        _run(["ip", "-n", self.netns, "link", "add", self.interface, "type", "veth", "peer", "name", "gw0",
              "netns", name], timeout=30)
        _run(["ip", "-n", name, "addr", "add", f"{self.gateway}/{self.prefix_length}", "dev", "gw0"], timeout=30)
        # The nameservers answer "port unreachable" at once: a lookup (smtpd's of its client) fails
        # fast instead of waiting out resolved's timeouts for servers that are not there.
        for nameserver in self.nameservers:
            _run(["ip", "-n", name, "addr", "add", f"{nameserver}/32", "dev", "gw0"], timeout=30)
        _run(["ip", "-n", name, "link", "set", "gw0", "up"], timeout=30)
        _run(["ip", "-n", name, "link", "set", "lo", "up"], timeout=30)

    def _boot(self):
        if self.extra_config is None:
            return  # not powered on yet: power_on() boots
        started = time.monotonic()
        env = [f"--setenv={k}={v}" for k, v in guestinfo_environment(self.extra_config).items()]
        self._nspawn = self._spawn_container(["--boot", "--capability=CAP_NET_ADMIN", *env,
                                              f"--network-namespace-path={self.netns_path}",
                                              f"--machine={self.netns}", "--resolv-conf=off",
                                              "-D", self.rootfs])
        self._wait_for_banner(self._nspawn, 22, b"SSH-", "console.log", timeout=180)
        # cloud-init's ssh module makes new host keys and restarts sshd on a new instance, maybe
        # just as the first login comes in.
        deadline = time.monotonic() + 60
        while True:
            try:
                self.run("true")
                break
            except (OSError, EOFError, paramiko.SSHException):
                self._close_ssh()
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        self.boots.append(round(time.monotonic() - started, 1))

    def _halt_container(self):
        code = super()._halt_container()
        # A VM's NIC starts blank at power-on; the namespace (and so the interface) outlives the
        # container, so clear what the last boot configured on it.
        if self.netns:
            _run(["ip", "-n", self.netns, "link", "set", self.interface, "down"], timeout=30)
            _run(["ip", "-n", self.netns, "addr", "flush", "dev", self.interface], timeout=30)
        return code

    def power_on(self, extra_config: dict[str, str]):
        self.extra_config = dict(extra_config)
        self._boot()

    def set_extra_config(self, extra_config: dict[str, str]):
        """A reconfiguration of the VM's guestinfo: the running guest sees it at its next boot."""
        self.extra_config = dict(extra_config)

    def stop(self):
        super().stop()
        if self.gateway_netns:
            subprocess.run(["ip", "netns", "delete", self.gateway_netns], capture_output=True, timeout=30)
            self.gateway_netns = None
