"""The delivery log on the real host: known traffic through two instances to fake receivers with
scripted replies (accepted, 4xx, 5xx of several kinds, a domain that does not exist), and a tenant's
submission; every attempt Postfix logged is one line of the log, with the right fields, across
service restarts and a rotation. The suppression export lists exactly the hard-bounced addresses.

The journal itself is the reference: the test parses Postfix's delivery lines with its own,
simpler reading and compares them, attempt by attempt, with the log.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import re
import shlex
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from email.utils import make_msgid

import pytest

from harness import REPO, run_program
from integration.receiving import direct_config, receiving, use_test_resolver
from integration.test_apply import StatefulMocks, step_output
from integration.test_metrics import http_get
from integration.test_tenants import PASSWORDS, session
from integration.testhost import TestHost, booted
from mailfleet.deliveries import KEYS, PROCESSES
from mtail_cases import mailfleet_series

pytestmark = pytest.mark.integration

INSTANCES = [
    {"name": "postfix-43", "ip": "127.0.0.43", "hostname": "s43.mail.example.com"},
    {"name": "postfix-45", "ip": "127.0.0.45", "hostname": "s45.mail.example.com"},
]
ALICE = {"name": "alice", "password": PASSWORDS["alice"], "domains": ["example.com"]}
RELAY_CLIENT = "198.51.100.7"
TENANT_CLIENT = "203.0.113.10"
DNS_IP = "127.0.0.153"
RECEIVERS = {"google": "127.0.0.61", "microsoft": "127.0.0.62", "other": "127.0.0.63"}
ZONE = f"""\
gmail.com. 300 IN MX 5 gmail-smtp-in.l.google.com.
gmail-smtp-in.l.google.com. 300 IN A {RECEIVERS["google"]}
outlook.com. 300 IN MX 5 outlook-com.olc.protection.outlook.com.
outlook-com.olc.protection.outlook.com. 300 IN A {RECEIVERS["microsoft"]}
plain.example. 300 IN MX 10 mx.plain.example.
mx.plain.example. 300 IN A {RECEIVERS["other"]}
example.com. 300 IN MX 10 mx.plain.example.
"""
# Recipient local part -> the receivers' answer to its RCPT TO.
REPLIES = {
    "unknown": "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
               "550 5.1.1 double-checking the recipient's email address. https://support.google.com/mail/?p=NoSuchUser",
    "disabled": "550 5.2.1 The email account that you tried to reach is disabled.",
    "full": "452 4.2.2 The recipient's inbox is out of storage space.",
    "spammy": "550 5.7.1 Our system has detected that this message is likely unsolicited mail. To reduce the "
              "amount of spam sent to Gmail, this message has been blocked.",
    "unauth": "550 5.7.515 Access denied, sending domain example.com doesn't meet the required authentication level.",
    "throttled": "451 4.7.650 The mail server has been temporarily rate limited due to IP reputation.",
    "nobody": "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)",
}
# recipient -> (status, dsn, category, kind, group)
CASES = {
    "ok@gmail.com": ("sent", "2.0.0", None, None, "google"),
    "unknown@gmail.com": ("bounced", "5.1.1", "bad-mailbox", "hard", "google"),
    "disabled@gmail.com": ("bounced", "5.2.1", "inactive-mailbox", "hard", "google"),
    "full@gmail.com": ("deferred", "4.2.2", "quota-issues", "soft", "google"),
    "spammy@gmail.com": ("bounced", "5.7.1", "spam-related", "soft", "google"),
    "ok@outlook.com": ("sent", "2.0.0", None, None, "microsoft"),
    "unauth@outlook.com": ("bounced", "5.7.515", "policy-related", "soft", "microsoft"),
    "throttled@outlook.com": ("deferred", "4.7.650", "policy-related", "soft", "microsoft"),
    "nobody@outlook.com": ("bounced", "5.5.0", "bad-mailbox", "hard", "microsoft"),
    "ok@plain.example": ("sent", "2.0.0", None, None, "default"),
    "someone@nosuch.example": ("bounced", "5.4.4", "bad-domain", "hard", "default"),
}
HARD = sorted(r for r, case in CASES.items() if case[3] == "hard")
LOG = "/var/log/mailfleet/deliveries.jsonl"
SENDER = "news@example.com"
STATE: dict[str, dict] = {}
figures: dict[str, object] = {}


def apply(host: TestHost):
    mocks = StatefulMocks(host.connect, STATE.setdefault(host.suite, {}))
    run_program(direct_config(host, INSTANCES, **{"mailfleet:tenants": [ALICE]}), mocks, secret_keys=["mailfleet:sshPrivateKey", "mailfleet:tenants"],
                stack="deliveries")
    return mocks


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT, TENANT_CLIENT], suite=suite) as test_host:
        yield test_host
    print(f"\nfigures: {json.dumps(figures)}")


@pytest.fixture(scope="module")
def network(host, tmp_path_factory):
    with receiving(host, tmp_path_factory.mktemp("deliveries"), zone=ZONE, dns_ip=DNS_IP, receivers=RECEIVERS,
                   replies=REPLIES) as events:
        yield events


@pytest.fixture(scope="module")
def deployed(host, network):
    use_test_resolver(host, DNS_IP)
    mocks = apply(host)
    use_test_resolver(host, DNS_IP)  # again, for the instances' chroots
    return mocks


def message(recipient: str, subject: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = SENDER, recipient, subject
    mail["Message-ID"] = make_msgid(idstring=subject.replace(" ", "."), domain="app.example")
    mail.set_content(f"{subject}\n")
    return mail


def send(host: TestHost, ip: str, recipient: str, subject: str) -> str:
    mail = message(recipient, subject)
    with host.smtp(ip, source=RELAY_CLIENT, timeout=60) as client:
        client.send_message(mail)
    return mail["Message-ID"].strip("<>")


def log_records(host: TestHost) -> list[dict]:
    """Every line of the log and its rotations, oldest first."""
    text = host.run(f"for f in $(ls -r {LOG}.*.gz 2>/dev/null); do zcat $f; done; "
                    f"cat {LOG}.1 2>/dev/null || true; cat {LOG}")[1]
    return [json.loads(line) for line in text.splitlines()]


_ATTEMPT = re.compile(r"^([0-9A-Za-z]{5,}): to=<([^>]*)>.*, status=(sent|deferred|bounced) ")


def journal_attempts(host: TestHost) -> collections.Counter:
    """(instance, queue id, recipient, status) of every delivery line in the journal, as counted
    independently of the service."""
    out = host.run("journalctl --no-pager -b -o json --output-fields=MESSAGE,SYSLOG_IDENTIFIER "
                   "_COMM=smtp _COMM=error _COMM=qmgr _COMM=local _COMM=lmtp _COMM=virtual")[1]
    found = collections.Counter()
    for line in out.splitlines():
        entry = json.loads(line)
        attempt = _ATTEMPT.match(entry.get("MESSAGE") or "")
        if attempt and entry.get("SYSLOG_IDENTIFIER", "").startswith("postfix"):
            found[(entry["SYSLOG_IDENTIFIER"].split("/")[0], *attempt.groups())] += 1
    return found


def logged_attempts(records: list[dict]) -> collections.Counter:
    return collections.Counter((r["instance"], r["queue_id"], r["recipient"], r["status"]) for r in records
                               if r["status"] != "expired")


def wait_until_logged(host: TestHost, timeout: float = 60) -> list[dict]:
    """The log, once it holds every attempt of the journal (it follows within a second or two)."""
    deadline = time.monotonic() + timeout
    while True:
        expected, records = journal_attempts(host), log_records(host)
        if logged_attempts(records) == expected or time.monotonic() > deadline:
            return records
        time.sleep(1)


@pytest.fixture(scope="module")
def traffic(host, deployed, network):
    """Every case through both instances, and one tenant submission; the log once it has all."""
    message_ids = {}
    for instance in INSTANCES:
        for recipient in CASES:
            message_ids[(instance["name"], recipient)] = send(host, instance["ip"], recipient,
                                                              f"case {instance['name']} {recipient}")
    with session(host, INSTANCES[0]["ip"], 587, TENANT_CLIENT) as client:
        client.login("alice", PASSWORDS["alice"])
        client.send_message(message("ok@plain.example", "tenant alice submits"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        records = wait_until_logged(host)
        seen = {(r["instance"], r["recipient"]) for r in records if r["sender"] == SENDER}
        if all(key in seen for key in message_ids) and any(r["tenant"] == "alice" for r in records):
            break
        time.sleep(2)
    return {"message_ids": message_ids, "records": records}


def test_the_service_is_hardened_and_reads_the_journal_as_its_own_user(host, deployed):
    assert host.run("systemctl is-active mailfleet-deliveries")[1].strip() == "active"
    shown = host.run("systemctl show -p User -p NoNewPrivileges -p PrivateNetwork -p ProtectSystem "
                     "-p CapabilityBoundingSet mailfleet-deliveries")[1]
    assert "User=mailfleet-deliveries" in shown and "NoNewPrivileges=yes" in shown and "PrivateNetwork=yes" in shown
    assert "ProtectSystem=strict" in shown and "CapabilityBoundingSet=\n" in shown + "\n"
    assert host.run(f"stat -c '%U %G %a' {LOG}")[1].split() == ["mailfleet-deliveries", "adm", "640"]


def test_each_case_is_one_line_with_the_right_fields(host, traffic):
    records = traffic["records"]
    for line in host.run(f"head -n 3 {LOG}")[1].splitlines():
        assert list(json.loads(line)) == list(KEYS) and ", " not in line.split('"reply"')[0]
    ips = {i["name"]: i["ip"] for i in INSTANCES}
    for (instance, recipient), message_id in traffic["message_ids"].items():
        status, dsn, category, kind, group = CASES[recipient]
        # This case's message only (the tenant's submission also goes to ok@plain.example).
        mine = [r for r in records if r["instance"] == instance and r["recipient"] == recipient
                and r["message_id"] == message_id]
        assert mine, (instance, recipient)
        first = mine[0]
        got = (first["status"], first["dsn"], first["category"], first["kind"], first["group"])
        assert got == (status, dsn, category, kind, group), (instance, recipient, first)
        assert (first["ip"], first["message_id"], first["tenant"], first["host"]) == \
            (ips[instance], message_id, None, "mailtest"), first
        assert first["domain"] == recipient.split("@")[1] and isinstance(first["delay"], float)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
        if status == "bounced" and recipient.split("@")[0] in REPLIES:
            assert REPLIES[recipient.split("@")[0]].split("\r\n")[-1][4:] in first["reply"], first
        # A bounced or sent recipient is attempted once; a deferred one may be retried, still deferred.
        assert len(mine) == 1 or status == "deferred", mine


def test_a_tenants_submission_carries_its_tenant(host, traffic):
    tenant = [r for r in traffic["records"] if r["tenant"] == "alice"]
    assert tenant and all(r["instance"] == "postfix-43" and r["sender"] == SENDER for r in tenant), tenant
    assert {r["status"] for r in tenant} == {"sent"}
    # ... and the host's mtail counts it by tenant (its metrics endpoint, port 3903).
    def counted():
        series = mailfleet_series(http_get(host, "127.0.0.1", 3903))
        return sum(value for name, value in series.items()
                   if name.startswith("mailfleet_tenant_deliveries_total{") and 'tenant="alice"' in name)
    deadline = time.monotonic() + 30
    while counted() != len(tenant) and time.monotonic() < deadline:
        time.sleep(1)
    assert counted() == len(tenant)


def test_every_attempt_in_the_journal_is_exactly_one_line(host, traffic):
    assert logged_attempts(log_records(host)) == journal_attempts(host)


def test_the_suppression_export_lists_exactly_the_hard_bounces(host, traffic, tmp_path):
    path = tmp_path / "deliveries.jsonl"
    path.write_text(host.run(f"cat {LOG}")[1])
    result = subprocess.run([sys.executable, str(REPO / "tools" / "suppression.py"), str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert sorted(row["recipient"] for row in rows) == HARD
    assert {row["sender_domain"] for row in rows} == {"example.com"}


def test_restarts_and_a_rotation_mid_traffic_lose_and_repeat_no_line(host, traffic):
    done = threading.Event()
    sent = []

    def stream():
        n = 0
        while not done.is_set() or n < 40:
            instance = INSTANCES[n % 2]
            sent.append(send(host, instance["ip"], "ok@plain.example", f"stream {n}"))
            n += 1

    sender = threading.Thread(target=stream)
    sender.start()
    try:
        for action in ("systemctl restart mailfleet-deliveries", "logrotate -f /etc/logrotate.d/mailfleet-deliveries",
                       "systemctl kill -s KILL mailfleet-deliveries", "systemctl restart mailfleet-deliveries"):
            time.sleep(2)
            host.run(action)
    finally:
        done.set()
        sender.join(300)
    time.sleep(5)
    records = wait_until_logged(host, timeout=90)
    expected = journal_attempts(host)
    logged = logged_attempts(records)
    assert logged == expected, {"missing": expected - logged, "repeated": logged - expected}
    streamed = {r["message_id"] for r in records if r["recipient"] == "ok@plain.example" and r["status"] == "sent"}
    assert set(sent) <= streamed
    assert host.run(f"test -s {LOG}.1 && echo rotated")[1].strip() == "rotated"
    figures[f"{host.suite} attempts logged"] = sum(logged.values())


def test_no_secret_in_the_log(host, traffic):
    text = host.run(f"cat {LOG}* 2>/dev/null | zcat -f")[1]
    assert PASSWORDS["alice"] not in text and "PRIVATE KEY" not in text


def test_a_second_apply_changes_nothing(host, traffic):
    pid = host.run("systemctl show -p MainPID --value mailfleet-deliveries")[1].strip()
    mocks = apply(host)
    output = step_output(mocks)
    assert not [line for line in output.splitlines() if "deliveries" in line and
                re.match(r"(changed|restarted|started|created) ", line)], output
    assert host.run("systemctl show -p MainPID --value mailfleet-deliveries")[1].strip() == pid


# Entries no Postfix writes, under a delivery agent's name: journald's _COMM is the name the program
# was started by, so logger and python3 started through a link called "smtp" log as the smtp client
# does. Each stays a second after it logs: journald reads _COMM from /proc when it takes the entry,
# and from a process gone by then it gets none. Last in the module: the service writes their
# records to the log too.
AGENT = "postfix-43/smtp-default/smtp"
HOSTILE_SYSLOG = [  # through the syslog socket (logger), as Postfix logs
    b"HOSTILE0001: to=<\xff\xfe@bad.example>, relay=none, delay=1, delays=1/0/0/0, dsn=5.0.0, "
    b"status=bounced (\x01 \"quoted\" \\ back\tslash \xc3\x28)",
    b"HOSTILE0002: to=<unterminated",
    b"status=sent (no queue id)",
]
HOSTILE_NATIVE = [  # through the journal's own protocol (python3): a field twice, a field above 64 KiB
    f"SYSLOG_IDENTIFIER={AGENT}\n"
    "MESSAGE=HOSTILE0003: to=<first@x.example>, relay=none, delay=1, dsn=2.0.0, status=sent (250 first)\n"
    "MESSAGE=HOSTILE0003: to=<second@x.example>, relay=none, delay=1, dsn=2.0.0, status=sent (250 second)\n",
    f"SYSLOG_IDENTIFIER={AGENT}\n"
    "MESSAGE=HOSTILE0004: to=<long@x.example>, relay=none, delay=1, dsn=4.0.0, status=deferred (host x said: 421 "
    + "A" * 70_000 + ")\n",
]
SEND_NATIVE = """import socket, sys, time
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(sys.stdin.buffer.read(), "/run/systemd/journal/socket")
time.sleep(1)
"""


def octal(data: bytes) -> str:
    """Every byte as printf's octal escape: any bytes on an ASCII command line."""
    return "".join("\\%03o" % byte for byte in data)


