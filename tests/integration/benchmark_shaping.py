"""Shaping benchmark: a burst from two instances to the fake receivers, on the real test host.

Boots the test host, applies the program with test_shaping.py's configuration (two instances,
different limits per group), sends a burst and prints, per instance and receiver group, what the
receivers saw against what was configured: delivered rate (messages a minute, first to last),
the most messages in any 60 s, the most simultaneous connections, the most messages on one
connection (busy: the most mail transactions at once, i.e. deliveries in progress; conns: the
most connections open at once, idle cached ones included). Then the cost of the routing lookup per message: mailfleet-shaping-map asked on one
connection (as proxymap keeps it), for a cached domain and for domains it must look up in DNS,
and the whole routing of a recipient by the instance's trivial-rewrite (`sendmail -bv`-free:
`postmap -q` through the instance's transport_maps).

Prints figures only; it asserts no time. Run: scripts/benchmark-shaping [--suite bookworm] [--scale N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, as pytest does

from harness import run_program  # noqa: E402
from integration.receiving import counts, read_events, receiving, use_test_resolver  # noqa: E402
from integration.test_apply import StatefulMocks  # noqa: E402
from integration.test_shaping import (BURST, DNS_IP, INSTANCES, RECEIVERS, RELAY_CLIENT, ZONE,  # noqa: E402
                                      config_for, limits, send_burst, wait_for_messages)
from integration.testhost import SUITE, SUITES, booted  # noqa: E402

GROUP_OF = {"google": "google", "microsoft": "microsoft", "other": "default"}
LOOKUPS = 2000
UNCACHED = 200
# Runs on the host: one connection to the map, as proxymap keeps one; prints µs per lookup.
LOOKUP_COST = r"""
import socket, sys, time
sys.path.insert(0, "/usr/local/sbin")
path, n, m = "/run/mailfleet-shaping/map.sock", int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_UNIX); s.connect(path); f = s.makefile("rwb")
def ask(key):
    q = ("transport " + key).encode(); f.write(b"%d:%s," % (len(q), q)); f.flush()
    size = b""
    while (c := f.read(1)) != b":": size += c
    return f.read(int(size) + 1)[:-1]
for key, count in (("someone@corp.example", n), ("someone@gmail.com", n)):
    ask(key); t = time.perf_counter()
    for _ in range(count): ask(key)
    print(key, round((time.perf_counter() - t) / count * 1e6, 1))
t = time.perf_counter()
for i in range(m): ask(f"someone@uncached{i}.example")
print("uncached (a DNS query each)", round((time.perf_counter() - t) / m * 1e6, 1))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--suite", default=SUITE, choices=list(SUITES))
    parser.add_argument("--scale", type=int, default=1, help="multiplies the burst of the unpaced groups")
    args = parser.parse_args()
    burst = {domain: count * (1 if domain == "outlook.com" else args.scale) for domain, count in BURST.items()}
    folder = Path(tempfile.mkdtemp(prefix="benchmark-shaping-"))
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT], suite=args.suite) as host, \
            receiving(host, folder, zone=ZONE, dns_ip=DNS_IP, receivers=RECEIVERS) as events:
        use_test_resolver(host, DNS_IP)
        run_program(config_for(host), StatefulMocks(host.connect, {}), secret_keys=["mailfleet:sshPrivateKey"],
                    stack="shaping")
        use_test_resolver(host, DNS_IP)  # again, for the instances' chroots
        started = time.monotonic()
        total = send_burst(host, burst)
        submitted = time.monotonic() - started
        wait_for_messages(host, events, total, timeout=1800)
        elapsed = time.monotonic() - started
        seen = counts(read_events(events))
        print(f"\n{args.suite}: {total} messages (per instance {burst}), submitted in {submitted:.0f} s, "
              f"all delivered in {elapsed:.0f} s\n")
        print(f"{'instance':<11} {'group':<10} {'msgs':>5} {'rate/min':>9} {'max in 60s':>10} {'limit/min':>9} "
              f"{'busy':>4} {'conns':>5} {'limit':>5} {'max/conn':>8} {'limit':>5}")
        for instance in INSTANCES:
            for receiver, group in GROUP_OF.items():
                s, limit = seen[(receiver, instance["ip"])], limits(instance, group)
                paced = limit["messagesPerMinute"] <= 60
                print(f"{instance['name']:<11} {group:<10} {s['messages']:>5} {s['per_minute'] or 0:>9} "
                      f"{s['max_per_minute']:>10} {limit['messagesPerMinute'] if paced else 'unpaced':>9} "
                      f"{s['max_transactions']:>4} {s['max_connections']:>5} {1 if paced else limit['connections']:>5} "
                      f"{s['max_per_connection']:>8} {limit['messagesPerConnection']:>5}")
        out = host.run(f"python3 -c '{LOOKUP_COST}' {LOOKUPS} {UNCACHED}")[1]
        print("\nrouting lookup through mailfleet-shaping-map, one connection, µs per lookup:")
        for line in out.splitlines():
            key, micros = line.rsplit(" ", 1)
            print(f"  {key:<30} {micros:>8}")
        maps = host.run("postconf -c /etc/postfix-43 -h transport_maps")[1].strip()
        t = time.perf_counter()
        host.run(f"for i in $(seq 200); do postmap -c /etc/postfix-43 -q someone@corp.example '{maps.split(', ')[1]}'"
                 " >/dev/null; done")
        print(f"  {'postmap -q via proxymap':<30} {(time.perf_counter() - t) / 200 * 1e6:>8.0f}"
              "  (a process each: an upper bound)")


if __name__ == "__main__":
    main()
