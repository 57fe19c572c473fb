"""Metrics for real: a real Prometheus (Debian's, from this machine, in the test host's network
namespace) scrapes the host with the stack's own `prometheusScrapeConfigs`, after known traffic:
mail delivered, deferred (451) and bounced (550) by fake receivers (fakereceiver.py) found through MX
records (dnsserver.py), and mail for a domain whose MX refuses connections. The PromQL answers per
instance and group equal what was sent; the queue gauges equal `postqueue -j`; the firewall serves
this host and metricsNetworks and refuses everyone else.

The delivery counters count the delivery log's records (/var/log/mailfleet/deliveries.jsonl).
When the host's mailfleet-deliveries has written no record 20 s after the traffic settled, this
test writes the records of the traffic it sent itself (and says so in its figures): what is proven
then is the log -> mtail -> Prometheus, not Postfix -> the log.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

from certs import self_signed
from harness import run_program
from integration.receiving import direct_config, read_events, receiving, start, stop, use_test_resolver
from integration.test_apply import StatefulMocks
from integration.testhost import OUTSIDE_CLIENT_IP, TestHost, booted, skip_or_fail
from mtail_cases import DELIVERY_COUNTERS, DELIVERY_LINES, JOURNAL_COUNTERS, JOURNAL_LINES, mailfleet_series

pytestmark = pytest.mark.integration

INSTANCES = [{"name": "postfix-43", "ip": "127.0.0.43", "hostname": "s43.mail.example.com"},
             {"name": "postfix-45", "ip": "127.0.0.45", "hostname": "s45.mail.example.com"}]
IPS = {instance["name"]: instance["ip"] for instance in INSTANCES}
RELAY_CLIENT = "198.51.100.7"
METRICS_NETWORK = "203.0.113.0/24"
SCRAPER = "203.0.113.9"  # inside metricsNetworks; OUTSIDE_CLIENT_IP (192.0.2.10) is not
DNS_IP = "127.0.0.153"
RECEIVERS = {"google": "127.0.0.61", "microsoft": "127.0.0.62", "other": "127.0.0.63"}
DOWN = "127.0.0.64"  # nothing listens: connections are refused
ZONE = f"""\
gmail.com. 300 IN MX 5 gmail-smtp-in.l.google.com.
gmail-smtp-in.l.google.com. 300 IN A {RECEIVERS["google"]}
outlook.com. 300 IN MX 5 outlook-com.olc.protection.outlook.com.
outlook-com.olc.protection.outlook.com. 300 IN A {RECEIVERS["microsoft"]}
plain.example. 300 IN MX 10 mx.plain.example.
mx.plain.example. 300 IN A {RECEIVERS["other"]}
example.com. 300 IN MX 10 mx.plain.example.
down.example. 300 IN MX 10 mx.down.example.
mx.down.example. 300 IN A {DOWN}
"""
GROUPS = {"gmail.com": "google", "outlook.com": "microsoft", "plain.example": "default",
          "down.example": "default", "example.com": "default"}
# Per instance and recipient domain: how many recipients the receiver accepts ("ok"), defers
# ("defer": 451 4.7.1) and bounces ("bounce": 550 5.1.1), by local part.
TRAFFIC = {
    "postfix-43": {"gmail.com": {"ok": 3, "defer": 2, "bounce": 1}, "outlook.com": {"ok": 2, "bounce": 1},
                   "plain.example": {"ok": 1, "defer": 1}, "down.example": {"ok": 1}},
    "postfix-45": {"gmail.com": {"ok": 1, "bounce": 2}, "outlook.com": {"ok": 1, "defer": 1},
                   "plain.example": {"ok": 2}},
}
REPLIES = {"defer": "451 4.7.1 try again later", "bounce": "550 5.1.1 no such user"}
SENDER = "news@example.com"
HERE = Path(__file__).parent

STATE: dict[str, dict] = {}
figures: dict[str, object] = {}


def attempts() -> Counter:
    """(instance, group, status) -> delivery attempts the traffic makes: each recipient's first
    attempt, the bounce notice of every bounce (to the sender, in the default group) and the
    refused connection to down.example (deferred)."""
    counts: Counter = Counter()
    for instance, domains in TRAFFIC.items():
        for domain, outcomes in domains.items():
            for outcome, n in outcomes.items():
                status = {"ok": "sent", "defer": "deferred", "bounce": "bounced"}[outcome]
                if domain == "down.example":
                    status = "deferred"
                counts[(instance, GROUPS[domain], status)] += n
                if status == "bounced":
                    counts[(instance, "default", "sent")] += n
    return counts


def submitted() -> int:
    return sum(n for domains in TRAFFIC.values() for outcomes in domains.values() for n in outcomes.values())


def config_for(host: TestHost) -> dict[str, str]:
    return direct_config(host, INSTANCES, **{"mailfleet:metricsNetworks": [METRICS_NETWORK]})


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT, SCRAPER], suite=suite) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def network(host, tmp_path_factory):
    """The DNS server (the host's resolver) and the fake receivers, inside the namespace."""
    cert, key = self_signed("mx.test")
    with receiving(host, tmp_path_factory.mktemp("metrics"), zone=ZONE, dns_ip=DNS_IP, receivers=RECEIVERS,
                   replies=REPLIES, cert_pem=cert + key) as events:
        yield events


@pytest.fixture(scope="module")
def deployed(host, network):
    use_test_resolver(host, DNS_IP)
    mocks = StatefulMocks(host.connect, STATE.setdefault(host.suite, {}))
    started = time.monotonic()
    run = run_program(config_for(host), mocks, secret_keys=["mailfleet:sshPrivateKey"], stack="metrics")
    figures["apply s"] = round(time.monotonic() - started, 1)
    use_test_resolver(host, DNS_IP)  # again, for the instances' chroots
    return run


def http_get(host: TestHost, ip: str, port: int, path: str = "/metrics", source: str | None = None) -> str:
    with host.connect(ip, port, source, timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.") and " 200 " in head.splitlines()[0], head
    return body


@pytest.fixture(scope="module")
def prometheus(host, deployed, tmp_path_factory):
    """Debian's Prometheus, run inside the test namespace, scraping every second with the stack's
    scrape configuration, and the shipped alerting rules loaded."""
    if not Path("/usr/bin/prometheus").exists():
        skip_or_fail("Debian's prometheus is not installed (scripts/test installs it)")
    folder = tmp_path_factory.mktemp("prometheus")
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(HERE.parent.parent / "monitoring/alerts.yml")],
              "scrape_configs": deployed.outputs["prometheusScrapeConfigs"]}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    process = start(host, "/usr/bin/prometheus", f"--config.file={folder / 'prometheus.yml'}",
                     f"--storage.tsdb.path={folder / 'data'}", "--web.listen-address=127.0.0.1:9090",
                     "--log.level=warn", ready=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            http_get(host, "127.0.0.1", 9090, "/-/ready")
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline or process.poll() is not None:
                stop(process)
                raise AssertionError(f"prometheus did not start: {process.stdout.read()}")
            time.sleep(0.5)
    try:
        yield lambda promql: query(host, promql)
    finally:
        stop(process)


def query(host: TestHost, promql: str) -> dict[tuple, float]:
    """An instant query: {tuple of the result's label values, sorted by label name: value}."""
    from urllib.parse import quote
    answer = json.loads(http_get(host, "127.0.0.1", 9090, f"/api/v1/query?query={quote(promql)}"))
    assert answer["status"] == "success", answer
    return {tuple(v for _, v in sorted(r["metric"].items())): float(r["value"][1]) for r in answer["data"]["result"]}


def message(recipient: str, n: int) -> bytes:
    mail = EmailMessage()
    mail["From"] = f"News <{SENDER}>"
    mail["To"] = recipient
    mail["Subject"] = f"metrics {n}"
    mail.set_content(f"message {n}\n")
    return mail.as_bytes()


def recipients(instance: str) -> list[str]:
    prefix = {"ok": "user", "defer": "defer", "bounce": "bounce"}
    return [f"{prefix[outcome]}{n}.{instance}@{domain}" for domain, outcomes in TRAFFIC[instance].items()
            for outcome, count in outcomes.items() for n in range(count)]


def expected_events() -> Counter:
    """(receiver, source IP, event) the receivers must log."""
    receiver = {"gmail.com": "google", "outlook.com": "microsoft", "plain.example": "other"}
    events: Counter = Counter()
    for instance, domains in TRAFFIC.items():
        for domain, outcomes in domains.items():
            if domain in receiver:
                for outcome, n in outcomes.items():
                    event = {"ok": "accepted", "defer": "deferred", "bounce": "bounced"}[outcome]
                    events[(receiver[domain], IPS[instance], event)] += n
        bounces = sum(outcomes.get("bounce", 0) for outcomes in domains.values())
        events[("other", IPS[instance], "accepted")] += bounces  # the bounce notices to the sender
    return events


def outcomes(events: list[dict]) -> Counter:
    """(receiver, source IP, outcome) per recipient, as the receivers answered them."""
    seen: Counter = Counter()
    for e in events:
        if e["event"] == "message":
            seen[(e["receiver"], e["peer"], "accepted")] += len(e["recipients"])
        elif e["event"] == "refused":
            seen[(e["receiver"], e["peer"], "deferred" if e["reply"].startswith("4") else "bounced")] += 1
    return seen


def delivery_log_records(host: TestHost, timeout: float = 20) -> int:
    """How many records the host's delivery log holds, once it stops growing (0 when nothing writes it)."""
    deadline, last = time.monotonic() + timeout, -1
    while time.monotonic() < deadline:
        count = int(host.run("cat /var/log/mailfleet/deliveries.jsonl 2>/dev/null | wc -l")[1])
        if count and count == last:
            return count
        last = count
        time.sleep(2)
    return max(last, 0)


@pytest.fixture(scope="module")
def traffic(host, deployed, network, prometheus):
    before = prometheus('sum(mailfleet_dkim_signatures_total{domain="example.com",selector="s1"})')
    figures["signatures before"] = before.get((), 0.0)
    for instance in INSTANCES:
        with host.smtp(instance["ip"], source=RELAY_CLIENT, timeout=60) as client:
            client.ehlo("app7.corp.internal")
            for n, recipient in enumerate(recipients(instance["name"])):
                client.sendmail(SENDER, [recipient], message(recipient, n))
    wanted = expected_events()
    deadline = time.monotonic() + 120
    while True:
        seen = outcomes(read_events(network))
        if seen == wanted:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"receivers saw {dict(seen)}, not {dict(wanted)}")
        time.sleep(1)
    # Every first attempt done: only deferred mail left, nothing active.
    for instance in INSTANCES:
        wait_for(lambda: {m["queue_name"] for m in queue(host, instance["name"])} <= {"deferred"},
                 f"{instance['name']}'s queue to settle")
    figures["delivery log records by the host"] = delivery_log_records(host)
    assert figures["delivery log records by the host"], log_state(host)
    return read_events(network)


def wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(1)


def queue(host: TestHost, name: str) -> list[dict]:
    out = host.run(f"postqueue -c /etc/{name} -j")[1]
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def eventually_equal(get, want, timeout: float = 30, explain=lambda: ""):
    """Prometheus scrapes every second: the answer must reach `want` within `timeout`."""
    deadline = time.monotonic() + timeout
    while (got := get()) != want and time.monotonic() < deadline:
        time.sleep(1)
    assert got == want, explain()
    return got


def log_state(host: TestHost) -> str:
    """What mtail reads, for a failure's message: the delivery log and mtail's own line counts."""
    return host.run("ls -la /var/log/mailfleet; head -n 3 /var/log/mailfleet/deliveries.jsonl;"
                    " exec 3<>/dev/tcp/127.0.0.1/3903; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3;"
                    " timeout 3 cat <&3 | grep -E '^mtail_(log_)?lines'; journalctl -u mailfleet-mtail -n 3 -o cat;"
                    " systemctl status mailfleet-deliveries --no-pager -l | head -20;"
                    " journalctl -n 3 -o short-iso _COMM=smtp",
                    check=False)[1]


def test_every_endpoint_answers_this_host_and_metrics_networks(host, deployed):
    for instance in INSTANCES:
        for source in (None, SCRAPER):
            body = http_get(host, instance["ip"], 9154, source=source)
            assert f'postfix_up{{path="/var/spool/{instance["name"]}/public/showq"}} 1' in body, (source, body[-500:])
    for source in (None, SCRAPER):
        assert "mailfleet_dkim_unsigned_total" in http_get(host, "127.0.0.1", 3903, source=source)


