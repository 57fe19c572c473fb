"""A real Debian host for integration tests: systemd in a container, in its own netns.

`TestHost(ips=[...], suite="bookworm").start()` gives a booted Debian system of that suite
(bookworm = Debian 12, the default; trixie = Debian 13) (real systemd as PID 1,
sshd, dbus) running under systemd-nspawn inside a fresh network namespace that has only a
loopback interface. The namespace's `lo` carries 127.0.0.1, every requested instance IP as a
/32, and the documentation address 192.0.2.10 (an "outside" client for relay-denial tests).
Nothing can leave the namespace: it has no other interface.

The root filesystem is built once per suite with debootstrap from the Debian mirror apt already
uses on this machine for bookworm (the same URI serves trixie), with the mail packages
(MAIL_PACKAGES: postfix, opendkim, opendkim-tools, miltertest, dovecot-core, logrotate,
python3-systemd (the delivery log's journal reader), and the metrics' prometheus-postfix-exporter, mtail, rsyslog and nftables) downloaded, not
installed, into its apt cache, so the program under test can `apt-get install` them with no
network. It is cached as
a tarball per suite (SUITE-vIMAGE_VERSION) and every TestHost boots a fresh copy of it.

The test process itself stays in the host namespace. `connect()` opens sockets inside the
test namespace by switching only the calling thread into it for the `socket()` call, so
paramiko (`run()`, `ssh_client()`) and smtplib (`smtp()`) work from ordinary test code.
An aiosmtpd sink (mailsink.py) listens on 127.0.0.1:2525 inside the namespace and keeps every
message it receives as JSON (`sink_messages()`).
"""

import atexit
import contextlib
import ctypes
import fcntl
import io
import json
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from skips import skip_or_fail  # noqa: F401  (the suite's one skip helper, re-exported)

IMAGE_VERSION = "5-journal-reader"  # bump whenever the rootfs recipe below changes
SUITE = "bookworm"  # the default suite; the mirror is found by its line in apt's sources
SUITES = {"bookworm": "debian12", "trixie": "debian13"}  # suite -> test id
HOSTNAME = "mailtest"
OUTSIDE_CLIENT_IP = "192.0.2.10"
SINK_PORT = 2525
BASE_PACKAGES = ["systemd-sysv", "dbus", "openssh-server", "iproute2", "ca-certificates"]
MAIL_PACKAGES = ["postfix", "opendkim", "opendkim-tools", "miltertest", "dovecot-core", "logrotate",
                 "python3-systemd", "prometheus-postfix-exporter", "mtail", "rsyslog", "nftables"]
HOST_TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container",
              "ip": "iproute2", "zstd": "zstd"}
SINK_SCRIPT = Path(__file__).with_name("mailsink.py")
CLONE_NEWNET = 0x40000000
# Without systemd as the host's PID 1 there is no machined or scope to register with.
NSPAWN = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit"]
# Numeric owners: the image's uids must not be remapped through this machine's user names.
TAR = ["tar", "--zstd", "--numeric-owner", "--xattrs", "--xattrs-include=*"]


class TestHostUnavailable(Exception):
    """This machine cannot provide a test host (not root, tools or mirror missing)."""

    __test__ = False


def _run(cmd, timeout=600):
    """Run a host command; its combined output is returned, or shown in the error."""
    result = subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    if result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, cmd, result.stdout)
    return result.stdout


def _systemd_cgroup_roots():
    """Where this process sits in the cgroup hierarchies a container's systemd uses: the unified
    (v2) one and, on a hybrid host, the v1 `name=systemd` one (mount point joined with our path)."""
    ours = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in ("", "name=systemd"):
            ours[controllers] = path
    roots = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _source, options = (tail.split() + ["", ""])[:3]
        mount_point = fields.split()[4]
        if fstype == "cgroup2" and "" in ours:
            roots.append(Path(mount_point + ours[""]))
        elif fstype == "cgroup" and "name=systemd" in options.split(",") and "name=systemd" in ours:
            roots.append(Path(mount_point + ours["name=systemd"]))
    return roots


