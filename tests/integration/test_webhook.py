"""The delivery webhook on the real host: mailfleet-webhook POSTs the delivery log's records to a
small HTTP receiver on the host's own loopback (http://127.0.0.1, as a local forwarder would be).

The receiver keeps every request (headers, body, the status it answered). The test compares what
it accepted with the log itself: the bodies, in order, are exactly the log's lines, each once,
and every signature verifies with the secret. Then the receiver answers 503 for a while, across a
rotation of the log and a restart of the service: once it answers 200 again, nothing is missing
and nothing repeated. The secret is in no process list, no journal and no file but the settings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

import pytest

from harness import run_program
from integration.receiving import direct_config, receiving, use_test_resolver
from integration.test_apply import StatefulMocks, step_output
from integration.test_deliveries import DNS_IP, INSTANCES, RECEIVERS, RELAY_CLIENT, REPLIES, ZONE, send
from integration.testhost import TestHost, booted

pytestmark = pytest.mark.integration

LOG = "/var/log/mailfleet/deliveries.jsonl"
SECRET = "webhook-test-secret-5d0b8e2f9a"
PORT = 8089
URL = f"http://127.0.0.1:{PORT}/mailfleet/deliveries"
SETTINGS = "/etc/mailfleet/webhook.json"
REQUESTS = "/root/webhook-requests.jsonl"
STATUS = "/root/webhook-status"  # the status the receiver answers with (200 without the file)
RECIPIENTS = ["ok@gmail.com", "unknown@gmail.com", "full@gmail.com", "ok@outlook.com", "ok@plain.example",
              "someone@nosuch.example"]
STATE: dict[str, dict] = {}
# The receiver, run on the host with the host's python3: one JSON line per request.
RECEIVER = f"""\
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            status = int(open({STATUS!r}).read())
        except FileNotFoundError:
            status = 200
        with open({REQUESTS!r}, "a") as f:
            f.write(json.dumps({{"path": self.path, "headers": dict(self.headers), "body": body.decode(),
                                "status": status}}) + "\\n")
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", {PORT}), Handler).serve_forever()
"""


WEBHOOK = {"url": URL, "secret": SECRET, "batchSize": 5}


def apply(host: TestHost, webhook: dict | None = WEBHOOK):
    mocks = StatefulMocks(host.connect, STATE.setdefault(host.suite, {}))
    keys = {"mailfleet:deliveryWebhook": webhook} if webhook else {}
    run_program(direct_config(host, INSTANCES, **keys), mocks, stack="webhook",
                secret_keys=["mailfleet:sshPrivateKey", "mailfleet:deliveryWebhook"])
    return mocks


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT], suite=suite) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def network(host, tmp_path_factory):
    with receiving(host, tmp_path_factory.mktemp("webhook"), zone=ZONE, dns_ip=DNS_IP, receivers=RECEIVERS,
                   replies=REPLIES) as events:
        yield events


@pytest.fixture(scope="module")
def deployed(host, network):
    use_test_resolver(host, DNS_IP)
    mocks = apply(host)
    use_test_resolver(host, DNS_IP)  # again, for the instances' chroots
    return mocks


@pytest.fixture(scope="module")
def endpoint(host, deployed):
    """The HTTP receiver, a transient unit of the host's systemd, on 127.0.0.1 only (started once
    the host has python3; the webhook has had no record to send before it)."""
    rc, out, err = host.run(f"cat > /root/webhook-receiver.py <<'EOF'\n{RECEIVER}EOF\n"
                            "systemd-run --unit=webhook-receiver --collect /usr/bin/python3 /root/webhook-receiver.py",
                            check=False)
    assert rc == 0, out + err
    deadline = time.monotonic() + 30
    while host.run(f"ss -Htln 'sport = :{PORT}'")[1].strip() == "" and time.monotonic() < deadline:
        time.sleep(0.5)
    yield
    host.run("systemctl stop webhook-receiver", check=False)


def requests(host: TestHost) -> list[dict]:
    text = host.run(f"cat {REQUESTS} 2>/dev/null || true")[1]
    return [json.loads(line) for line in text.splitlines()]


def log_lines(host: TestHost) -> list[str]:
    """The log's lines, its rotation first (the test rotates it once at most)."""
    return host.run(f"cat {LOG}.1 2>/dev/null || true; cat {LOG} 2>/dev/null || true")[1].splitlines()


