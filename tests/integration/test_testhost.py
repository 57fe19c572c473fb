"""Self-check of testhost.py: boots a real test host and checks what the suite relies on.

Needs root and the Debian mirror (first run only). Skips otherwise, fails under CI=true.
"""

import io
import os
import subprocess
import sys
import time

import paramiko
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from testhost import OUTSIDE_CLIENT_IP, SINK_PORT, TestHost, TestHostUnavailable, skip_or_fail  # noqa: E402

IPS = ["127.0.0.43", "127.0.0.45", "127.0.0.47"]


def _processes_in_namespace(inode):
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                pids.append(pid)
        except OSError:
            pass  # gone meanwhile
    return pids


@pytest.mark.integration
def test_testhost_boots_serves_and_cleans_up():
    host = TestHost(ips=IPS)
    started = time.monotonic()
    try:
        host.start()
    except TestHostUnavailable as error:
        skip_or_fail(str(error))
    print(f"start: {time.monotonic() - started:.1f} s")
    netns, netns_inode = host.netns, os.stat(host.netns_path).st_ino
    pids = [host._nspawn.pid, host._sink.pid]
    try:
        _, state, _ = host.run("systemctl is-system-running --wait", check=False, timeout=120)
        assert state.strip() in ("running", "degraded"), host.run("systemctl --failed")[1]
        _, addresses, _ = host.run("ip -4 -o addr show dev lo")
        for ip in [*IPS, OUTSIDE_CLIENT_IP]:
            assert f"inet {ip}/32" in addresses
        assert host.run("hostname")[1].strip() == "mailtest"

        # The program's own install step, for real, with no network in the namespace.
        host.run("echo 'postfix postfix/main_mailer_type select No configuration'"
                 " | debconf-set-selections")
        host.run("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-download"
                 " postfix opendkim opendkim-tools", timeout=300)
        assert host.run("dpkg-query -W -f='${Status}' opendkim-tools")[1] == "install ok installed"

        # paramiko over a namespace socket, independently of run()'s cached client;
        # the calling thread must be back in its own namespace afterwards.
        home_netns = os.stat("/proc/thread-self/ns/net").st_ino
        sock = host.connect(IPS[1], 22, source=OUTSIDE_CLIENT_IP)
        assert os.stat("/proc/thread-self/ns/net").st_ino == home_netns != netns_inode
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(IPS[1], 22, username="root", look_for_keys=False, allow_agent=False,
                       pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(host.ssh_private_key)),
                       sock=sock)
        _, stdout, _ = client.exec_command("echo $SSH_CLIENT")
        assert stdout.read().decode().split()[0] == OUTSIDE_CLIENT_IP
        client.close()

        # smtplib from the documentation address to the sink, which records peer and helo.
        host.clear_sink()
        with host.smtp("127.0.0.1", SINK_PORT, source=OUTSIDE_CLIENT_IP) as smtp:
            smtp.ehlo("client.example.test")
            smtp.sendmail("a@example.test", ["b@example.test"], "Subject: hi\r\n\r\nhello\r\n")
        [message] = host.sink_messages()
        assert message["peer"] == OUTSIDE_CLIENT_IP
        assert message["helo"] == "client.example.test"
        assert message["rcpt_tos"] == ["b@example.test"]
        assert "hello" in message["data"]
        host.clear_sink()
        assert host.sink_messages() == []

        boot_id = host.run("cat /proc/sys/kernel/random/boot_id")[1]
        started = time.monotonic()
        host.restart()
        print(f"restart: {time.monotonic() - started:.1f} s")
        assert "System Halt" in host.console_log() or "Power-Off" in host.console_log()
        assert host.run("cat /proc/sys/kernel/random/boot_id")[1] != boot_id
        assert host.run("dpkg-query -W -f='${Status}' postfix")[1] == "install ok installed"
        pids.append(host._nspawn.pid)
    finally:
        workdir = host.workdir
        host.stop()

    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # The container's processes end as their parent is killed; on a loaded machine the last of them
    # take a few seconds to exit (and this machine's PID 1 reaps slowly), so wait, but not forever.
    deadline = time.monotonic() + 30
    while _processes_in_namespace(netns_inode) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_in_namespace(netns_inode) == []
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not workdir.exists()