def _remove_cgroup_tree(path: Path):
    """rmdir a cgroup and its children, deepest first (a cgroup's files cannot be unlinked)."""
    if not path.is_dir():
        return
    for directory, _, _ in sorted(os.walk(path), key=lambda entry: -entry[0].count("/")):
        with contextlib.suppress(OSError):
            os.rmdir(directory)


# Runs a command inside the cgroups given before it: `sh -c SCRIPT sh N CGROUP... COMMAND...`.
_IN_CGROUPS = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ >"$1/cgroup.procs" || exit 1; shift; n=$((n - 1)); done; exec "$@"'


def ensure_host_tools():
    if os.geteuid() != 0:
        raise TestHostUnavailable("not root: cannot debootstrap, nspawn or create namespaces")
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)})
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Lock timeout: other sessions on this machine may be running apt at the same time.
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "install", "-y",
               "--no-install-recommends", *missing]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        subprocess.run(install, env=env, capture_output=True, timeout=600)
    still_missing = [tool for tool in HOST_TOOLS if not shutil.which(tool)]
    if still_missing:
        raise TestHostUnavailable(f"could not install {', '.join(still_missing)}")


def debian_mirror():
    """The Debian mirror this machine's apt uses for the main suite (one-line or deb822)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
               *sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))]
    for path in filter(Path.exists, sources):
        if path.suffix == ".sources":
            for stanza in path.read_text().split("\n\n"):
                fields = dict(line.split(":", 1) for line in stanza.splitlines()
                              if ":" in line and not line.startswith(("#", " ")))
                fields = {key.strip().lower(): value.split() for key, value in fields.items()}
                if "deb" in fields.get("types", []) and SUITE in fields.get("suites", []):
                    return fields["uris"][0]
        else:
            for line in path.read_text().splitlines():
                words = re.sub(r"\[.*?\]", "", line.split("#")[0]).split()  # drop [options]
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    raise TestHostUnavailable(f"no Debian {SUITE} mirror in this machine's apt sources")


def _write(path, text, mode=0o644):
    path.unlink(missing_ok=True)  # debootstrap's copies can be symlinks or have odd modes
    path.write_text(text)
    path.chmod(mode)


def _configure_rootfs(rootfs):
    _write(rootfs / "etc/hostname", f"{HOSTNAME}\n")  # debootstrap copied this machine's
    _write(rootfs / "etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n"
                                 "::1\tlocalhost ip6-localhost ip6-loopback\n")
    # The namespace has no DNS server; fail fast on loopback rather than aim at this machine's.
    _write(rootfs / "etc/resolv.conf", "nameserver 127.0.0.1\n")
    _write(rootfs / "etc/apt/apt.conf.d/90mailfleet-testhost",
           '// The booted test host is offline: an accidental "apt-get update" fails at once.\n'
           'Acquire::Retries "0";\n')
    _write(rootfs / "etc/ssh/sshd_config.d/mailfleet-testhost.conf",
           "PermitRootLogin prohibit-password\nPasswordAuthentication no\n")
    (rootfs / "root/.ssh").mkdir(mode=0o700, exist_ok=True)


def _build_image(tarball, suite):
    build_dir = Path(tempfile.mkdtemp(prefix="build-", dir=tarball.parent))
    rootfs = build_dir / "rootfs"
    in_rootfs = [*NSPAWN, "--setenv=DEBIAN_FRONTEND=noninteractive", "-D", rootfs, "--"]
    try:
        _run(["debootstrap", "--variant=minbase", suite, rootfs, debian_mirror()], timeout=900)
        _run([*in_rootfs, "apt-get", "install", "-y", "--no-install-recommends", *BASE_PACKAGES])
        _run([*in_rootfs, "apt-get", "clean"])  # the cache then holds only the mail packages
        _run([*in_rootfs, "apt-get", "install", "-y", "--download-only", *MAIL_PACKAGES])
        # Timers that would run apt during tests and hold the dpkg lock.
        _run([*in_rootfs, "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer"])
        _configure_rootfs(rootfs)
        # With no network at all, apt must find every package it needs in the cache.
        offline = [*NSPAWN, "--private-network", "--resolv-conf=off", "-D", rootfs, "--"]
        plan = _run([*offline, "apt-get", "install", "-y", "--print-uris", *MAIL_PACKAGES])
        if any(line.startswith("'") for line in plan.splitlines()):
            raise TestHostUnavailable(f"mail packages not all cached in the image:\n{plan}")
        partial = tarball.with_suffix(".partial")
        _run([*TAR, "-C", rootfs, "-cf", partial, "."])
        partial.rename(tarball)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        output = (getattr(error, "output", None) or "")[-3000:]
        raise TestHostUnavailable(f"building the test rootfs failed: {error}\n{output}") from error
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)


def ensure_image(suite=SUITE):
    """Path of the cached rootfs tarball of a suite, built first if needed (about a minute)."""
    if suite not in SUITES:
        raise TestHostUnavailable(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    cache_dir = Path(os.environ.get("MAILFLEET_TESTHOST_CACHE", "/var/cache/mailfleet-testhost"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{suite}-v{IMAGE_VERSION}.tar.zst"
    with open(cache_dir / "build.lock", "w") as lock:
        wait_for_lock(lock)
        if not tarball.exists():
            _build_image(tarball, suite)
    return tarball


def wait_for_lock(lock):
    """Hold the image cache's lock (released when the file closes): one build at a time."""
    deadline = time.monotonic() + 900  # a parallel run may be building the same image
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TestHostUnavailable(f"timed out waiting for {lock.name}")
            time.sleep(1)


