"""A change never leaves a host half-applied, on Debian 12 and Debian 13.

A host that already runs Debian's Postfix ("Local only") while something holds the dpkg lock gets
its first apply: the install waits for the lock, the files it replaces are kept as
*.pre-mailfleet, the default instance lets go of the instances' addresses, Debian's OpenDKIM
configuration is kept aside. Then: a signing table change is a reload (same PID); a signing table
with which OpenDKIM no longer signs, or signs with a key that is not the selector's, is caught
by the probe, rolled back, and OpenDKIM keeps signing with the old; a
deliberately broken instance change that `postfix check` passes (it breaks STARTTLS) is rolled back, the step names the instance and the instance
keeps answering with its old files, its master never restarted; Postfix units of a kind it does not
know stop the apply at preflight, before any change.
"""

from __future__ import annotations

import re
import time

import pytest

from harness import run_program
from integration.test_apply import INSTANCES as ALL_INSTANCES
from integration.test_apply import RELAY_CLIENT, StatefulMocks, config_for, file_states, listeners, master_pid, step_output
from integration.testhost import TestHost, booted
from mailfleet import render, signing

pytestmark = pytest.mark.integration

INSTANCES = ALL_INSTANCES[:2]
QUEUE = {"maximalQueueLifetime": "6h"}  # shorter than bounce_queue_lifetime's default 5d
LOCK_SECONDS = 20
# apt and dpkg lock with fcntl (flock(1) would not stop them); perl-base is in every Debian.
HOLD_DPKG_LOCK = (
    "setsid -f perl -MFcntl -e 'open(my $f, \"+<\", \"/var/lib/dpkg/lock-frontend\") or die $!; "
    "my $l = pack(\"s s x4 q q l x4\", F_WRLCK, 0, 0, 0, 0); fcntl($f, F_SETLKW, $l) or die $!; "
    f"open(my $o, \">\", \"/run/dpkg-held\"); close $o; sleep {LOCK_SECONDS}' >/dev/null 2>&1")


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT], suite=suite) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def state():
    return {}


def apply(host: TestHost, state: dict):
    """Apply the module's config; returns (mocks, error text or None)."""
    mocks = StatefulMocks(host.connect, state)
    try:
        run_program(config_for(host, instances=INSTANCES, **{"mailfleet:queue": QUEUE}), mocks,
                    secret_keys=["mailfleet:sshPrivateKey"], stack="rollback")
    except Exception as error:  # a failed remote step fails the program, as in `pulumi up`
        # The engine waits for the steps still running; here they go on alone on the host. Instance
        # steps hold this lock from start to end.
        host.run("flock -w 120 /run/mailfleet-postfix.lock true")
        return mocks, str(error)
    errors = [e["error"] for e in mocks.log if e.get("error")]
    return mocks, "\n".join(errors) or None


def step_error(mocks, name: str) -> str:
    return next((e.get("error", "") for e in mocks.log if e["name"] == name), "")


def answers_with_tls(host: TestHost, instance: dict) -> bool:
    with host.smtp(instance["ip"]) as client:
        code, banner = client.ehlo("probe.example")
        client.starttls()
        return code == 250 and client.sock.getpeercert(binary_form=True) is not None


def test_first_apply_on_an_existing_postfix_waits_for_dpkg_and_keeps_pre_mailfleet_copies(host, state):
    host.run("echo 'postfix postfix/main_mailer_type select Local only' | debconf-set-selections && "
             "echo 'postfix postfix/mailname string mailtest.example' | debconf-set-selections && "
             "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix >/dev/null")
    original_main_cf = host.run("cat /etc/postfix/main.cf")[1]
    assert "mailfleet" not in original_main_cf
    host.run(HOLD_DPKG_LOCK)
    host.run("for _ in $(seq 50); do [ -e /run/dpkg-held ] && exit 0; sleep 0.1; done; exit 1")
    held_since = time.monotonic()
    mocks, error = apply(host, state)
    assert error is None, error
    packages = next(e for e in mocks.log if e["name"] == "mailtest-packages")
    # The install could only start once the lock was free again.
    assert time.monotonic() - held_since >= LOCK_SECONDS and packages["seconds"] >= LOCK_SECONDS - 8, packages
    assert "installed opendkim opendkim-tools" in step_output(mocks)

    assert host.run("cat /etc/postfix/main.cf.pre-mailfleet")[1] == original_main_cf
    assert host.run("head -n 1 /etc/postfix/main.cf")[1].startswith("# Managed by mailfleet")
    # OpenDKIM signs with mailfleet's configuration; the package's is kept aside.
    assert "mailfleet" not in host.run("cat /etc/opendkim.conf.pre-mailfleet")[1]
    assert host.run("systemctl is-enabled opendkim")[1].strip() == "enabled"
    # No copy of what mailfleet wrote itself (postmulti's files, keys, certificates).
    copies = host.run("find /etc -name '*.pre-mailfleet' | sort")[1].split()
    assert copies == ["/etc/opendkim.conf.pre-mailfleet", "/etc/postfix/main.cf.pre-mailfleet"], copies
    # The default instance was bound to every loopback address: restarted, it holds 127.0.0.1 only.
    found = listeners(host)
    default = master_pid(host, "-")
    assert found.get("127.0.0.1:25") == {default}
    for instance in INSTANCES:
        assert found.get(f"{instance['ip']}:25") == {master_pid(host, instance["name"])}, found

    files = file_states(host)
    mocks, error = apply(host, state)
    assert error is None, error
    assert file_states(host) == files
    assert "pre-mailfleet" not in step_output(mocks)


