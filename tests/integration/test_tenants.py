"""Tenants on the real host: SASL submission on 587 and 465, each tenant bound to its domains and instances.

One host per suite (Debian 12 and 13), deployed by the real program under RealMocks with two
tenants: alice may send as example.com through postfix-43 only, bob as example.net through every
instance. The tests run in file order on that host. Tenants connect from documentation addresses
outside mynetworks (so nothing is allowed by address, and anvil's limits apply to them).
"""

from __future__ import annotations

import base64
import json
import re
import smtplib
import ssl
import threading
import time

import pytest

import dkim
import dkim.util

from integration import test_apply
from integration.test_apply import file_states, master_pid, message, step_output, verify_dkim, wait_for
from integration.testhost import SUITES, TestHost, booted
from mailfleet.render import AUTH_RATE_LIMIT

pytestmark = pytest.mark.integration

INSTANCES = [
    {"name": "postfix-43", "ip": "127.0.0.43", "hostname": "s43.mail.example.com"},
    {"name": "postfix-45", "ip": "127.0.0.45", "hostname": "s45.mail.example.com"},
]
RELAY_CLIENT = "198.51.100.7"  # inside relayNetworks
TENANT_CLIENT = "203.0.113.10"  # outside mynetworks: a tenant's application server
GUESSER = "203.0.113.66"  # outside mynetworks: someone guessing passwords
# One fresh address per expected refusal: Dovecot answers an address that failed before later and
# later (its auth penalty), and past Postfix's patience the answer is a 454, not a 535.
FRESH = ["203.0.113.20", "203.0.113.21", "203.0.113.22"]
PASSWORDS = {"alice": "alice-first-password-0001", "bob": "bob-password-is-long-enough",
             "alice-rotated": "alice-second-password-0002", "carol": "carol-has-a-password-too"}
ALICE = {"name": "alice", "password": PASSWORDS["alice"], "domains": ["example.com"], "instances": ["postfix-43"]}
BOB = {"name": "bob", "password": PASSWORDS["bob"], "domains": ["example.net", "mail.example.net"]}
TENANT_FILES = "/etc/dovecot /etc/mailfleet/tenant_senders /etc/mailfleet/tenant_senders.db /etc/postfix-4*"

figures: dict[str, float] = {}
STATE: dict[str, dict] = {}


def config_for(host: TestHost, tenants=(ALICE, BOB), **overrides) -> dict[str, str]:
    """test_apply's stack (its signing domains, relay network and sink) on this module's instances, with tenants."""
    return test_apply.config_for(host, INSTANCES, **{"mailfleet:tenants": list(tenants), **overrides})


def apply(host: TestHost, config: dict[str, str]):
    return test_apply.apply(host, config, STATE, secret_keys=("mailfleet:sshPrivateKey", "mailfleet:tenants"))


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT, TENANT_CLIENT, GUESSER, *FRESH], suite=suite) as test_host:
        yield test_host
    print(f"\nfigures: {json.dumps(figures)}")


@pytest.fixture(scope="module")
def deployed(host):
    run, mocks, seconds = apply(host, config_for(host))
    figures[f"{SUITES[host.suite]} first apply with tenants s"] = round(seconds, 1)
    assert "installed postfix opendkim opendkim-tools miltertest dovecot-core" in step_output(mocks)
    return {"run": run, "mocks": mocks}


# ---- helpers ----

def no_verify() -> ssl.SSLContext:
    return ssl._create_unverified_context()  # the certificates are checked in test_apply


def session(host: TestHost, ip: str, port: int, source: str = TENANT_CLIENT) -> smtplib.SMTP:
    """An SMTP session on 587 (after STARTTLS) or 465 (TLS from the start), EHLO sent. Patient:
    after failed logins Dovecot answers that address later and later (auth penalty, up to 15 s)."""
    if port == 465:
        client = host.smtp(ip, port=465, source=source, implicit_tls=True, ssl_context=no_verify(), timeout=40)
        client.ehlo("app.example")
    else:
        client = host.smtp(ip, port=port, source=source, timeout=40)
        client.ehlo("app.example")
        client.starttls(context=no_verify())
        client.ehlo("app.example")
    return client


