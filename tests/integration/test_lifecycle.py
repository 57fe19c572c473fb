"""Changes over a fleet's life, on a real host of this module's own: what the remote steps promise
when an address moves, a DKIM key leaves, an IP is missing, or an instance with mail is retired;
and the submission ports as a client meets them.

Shares test_apply.py's helpers (its config, apply and host readers). The tests run in file order on
one host: deploy two instances, then change them step by step.
"""

from __future__ import annotations

import smtplib
import threading
import time

import pytest
from pulumi.runtime.sync_await import _ensure_event_loop

from harness import run_program
from integration.test_apply import (DOMAINS, INSTANCES, RELAY_CLIENT, STATE, StatefulMocks, apply, config_for,
                                    file_states, listeners, master_pid, message, service_pids, step_output,
                                    unit, verify_dkim, wait_for)
from integration.testhost import OUTSIDE_CLIENT_IP, TestHost, booted
from mailfleet.metrics import QUEUE_PORT

pytestmark = pytest.mark.integration

FIRST, SECOND = INSTANCES[0], INSTANCES[1]
MOVED_IP = "127.0.0.49"   # on the host's lo from the start: the address SECOND moves to
ABSENT_IP = "127.0.0.51"  # never on the host


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[FIRST["ip"], SECOND["ip"], MOVED_IP, RELAY_CLIENT], suite=suite) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def fleet(host):
    """The module's current configuration; tests that change it leave the new one here."""
    state = {"instances": [dict(FIRST), dict(SECOND)], "overrides": {}}
    run, mocks, _ = apply(host, config_for(host, instances=state["instances"]))
    state["run"], state["mocks"] = run, mocks
    return state


def queued(host: TestHost, name: str) -> int:
    """Messages in an instance's queue, counted as files like the retire step counts them."""
    out = host.run(f"find /var/spool/{name}/maildrop /var/spool/{name}/incoming /var/spool/{name}/active "
                   f"/var/spool/{name}/deferred /var/spool/{name}/hold -type f | wc -l")[1]
    return int(out)


def _quiet_about(failure: str):
    """Every output future of the failed step holds the failure just asserted on; asyncio would log
    each as "Future exception was never retrieved" when it is collected."""
    loop = _ensure_event_loop()  # the loop the SDK runs programs on

    def handler(loop, context):
        if str(context.get("exception")) != failure:
            loop.default_exception_handler(context)
    loop.set_exception_handler(handler)


# ---- a host that mailfleet-signer signed for moves back to OpenDKIM in one apply ----