def test_bounce_queue_lifetime_follows_a_shorter_maximal_queue_lifetime(host, state):
    for instance in INSTANCES:
        directory = f"/etc/{instance['name']}"
        assert host.run(f"postconf -c {directory} -h maximal_queue_lifetime bounce_queue_lifetime")[1].split() == ["6h", "6h"]
    # qmgr's own warning ("bounce_queue_lifetime is larger than maximal_queue_lifetime") cannot be
    # watched here: chrooted daemons have no /dev/log on this host, so their lines never reach journald.


def signer_pid(host) -> str:
    return host.run("systemctl show -p MainPID --value opendkim")[1].strip()


def test_a_signing_table_change_is_a_reload_that_keeps_its_pid(host, state):
    pid = signer_pid(host)
    host.run("echo '# edited by hand' >> /etc/opendkim/SigningTable")
    mocks, error = apply(host, state)
    assert error is None, error
    assert "reloaded opendkim" in step_output(mocks) and "restarted" not in step_output(mocks)
    assert signer_pid(host) == pid
    assert "edited by hand" not in host.run("cat /etc/opendkim/SigningTable")[1]


def signs_and_verifies(host) -> str:
    """The probe the step runs, run again by hand: OpenDKIM signs mail from example.com with s1."""
    return host.run("source /dev/stdin <<'EOF'\n" + remote_lib() + "\nEOF\n"
                    "probe_opendkim /etc/opendkim/keys opendkim unix:/var/spool/opendkim/opendkim.sock "
                    "news@example.com 'd=example.com s=s1 a=rsa-sha256' && echo signed-and-verified",
                    check=False)[1]


def remote_lib() -> str:
    from mailfleet.remote_scripts import LIBRARY
    return LIBRARY.replace("set -euo pipefail", "set -uo pipefail")


@pytest.mark.parametrize("broken,seen", [
    # A SigningTable line whose key is not in the KeyTable: OpenDKIM tempfails the message.
    ("*@example.com no-such-key._domainkey.example.com\n", "refused the message at"),
    # s1 signing with example.net's key: a signature is there, with the right d= and s=, but the
    # receiver's lookup of s1 would not verify it.
    (None, "do not verify against the installed keys"),
])
def test_a_table_that_breaks_signing_is_rolled_back_and_opendkim_keeps_signing(host, state, monkeypatch, broken, seen):
    files, pid = file_states(host), signer_pid(host)
    rendered = signing.files

    def files_with_a_fault(*args, **kwargs):
        files = rendered(*args, **kwargs)
        if broken:
            files["/etc/opendkim/SigningTable"] += broken
        else:
            files["/etc/opendkim/KeyTable"] = files["/etc/opendkim/KeyTable"].replace(
                "/etc/opendkim/keys/example.com/s1.private", "/etc/opendkim/keys/example.net/s2.private")
        return files
    monkeypatch.setattr(signing, "files", files_with_a_fault)
    mocks, error = apply(host, state)
    message = step_error(mocks, "mailtest-opendkim-config")
    assert "OpenDKIM failed after the change" in message and "the previous files are restored" in message, error
    assert seen in message, message
    assert file_states(host) == files
    assert signer_pid(host) == pid  # reloaded with the new tables, and again with the old: same process
    assert "signed-and-verified" in signs_and_verifies(host)
    monkeypatch.undo()
    mocks, error = apply(host, state)
    assert error is None, error
    assert file_states(host) == files


def broken_main_cf(monkeypatch, name: str, edit):
    """A template edit that only `name`'s main.cf gets; `postfix check` passes it."""
    rendered = render.instance_main_cf

    def instance_main_cf(fleet, instance):
        text = rendered(fleet, instance)
        return edit(text) if instance.name == name else text
    monkeypatch.setattr(render, "instance_main_cf", instance_main_cf)


def test_a_change_that_breaks_starttls_is_rolled_back_and_names_the_instance(host, state, monkeypatch):
    files, pids = file_states(host), {i["name"]: master_pid(host, i["name"]) for i in INSTANCES}
    broken_main_cf(monkeypatch, "postfix-45", lambda text: re.sub(
        r"(?m)^smtpd_tls_chain_files = .*$", "smtpd_tls_chain_files = /etc/mailfleet/tls/missing.pem", text))
    mocks, error = apply(host, state)
    message = step_error(mocks, "postfix-45-config")
    assert "instance postfix-45 failed after the change" in message, error
    assert "STARTTLS" in message and "previous files are restored" in message, message
    assert file_states(host) == files
    assert {i["name"]: master_pid(host, i["name"]) for i in INSTANCES} == pids
    for instance in INSTANCES:
        assert answers_with_tls(host, instance)
    monkeypatch.undo()
    mocks, error = apply(host, state)
    assert error is None, error
    assert file_states(host) == files


def test_preflight_stops_before_any_change_on_postfix_units_it_does_not_know(host, state):
    files = file_states(host)
    host.run("mkdir -p /etc/systemd/system && printf '[Unit]\\nDescription=someone else\\n[Service]\\n"
             "ExecStart=/usr/local/sbin/run-postfix %%i\\n' >/etc/systemd/system/postfix@.service && "
             "systemctl daemon-reload")
    try:
        mocks, error = apply(host, state)
    finally:
        host.run("rm /etc/systemd/system/postfix@.service && systemctl daemon-reload")
    message = step_error(mocks, "mailtest-preflight")
    assert "packages Postfix in a way mailfleet does not know" in message, error
    assert "ExecStart=/usr/local/sbin/run-postfix %i" in message and "Supported:" in message, message
    assert not any(e["name"] != "mailtest-preflight" and e["type"] == "command:remote:Command"
                   for e in mocks.log), [e["name"] for e in mocks.log]
    assert file_states(host) == files