def test_clients_outside_metrics_networks_are_refused(host, deployed):
    for ip, port in [(INSTANCES[0]["ip"], 9154), (INSTANCES[1]["ip"], 9154), ("127.0.0.1", 3903)]:
        with pytest.raises(ConnectionRefusedError):
            http_get(host, ip, port, source=OUTSIDE_CLIENT_IP)
    # The same client still reaches the instances' mail service: only the metrics ports are closed.
    with host.smtp(INSTANCES[0]["ip"], source=OUTSIDE_CLIENT_IP) as client:
        assert client.ehlo()[0] == 250


def test_the_debian_exporter_unit_is_masked_and_each_instance_has_its_own(host, deployed):
    assert host.run("systemctl is-enabled prometheus-postfix-exporter", check=False)[1].strip() == "masked"
    for instance in INSTANCES:
        assert host.run(f"systemctl is-active mailfleet-postfix-exporter@{instance['name']}")[1].strip() == "active"
    listeners = host.run("ss -Hltn")[1]
    assert sorted(re.findall(r"(\S+):9154\b", listeners)) == sorted(i["ip"] for i in INSTANCES), listeners


def test_prometheus_counts_the_deliveries_per_instance_group_and_outcome(host, prometheus, traffic):
    want = {(group, instance, status): float(n) for (instance, group, status), n in attempts().items()}
    got = eventually_equal(lambda: prometheus("sum by (instance, group, status) (mailfleet_deliveries_total)"), want,
                           explain=lambda: log_state(host))
    figures["deliveries"] = {" ".join(k): v for k, v in sorted(got.items())}
    bounces = prometheus('sum by (instance, kind) (mailfleet_bounces_total)')
    assert bounces == {("postfix-43", "hard"): 2.0, ("postfix-45", "hard"): 2.0}