_libc = ctypes.CDLL(None, use_errno=True)  # Python 3.11 has no os.setns
_setns_lock = threading.Lock()


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_socket(netns_path, host, port, source=None, timeout=10):
    """A TCP socket connected to host:port inside the network namespace at netns_path.

    A socket belongs to the namespace it was created in, and setns() affects only the
    calling thread, so just this thread visits the namespace, for the socket() call.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The lock is not needed for correctness (per-thread); it keeps switches strictly serial.
    with _setns_lock, open("/proc/thread-self/ns/net") as home, open(netns_path) as target:
        _setns(target.fileno())
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        finally:
            _setns(home.fileno())
    try:
        sock.settimeout(timeout)
        if source:
            sock.bind((source, 0))
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class NetnsSMTP(smtplib.SMTP):
    """smtplib.SMTP whose connection is made inside the test host's namespace."""

    def __init__(self, testhost, **kwargs):
        self.testhost = testhost
        super().__init__(**kwargs)

    def _get_socket(self, host, port, timeout):
        source = self.source_address[0] if self.source_address else None
        return self.testhost.connect(host, port, source, timeout)


class NetnsSMTP_SSL(NetnsSMTP, smtplib.SMTP_SSL):
    """Implicit TLS (port 465) variant: wraps the namespace socket in self.context."""

    def _get_socket(self, host, port, timeout):
        return self.context.wrap_socket(super()._get_socket(host, port, timeout),
                                        server_hostname=self._host)