OLD_SOCKET_DIR = "/var/spool/mailfleet-signer"
OLD_SOCKET = f"{OLD_SOCKET_DIR}/milter.sock"
UPLOAD = "/root/.mailfleet-signer-0123456789abcdef"
# The unit the previous mailfleet installed (its template, rendered). Its binary is gone from the
# repository, so a stand-in takes its place: OpenDKIM on the signer's socket, with the signer's
# tables, so that the host signs through the old path until the switch, as it did.
OLD_UNIT = f"""# Managed by mailfleet: edits here are overwritten on the next `pulumi up`.
# The DKIM signer of every Postfix instance on this host (mailfleet's signer/, in place of OpenDKIM).
[Unit]
Description=mailfleet DKIM signer (milter) for the Postfix instances

[Service]
Type=exec
User=opendkim
Group=opendkim
UMask=0007
ExecStart=/usr/local/sbin/mailfleet-signer -tables /etc/opendkim -socket {OLD_SOCKET}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={OLD_SOCKET_DIR}
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""
STAND_IN = f"""#!/bin/sh
# Stand-in for the mailfleet-signer binary (tests only): OpenDKIM on the signer's socket.
exec /usr/sbin/opendkim -f -x {OLD_SOCKET_DIR}/stand-in.conf
"""
STAND_IN_CONF = f"""Mode s
Canonicalization relaxed/simple
OversignHeaders From
UMask 007
Socket local:{OLD_SOCKET}
KeyTable file:/etc/opendkim/KeyTable
SigningTable refile:/etc/opendkim/SigningTable
InternalHosts 127.0.0.0/8,{RELAY_CLIENT}
"""


def as_the_signer_left_it(host: TestHost, instances: list[dict]):
    """The layout the previous mailfleet left: OpenDKIM disabled with the package's opendkim.conf,
    mailfleet-signer's unit, binary, socket directory and upload, every instance naming its socket."""
    host.run("systemctl disable -q --now opendkim && rm -rf /etc/systemd/system/opendkim.service.d "
             "/etc/opendkim/TrustedHosts /var/spool/opendkim && "
             "mv -f /etc/opendkim.conf.pre-mailfleet /etc/opendkim.conf && "
             "sed -i '\\|^/etc/opendkim.conf$|d; \\|^/etc/opendkim/TrustedHosts$|d; \\|opendkim.service.d|d' "
             "/var/lib/mailfleet/managed-files")
    host.run(f"install -d -m 2750 -o opendkim -g postfix {OLD_SOCKET_DIR} && "
             f"cat >/etc/systemd/system/mailfleet-signer.service <<'EOF'\n{OLD_UNIT}EOF\n"
             f"cat >/usr/local/sbin/mailfleet-signer <<'EOF'\n{STAND_IN}EOF\n"
             f"cat >{OLD_SOCKET_DIR}/stand-in.conf <<'EOF'\n{STAND_IN_CONF}EOF\n"
             f"chmod 755 /usr/local/sbin/mailfleet-signer && cp /usr/local/sbin/mailfleet-signer {UPLOAD} && "
             "printf '%s\\n' /etc/systemd/system/mailfleet-signer.service /usr/local/sbin/mailfleet-signer "
             ">>/var/lib/mailfleet/managed-files && "
             "systemctl daemon-reload && systemctl enable -q --now mailfleet-signer && "
             f"for i in $(seq 50); do [ -S {OLD_SOCKET} ] && break; sleep 0.1; done")
    for instance in instances:
        directory = f"/etc/{instance['name']}"
        host.run(f"postconf -c {directory} -e smtpd_milters=unix:{OLD_SOCKET} && postfix -c {directory} reload")


class Sender(threading.Thread):
    """Sends a message through FIRST every 0.2 s until stopped; records each SMTP answer."""

    def __init__(self, host: TestHost):
        super().__init__(daemon=True)
        self.host, self.stop, self.answers = host, threading.Event(), []

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            subject = f"during the switch {n}"
            try:
                with self.host.smtp(FIRST["ip"], source=RELAY_CLIENT) as client:
                    client.send_message(message("news@example.com", subject))
                self.answers.append((subject, 250))
            except smtplib.SMTPResponseException as error:
                self.answers.append((subject, error.smtp_code))
            except smtplib.SMTPRecipientsRefused as error:
                self.answers.append((subject, next(iter(error.recipients.values()))[0]))
            except smtplib.SMTPSenderRefused as error:
                self.answers.append((subject, error.smtp_code))
            time.sleep(0.2)