def auth_plain(client: smtplib.SMTP, user: str, password: str) -> tuple[int, bytes]:
    token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    return client.docmd("AUTH", f"PLAIN {token}")


def send_as_tenant(host, ip, port, user, password, sender, subject, source=TENANT_CLIENT):
    with session(host, ip, port, source) as client:
        client.login(user, password)
        client.send_message(message(sender, subject))


def ip_of(name: str) -> str:
    return next(i["ip"] for i in INSTANCES if i["name"] == name)


def pids(host: TestHost) -> dict[str, int]:
    """Every process whose restart or reload would matter: the masters, their qmgrs, Dovecot."""
    found = {name: master_pid(host, name) for name in ("-", *(i["name"] for i in INSTANCES))}
    processes = [line.split() for line in host.run("ps -e -o pid=,ppid=,comm=")[1].splitlines()]
    qmgrs = {int(ppid): int(pid) for pid, ppid, comm in processes if comm == "qmgr"}
    found.update({f"qmgr {name}": qmgrs.get(pid) for name, pid in list(found.items())})
    found["dovecot"] = int(host.run("systemctl show -p MainPID --value dovecot")[1])
    return found


def signatures(data: str, dkim_records: dict[str, str]) -> list[tuple[str, bool]]:
    """Every DKIM-Signature of a received message: its d= and whether dkimpy verifies it against
    the stack's dkimRecords."""
    raw = data.encode("utf-8", "surrogateescape")
    headers, _ = dkim.rfc822_parse(raw)
    values = [value for name, value in headers if name.lower() == b"dkim-signature"]

    def dnsfunc(name, timeout=5):
        return dkim_records.get(name.decode().rstrip("."), "").encode()
    return [(dkim.util.parse_tag_value(re.sub(rb"\s+", b"", value))[b"d"].decode(),
             dkim.DKIM(raw).verify(idx=index, dnsfunc=dnsfunc)) for index, value in enumerate(values)]


def dmarc_aligned(received: dict, found: list[tuple[str, bool]]) -> bool:
    """Whether DMARC could pass for the From: domain (RFC 7489, relaxed alignment; the test's
    signing domains are organizational domains): a verified signature, or the envelope sender
    (SPF), in the From: domain's organizational domain."""
    header_from = re.search(r"^From:.*@([^>\s]+)", received["data"], re.M | re.I)[1].lower()

    def organizational(domain: str) -> str:
        return ".".join(domain.lower().split(".")[-2:])
    return (any(ok and organizational(d) == organizational(header_from) for d, ok in found)
            or organizational(received["mail_from"].rsplit("@", 1)[1]) == organizational(header_from))


def no_password_in(text: str) -> list[str]:
    return [name for name, password in PASSWORDS.items() if password in text]


# ---- 1. AUTH is offered only over TLS, only on 587 and 465 ----

def test_587_offers_auth_only_after_starttls_and_465_at_once_and_25_never(host, deployed):
    for instance in INSTANCES:
        with host.smtp(instance["ip"], port=587, source=TENANT_CLIENT) as client:
            client.ehlo("app.example")
            assert not client.has_extn("auth"), client.esmtp_features
            code, reply = auth_plain(client, "alice", PASSWORDS["alice"])
            assert code == 530 and b"STARTTLS" in reply, (code, reply)  # not before TLS
            client.starttls(context=no_verify())
            client.ehlo("app.example")
            assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        with host.smtp(instance["ip"], port=465, source=TENANT_CLIENT, implicit_tls=True,
                       ssl_context=no_verify()) as client:
            client.ehlo("app.example")
            assert client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        with host.smtp(instance["ip"], port=25, source=TENANT_CLIENT) as client:
            client.ehlo("app.example")
            client.starttls(context=no_verify())
            client.ehlo("app.example")
            assert not client.has_extn("auth"), (instance["name"], client.esmtp_features)


# ---- 2. a tenant sends as its domains, through its instances, signed ----

