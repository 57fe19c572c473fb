"""Back-off on push-back for real: a fake Gmail answers `421-4.7.28` beyond a rate and a fake
Outlook a (test-configured) block reply; that instance slows to the back-off rate for Gmail and
stops for Outlook for the configured minutes, then resumes; the other instance and the other
group keep their pace; everything is delivered, nothing bounced.

The setup is test_shaping's (two instances, the test DNS server and the fake receivers, two of
which push back here: fakereceiver.py --push-back). Back-offs last 2 minutes here, and the test
shortens Postfix's retry times (minimal_backoff_time, queue_run_delay) while it runs, so that the
deferred mail comes back during the back-off and after it within the module's few minutes.
"""

from __future__ import annotations

import calendar
import json
import re
import time

import pytest

from harness import run_program
from integration.receiving import receiving, use_test_resolver
from integration.test_apply import StatefulMocks
from integration.test_shaping import host  # noqa: F401 (the module's host: test_shaping's, booted anew)
from integration.test_shaping import (DNS_IP, INSTANCES, RECEIVERS, RELAY_CLIENT, ZONE, config_for, message,
                                      wait_for_messages)
from integration.testhost import TestHost

pytestmark = pytest.mark.integration

# Messages a minute from one IP before the fake receiver pushes back: beyond what postfix-45 sends,
# and more than what is left for postfix-43 after its back-off or suspension (so it ends once).
GMAIL_LIMIT, OUTLOOK_LIMIT = 25, 12
GMAIL_421 = ("421-4.7.28 [127.0.0.43] Our system has detected an unusual rate of unsolicited mail|"
             "421 4.7.28 originating from your IP address. To protect our users, mail is rate limited.")
OUTLOOK_BLOCK = "451 4.7.500 Server busy. Please try again later from [127.0.0.43]. (AS750)"
SHAPING = {"groups": {
    "google": {"backoff": {"minutes": 2, "connections": 1, "messagesPerMinute": 6}},
    "microsoft": {"suspend": {"patterns": [r"4\.7\.500"], "minutes": 2}},
}}
BACKOFF_RATE = 6
# postfix-43 goes beyond both receivers' rates; postfix-45 stays under them.
BURSTS = {"postfix-43": {"gmail.com": 45, "outlook.com": 20, "plain.example": 40},
          "postfix-45": {"gmail.com": 10, "outlook.com": 5, "plain.example": 10}}
# Retries within seconds, for the test only (set before the burst, removed before the re-apply).
FAST_RETRIES = {"minimal_backoff_time": "10s", "maximal_backoff_time": "20s", "queue_run_delay": "5s"}
STATE_FILE = "/var/lib/mailfleet-backoff/state.json"

STATE: dict[str, dict] = {}
figures: dict[str, object] = {}


@pytest.fixture(scope="module")
def network(host, tmp_path_factory):
    with receiving(host, tmp_path_factory.mktemp("backoff"), zone=ZONE, dns_ip=DNS_IP, receivers=RECEIVERS,
                   push_back={"google": (GMAIL_LIMIT, GMAIL_421), "microsoft": (OUTLOOK_LIMIT, OUTLOOK_BLOCK)}) as events:
        yield events


def apply(host: TestHost) -> StatefulMocks:
    mocks = StatefulMocks(host.connect, STATE.setdefault(host.suite, {}))
    run_program(config_for(host, SHAPING), mocks, secret_keys=["mailfleet:sshPrivateKey"], stack="backoff")
    return mocks


@pytest.fixture(scope="module")
def deployed(host, network):
    use_test_resolver(host, DNS_IP)
    apply(host)
    use_test_resolver(host, DNS_IP)  # again, for the instances' chroots


def postconf_all(host: TestHost, arguments: str):
    for instance in INSTANCES:
        directory = f"/etc/{instance['name']}"
        host.run(f"postconf -c {directory} {arguments} && postfix -c {directory} reload")


def active(host: TestHost) -> list[dict]:
    return json.loads(host.run(f"cat {STATE_FILE}")[1] or "{}").get("active", [])


