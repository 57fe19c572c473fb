"""tools/status.py against a real host: what it shows is what the host holds and what DNS says.

The host gets two instances behind one-to-one NAT (public addresses 203.0.113.43 and .45), known
delivery-log lines (the log's own format), a warm-up state for one instance, and two messages in
one instance's hold queue. The test's DNS server (dnsserver.py, inside the namespace, the only
resolver the tool sees) serves the stack's own zone without the PTR of .45, and two test
blocklists: dnsbl.test lists .43 (with a TXT reason), refusing.test answers Spamhaus's "public
resolver refused" code for .45. No real blocklist is ever asked.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path

import pytest

from harness import run_program
from integration.test_apply import StatefulMocks
from integration.receiving import start, stop
from integration.testhost import booted

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent.parent
INSTANCES = [
    {"name": "postfix-43", "ip": "127.0.0.43", "publicIp": "203.0.113.43", "hostname": "s43.mail.example.com"},
    {"name": "postfix-45", "ip": "127.0.0.45", "publicIp": "203.0.113.45", "hostname": "s45.mail.example.com"},
]
RELAY_CLIENT = "198.51.100.7"
DNS_IP = "127.0.0.153"
BLOCKLISTS = ["dnsbl.test", "refusing.test"]
REASON = "listed for testing: https://dnsbl.test/203.0.113.43"
TSS04 = "421 4.7.0 [TSS04] Messages from 203.0.113.43 temporarily deferred"
BUSY = "451 4.7.500 Server busy. Please try again later."
# (minutes ago, instance, group, status, reply)
DELIVERIES = [
    (75, "postfix-43", "google", "sent", "250 2.0.0 OK"),  # before the hour: not counted
    (50, "postfix-43", "google", "sent", "250 2.0.0 OK"),
    (40, "postfix-43", "google", "sent", "250 2.0.0 OK"),
    (30, "postfix-43", "google", "deferred", TSS04),
    (20, "postfix-43", "google", "deferred", TSS04),
    (15, "postfix-43", "microsoft", "deferred", BUSY),
    (10, "postfix-43", "microsoft", "bounced", "550 5.1.1 mailbox unavailable"),
    (5, "postfix-45", "default", "sent", "250 ok"),
]
WARMUP = {"instance": "postfix-43", "start": "2026-12-01", "day": 4, "date": "2026-12-04",
          "groups": {"google": {"budget": 400, "sent": 37, "held": 0}}}
STATE: dict[str, dict] = {}


def config_for(host) -> dict[str, str]:
    config = {
        "mailfleet:hosts": [{"name": "mailtest", "address": "127.0.0.1", "instances": INSTANCES}],
        "mailfleet:sshPrivateKey": host.ssh_private_key,
        "mailfleet:dkim": [{"domain": "example.com", "selector": "s1"}],
        "mailfleet:relayNetworks": ["198.51.100.0/24"],
        "mailfleet:blocklists": BLOCKLISTS,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def log_line(now: datetime, minutes: int, instance: str, group: str, status: str, reply: str) -> str:
    moment = (now - timedelta(minutes=minutes)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ip = next(i["publicIp"] for i in INSTANCES if i["name"] == instance)
    return json.dumps({"time": moment, "host": "mailtest", "instance": instance, "ip": ip, "queue_id": "4Qabc",
                       "message_id": "<m@example.com>", "sender": "news@example.com",
                       "recipient": "someone@gmail.com", "domain": "gmail.com", "group": group, "tenant": None,
                       "status": status, "dsn": reply.split()[1], "category": None, "kind": None, "reply": reply,
                       "relay": "mx.example[192.0.2.1]:25", "delay": 1.5, "attempt": 1}, separators=(",", ":"))


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT], suite=suite) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def deployed(host):
    return run_program(config_for(host), StatefulMocks(host.connect, STATE.setdefault(host.suite, {})),
                       secret_keys=["mailfleet:sshPrivateKey"], stack="status")


@pytest.fixture(scope="module")
def prepared(host, deployed):
    now = datetime.now(timezone.utc)
    lines = "\n".join(log_line(now, *delivery) for delivery in DELIVERIES) + "\n"
    host.run(f"mkdir -p /var/log/mailfleet /var/lib/mailfleet/warmup && cat > /var/log/mailfleet/deliveries.jsonl"
             f" <<'EOF'\n{lines}EOF\ncat > /var/lib/mailfleet/warmup/postfix-43.json <<'EOF'\n{json.dumps(WARMUP)}\nEOF")
    # Mail for hold.example goes to postfix-43's hold queue on arrival: no delivery attempt.
    directory = "/etc/postfix-43"
    current = host.run(f"postconf -c {directory} -h smtpd_recipient_restrictions")[1].strip()
    host.run(f"postconf -c {directory} -e 'smtpd_recipient_restrictions = "
             f"check_recipient_access inline:{{hold.example=HOLD}}, {current}' && postfix -c {directory} reload")
    with host.smtp("127.0.0.43", source=RELAY_CLIENT, timeout=60) as client:
        for n in range(2):
            mail = EmailMessage()
            mail["From"], mail["To"], mail["Subject"] = "news@example.com", f"user{n}@hold.example", "held"
            mail.set_content("held for the status test\n")
            client.sendmail("news@example.com", [mail["To"]], mail.as_bytes())
    for _ in range(30):
        if host.run(f"postqueue -c {directory} -j | grep -c '\"queue_name\": *\"hold\"'", check=False)[1].strip() == "2":
            break
        time.sleep(1)
    return now


@pytest.fixture(scope="module")
def dns(host, deployed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("status")
    zone = [line for line in deployed.outputs["zoneFile"].splitlines() if "45.113.0.203.in-addr.arpa" not in line]
    zone += ["43.113.0.203.dnsbl.test. 300 IN A 127.0.0.2",
             f'43.113.0.203.dnsbl.test. 300 IN TXT "{REASON}"',
             "45.113.0.203.refusing.test. 300 IN A 127.255.255.254"]
    (folder / "zone").write_text("\n".join(zone) + "\n")
    (folder / "resolv.conf").write_text(f"nameserver {DNS_IP}\n")
    (folder / "outputs.json").write_text(json.dumps(deployed.outputs))
    (folder / "config.json").write_text(json.dumps(config_for(host)))
    server = start(host, "dnsserver.py", "--zone", str(folder / "zone"), "--address", DNS_IP)
    try:
        yield folder
    finally:
        stop(server)


def run_status(host, folder: Path, *extra: str) -> subprocess.CompletedProcess:
    """The tool in the host's namespace, with the test DNS server as its system resolver."""
    command = (f"mount --bind {folder / 'resolv.conf'} /etc/resolv.conf && exec {sys.executable} "
               f"{REPO / 'tools' / 'status.py'} status --outputs {folder / 'outputs.json'} "
               f"--config {folder / 'config.json'} {' '.join(extra)}")
    return subprocess.run(["ip", "netns", "exec", host.netns, "unshare", "--mount", "sh", "-c", command],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def as_json(host, prepared, dns):
    result = run_status(host, dns, "--json", "--textfile", str(dns / "blocklists.prom"))
    assert result.returncode == 1, result.stderr  # something needs attention: a listing, a PTR
    return json.loads(result.stdout)


def test_queues_are_postqueue_s_counts(as_json):
    queues = {item["name"]: item["queue"] for item in as_json["instances"]}
    assert queues == {"postfix-43": {"incoming": 0, "active": 0, "deferred": 0, "hold": 2},
                      "postfix-45": {"incoming": 0, "active": 0, "deferred": 0, "hold": 0}}


def test_the_last_hour_is_the_delivery_log_s_figures(as_json):
    first, second = as_json["instances"]
    assert first["lastHour"]["groups"] == {
        "google": {"sent": 2, "deferred": 2, "bounced": 0, "expired": 0},
        "microsoft": {"sent": 0, "deferred": 1, "bounced": 1, "expired": 0}}
    assert first["lastHour"]["topDeferrals"] == [{"reply": TSS04, "count": 2}, {"reply": BUSY, "count": 1}]
    assert second["lastHour"]["totals"] == {"sent": 1, "deferred": 0, "bounced": 0, "expired": 0}
    assert first["warmup"]["day"] == 4 and second["warmup"] is None


def test_dns_state_and_blocklist_listings(as_json):
    first, second = as_json["instances"]
    assert first["dns"] == {"A": "present", "PTR": "present", "SPF": "present", "DKIM": "present"}
    assert second["dns"] == {"A": "present", "PTR": "missing", "SPF": "present", "DKIM": "present"}
    assert first["blocklists"] == [
        {"zone": "dnsbl.test", "status": "listed", "codes": ["127.0.0.2"], "reason": REASON},
        {"zone": "refusing.test", "status": "clean", "codes": [], "reason": ""}]
    assert [(x["zone"], x["status"]) for x in second["blocklists"]] == [("dnsbl.test", "clean"),
                                                                        ("refusing.test", "unknown")]
    assert "public or open resolvers" in second["blocklists"][1]["reason"]
    assert first["attention"] == ["203.0.113.43 listed on dnsbl.test"]


def test_the_textfile_holds_the_listing(as_json, dns):
    text = (dns / "blocklists.prom").read_text()
    assert 'mailfleet_blocklist_listed{instance="postfix-43",ip="203.0.113.43",zone="dnsbl.test"} 1' in text
    assert 'mailfleet_blocklist_listed{instance="postfix-45",ip="203.0.113.45",zone="dnsbl.test"} 0' in text
    assert 'zone="refusing.test"} ' in text and 'instance="postfix-45",ip="203.0.113.45",zone="refusing.test"' not in text


def test_the_table_shows_the_same(host, as_json, dns):
    result = run_status(host, dns)
    assert result.returncode == 1, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith("postfix-4")
            and not line.endswith(":")}
    assert rows["postfix-43"] == ["postfix-43", "mailtest", "127.0.0.43", "/", "203.0.113.43", "0/0/2/0",
                                  "2", "3", "1", "day", "4", "ok", "LISTED", "dnsbl.test"]
    assert rows["postfix-45"] == ["postfix-45", "mailtest", "127.0.0.45", "/", "203.0.113.45", "0/0/0/0",
                                  "1", "0", "0", "-", "PTR", "missing", "1", "unknown"]
    assert f"deferred 2x: {TSS04}" in result.stdout
    assert f"listed on dnsbl.test (127.0.0.2): {REASON}" in result.stdout
    assert result.stdout.splitlines()[-1] == "needs attention: 2 of 2 instances"


def test_nothing_shows_a_secret(host, as_json, dns):
    shown = json.dumps(as_json) + run_status(host, dns).stdout
    key_body = "".join(host.ssh_private_key.splitlines()[1:-1])
    assert "PRIVATE KEY" not in shown and key_body[:40] not in shown


def test_print_the_table(host, as_json, dns):
    started = time.monotonic()
    result = run_status(host, dns)
    print(f"\nstatus ({time.monotonic() - started:.1f} s):\n{result.stdout}")