def test_the_queue_gauges_equal_postqueue(host, prometheus, traffic):
    # One deferred message of postfix-43 on hold: the gauges follow deferred and hold.
    held = next(m["queue_id"] for m in queue(host, "postfix-43") if m["queue_name"] == "deferred")
    host.run(f"postsuper -c /etc/postfix-43 -h {held}")
    for instance in INSTANCES:
        counts = Counter(m["queue_name"] for m in queue(host, instance["name"]))
        want = {q: float(counts.get(q, 0)) for q in ("active", "deferred", "hold", "incoming", "maildrop")}
        got = eventually_equal(lambda: {q: v for (q,), v in prometheus(
            f'sum by (queue) (postfix_showq_message_size_bytes_count{{instance="{instance["name"]}"}})').items()}, want)
        figures[f"queue {instance['name']}"] = {q: v for q, v in got.items() if v}
    assert figures["queue postfix-43"] == {"deferred": 3.0, "hold": 1.0}
    assert figures["queue postfix-45"] == {"deferred": 1.0}


def test_tls_and_refused_connections_are_counted_per_instance(prometheus, traffic):
    tls = Counter(e["peer"] for e in traffic if e["event"] == "tls")
    assert set(tls) == set(IPS.values())
    want = {(name, "Untrusted"): float(tls[ip]) for name, ip in IPS.items()}
    eventually_equal(lambda: prometheus("sum by (instance, level) (mailfleet_smtp_tls_connections_total)"), want)
    eventually_equal(lambda: prometheus("sum by (instance, reason) (mailfleet_smtp_connection_failures_total)"),
                     {("postfix-43", "Connection refused"): 1.0})


def test_every_submitted_message_is_counted_as_signed(prometheus, traffic):
    eventually_equal(lambda: prometheus('sum(mailfleet_dkim_signatures_total{domain="example.com",selector="s1"})'),
                     {(): figures["signatures before"] + submitted()})
    assert prometheus("sum(mailfleet_dkim_errors_total)") in ({}, {(): 0.0})


