"""Warm-up for real: an instance on day 1 of its plan lets exactly the day's budget through to a
group and holds the rest in its own queue; the next day (the service's notion of today moved) the
release frees exactly the next budget, and after the plan everything is delivered, nothing lost.
The other instance, without a plan, is untouched. Then the re-apply proofs on the same host:
nothing changes when nothing changed, and a changed group limit reloads only the instance it
concerns (the other keeps its master and queue manager processes).

DNS, fake receivers and submission as in test_shaping.py (the receivers count per source IP).
"""

from __future__ import annotations

import datetime
import json
import re
import time

import pytest

from harness import run_program
from integration.receiving import counts, direct_config, read_events, receiving, use_test_resolver
from integration.test_apply import StatefulMocks
from integration.test_shaping import DNS_IP, RECEIVERS, RELAY_CLIENT, ZONE, message
from integration.testhost import TestHost, booted

pytestmark = pytest.mark.integration

TODAY = datetime.datetime.now(datetime.timezone.utc).date()
PLAN = {"google": [5, 8, 50], "microsoft": [3, 6]}
WARM = {"name": "postfix-43", "ip": "127.0.0.43", "hostname": "s43.mail.example.com",
        "warmup": {"start": TODAY.isoformat(), "plan": PLAN}}
OTHER = {"name": "postfix-45", "ip": "127.0.0.45", "hostname": "s45.mail.example.com",
         "shaping": {"google": {"connections": 2}}}
# Per recipient domain, one message each: gmail.com and the Workspace-hosted corp.example are the
# google group (16), outlook.com microsoft (6), plain.example the default group (no plan: 5).
BURST = {"gmail.com": 12, "corp.example": 4, "outlook.com": 6, "plain.example": 5}
GOOGLE = BURST["gmail.com"] + BURST["corp.example"]
OTHER_BURST = {"gmail.com": 7}
STATE: dict[str, dict] = {}
STATUS = "/var/lib/mailfleet/warmup/postfix-43.json"
figures: dict[str, object] = {}


def apply(host: TestHost, instances: list[dict]) -> str:
    mocks = StatefulMocks(host.connect, STATE.setdefault(host.suite, {}))
    run_program(direct_config(host, instances), mocks, secret_keys=["mailfleet:sshPrivateKey"], stack="warmup")
    return "\n".join(e.get("stdout") or "" for e in mocks.log if e["type"] == "command:remote:Command")


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[WARM["ip"], OTHER["ip"], RELAY_CLIENT], suite=suite) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def network(host, tmp_path_factory):
    with receiving(host, tmp_path_factory.mktemp("warmup"), zone=ZONE, dns_ip=DNS_IP, receivers=RECEIVERS) as events:
        yield events


@pytest.fixture(scope="module")
def deployed(host, network):
    use_test_resolver(host, DNS_IP)
    started = time.monotonic()
    apply(host, [WARM, OTHER])
    figures["first apply s"] = round(time.monotonic() - started, 1)
    use_test_resolver(host, DNS_IP)  # again, for the instances' chroots


def send(host: TestHost, ip: str, burst: dict[str, int], tag: str) -> list[str]:
    recipients = [f"{tag}{n}@{domain}" for n in range(max(burst.values()))
                  for domain, count in burst.items() if n < count]
    with host.smtp(ip, source=RELAY_CLIENT, timeout=60) as client:
        client.ehlo("app7.corp.internal")
        for n, recipient in enumerate(recipients):
            client.sendmail("news@example.com", [recipient], message(recipient, n))
    return recipients


def delivered(events_file, ip: str) -> dict[str, int]:
    seen = counts(read_events(events_file))
    return {receiver: seen.get((receiver, ip), {}).get("messages", 0) for receiver in RECEIVERS}


def queue(host: TestHost, instance: str) -> dict[str, int]:
    """Messages in the instance's queue, by queue (hold, active, deferred, ...)."""
    listing = host.run(f"postqueue -c /etc/{instance} -j")[1]
    result: dict[str, int] = {}
    for line in listing.splitlines():
        if line.strip():
            name = json.loads(line)["queue_name"]
            result[name] = result.get(name, 0) + 1
    return result