def sent_lines(host: TestHost) -> list[str]:
    """The records of every accepted request, in order, as the text of their bodies."""
    return [item for r in requests(host) if r["status"] == 200 for item in split_body(r["body"])]


def split_body(body: str) -> list[str]:
    """A body's items as text: the log's lines are compact JSON, one object each."""
    decoder, items, at = json.JSONDecoder(), [], 1
    assert body.startswith("[") and body.endswith("]")
    while at < len(body) - 1:
        _, end = decoder.raw_decode(body, at)
        items.append(body[at:end])
        at = end + 1  # the comma
    return items


def wait_until_sent(host: TestHost, count: int, timeout: float = 90) -> tuple[list[str], list[str]]:
    """(the log's lines, the records the receiver accepted), once the log holds at least `count`
    lines and the receiver has them all, or when the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        lines, sent = log_lines(host), sent_lines(host)
        if (len(lines) >= count and sent == lines) or time.monotonic() > deadline:
            return lines, sent
        time.sleep(1)


def send_batch(host: TestHost, subject: str) -> int:
    for n, recipient in enumerate(RECIPIENTS):
        send(host, INSTANCES[n % 2]["ip"], recipient, f"{subject} {n}")
    return len(RECIPIENTS)


def service_pid(host: TestHost, unit: str) -> str:
    return host.run(f"systemctl show -p MainPID --value {unit}")[1].strip()


@pytest.fixture(scope="module")
def traffic(host, endpoint):
    return wait_until_sent(host, send_batch(host, "webhook first"))


def test_the_service_runs_as_its_own_account_hardened_with_the_secret_in_a_group_readable_file(host, deployed):
    assert host.run("systemctl is-active mailfleet-webhook")[1].strip() == "active"
    shown = host.run("systemctl show -p User -p NoNewPrivileges -p ProtectSystem -p Nice -p CPUWeight "
                     "-p RestrictAddressFamilies mailfleet-webhook")[1]
    for setting in ("User=mailfleet-webhook", "NoNewPrivileges=yes", "ProtectSystem=strict", "Nice=10", "CPUWeight=20"):
        assert setting in shown, shown
    assert host.run(f"stat -c '%U %G %a' {SETTINGS}")[1].split() == ["root", "mailfleet-webhook", "640"]
    assert "created the account mailfleet-webhook" in step_output(deployed)


def test_the_receiver_gets_exactly_the_logs_lines_each_once_in_order(host, traffic):
    lines, sent = traffic
    assert len(lines) >= len(RECIPIENTS)  # every message has at least one attempt
    assert sent == lines and len(set(sent)) == len(sent)
    accepted = [r for r in requests(host) if r["status"] == 200]
    assert all(len(split_body(r["body"])) <= 5 for r in accepted)  # batchSize
    assert all(r["path"] == "/mailfleet/deliveries" and r["headers"]["Content-Type"] == "application/json"
               for r in accepted)


def test_every_request_is_signed_with_the_secret(host, traffic):
    for request in requests(host):
        headers = request["headers"]
        signed = headers["X-Mailfleet-Timestamp"].encode() + b"." + request["body"].encode()
        expected = "sha256=" + hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Mailfleet-Signature"], expected)
        assert abs(int(headers["X-Mailfleet-Timestamp"]) - time.time()) < 3600


def test_a_503_outage_across_a_rotation_and_a_restart_loses_and_repeats_nothing(host, traffic):
    before = len(requests(host))
    host.run(f"echo 503 > {STATUS}")
    try:
        count = len(log_lines(host)) + send_batch(host, "webhook during outage")
        deadline = time.monotonic() + 60
        while len(log_lines(host)) < count and time.monotonic() < deadline:
            time.sleep(1)
        host.run("logrotate -f /etc/logrotate.d/mailfleet-deliveries")
        count = len(log_lines(host)) + send_batch(host, "webhook after rotation")
        deadline = time.monotonic() + 60
        while len(log_lines(host)) < count and time.monotonic() < deadline:
            time.sleep(1)
        host.run("systemctl restart mailfleet-webhook")
        time.sleep(3)
        refused = [r for r in requests(host)[before:] if r["status"] == 503]
        assert refused, "the receiver was never asked during the outage"
    finally:
        host.run(f"rm -f {STATUS}")
    assert host.run(f"test -s {LOG}.1 && echo rotated")[1].strip() == "rotated"
    # The back-off is at most 16 s this early on.
    lines, sent = wait_until_sent(host, count, timeout=120)
    assert sent == lines, {"missing": len(set(lines) - set(sent)), "sent": len(sent), "logged": len(lines)}
    assert len(set(sent)) == len(sent)
    journal = host.run("journalctl --no-pager -o cat -u mailfleet-webhook")[1]
    assert "failed: HTTP status 503" in journal and "accepts records again" in journal


def test_the_secret_is_in_no_process_list_journal_or_other_file(host, traffic):
    # grep reads the secret from a file outside the places searched: on its command line it would
    # find itself (and the shell that runs it) in /proc.
    pattern = "/dev/shm/webhook-secret-pattern"
    host.run(f"echo {base64.b64encode(SECRET.encode()).decode()} | base64 -d > {pattern}")
    try:
        assert SECRET not in host.run("ps -eo pid,args ww")[1]
        assert host.run(f"grep -laFf {pattern} /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null || true")[1] == ""
        assert host.run(f"journalctl -b --no-pager -o export | grep -caFf {pattern} || true")[1].strip() == "0"
        holders = host.run(f"grep -rlaFf {pattern} /etc /var /run /tmp /usr/local /root /home 2>/dev/null || true")[1]
        assert holders.split() == [SETTINGS]
    finally:
        host.run(f"rm -f {pattern}")


def test_a_second_apply_changes_nothing(host, traffic):
    pids = service_pid(host, "mailfleet-webhook"), service_pid(host, "mailfleet-deliveries")
    output = step_output(apply(host))
    assert not [line for line in output.splitlines() if "webhook" in line and
                re.match(r"(changed|restarted|started|created) ", line)], output
    assert (service_pid(host, "mailfleet-webhook"), service_pid(host, "mailfleet-deliveries")) == pids


def test_a_change_of_the_webhook_settings_restarts_only_the_webhook(host, traffic):
    webhook, deliveries = service_pid(host, "mailfleet-webhook"), service_pid(host, "mailfleet-deliveries")
    before = len(requests(host))
    output = step_output(apply(host, {**WEBHOOK, "batchSize": 3}))
    assert f"changed {SETTINGS}" in output and "restarted mailfleet-webhook" in output
    assert service_pid(host, "mailfleet-webhook") != webhook
    assert service_pid(host, "mailfleet-deliveries") == deliveries
    count = len(log_lines(host)) + send_batch(host, "webhook smaller batches")
    lines, sent = wait_until_sent(host, count)
    assert sent == lines
    assert max(len(split_body(r["body"])) for r in requests(host)[before:]) <= 3


def test_without_the_key_the_service_and_its_files_are_gone(host, traffic):
    output = step_output(apply(host, None))
    assert "stopped and disabled mailfleet-webhook" in output
    gone = host.run(f"ls {SETTINGS} /usr/local/sbin/mailfleet-webhook /etc/systemd/system/mailfleet-webhook.service "
                    "/var/lib/mailfleet-webhook 2>&1 || true")[1]
    assert gone.count("No such file") == 4, gone
    assert host.run("systemctl is-active mailfleet-deliveries")[1].strip() == "active"