def _terminate(process, timeout):
    """SIGTERM by PID, SIGKILL if it outlives timeout; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(30)
    return process.returncode


class TestHost:
    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, ips=(), suite=SUITE):
        self.ips = list(ips)
        self.suite = suite
        key = ed25519.Ed25519PrivateKey.generate()
        self.ssh_private_key = key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.OpenSSH,
                                                 serialization.NoEncryption()).decode()
        self.ssh_public_key = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                            serialization.PublicFormat.OpenSSH).decode()
        self.netns = self.workdir = self._nspawn = self._sink = self._ssh = None
        self._cgroups = []  # this host's own cgroups while its container runs

    def _image(self):
        """The rootfs tarball this host boots (a variant's host overrides it)."""
        return ensure_image(self.suite)

    @property
    def rootfs(self):
        return self.workdir / "rootfs"

    @property
    def netns_path(self):
        return f"/run/netns/{self.netns}"

    def start(self):
        ensure_host_tools()
        tarball = self._image()
        atexit.register(self.stop)  # a crashed or interrupted run still cleans up
        try:
            # Unpacking is ~8 s on this disk and under 1 s on tmpfs (e.g. /dev/shm).
            self.workdir = Path(tempfile.mkdtemp(prefix="mailfleet-testhost-",
                                                 dir=os.environ.get("MAILFLEET_TESTHOST_TMPDIR") or None))
            self.rootfs.mkdir()
            (self.workdir / "sink").mkdir()
            _run([*TAR, "-C", self.rootfs, "-xf", tarball])
            _write(self.rootfs / "root/.ssh/authorized_keys", self.ssh_public_key + "\n", 0o600)
            self._create_netns()
            self._start_sink()
            self._boot()
        except BaseException:
            self.stop()
            raise
        return self

    def _create_netns(self):
        for _ in range(20):
            name = f"mf{random.randrange(10000):04d}"
            if subprocess.run(["ip", "netns", "add", name], capture_output=True,
                              timeout=30).returncode == 0:
                self.netns = name
                break
        else:
            raise TestHostUnavailable("could not create a network namespace")
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"], timeout=30)
        for ip in [*self.ips, OUTSIDE_CLIENT_IP]:
            _run(["ip", "-n", self.netns, "addr", "add", f"{ip}/32", "dev", "lo"], timeout=30)

    def _spawn(self, cmd, log_name):
        with open(self.workdir / log_name, "ab") as log:
            # Own session: a Ctrl-C on the terminal must not hit the container or the sink.
            return subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def _start_sink(self):
        self._sink = self._spawn(["ip", "netns", "exec", self.netns, sys.executable, SINK_SCRIPT,
                                  "--dir", self.workdir / "sink", "--port", SINK_PORT], "sink.log")
        self._wait_for_banner(self._sink, SINK_PORT, b"220", "sink.log")

    def _spawn_container(self, nspawn_args, log_name="console.log"):
        """Boot a container in a cgroup of its own. Without systemd as this machine's PID 1,
        nspawn puts every container it starts from one cgroup into the same `payload` cgroup:
        two test hosts booted at once (parallel test workers) would then run one systemd cgroup
        tree between them, and each systemd would stop, prune and wait on the other's units of the
        same name (postfix@-.service hanging a shutdown, "Failed to spawn executor" at a start)."""
        self._cgroups = []
        for root in _systemd_cgroup_roots():
            cgroup = root / f"mailfleet-testhost-{self.netns}"
            _remove_cgroup_tree(cgroup)  # what a previous boot's systemd left
            with contextlib.suppress(OSError):
                cgroup.mkdir()
                self._cgroups.append(cgroup)
        return self._spawn(["sh", "-c", _IN_CGROUPS, "sh", len(self._cgroups), *self._cgroups, *NSPAWN,
                            *nspawn_args], log_name)

    def _boot(self):
        self._nspawn = self._spawn_container(["--boot", "--capability=CAP_NET_ADMIN",
                                    f"--network-namespace-path={self.netns_path}",
                                    f"--machine={self.netns}", "--resolv-conf=off",
                                    "-D", self.rootfs], "console.log")
        self._wait_for_banner(self._nspawn, 22, b"SSH-", "console.log")
        self.run("true")  # key login works, not just the banner

    def _wait_for_banner(self, process, port, banner, log_name, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                with self.connect("127.0.0.1", port, timeout=5) as sock:
                    if sock.recv(64).startswith(banner):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        log = (self.workdir / log_name).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"no {banner!r} on port {port} in the test host:\n{log}")

    def _halt_container(self):
        self._close_ssh()
        # nspawn turns SIGTERM into a clean shutdown of the container's systemd.
        # Longer than systemd's own stop timeout (90 s): a stop job that hangs is killed by the
        # container's systemd, and the shutdown still ends cleanly.
        code = _terminate(self._nspawn, timeout=150) if self._nspawn else 0
        self._nspawn = None
        for cgroup in self._cgroups:
            _remove_cgroup_tree(cgroup)
        self._cgroups = []
        return code

    def restart(self):
        """Clean reboot: shut the container's systemd down, boot the same rootfs again."""
        code = self._halt_container()
        if code != 0:
            raise RuntimeError(f"container did not shut down cleanly (exit {code}); the last boot's journal:\n"
                               + self._last_boot_journal())
        self._boot()

    def _last_boot_journal(self) -> str:
        """The end of the container's persistent journal (what the console's progress spinner hides)."""
        result = subprocess.run(["journalctl", "--directory", str(Path(self.rootfs) / "var/log/journal"),
                                 "--no-pager", "-o", "short-monotonic", "-n", "120"],
                                capture_output=True, text=True, timeout=60)
        return (result.stdout or result.stderr)[-12000:]

    def stop(self):
        """Stop every process this host started (by PID), delete its namespace and files."""
        atexit.unregister(self.stop)
        self._halt_container()
        if self._sink:
            _terminate(self._sink, timeout=30)
            self._sink = None
        if self.netns:
            subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, timeout=30)
            self.netns = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def connect(self, host, port, source=None, timeout=10):
        """A TCP socket connected to host:port from inside the test namespace."""
        return netns_socket(self.netns_path, host, port, source, timeout)

    def ssh_client(self):
        """A connected paramiko client, logged in as root (reused until restart/stop)."""
        transport = self._ssh and self._ssh.get_transport()
        if not (transport and transport.is_active()):
            self._close_ssh()
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # new host every run
            pkey = paramiko.Ed25519Key.from_private_key(io.StringIO(self.ssh_private_key))
            client.connect("127.0.0.1", 22, username="root", pkey=pkey,
                           sock=self.connect("127.0.0.1", 22), look_for_keys=False,
                           allow_agent=False, timeout=10, banner_timeout=30, auth_timeout=30)
            self._ssh = client
        return self._ssh

    def _close_ssh(self):
        if self._ssh:
            self._ssh.close()
            self._ssh = None

    def run(self, command, check=True, timeout=300):
        """Run a shell command as root in the container: (rc, stdout, stderr)."""
        _, stdout, stderr = self.ssh_client().exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        rc = stdout.channel.recv_exit_status()
        if check and rc != 0:
            raise subprocess.CalledProcessError(rc, command, out, err)
        return rc, out, err

    def smtp(self, ip, port=25, source=None, implicit_tls=False, ssl_context=None, timeout=10):
        """An smtplib client connected from inside the namespace, from `source` if given.

        With implicit_tls and no ssl_context, smtplib's default applies: no verification.
        """
        kwargs = dict(host=ip, port=port, timeout=timeout,
                      source_address=(source, 0) if source else None)
        if implicit_tls:
            return NetnsSMTP_SSL(self, context=ssl_context, **kwargs)
        return NetnsSMTP(self, **kwargs)

    def sink_messages(self):
        """Messages the sink received, oldest first (see mailsink.py for the fields)."""
        return [json.loads(path.read_text())
                for path in sorted((self.workdir / "sink").glob("*.json"))]

    def clear_sink(self):
        for path in (self.workdir / "sink").glob("*.json"):
            path.unlink()

    def console_log(self):
        """The container's console output (boot and shutdown messages)."""
        return (self.workdir / "console.log").read_text(errors="replace")


@contextlib.contextmanager
def booted(ips, suite=SUITE):
    """A started TestHost for a test module, stopped afterwards; a machine that cannot provide
    one skips the module (a failure under CI)."""
    host = TestHost(ips=ips, suite=suite)
    try:
        host.start()
    except TestHostUnavailable as error:
        skip_or_fail(f"no test host: {error}")
    try:
        yield host
    finally:
        host.stop()