@pytest.fixture(scope="module")
def run(host, deployed, network):
    """The burst, queued whole before any of it leaves (as test_shaping does), then delivered."""
    transports = " ".join(f"smtp-{group}" for group in ("google", "microsoft", "yahoo", "apple", "default"))
    postconf_all(host, "-e " + " ".join(f"'{k} = {v}'" for k, v in {**FAST_RETRIES, "defer_transports": transports}.items()))
    total = 0
    for instance in INSTANCES:
        recipients = [f"user{n}@{domain}" for n in range(50) for domain, count in BURSTS[instance["name"]].items()
                      if n < count]
        with host.smtp(instance["ip"], source=RELAY_CLIENT, timeout=60) as client:
            client.ehlo("app7.corp.internal")
            for n, recipient in enumerate(recipients):
                client.sendmail("news@example.com", [recipient], message(recipient, n))
        total += len(recipients)
    started = time.time()
    postconf_all(host, "-X defer_transports")
    host.run("for d in /etc/postfix-4*; do postqueue -c $d -f; done")
    # The back-offs as the service sets them, seen while they are active.
    seen: dict[tuple[str, str], dict] = {}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(seen) < 2:
        seen.update({(e["instance"], e["group"]): e for e in active(host)})
        time.sleep(1)
    events = wait_for_messages(host, network, total, timeout=480)
    figures["delivered s"] = round(time.time() - started, 1)
    host.run("for d in /etc/postfix-4*; do n=0; until postqueue -c $d -p | grep -q 'Mail queue is empty';"
             " do n=$((n+1)); [ $n -gt 60 ] && break; sleep 1; done; done")
    deadline = time.monotonic() + 300  # the back-offs end at their time, with no new event
    while active(host) and time.monotonic() < deadline:
        time.sleep(2)
    postconf_all(host, "-X " + " ".join(FAST_RETRIES))
    journal = host.run("journalctl --no-pager -o cat -u mailfleet-deliveries", check=False)[1]
    # For a failure's diagnosis: the instance's attempts to the pushing receivers, and the events.
    attempts = host.run("journalctl --no-pager -o short-unix SYSLOG_IDENTIFIER=postfix-43/smtp-google/smtp "
                        "SYSLOG_IDENTIFIER=postfix-43/smtp-google-backoff/smtp SYSLOG_IDENTIFIER=postfix-43/retry "
                        "SYSLOG_IDENTIFIER=postfix-43/smtp-microsoft/smtp SYSLOG_IDENTIFIER=postfix-43/qmgr "
                        "| grep -E 'gmail|outlook' | grep -E 'status=|warning' | cut -c1-260", check=False)[1]
    (network.parent / "attempts.log").write_text(attempts + "\n" + journal)
    print(f"\nbackoff: the attempts and the service's journal are in {network.parent / 'attempts.log'}")
    figures["service lines"] = [line for line in journal.splitlines() if "group" in line]
    # Where each ended: later push-back replies may have pushed the end out after it was first seen.
    ended: dict[str, float] = {}
    for group, stamp in re.findall(r"postfix-43: the (\w+) group's (?:back-off|suspension) ended at (\S+) ", journal):
        ended.setdefault(group, calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    return {"events": events, "seen": seen, "ended": ended, "started": started, "total": total, "journal": journal}


def messages(run, receiver: str, ip: str, start: float = 0, end: float = float("inf")) -> list[float]:
    return sorted(e["t"] for e in run["events"] if e["event"] == "message" and e["receiver"] == receiver
                  and e["peer"] == ip and start <= e["t"] < end)


def most_in_a_minute(stamps: list[float]) -> int:
    return max((sum(1 for t in stamps if s <= t < s + 60) for s in stamps), default=0)


def test_the_pushing_back_instance_and_group_only_are_backed_off_and_suspended(run):
    assert set(run["seen"]) == {("postfix-43", "google"), ("postfix-43", "microsoft")}, run["seen"]
    google, microsoft = run["seen"][("postfix-43", "google")], run["seen"][("postfix-43", "microsoft")]
    assert (google["action"], google["pattern"]) == ("backoff", r"4\.7\.28")
    assert (microsoft["action"], microsoft["pattern"]) == ("suspend", r"4\.7\.500")
    assert 2 * 60 <= google["until"] - google["since"]
    # Pushed out by later replies (the receiver's minute is full for a while) but not forever.
    assert set(run["ended"]) == {"google", "microsoft"}, run["journal"]
    assert run["ended"]["google"] - google["since"] <= 2 * 60 + 120
    # The service said so in the journal, and that they ended, without any new event.
    assert re.search(r"postfix-43: backed off the google group until \S+ \(reply matched", run["journal"])
    assert re.search(r"postfix-43: suspended the microsoft group until ", run["journal"])
    assert re.search(r"postfix-43: the google group's back-off ended at ", run["journal"])
    assert re.search(r"postfix-43: the microsoft group's suspension ended at ", run["journal"])
    assert "postfix-45" not in "\n".join(figures["service lines"])


def test_gmail_gets_the_back_off_rate_from_that_ip_then_its_pace_again(run):
    google = run["seen"][("postfix-43", "google")]
    before = messages(run, "google", "127.0.0.43", end=google["since"])
    end = run["ended"]["google"]
    during = messages(run, "google", "127.0.0.43", google["since"] + 5, end)
    after = messages(run, "google", "127.0.0.43", end)
    figures.update({"gmail before": len(before), "gmail during": len(during), "gmail after": len(after),
                    "gmail most a minute during": most_in_a_minute(during)})
    assert len(before) >= GMAIL_LIMIT - 1  # it went fast until the receiver pushed back
    assert 1 <= len(during) and most_in_a_minute(during) <= BACKOFF_RATE + 1, during
    gaps = [b - a for a, b in zip(during, during[1:])]
    assert all(gap >= 60 / BACKOFF_RATE - 1 for gap in gaps), gaps  # the slow transport's rate delay
    assert after, "nothing after the back-off ended"
    if len(after) > 1:  # its own pace again: no 10 s rate delay
        assert min(b - a for a, b in zip(after, after[1:])) < 60 / BACKOFF_RATE - 1, after


def test_a_suspension_stops_that_group_on_that_ip_for_its_time(run):
    microsoft = run["seen"][("postfix-43", "microsoft")]
    end = run["ended"]["microsoft"]
    during = messages(run, "microsoft", "127.0.0.43", microsoft["since"] + 5, end)
    after = messages(run, "microsoft", "127.0.0.43", end)
    figures.update({"outlook during suspension": len(during), "outlook after": len(after)})
    assert during == []
    assert after


def test_the_other_instance_and_the_other_group_keep_their_pace(run, host):
    plain = messages(run, "other", "127.0.0.43")
    assert len(plain) == BURSTS["postfix-43"]["plain.example"] and plain[-1] < run["ended"]["google"]
    assert most_in_a_minute(plain) > BACKOFF_RATE
    for receiver, domain in (("google", "gmail.com"), ("microsoft", "outlook.com"), ("other", "plain.example")):
        assert len(messages(run, receiver, "127.0.0.45")) == BURSTS["postfix-45"][domain]
    slow = host.run("journalctl --no-pager -o cat SYSLOG_IDENTIFIER=postfix-45/smtp-google-backoff/smtp"
                    " | grep -c status=", check=False)[1]
    assert int(slow.strip() or 0) == 0


def test_everything_is_delivered_and_nothing_bounced(run, host):
    for instance in INSTANCES:
        name = instance["name"]
        got = {receiver: len(messages(run, receiver, instance["ip"])) for receiver in RECEIVERS}
        burst = BURSTS[name]
        assert got == {"google": burst["gmail.com"], "microsoft": burst["outlook.com"],
                       "other": burst["plain.example"]}, name
        assert host.run(f"postqueue -c /etc/{name} -p")[1].strip() == "Mail queue is empty"
    bounced = host.run("journalctl --no-pager -o cat SYSLOG_IDENTIFIER=postfix-43/smtp-google/smtp "
                       "SYSLOG_IDENTIFIER=postfix-43/smtp-google-backoff/smtp SYSLOG_IDENTIFIER=postfix-43/retry "
                       "SYSLOG_IDENTIFIER=postfix-43/smtp-microsoft/smtp | grep -c status=bounced", check=False)[1]
    assert int(bounced.strip() or 0) == 0
    assert active(host) == []


def test_reapply_changes_nothing(host, run):
    mocks = apply(host)
    output = "\n".join(e.get("stdout") or "" for e in mocks.log if e["type"] == "command:remote:Command")
    assert not re.search(r"^(changed|created|installed|started|reloaded|restarted|enabled|removed|stopped) ",
                         output, re.M), output


def test_print_figures(run):
    print("\nbackoff: " + json.dumps(figures, indent=1))