def test_a_tenant_submits_on_587_and_465_as_each_of_its_domains_signed_from_its_instance(host, deployed):
    dkim_records = deployed["run"].outputs["dkimRecords"]
    host.clear_sink()
    # (domain, the signing domain that covers it)
    cases = [("alice", "postfix-43", "example.com", "example.com"), ("bob", "postfix-43", "example.net", "example.net"),
             ("bob", "postfix-45", "example.net", "example.net"), ("bob", "postfix-45", "mail.example.net", "example.net")]
    for user, instance, domain, signing_domain in cases:
        for port in (587, 465):
            subject = f"tenant {user} {instance} {port} {domain}"
            send_as_tenant(host, ip_of(instance), port, user, PASSWORDS[user], f"news@{domain}", subject)
            received = wait_for(host, subject)
            assert signatures(received["data"], dkim_records) == [(signing_domain, True)], subject
            assert received["peer"] == ip_of(instance), (subject, received["peer"])
            assert received["mail_from"] == f"news@{domain}"
            # The tenant's login is not handed to the receiver.
            assert "authenticated sender" not in received["data"].split("\r\n\r\n", 1)[0].lower(), subject
    # smtpd logs the tenant's login with the message: the delivery log takes the tenant from it
    # (tests/integration/test_deliveries.py reads the log itself).
    log = host.run("journalctl --no-pager -o cat | grep -F 'sasl_username='")[1]
    assert "sasl_method=PLAIN, sasl_username=alice" in log and "sasl_username=bob" in log


# ---- 3. bound to its instances and its domains ----

def test_a_tenant_is_refused_at_auth_on_an_instance_not_assigned_to_it(host, deployed):
    for port in (587, 465):
        with session(host, ip_of("postfix-45"), port) as client:
            with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
                client.login("alice", PASSWORDS["alice"])
        assert refused.value.smtp_code == 535, refused.value


def test_a_tenant_cannot_send_as_another_tenants_domain_or_any_other(host, deployed):
    for sender in ("news@example.net", "news@sub.example.com", "news@elsewhere.example.org"):
        with session(host, ip_of("postfix-43"), 587) as client:
            client.login("alice", PASSWORDS["alice"])
            code, reply = client.mail(sender)
        assert code == 553 and b"not owned by user alice" in reply, (sender, code, reply)


def test_a_tenants_from_field_cannot_borrow_another_tenants_key(host, deployed):
    """OpenDKIM picks the key by the envelope sender (SenderMacro), which the tenant cannot choose
    outside its domains: a From: of another tenant's domain gets the sender's own signature only,
    so DMARC fails for the other domain."""
    dkim_records = deployed["run"].outputs["dkimRecords"]
    host.clear_sink()
    cases = [("alice", "postfix-43", "example.com", "example.net"), ("bob", "postfix-45", "example.net", "example.com"),
             ("bob", "postfix-43", "mail.example.net", "example.com")]
    for user, instance, own, other in cases:
        subject = f"tenant {user} as {own} with From: {other}"
        with session(host, ip_of(instance), 587) as client:
            client.login(user, PASSWORDS[user])
            client.send_message(message(f"news@{other}", subject), from_addr=f"news@{own}")
        received = wait_for(host, subject)
        assert received["mail_from"] == f"news@{own}", subject
        found = signatures(received["data"], dkim_records)
        assert found == [(".".join(own.split(".")[-2:]), True)], (subject, found)
        assert not dmarc_aligned(received, found), (subject, found)
    # Without an envelope sender OpenDKIM would take the From: field: a tenant may not send with
    # the null sender (the login check alone lets it pass).
    with session(host, ip_of("postfix-43"), 587) as client:
        client.login("alice", PASSWORDS["alice"])
        code, reply = client.mail("")
    assert code == 550 and b"not the null sender" in reply, (code, reply)


# ---- 4. wrong passwords: 535, then anvil's limit ----

