"""The receiving side of the delivery tests, inside a test host's namespace: a DNS server that the
host uses as its resolver (MX records that route receiver domains to loopback addresses) and fake
receivers (fakereceiver.py) on those addresses, plus what a test reads of what they saw.

    with receiving(host, folder, zone=ZONE, dns_ip=DNS_IP, receivers=RECEIVERS) as events:
        ... deploy, then use_test_resolver(host, DNS_IP) ...
        counts(read_events(events))
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

from integration.testhost import TestHost

HERE = Path(__file__).parent


def start(host: TestHost, program: str, *args: str, ready: bool = True) -> subprocess.Popen:
    """A program in the host's namespace: a script of this folder (NAME.py) under this Python, or
    an executable; with `ready`, once it has printed "ready"."""
    command = [sys.executable, str(HERE / program)] if program.endswith(".py") else [program]
    process = subprocess.Popen(["ip", "netns", "exec", host.netns, *command, *args],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    if ready:
        line = process.stdout.readline()
        assert line.strip() == "ready", line + process.stdout.read()
    return process


def stop(process: subprocess.Popen):
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


@contextlib.contextmanager
def receiving(host: TestHost, folder: Path, *, zone: str, dns_ip: str, receivers: dict[str, str],
              replies: dict[str, str] | None = None, cert_pem: str | None = None,
              push_back: dict[str, tuple[int, str]] | None = None):
    """The DNS server and the fake receivers (name -> address) in `folder`; yields the events file.
    push_back: receiver name -> (messages a minute from one IP, the reply beyond that)."""
    (folder / "zone").write_text(zone)
    options = [f"--push-back={name}={limit}={reply}" for name, (limit, reply) in (push_back or {}).items()]
    if replies:
        (folder / "replies.json").write_text(json.dumps(replies))
        options += ["--replies", str(folder / "replies.json")]
    if cert_pem:
        (folder / "receiver.pem").write_text(cert_pem)
        options += ["--cert", str(folder / "receiver.pem")]
    dns = start(host, "dnsserver.py", "--zone", str(folder / "zone"), "--address", dns_ip)
    try:
        fakes = start(host, "fakereceiver.py", "--log", str(folder / "events"), *options,
                      *(f"--listen={name}={address}" for name, address in receivers.items()))
        try:
            yield folder / "events"
        finally:
            stop(fakes)
    finally:
        stop(dns)


def use_test_resolver(host: TestHost, dns_ip: str):
    """The test DNS server as the host's resolver, also for the Postfix instances deployed so far:
    their smtp clients run chrooted and read their queue directory's copy of resolv.conf."""
    host.run(f"echo 'nameserver {dns_ip}' > /etc/resolv.conf; "
             "for d in /var/spool/postfix-*/; do mkdir -p $d/etc && cp /etc/resolv.conf $d/etc/resolv.conf; done")


def direct_config(host: TestHost, instances: list[dict], **keys) -> dict[str, str]:
    """A stack that delivers straight to the receivers by MX (no relayhost), signing as
    example.com, relaying for 198.51.100.0/24; `keys` add to it (e.g. mailfleet:shaping)."""
    config = {
        "mailfleet:hosts": [{"name": "mailtest", "address": "127.0.0.1", "instances": instances}],
        "mailfleet:sshPrivateKey": host.ssh_private_key,
        "mailfleet:dkim": [{"domain": "example.com", "selector": "s1"}],
        "mailfleet:relayNetworks": ["198.51.100.0/24"],
        **keys,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def read_events(path) -> list[dict]:
    """The fake receivers' events so far (a line being written is left for the next read)."""
    if not Path(path).exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def accepted(events: list[dict]) -> list[dict]:
    """One {"receiver", "peer", "recipients"} per message the receivers accepted."""
    return [{"receiver": e["receiver"], "peer": e["peer"], "recipients": e["recipients"]}
            for e in events if e["event"] == "message"]


def counts(events: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (receiver, source IP): messages, the most simultaneous connections, the most mail
    transactions at once (MAIL FROM to the end of DATA: deliveries in progress), the most messages
    on one connection, the most messages in any 60 s, and the steady rate (messages a minute
    from the first message to the last)."""
    result: dict[tuple[str, str], dict] = {}
    open_now: dict[tuple[str, str], int] = {}
    in_transaction: dict[tuple[str, str], int] = {}
    transacting: set[int] = set()
    per_connection: dict[int, int] = {}
    times: dict[tuple[str, str], list[float]] = {}
    for event in sorted(events, key=lambda e: e["t"]):
        key = (event["receiver"], event["peer"])
        entry = result.setdefault(key, {"messages": 0, "connections": 0, "max_connections": 0, "max_transactions": 0,
                                        "max_per_connection": 0, "max_per_minute": 0, "per_minute": None})
        if event["event"] in ("message", "rset", "close") and event["conn"] in transacting:
            transacting.discard(event["conn"])
            in_transaction[key] -= 1
        if event["event"] == "mail":
            transacting.add(event["conn"])
            in_transaction[key] = in_transaction.get(key, 0) + 1
            entry["max_transactions"] = max(entry["max_transactions"], in_transaction[key])
        elif event["event"] == "open":
            open_now[key] = open_now.get(key, 0) + 1
            entry["connections"] += 1
            entry["max_connections"] = max(entry["max_connections"], open_now[key])
        elif event["event"] == "close":
            open_now[key] -= 1
        elif event["event"] == "message":
            entry["messages"] += 1
            per_connection[event["conn"]] = per_connection.get(event["conn"], 0) + 1
            entry["max_per_connection"] = max(entry["max_per_connection"], per_connection[event["conn"]])
            times.setdefault(key, []).append(event["t"])
    for key, stamps in times.items():
        start_index = 0
        for end, stamp in enumerate(stamps):
            while stamp - stamps[start_index] >= 60:
                start_index += 1
            result[key]["max_per_minute"] = max(result[key]["max_per_minute"], end - start_index + 1)
        if len(stamps) > 1 and stamps[-1] > stamps[0]:
            result[key]["per_minute"] = round((len(stamps) - 1) * 60 / (stamps[-1] - stamps[0]), 1)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        result[key]["min_gap"] = round(min(gaps), 3) if gaps else None
    return result