def settle(host: TestHost, events_file, expected: dict[str, int], timeout: float = 180) -> dict[str, int]:
    """Waits until the warm instance's receivers have `expected` and nothing but held mail is
    left in its queue; then a little more, so that a message too many would show."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, waiting = delivered(events_file, WARM["ip"]), queue(host, WARM["name"])
        if got == expected and set(waiting) <= {"hold"}:
            time.sleep(5)
            return delivered(events_file, WARM["ip"])
        time.sleep(1)
    log = host.run("journalctl --no-pager -n 30 -u mailfleet-warmup -u mailfleet-warmup-release", check=False)[1]
    raise AssertionError(f"expected {expected}, got {delivered(events_file, WARM['ip'])}; queue "
                         f"{queue(host, WARM['name'])}\n{log}")


def status(host: TestHost) -> dict:
    return json.loads(host.run(f"cat {STATUS}")[1])


def move_today(host: TestHost, day: datetime.date):
    """The service's notion of today, a day on (its drop-in), then the timer's job run at once."""
    host.run("mkdir -p /etc/systemd/system/mailfleet-warmup.service.d && printf '[Service]\\nEnvironment="
             f"MAILFLEET_WARMUP_TODAY={day.isoformat()}\\n' > /etc/systemd/system/mailfleet-warmup.service.d/today.conf"
             " && systemctl daemon-reload && systemctl restart mailfleet-warmup"
             " && systemctl start mailfleet-warmup-release.service")


@pytest.fixture(scope="module")
def day1(host, deployed, network):
    started = time.monotonic()
    sent = send(host, WARM["ip"], BURST, "d1-")
    other = send(host, OTHER["ip"], OTHER_BURST, "o-")
    figures["submitted"] = len(sent) + len(other)
    got = settle(host, network, {"google": PLAN["google"][0], "microsoft": PLAN["microsoft"][0],
                                 "other": BURST["plain.example"]})
    figures["day 1 settled s"] = round(time.monotonic() - started, 1)
    return got, queue(host, WARM["name"]), status(host)


@pytest.fixture(scope="module")
def day2(host, day1, network):
    move_today(host, TODAY + datetime.timedelta(days=1))
    got = settle(host, network, {"google": PLAN["google"][0] + PLAN["google"][1],
                                 "microsoft": BURST["outlook.com"], "other": BURST["plain.example"]})
    return got, queue(host, WARM["name"]), status(host)


@pytest.fixture(scope="module")
def day3(host, day2, network):
    move_today(host, TODAY + datetime.timedelta(days=2))
    got = settle(host, network, {"google": GOOGLE, "microsoft": BURST["outlook.com"], "other": BURST["plain.example"]})
    state = status(host)
    host.run("rm -rf /etc/systemd/system/mailfleet-warmup.service.d && systemctl daemon-reload"
             " && systemctl restart mailfleet-warmup")
    return got, queue(host, WARM["name"]), state


def test_day_one_lets_exactly_the_budget_through_and_holds_the_rest(day1, network):
    got, waiting, state = day1
    assert got == {"google": 5, "microsoft": 3, "other": BURST["plain.example"]}
    held = GOOGLE - 5 + BURST["outlook.com"] - 3
    assert waiting == {"hold": held}
    assert state["day"] == 1 and state["date"] == TODAY.isoformat() and state["instance"] == "postfix-43"
    assert state["groups"]["google"] == {"budget": 5, "sent": 5, "held": GOOGLE - 5}
    assert state["groups"]["microsoft"] == {"budget": 3, "sent": 3, "held": BURST["outlook.com"] - 3}


def test_the_instance_without_a_plan_is_untouched(day1, network, host):
    assert delivered(network, OTHER["ip"])["google"] == OTHER_BURST["gmail.com"]
    assert queue(host, OTHER["name"]) == {}
    assert "check_policy_service" not in host.run("postconf -c /etc/postfix-45 -h smtpd_recipient_restrictions")[1]


def test_the_next_day_releases_exactly_its_budget(day2):
    got, waiting, state = day2
    assert got["google"] == 5 + 8 and got["microsoft"] == 6
    assert waiting == {"hold": GOOGLE - 13}
    # The counts were kept through the service's restart (the day change came with one).
    assert state["day"] == 2 and state["groups"]["google"] == {"budget": 8, "sent": 8, "held": GOOGLE - 13}
    assert state["groups"]["microsoft"] == {"budget": 6, "sent": 3, "held": 0}


def test_the_last_days_deliver_everything_and_nothing_is_lost(day3, network):
    got, waiting, state = day3
    assert got == {"google": GOOGLE, "microsoft": BURST["outlook.com"], "other": BURST["plain.example"]}
    assert waiting == {}
    assert state["day"] == 3 and state["groups"]["google"]["held"] == 0
    # Every message once: as many received as submitted, none twice.
    events = read_events(network)
    assert sum(e["event"] == "message" for e in events) == sum(BURST.values()) + sum(OTHER_BURST.values())


def test_the_services_run_confined(host, deployed):
    assert host.run("systemctl is-active mailfleet-warmup mailfleet-warmup-release.timer")[1].split() == ["active"] * 2
    user = host.run("ps -o user= -p $(systemctl show -p MainPID --value mailfleet-warmup)")[1].strip()
    assert user and user not in ("root", "postfix"), user
    # The status probe, as smtpd asks: as postfix.
    answer = host.run("runuser -u postfix -- python3 -I /usr/local/sbin/mailfleet-warmup status"
                      " --socket /run/mailfleet-warmup/policy.sock postfix-43")[1]
    assert json.loads(answer)["instance"] == "postfix-43"


def processes(host: TestHost) -> dict[str, str]:
    """Per instance, its master and queue manager (pid and start time), and the host services' main pids."""
    result = {}
    for name in (WARM["name"], OTHER["name"]):
        master = host.run(f"head -1 /var/spool/{name}/pid/master.pid")[1].strip()
        result[name] = host.run(f"ps -o pid=,lstart=,comm= --ppid {master} -p {master} | grep -E 'master|qmgr'")[1]
    for unit in ("mailfleet-warmup", "mailfleet-shaping-map"):
        result[unit] = host.run(f"systemctl show -p MainPID --value {unit}")[1].strip()
    return result