def test_a_wrong_password_gets_535_and_repeated_attempts_hit_the_rate_limit(host, deployed):
    with session(host, ip_of("postfix-43"), 587, source=GUESSER) as client:
        code, reply = auth_plain(client, "alice", "not-alices-password")
    assert code == 535, (code, reply)
    # Dovecot answers a failing address later and later (its auth penalty, up to 15 s), so the
    # guesses come in parallel sessions: anvil counts each AUTH command as it arrives.
    replies: list[tuple[int, bytes]] = []

    def guess(n: int):
        try:
            client = host.smtp(ip_of("postfix-43"), port=587, source=GUESSER, timeout=60)
            with client:
                client.ehlo("guesser.example")
                client.starttls(context=no_verify())
                client.ehlo("guesser.example")
                replies.append(auth_plain(client, "alice", f"guess-{n}"))
        except (smtplib.SMTPException, OSError) as error:
            replies.append((0, str(error).encode()))

    started = time.monotonic()
    threads = [threading.Thread(target=guess, args=(n,)) for n in range(AUTH_RATE_LIMIT + 6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    figures[f"{SUITES[host.suite]} {len(threads)} parallel guesses s"] = round(time.monotonic() - started, 1)
    limited = [code for code, reply in replies if b"too many AUTH commands" in reply]
    assert limited and set(limited) == {450}, replies
    # The others: 535, or 454 when Postfix gave up waiting for Dovecot's penalised answer.
    assert len(limited) >= 5 and all(code in (535, 450, 454) for code, _ in replies), replies
    figures[f"{SUITES[host.suite]} guess replies"] = {str(c): sum(1 for code, _ in replies if code == c)
                                                     for c in sorted({code for code, _ in replies})}
    # Meanwhile the guesser's address is refused even with the right password; the tenant's own
    # address is not concerned.
    with session(host, ip_of("postfix-43"), 587, source=GUESSER) as client:
        assert auth_plain(client, "alice", PASSWORDS["alice"])[0] == 450
    with session(host, ip_of("postfix-43"), 587) as client:
        assert auth_plain(client, "alice", PASSWORDS["alice"])[0] == 235
    log = host.run("journalctl --no-pager -o cat | grep -F 'AUTH command rate limit' | tail -n 1", check=False)[1]
    print(f"\n{host.suite}: {log.strip()}")


# ---- 5. no clear password anywhere ----

def test_no_clear_password_in_the_state_the_steps_or_on_the_host(host, deployed):
    run, mocks = deployed["run"], deployed["mocks"]
    tenants_step = run.monitor.named("mailtest-tenants")
    assert "stdin" in tenants_step.secret_inputs and "stdin" in tenants_step.additional_secret_outputs
    stdin = mocks.commands["mailtest-tenants"]["stdin"]
    assert "{ARGON2ID}$argon2id$" in stdin and no_password_in(stdin) == []
    for registration in run.monitor.registrations.values():
        plain = {k: v for k, v in registration.inputs.items() if k not in registration.secret_inputs}
        outputs = {k: v for k, v in registration.outputs.items()
                   if k not in registration.secret_inputs and k not in registration.additional_secret_outputs}
        assert no_password_in(json.dumps([plain, outputs], default=str)) == [], registration.name
    for inputs in mocks.commands.values():  # every command line a step runs, and every script
        assert no_password_in(json.dumps(inputs, default=str)) == []
    assert no_password_in(json.dumps(mocks.log)) == []  # the steps' output
    files = host.run("cat /etc/dovecot/mailfleet/*.passwd /etc/dovecot/dovecot.conf /etc/mailfleet/tenant_senders")[1]
    assert no_password_in(files) == [] and "{ARGON2ID}" in files
    modes = host.run("stat -c '%n %U:%G %a' /etc/dovecot/mailfleet /etc/dovecot/mailfleet/*.passwd")[1].split("\n")
    assert all(line.endswith((" root:dovecot 750", " root:dovecot 640")) for line in modes if line), modes
    assert no_password_in(host.run("journalctl --no-pager -o cat")[1]) == []


def test_dovecot_runs_its_auth_service_only(host, deployed):
    assert host.run("doveconf -h protocols")[1].strip() == ""
    listening = host.run("ss -Hltnp")[1]
    assert "dovecot" not in listening, listening
    assert host.run("stat -c '%U:%G %a' /run/dovecot/auth-postfix")[1].strip() == "postfix:postfix 660"


# ---- 6. re-apply, and tenants changed with mail queued ----

def test_reapply_changes_no_file_and_restarts_nothing(host, deployed):
    files, before = file_states(host, TENANT_FILES), pids(host)
    _, mocks, seconds = apply(host, config_for(host))
    figures[f"{SUITES[host.suite]} re-apply with tenants s"] = round(seconds, 1)
    assert file_states(host, TENANT_FILES) == files
    assert pids(host) == before
    output = step_output(mocks)
    assert not re.search(r"^(changed|created|installed|started|reloaded|restarted|enabled|removed|rebuilt) ",
                         output, re.M), output


def test_adding_changing_and_removing_tenants_with_mail_queued_loses_nothing(host, deployed):
    host.clear_sink()
    queued = []
    # The sink stops answering: what the instances hold stays in their queues meanwhile.
    host._sink.send_signal(19)  # SIGSTOP, to the sink this test host started
    try:
        for n in range(3):
            for user, instance, domain in (("alice", "postfix-43", "example.com"), ("bob", "postfix-45", "example.net")):
                subject = f"queued {n} for {user}"
                send_as_tenant(host, ip_of(instance), 587, user, PASSWORDS[user], f"news@{domain}", subject)
                queued.append(subject)
        listing = host.run("postqueue -c /etc/postfix-43 -j; postqueue -c /etc/postfix-45 -j")[1]
        assert len([line for line in listing.splitlines() if line.strip()]) == 6, listing
        files, before = file_states(host, TENANT_FILES), pids(host)

        # alice's password rotated, bob removed, carol added with bob's domain on postfix-45 only.
        carol = {"name": "carol", "password": PASSWORDS["carol"], "domains": ["example.net"], "instances": ["postfix-45"]}
        alice = {**ALICE, "password": PASSWORDS["alice-rotated"]}
        command_lines: list[str] = []
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                command_lines.append(host.run("ps -e -o args=", check=False)[1])
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            _, mocks, seconds = apply(host, config_for(host, tenants=[alice, carol]))
        finally:
            sampling.set()
            sampler.join()
        figures[f"{SUITES[host.suite]} tenant change apply s"] = round(seconds, 1)
        assert len(command_lines) > 5 and no_password_in("\n".join(command_lines)) == []

        # Nothing restarted or reloaded: the same masters, qmgrs and Dovecot.
        assert pids(host) == before
        after = file_states(host, TENANT_FILES)
        differing = {p for p in set(files) | set(after) if files.get(p) != after.get(p)}
        assert differing == {"/etc/dovecot/mailfleet/postfix-43.passwd", "/etc/dovecot/mailfleet/postfix-45.passwd",
                             "/etc/mailfleet/tenant_senders", "/etc/mailfleet/tenant_senders.db"}, differing
        passwd = host.run("cat /etc/dovecot/mailfleet/*.passwd")[1]
        assert "bob:" not in passwd and "carol:" in passwd  # bob's credentials are gone

        with session(host, ip_of("postfix-43"), 587, source=FRESH[0]) as client:
            assert auth_plain(client, "alice", PASSWORDS["alice"])[0] == 535  # the old password
        for instance, source in (("postfix-43", FRESH[1]), ("postfix-45", FRESH[2])):
            with session(host, ip_of(instance), 465, source=source) as client:
                assert auth_plain(client, "bob", PASSWORDS["bob"])[0] == 535, instance
        send_as_tenant(host, ip_of("postfix-43"), 587, "alice", PASSWORDS["alice-rotated"], "news@example.com",
                       "after rotation alice")
        send_as_tenant(host, ip_of("postfix-45"), 465, "carol", PASSWORDS["carol"], "news@example.net", "added carol")
        queued += ["after rotation alice", "added carol"]
    finally:
        host._sink.send_signal(18)  # SIGCONT
    for instance in INSTANCES:
        host.run(f"postqueue -c /etc/{instance['name']} -f")
    dkim_records = deployed["run"].outputs["dkimRecords"]
    for subject in queued:
        assert verify_dkim(wait_for(host, subject, timeout=180)["data"], dkim_records), subject
    assert len(host.sink_messages()) == len(queued)
    assert "" == host.run("postqueue -c /etc/postfix-43 -j; postqueue -c /etc/postfix-45 -j")[1].strip()


# ---- 7. relay networks beside tenants, and without them ----

def test_relay_networks_keep_working_and_an_empty_list_leaves_only_tenants(host, deployed):
    host.clear_sink()
    dkim_records = deployed["run"].outputs["dkimRecords"]
    with host.smtp(ip_of("postfix-43"), source=RELAY_CLIENT) as client:
        client.send_message(message("news@example.com", "relay network on 25"))
        # With tenants, relay clients' mail is signed by its envelope sender's domain too.
        client.send_message(message("news@example.net", "relay network From example.net"), from_addr="news@example.com")
    received = wait_for(host, "relay network on 25")
    assert received["peer"] == ip_of("postfix-43")
    assert signatures(received["data"], dkim_records) == [("example.com", True)]
    received = wait_for(host, "relay network From example.net")
    assert signatures(received["data"], dkim_records) == [("example.com", True)]
    tenants = [{**ALICE, "password": PASSWORDS["alice-rotated"]}, BOB]
    apply(host, config_for(host, tenants=tenants, **{"mailfleet:relayNetworks": []}))
    for port in (25, 587):
        with host.smtp(ip_of("postfix-43"), port=port, source=RELAY_CLIENT) as client:
            client.ehlo("client.example")
            if port == 587:
                client.starttls(context=no_verify())
                client.ehlo("client.example")
            client.mail("news@example.com")
            code, reply = client.rcpt("someone@example.org")
        assert code == 554 and (b"Relay access denied" if port == 25 else b"Access denied") in reply, (port, code, reply)
    send_as_tenant(host, ip_of("postfix-43"), 587, "alice", PASSWORDS["alice-rotated"], "news@example.com",
                   "tenant without relay networks")
    assert wait_for(host, "tenant without relay networks")["peer"] == ip_of("postfix-43")


# ---- 8. no tenants left, then destroy ----

def test_without_tenants_dovecot_stops_587_serves_relay_networks_only_and_destroy_leaves_no_credential(host, deployed):
    _, mocks, _ = apply(host, config_for(host, tenants=[]))
    output = step_output(mocks)
    assert "removed /etc/dovecot/mailfleet: no tenants" in output
    assert "stopped and disabled dovecot: no tenants" in output
    state = host.run("systemctl is-active dovecot", check=False)[1].strip()
    assert state == "inactive", host.run("journalctl --no-pager -o short-precise -u dovecot | tail -n 30", check=False)[1]
    assert host.run("systemctl is-enabled dovecot", check=False)[1].strip() == "disabled"
    assert host.run("test -e /etc/dovecot/mailfleet", check=False)[0] != 0
    for port in (587, 465):  # an outsider is turned away at the greeting again, as before tenants
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            host.smtp(ip_of("postfix-43"), port=port, source=TENANT_CLIENT, implicit_tls=port == 465,
                      ssl_context=no_verify())
        assert refused.value.smtp_code == 554, (port, refused.value)
    with host.smtp(ip_of("postfix-43"), port=587, source=RELAY_CLIENT) as client:
        client.ehlo("client.example")
        client.starttls(context=no_verify())
        client.ehlo("client.example")
        assert not client.has_extn("auth")
        host.clear_sink()
        client.send_message(message("news@example.com", "relay network on 587 without tenants"))
    assert wait_for(host, "relay network on 587 without tenants")["peer"] == ip_of("postfix-43")
    # Destroy runs the step's delete (after every instance's): no credential or sender map stays.
    step = mocks.commands["mailtest-tenants"]
    rc, out, err = mocks.run_remote(step["connection"], step["delete"])
    assert rc == 0, err
    assert host.run("ls /etc/mailfleet/tenant_senders* /etc/dovecot/mailfleet", check=False)[0] != 0
