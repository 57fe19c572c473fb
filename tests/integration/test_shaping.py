"""Shaping for real: two instances with different per-group limits deliver a burst straight to
fake receivers (no relayhost), found through MX records, and every limit holds at the receiver.

The test's DNS server (dnsserver.py, inside the namespace) is the host's resolver; it routes
gmail.com and a Workspace-hosted corp.example (MX under google.com) to the fake Gmail, outlook.com
to the fake Outlook, and plain.example to a receiver of the default group. The fake receivers
(fakereceiver.py) log every connection and message, so the counts are the receivers' own: per
source IP, simultaneous connections, messages per connection, messages in any minute.
"""

from __future__ import annotations

import json
import re
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from harness import run_program
from integration.receiving import counts, direct_config, read_events, receiving, use_test_resolver
from integration.test_apply import StatefulMocks
from integration.testhost import TestHost, booted

pytestmark = pytest.mark.integration

GOOGLE = {"connections": 3, "messagesPerConnection": 10}
INSTANCES = [
    {"name": "postfix-43", "ip": "127.0.0.43", "hostname": "s43.mail.example.com",
     "shaping": {"google": GOOGLE, "microsoft": {"messagesPerMinute": 30, "messagesPerConnection": 4},
                 "default": {"connections": 4, "messagesPerConnection": 25}}},
    {"name": "postfix-45", "ip": "127.0.0.45", "hostname": "s45.mail.example.com",
     "shaping": {"google": {"connections": 2, "messagesPerConnection": 4},
                 "microsoft": {"messagesPerMinute": 20, "messagesPerConnection": 3},
                 "default": {"connections": 2, "messagesPerConnection": 1}}},
]
# The fleet's google group is wider than the built-in one; microsoft keeps its built-in limits
# except where an instance overrides them.
SHAPING = {"groups": {"google": {"connections": 4}, "default": {"connections": 6}}}
RELAY_CLIENT = "198.51.100.7"
DNS_IP = "127.0.0.153"
RECEIVERS = {"google": "127.0.0.61", "microsoft": "127.0.0.62", "other": "127.0.0.63"}
ZONE = f"""\
gmail.com. 300 IN MX 5 gmail-smtp-in.l.google.com.
gmail-smtp-in.l.google.com. 300 IN A {RECEIVERS["google"]}
corp.example. 300 IN MX 1 aspmx.l.google.com.
aspmx.l.google.com. 300 IN A {RECEIVERS["google"]}
outlook.com. 300 IN MX 5 outlook-com.olc.protection.outlook.com.
outlook-com.olc.protection.outlook.com. 300 IN A {RECEIVERS["microsoft"]}
plain.example. 300 IN MX 10 mx.plain.example.
mx.plain.example. 300 IN A {RECEIVERS["other"]}
"""
# Messages per instance and recipient domain: the paced microsoft group sets the run time
# (30 at 30 a minute, 30 at 20 a minute: about 1.5 minutes).
BURST = {"gmail.com": 300, "corp.example": 100, "outlook.com": 30, "plain.example": 200}

figures: dict[str, object] = {}
STATE: dict[str, dict] = {}  # per suite: keys and certificates kept between applies, as the engine keeps them


def config_for(host: TestHost, shaping: dict = SHAPING) -> dict[str, str]:
    return direct_config(host, INSTANCES, **{"mailfleet:shaping": shaping})


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT], suite=suite) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def network(host, tmp_path_factory):
    """The DNS server (the host's resolver) and the fake receivers, inside the namespace."""
    with receiving(host, tmp_path_factory.mktemp("shaping"), zone=ZONE, dns_ip=DNS_IP, receivers=RECEIVERS) as events:
        yield events


@pytest.fixture(scope="module")
def deployed(host, network):
    use_test_resolver(host, DNS_IP)
    mocks = StatefulMocks(host.connect, STATE.setdefault(host.suite, {}))
    run = run_program(config_for(host), mocks, secret_keys=["mailfleet:sshPrivateKey"], stack="shaping")
    use_test_resolver(host, DNS_IP)  # again, for the instances' chroots
    return run