@pytest.fixture(scope="module")
def reapplied(host, day3):
    before = processes(host)
    output = apply(host, [WARM, OTHER])
    return before, output, processes(host)


def test_reapply_changes_nothing(reapplied):
    before, output, after = reapplied
    assert not re.search(r"^(changed|created|installed|started|reloaded|restarted|enabled|removed|stopped|released) ",
                         output, re.M), output
    assert after == before


def test_a_changed_limit_reloads_only_the_instance_it_concerns_and_a_changed_plan_nothing(host, reapplied):
    before = processes(host)
    other = {**OTHER, "shaping": {"google": {"connections": 3}}}
    warm = {**WARM, "warmup": {"start": TODAY.isoformat(), "plan": {**PLAN, "google": [5, 8, 60]}}}
    started = time.monotonic()
    output = apply(host, [warm, other])
    figures["changed apply s"] = round(time.monotonic() - started, 1)
    after = processes(host)
    assert after["postfix-43"] == before["postfix-43"], output
    assert after["postfix-45"] != before["postfix-45"]  # its queue manager was restarted by the reload
    assert after["mailfleet-warmup"] == before["mailfleet-warmup"]  # the plan was re-read, not restarted
    assert after["mailfleet-shaping-map"] == before["mailfleet-shaping-map"]
    reloaded = re.findall(r"^reloaded .*", output, re.M)
    # The unit is postfix@postfix-45 (Debian 12) or postfix@45 (Debian 13).
    assert any(re.search(r"postfix[@-](postfix-)?45\b", line) for line in reloaded), output
    assert not any(re.search(r"postfix[@-](postfix-)?43\b", line) for line in reloaded), output
    assert "changed /etc/mailfleet/warmup/postfix-43.json" in output
    assert host.run("postconf -c /etc/postfix-45 -M smtp-google/unix")[1].split()[6] == "3"
    # Applied again, so the next module run starts from the configuration this one began with.
    apply(host, [WARM, OTHER])


def test_print_figures(day3):
    print("\nwarmup: " + json.dumps(figures, indent=1))