def test_the_signer_probe_times_each_signature_and_counts_a_failure(host, prometheus, traffic):
    def probes(metric):
        return prometheus(f'sum by (signer) ({metric})').get(("opendkim",), 0.0)
    signed = probes("mailfleet_dkim_probe_seconds_count")
    assert host.run("systemctl start mailfleet-dkim-probe.service", check=False)[0] == 0
    wait_for(lambda: probes("mailfleet_dkim_probe_seconds_count") > signed, "a timed probe in Prometheus")
    mean = probes("mailfleet_dkim_probe_seconds_sum") / probes("mailfleet_dkim_probe_seconds_count")
    assert 0 < mean < 1, mean
    figures["signer probe mean seconds"] = round(mean, 4)
    # The probe's signatures are not mail signed.
    assert prometheus('sum(mailfleet_dkim_signatures_total{domain="example.com",selector="s1"})') == \
        {(): figures["signatures before"] + submitted()}
    # The signer stopped: the probe fails (and says why in the log), and the failure is counted.
    failed = probes("mailfleet_dkim_probe_failures_total")
    host.run("systemctl stop opendkim")
    try:
        assert host.run("systemctl start mailfleet-dkim-probe.service", check=False)[0] != 0
        wait_for(lambda: probes("mailfleet_dkim_probe_failures_total") > failed, "a failed probe in Prometheus")
        assert "opendkim failed: no connection" in host.run("grep -F mailfleet-dkim-probe /var/log/mail.log")[1]
    finally:
        host.run("systemctl start opendkim")


def test_prometheus_loaded_the_shipped_alerting_rules(host, prometheus):
    rules = json.loads(http_get(host, "127.0.0.1", 9090, "/api/v1/rules"))["data"]["groups"]
    assert {rule["name"] for group in rules for rule in group["rules"]} >= {"MailfleetInstanceDown", "MailfleetIpBlocklisted"}
    assert all(rule["health"] != "err" for group in rules for rule in group["rules"]), rules


def test_this_release_mtail_counts_the_fixture_lines(host, deployed):
    """The programs, as installed, under this Debian release's mtail (its one-shot mode)."""
    for lines, counters in ((DELIVERY_LINES, {**DELIVERY_COUNTERS, "mailfleet_dkim_unsigned_total": 0}),
                            (JOURNAL_LINES, JOURNAL_COUNTERS)):
        text = "\n".join(lines) + "\n"
        out = host.run(f"f=$(mktemp) && cat > $f <<'EOF'\n{text}EOF\nmtail --one_shot --one_shot_format prometheus"
                       f" --progs /etc/mailfleet/mtail --logs $f --port 0 --emit_prog_label=false --logtostderr"
                       f" 2>/dev/null; rm -f $f")[1]
        assert mailfleet_series(out) == counters
    figures["mtail"] = host.run("dpkg-query -W -f='${Version}' mtail")[1]
    figures["exporter"] = host.run("dpkg-query -W -f='${Version}' prometheus-postfix-exporter")[1]


def test_nothing_in_the_metrics_is_secret(host, deployed, traffic):
    bodies = [http_get(host, i["ip"], 9154) for i in INSTANCES] + [http_get(host, "127.0.0.1", 3903)]
    for body in bodies:
        assert "PRIVATE KEY" not in body and "BEGIN" not in body
        assert SENDER not in body and "user0." not in body  # no addresses either: counters and names only


def test_reapply_changes_nothing(host, deployed, traffic):
    mocks = StatefulMocks(host.connect, STATE[host.suite])
    run_program(config_for(host), mocks, secret_keys=["mailfleet:sshPrivateKey"], stack="metrics")
    output = "\n".join(e.get("stdout") or "" for e in mocks.log if e["type"] == "command:remote:Command")
    assert not re.search(r"^(changed|created|installed|started|reloaded|restarted|enabled|removed|stopped|masked) ",
                         output, re.M), output


def test_print_figures(traffic):
    print("\nmetrics: " + json.dumps(figures, indent=1))