def test_a_host_that_mailfleet_signer_signed_for_moves_back_to_opendkim(host, fleet):
    keys_before = host.run("sha256sum /etc/opendkim/keys/*/*.private")[1]
    debian_conf = host.run("cat /etc/opendkim.conf.pre-mailfleet")[1]
    as_the_signer_left_it(host, fleet["instances"])
    host.clear_sink()
    with host.smtp(FIRST["ip"], source=RELAY_CLIENT) as client:
        client.send_message(message("news@example.com", "signed by the old signer"))
    assert verify_dkim(wait_for(host, "signed by the old signer")["data"], fleet["run"].outputs["dkimRecords"])

    sender = Sender(host)
    sender.start()
    try:
        run, mocks, seconds = apply(host, config_for(host, instances=fleet["instances"]))
    finally:
        time.sleep(2)
        sender.stop.set()
        sender.join(30)
    output = step_output(mocks)
    assert "stopped and disabled mailfleet-signer: OpenDKIM signs" in output, output
    for gone in ("/etc/systemd/system/mailfleet-signer.service", "/usr/local/sbin/mailfleet-signer", OLD_SOCKET_DIR,
                 UPLOAD):
        assert f"removed {gone}" in output, (gone, output)
        assert host.run(f"test -e {gone}", check=False)[0] != 0, gone
    assert "mailfleet-signer" not in host.run("cat /var/lib/mailfleet/managed-files")[1]
    assert host.run("systemctl is-active opendkim")[1].strip() == "active"
    assert host.run("systemctl is-enabled opendkim")[1].strip() == "enabled"
    assert host.run("systemctl is-active mailfleet-signer", check=False)[1].strip() != "active"
    # The package's opendkim.conf is kept aside again, mailfleet's is in place.
    assert host.run("cat /etc/opendkim.conf.pre-mailfleet")[1] == debian_conf
    for instance in fleet["instances"]:
        milters = host.run(f"postconf -c /etc/{instance['name']} -h smtpd_milters")[1].strip()
        assert milters == "unix:/var/spool/opendkim/opendkim.sock", (instance["name"], milters)
    # The same keys and selectors: no DNS change.
    assert host.run("sha256sum /etc/opendkim/keys/*/*.private")[1] == keys_before
    assert run.outputs["dkimRecords"] == fleet["run"].outputs["dkimRecords"]
    # Mail during the switch: each message accepted or deferred (4xx), never refused; each
    # accepted one arrives signed, and its signature verifies.
    answers = dict(sender.answers)
    assert len(answers) >= 5, answers
    assert set(answers.values()) <= {250, 421, 450, 451, 452}, answers
    accepted = [subject for subject, code in answers.items() if code == 250]
    assert accepted, answers
    for subject in accepted:
        assert verify_dkim(wait_for(host, subject, timeout=120)["data"], run.outputs["dkimRecords"]), subject
    figures_of_the_switch = {"messages": len(answers), "deferred": len(answers) - len(accepted),
                             "apply s": round(seconds, 1)}
    print(f"during the switch: {figures_of_the_switch}")
    # And the next apply has nothing left to move.
    _, mocks, _ = apply(host, config_for(host, instances=fleet["instances"]))
    assert "mailfleet-signer" not in step_output(mocks), step_output(mocks)


# ---- submission ports as a client meets them ----

def test_submission_without_tls_is_refused(host, fleet):
    for instance in fleet["instances"]:
        with host.smtp(instance["ip"], port=587, source=RELAY_CLIENT) as client:
            client.ehlo("client.example")
            assert client.has_extn("starttls")
            code, reply = client.mail("news@example.com")
        assert code == 530 and b"STARTTLS" in reply, (instance["name"], code, reply)


def test_submission_ports_refuse_a_client_outside_relay_networks(host, fleet):
    for instance in fleet["instances"]:
        for port in (587, 465):
            # The submission services' own client restriction, applied at connect
            # (smtpd_delay_reject = no): not even a greeting, let alone a recipient.
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                host.smtp(instance["ip"], port=port, source=OUTSIDE_CLIENT_IP, implicit_tls=port == 465)
            assert refused.value.smtp_code == 554, (instance["name"], port, refused.value)
            assert b"Client host rejected: Access denied" in refused.value.smtp_error, (instance["name"], port)
        assert queued(host, instance["name"]) == 0


# ---- preflight: an instance IP that is not on the host stops everything, changes nothing ----

def test_preflight_refuses_an_ip_that_is_not_on_the_host(host, fleet):
    files, pids = file_states(host), service_pids(host)
    extra = {"name": "postfix-51", "ip": ABSENT_IP, "hostname": "s51.mail.example.com"}
    mocks = StatefulMocks(host.connect, STATE.setdefault(host.suite, {}))
    with pytest.raises(Exception) as error:
        run_program(config_for(host, instances=[*fleet["instances"], extra]), mocks,
                    secret_keys=["mailfleet:sshPrivateKey"], stack="integration")
    _quiet_about(str(error.value))
    assert f"lacks instance IP(s) {ABSENT_IP}" in str(error.value), str(error.value)[-2000:]
    ran = [e["name"] for e in mocks.log if e["type"] == "command:remote:Command"]
    assert ran == ["mailtest-preflight"], ran
    assert file_states(host) == files
    assert service_pids(host) == pids
    assert "postfix-51" not in host.run("postmulti -l")[1]


# ---- an instance whose address changes is restarted onto the new address only ----