def test_the_service_reads_the_journal_as_journalctl_shows_it_hostile_entries_too(host, traffic):
    """Differential: the in-process reader (sd-journal, what the service runs) against journalctl's
    JSON through the same parser, on this boot's whole journal, the hostile entries included."""
    host.run("mkdir -p /run/mailfleet-test/syslog /run/mailfleet-test/native && "
             "ln -sf /usr/bin/logger /run/mailfleet-test/syslog/smtp && "
             "ln -sf /usr/bin/python3 /run/mailfleet-test/native/smtp")
    for text in HOSTILE_SYSLOG:
        host.run(f"(printf '{octal(text)}\\n'; sleep 1) | /run/mailfleet-test/syslog/smtp -t {AGENT}")
    for datagram in HOSTILE_NATIVE:
        host.run(f"/run/mailfleet-test/native/smtp -c {shlex.quote(SEND_NATIVE)} <<'EOF'\n{datagram}EOF")
    config = "/etc/mailfleet/deliveries.json"
    program = "/usr/bin/python3 -I /usr/local/sbin/mailfleet-deliveries"
    # Both read until the end; the journal only grows: the first read is a prefix of the second.
    in_process = host.run(f"{program} --config {config} --journal")[1].splitlines()
    through_journalctl = host.run(
        "journalctl -b --all -o json --output-fields=MESSAGE,SYSLOG_IDENTIFIER "
        + " ".join(f"_COMM={name}" for name in PROCESSES) + f" | {program} --config {config} --parse")[1].splitlines()
    assert in_process and through_journalctl[:len(in_process)] == in_process
    hostile = {r["queue_id"]: r for r in map(json.loads, in_process) if r["queue_id"].startswith("HOSTILE")}
    assert set(hostile) == {"HOSTILE0001", "HOSTILE0003", "HOSTILE0004"}, hostile
    assert hostile["HOSTILE0001"]["recipient"] == "\ufffd\ufffd@bad.example"
    assert hostile["HOSTILE0003"]["recipient"] == "first@x.example"  # a repeated field: its first value
    assert len(hostile["HOSTILE0004"]["reply"]) > 70_000  # read in full, not cut at sd-journal's threshold
    # ... and the service wrote the same records (it reads what --journal reads).
    deadline = time.monotonic() + 30
    while True:
        logged = {r["queue_id"]: r for r in log_records(host) if r["queue_id"].startswith("HOSTILE")}
        if logged == hostile or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert logged == hostile
