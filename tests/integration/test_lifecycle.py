"""Changes over a fleet's life, on a real host of this module's own: what the remote steps promise
when an address moves, a DKIM key leaves, an IP is missing, or an instance with mail is retired;
and the submission ports as a client meets them.

Shares test_apply.py's helpers (its config, apply and host readers). The tests run in file order on
one host: deploy two instances, then change them step by step.
"""

from __future__ import annotations

import smtplib
import time

import pytest
from pulumi.runtime.sync_await import _ensure_event_loop

from harness import run_program
from integration.test_apply import (DOMAINS, INSTANCES, RELAY_CLIENT, STATE, StatefulMocks, apply, config_for,
                                    file_states, listeners, master_pid, message, service_pids, step_output,
                                    unit, verify_dkim, wait_for)
from integration.testhost import OUTSIDE_CLIENT_IP, TestHost, booted

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


# ---- a host that OpenDKIM signed for (mailfleet before mailfleet-signer) moves over in one apply ----

OLD_SOCKET = "/var/spool/opendkim/opendkim.sock"
OLD_OPENDKIM_CONF = f"""# Managed by mailfleet: edits here are overwritten on the next `pulumi up`.
Mode s
UserID opendkim
UMask 007
Socket local:{OLD_SOCKET}
PidFile /run/opendkim/opendkim.pid
KeyTable file:/etc/opendkim/KeyTable
SigningTable refile:/etc/opendkim/SigningTable
InternalHosts refile:/etc/opendkim/TrustedHosts
"""


def test_a_host_that_opendkim_signed_for_moves_to_the_signer(host, fleet):
    """The layout the previous mailfleet left: its opendkim.conf (Debian's kept as .pre-mailfleet),
    TrustedHosts, OpenDKIM running on a socket in /var/spool/opendkim that every instance names."""
    debian_conf = host.run("cat /etc/opendkim.conf")[1]
    host.run("systemctl disable -q --now mailfleet-signer")
    host.run("cp -p /etc/opendkim.conf /etc/opendkim.conf.pre-mailfleet && "
             "install -d -m 2750 -o opendkim -g postfix /var/spool/opendkim && "
             f"printf '127.0.0.0/8\\n{RELAY_CLIENT}\\n' >/etc/opendkim/TrustedHosts && "
             "cat >/etc/opendkim.conf <<'EOF'\n"
             f"{OLD_OPENDKIM_CONF}EOF\nsystemctl enable -q --now opendkim")
    for instance in fleet["instances"]:
        directory = f"/etc/{instance['name']}"
        host.run(f"postconf -c {directory} -e smtpd_milters=unix:{OLD_SOCKET} && postfix -c {directory} reload")
    host.clear_sink()
    with host.smtp(FIRST["ip"], source=RELAY_CLIENT) as client:
        client.send_message(message("news@example.com", "signed by OpenDKIM"))
    assert verify_dkim(wait_for(host, "signed by OpenDKIM")["data"], fleet["run"].outputs["dkimRecords"])

    run, mocks, _ = apply(host, config_for(host, instances=fleet["instances"]))
    output = step_output(mocks)
    assert "stopped and disabled opendkim: mailfleet-signer signs" in output, output
    assert "restored the package's /etc/opendkim.conf" in output, output
    assert host.run("cat /etc/opendkim.conf")[1] == debian_conf
    assert host.run("systemctl is-enabled opendkim", check=False)[1].strip() == "disabled"
    assert host.run("systemctl is-active mailfleet-signer")[1].strip() == "active"
    for gone in ("/var/spool/opendkim", "/etc/opendkim/TrustedHosts", "/etc/opendkim.conf.pre-mailfleet"):
        assert host.run(f"test -e {gone}", check=False)[0] != 0, gone
    for instance in fleet["instances"]:
        milters = host.run(f"postconf -c /etc/{instance['name']} -h smtpd_milters")[1].strip()
        assert milters == "unix:/var/spool/mailfleet-signer/milter.sock", (instance["name"], milters)
    host.clear_sink()
    with host.smtp(FIRST["ip"], source=RELAY_CLIENT) as client:
        client.send_message(message("news@example.com", "signed by mailfleet-signer"))
    assert verify_dkim(wait_for(host, "signed by mailfleet-signer")["data"], run.outputs["dkimRecords"])
    # And the next apply has nothing left to move.
    _, mocks, _ = apply(host, config_for(host, instances=fleet["instances"]))
    assert "opendkim" not in step_output(mocks), step_output(mocks)


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
    assert host.run("systemctl is-active mailfleet-signer")[1].strip() == "active"
    host.clear_sink()
    with host.smtp(FIRST["ip"], source=RELAY_CLIENT) as client:
        client.send_message(message(f"news@{kept_domain}", "after a key left"))
    assert verify_dkim(wait_for(host, "after a key left")["data"], run.outputs["dkimRecords"])


# ---- retiring an instance that still holds mail: refused, nothing lost; then it goes ----

def test_retiring_an_instance_with_queued_mail_is_refused_until_the_queue_drains(host, fleet):
    name = SECOND["name"]
    retire = fleet["mocks"].commands[f"{name}-config"]  # the delete the engine runs when it leaves
    # With the signer down, local mail waits in the instance's queue (maildrop): it cannot leave unsigned.
    host.run("systemctl stop mailfleet-signer")
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
        host.run("systemctl start mailfleet-signer")
    # Released: the message leaves signed, and the retirement goes through.
    received = wait_for(host, "queued while retiring", timeout=120)
    assert verify_dkim(received["data"], fleet["run"].outputs["dkimRecords"])
    deadline = time.monotonic() + 60
    while queued(host, name) and time.monotonic() < deadline:
        time.sleep(0.5)
    rc, out, err = fleet["mocks"].run_remote(retire["connection"], retire["delete"])
    assert rc == 0 and f"destroyed instance {name}" in out, (rc, out, err)
    assert name not in host.run("postmulti -l")[1]
    assert not any(address.startswith(f"{MOVED_IP}:") for address in listeners(host))
    with pytest.raises((OSError, smtplib.SMTPException)):
        host.smtp(MOVED_IP, timeout=3).close()