def test_a_new_address_restarts_the_instance_onto_it(host, fleet):
    pids = service_pids(host)
    moved = [dict(FIRST), {**SECOND, "ip": MOVED_IP}]
    _, mocks, _ = apply(host, config_for(host, instances=moved))
    fleet["instances"] = moved
    assert f"restarted {unit(host, SECOND['name'])}" in step_output(mocks)
    new_pid = master_pid(host, SECOND["name"])
    assert new_pid != pids[SECOND["name"]]  # a reload keeps the master and its old sockets
    assert master_pid(host, FIRST["name"]) == pids[FIRST["name"]]
    found = listeners(host)
    for port in (25, 587, 465):
        assert found.get(f"{MOVED_IP}:{port}") == {new_pid}, (port, found)
        assert f"{SECOND['ip']}:{port}" not in found, (port, found)
    with host.smtp(MOVED_IP) as client:
        assert client.docmd("NOOP")[0] == 250
    with pytest.raises(OSError):
        host.connect(SECOND["ip"], 25, timeout=3).close()


# ---- a DKIM key the config no longer names is removed from the host ----

def test_a_dkim_key_dropped_from_the_config_is_removed(host, fleet):
    (kept_domain, kept_selector), (dropped_domain, dropped_selector) = DOMAINS.items()
    kept = f"/etc/opendkim/keys/{kept_domain}/{kept_selector}.private"
    dropped = f"/etc/opendkim/keys/{dropped_domain}/{dropped_selector}.private"
    assert host.run(f"test -f {kept} && test -f {dropped}", check=False)[0] == 0
    overrides = {"mailfleet:dkim": [{"domain": kept_domain, "selector": kept_selector}]}
    run, mocks, _ = apply(host, config_for(host, instances=fleet["instances"], **overrides))
    fleet["overrides"] = overrides
    assert f"removed {dropped}" in step_output(mocks)
    assert host.run(f"test -e {dropped}", check=False)[0] != 0
    assert host.run(f"test -f {kept}", check=False)[0] == 0
    assert dropped_domain not in host.run("cat /etc/opendkim/KeyTable /etc/opendkim/SigningTable")[1]
    assert host.run("systemctl is-active opendkim")[1].strip() == "active"
    host.clear_sink()
    with host.smtp(FIRST["ip"], source=RELAY_CLIENT) as client:
        client.send_message(message(f"news@{kept_domain}", "after a key left"))
    assert verify_dkim(wait_for(host, "after a key left")["data"], run.outputs["dkimRecords"])


# ---- retiring an instance that still holds mail: refused, nothing lost; then it goes ----

def test_retiring_an_instance_with_queued_mail_is_refused_until_the_queue_drains(host, fleet):
    name = SECOND["name"]
    retire = fleet["mocks"].commands[f"{name}-config"]  # the delete the engine runs when it leaves
    # With the signer down, local mail waits in the instance's queue (maildrop): it cannot leave unsigned.
    host.run("systemctl stop opendkim")
    try:
        host.clear_sink()
        held = message("news@example.com", "queued while retiring")
        host.run(f"postmulti -i {name} -x sendmail -t -f news@example.com <<'EOF'\n{held.as_string()}\nEOF")
        assert queued(host, name) == 1
        rc, out, err = fleet["mocks"].run_remote(retire["connection"], retire["delete"])
        assert rc != 0 and f"instance {name} still holds 1 message(s)" in err, (rc, out, err)
        assert host.run(f"systemctl is-active {unit(host, name)}")[1].strip() == "active"
        assert f"{MOVED_IP}:25" in listeners(host)
        assert f"/etc/{name}" in host.run("postconf -h multi_instance_directories")[1]
        assert queued(host, name) == 1
        assert host.sink_messages() == []
    finally:
        host.run("systemctl start opendkim")
    # Released: the message leaves signed, and the retirement goes through.
    received = wait_for(host, "queued while retiring", timeout=120)
    assert verify_dkim(received["data"], fleet["run"].outputs["dkimRecords"])
    deadline = time.monotonic() + 60
    while queued(host, name) and time.monotonic() < deadline:
        time.sleep(0.5)
    rc, out, err = fleet["mocks"].run_remote(retire["connection"], retire["delete"])
    assert rc == 0 and f"destroyed instance {name}" in out, (rc, out, err)
    assert name not in host.run("postmulti -l")[1]
    # Postfix no longer listens there. (Its queue exporter, on the same IP, goes with the metrics
    # step, which the engine updates before it deletes what left the program: not run here.)
    assert not [a for a in listeners(host) if a.startswith(f"{MOVED_IP}:") and a != f"{MOVED_IP}:{QUEUE_PORT}"]
    with pytest.raises((OSError, smtplib.SMTPException)):
        host.smtp(MOVED_IP, timeout=3).close()