def message(recipient: str, n: int) -> bytes:
    mail = EmailMessage()
    mail["From"] = "News <news@example.com>"
    mail["To"] = recipient
    mail["Subject"] = f"shaping {n}"
    mail.set_content(f"message {n} of the shaping burst\n")
    return mail.as_bytes()


def send_burst(host: TestHost, burst: dict[str, int]) -> int:
    """Interleaved by domain, as a mailing goes out; one SMTP session per instance."""
    total = 0
    for instance in INSTANCES:
        recipients = [f"user{n}@{domain}" for n in range(max(burst.values()))
                      for domain, count in burst.items() if n < count]
        with host.smtp(instance["ip"], source=RELAY_CLIENT, timeout=60) as client:
            client.ehlo("app7.corp.internal")
            for n, recipient in enumerate(recipients):
                client.sendmail("news@example.com", [recipient], message(recipient, n))
        total += len(recipients)
    return total


def wait_for_messages(host: TestHost, events_file: Path, total: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = read_events(events_file)
        if sum(e["event"] == "message" for e in events) >= total:
            return events
        time.sleep(2)
    queues = host.run("for d in /etc/postfix-4*; do postqueue -c $d -p | tail -n 5; done", check=False)[1]
    log = host.run("journalctl --no-pager -n 40 | grep -E 'postfix'", check=False)[1]
    delivered = sum(e["event"] == "message" for e in read_events(events_file))
    raise AssertionError(f"{delivered} of {total} messages reached the receivers in {timeout}s; queues:\n{queues}\n"
                         f"log:\n{log}")


@pytest.fixture(scope="module")
def burst(host, deployed, network):
    started = time.monotonic()
    # The whole burst is queued before any of it leaves (defer_transports, then a flush), so the
    # limits meet a full queue however fast this machine submits and signs: otherwise deliveries
    # keep pace with a slow submission and no limit is ever reached.
    transports = " ".join(f"smtp-{group}" for group in ("google", "microsoft", "yahoo", "apple", "default"))
    for instance in INSTANCES:
        directory = f"/etc/{instance['name']}"
        host.run(f"postconf -c {directory} -e 'defer_transports = {transports}' && postfix -c {directory} reload")
    total = send_burst(host, BURST)
    for instance in INSTANCES:
        directory = f"/etc/{instance['name']}"
        host.run(f"postconf -c {directory} -X defer_transports && postfix -c {directory} reload && "
                 f"postqueue -c {directory} -f")
    figures["submitted"] = total
    figures["submit s"] = round(time.monotonic() - started, 1)
    events = wait_for_messages(host, network, total, timeout=600)
    figures["delivered s"] = round(time.monotonic() - started, 1)
    seen = counts(events)
    for instance in INSTANCES:
        for receiver in RECEIVERS:
            figures[f"{instance['name']} -> {receiver}"] = seen[(receiver, instance["ip"])]
    return seen


def limits(instance: dict, group: str) -> dict:
    """The limits the instance should have for `group`, as mailfleet resolves them."""
    from mailfleet.config import BUILTIN_GROUPS
    return {**BUILTIN_GROUPS[group], **SHAPING["groups"].get(group, {}), **instance["shaping"].get(group, {})}


def test_the_burst_is_delivered_whole_and_the_queues_are_empty(host, burst):
    for instance in INSTANCES:
        got = {receiver: burst[(receiver, instance["ip"])]["messages"] for receiver in RECEIVERS}
        assert got == {"google": BURST["gmail.com"] + BURST["corp.example"], "microsoft": BURST["outlook.com"],
                       "other": BURST["plain.example"]}, instance["name"]
        assert host.run(f"postqueue -c /etc/{instance['name']} -p")[1].strip() == "Mail queue is empty"


def test_connections_and_messages_per_connection_hold_per_instance(burst):
    for instance in INSTANCES:
        for receiver, group in (("google", "google"), ("microsoft", "microsoft"), ("other", "default")):
            seen, limit = burst[(receiver, instance["ip"])], limits(instance, group)
            assert seen["max_per_connection"] <= limit["messagesPerConnection"], (instance["name"], group, seen)
            paced = limit["messagesPerMinute"] <= 60
            allowed = 1 if paced else limit["connections"]
            # Deliveries in progress (sessions in a mail transaction) never exceed the limit.
            assert seen["max_transactions"] <= allowed, (instance["name"], group, seen)
            # Open connections do too where the group keeps no idle connection: one message a
            # connection (no connection cache) or paced. Otherwise Postfix's connection cache
            # (scache) may hold idle connections besides the busy ones: measured, not asserted.
            if paced or limit["messagesPerConnection"] == 1:
                assert seen["max_connections"] <= allowed, (instance["name"], group, seen)
        google = burst[("google", instance["ip"])]
        # Not blind: with the whole burst queued, deliveries run in parallel, so the connection limit
        # is what holds them back. Reaching it exactly depends on how fast Postfix ramps its
        # concurrency up on a loaded 2-core machine (3 of 3 in some runs, 2 of 3 in others).
        assert google["max_transactions"] >= min(2, limits(instance, "google")["connections"]), google
        assert google["max_per_connection"] == limits(instance, "google")["messagesPerConnection"], google


def test_messages_per_minute_hold_where_postfix_paces(burst):
    for instance in INSTANCES:
        seen, limit = burst[("microsoft", instance["ip"])], limits(instance, "microsoft")
        assert seen["max_per_minute"] <= limit["messagesPerMinute"], (instance["name"], seen)
        # ... and close to it: within 25% (whole-second delays; see mailfleet/shaping.py).
        assert seen["per_minute"] >= 0.75 * limit["messagesPerMinute"], (instance["name"], seen)


def test_a_workspace_domain_goes_through_the_google_transport(host, burst):
    for instance in INSTANCES:
        log = host.run(f"journalctl --no-pager -o cat SYSLOG_IDENTIFIER={instance['name']}/smtp-google/smtp"
                       " | grep -c 'to=<user[0-9]*@corp.example>.*status=sent'", check=False)[1]
        assert int(log.strip() or 0) == BURST["corp.example"], (instance["name"], log)


def test_the_map_service_answers_postfix_by_mx_and_runs_confined(host, deployed):
    ask = ("runuser -u postfix -- python3 -I /usr/local/sbin/mailfleet-shaping-map"
           " --socket /run/mailfleet-shaping/map.sock --query")
    assert host.run(f"{ask} corp.example")[1].strip() == "OK smtp-google:"
    assert host.run(f"{ask} plain.example")[1].strip() == "NOTFOUND"
    assert host.run(f"{ask} outlook.com")[1].strip() == "OK smtp-microsoft:"
    # Postfix's own view: the instance's transport_maps, through its proxymap.
    # (the MX lookup is the entry named "transport"; the back-off lookup before it answers nothing here)
    maps = host.run("postconf -c /etc/postfix-43 -h transport_maps")[1].strip().split(", ")
    by_mx = next(m for m in maps if m.endswith(":transport"))
    assert host.run(f"postmap -c /etc/postfix-43 -q someone@corp.example '{by_mx}'")[1].strip() == "smtp-google:"
    user = host.run("ps -o user= -C python3")[1].split()
    assert user and "root" not in user and "postfix" not in user, user


def test_reapply_changes_nothing(host, deployed, burst):
    mocks = StatefulMocks(host.connect, STATE[host.suite])
    run_program(config_for(host), mocks, secret_keys=["mailfleet:sshPrivateKey"], stack="shaping")
    output = "\n".join(e.get("stdout") or "" for e in mocks.log if e["type"] == "command:remote:Command")
    assert not re.search(r"^(changed|created|installed|started|reloaded|restarted|enabled|removed|stopped) ",
                         output, re.M), output


def test_print_figures(burst):
    print("\nshaping: " + json.dumps(figures, indent=1))
