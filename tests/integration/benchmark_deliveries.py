"""Delivery log benchmark: what mailfleet-deliveries costs per delivered message, on the real test host.

Boots the test host, applies the program with test_deliveries.py's configuration (two instances,
fake receivers, the test DNS server), sends MESSAGES messages with Postfix's smtp-source through
both instances to an accepting receiver, and prints the CPU time (user + system, from /proc) that
the service spent meanwhile (it reads the journal in-process), per delivered message, beside
OpenDKIM's on the same messages; and how fast the lines reached the log.

Prints figures only; it asserts no time. Run: scripts/benchmark-deliveries [--suite bookworm] [--messages N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, as pytest does

from integration.receiving import receiving, use_test_resolver  # noqa: E402
from integration.test_deliveries import DNS_IP, INSTANCES, LOG, RECEIVERS, REPLIES, ZONE, apply  # noqa: E402
from integration.testhost import SUITE, SUITES, booted  # noqa: E402

# utime + stime in clock ticks of: the delivery log service (its main process, which reads the
# journal itself, and any children, which it should not have), and OpenDKIM (the signer of the same
# messages, for scale); then the tick rate.
CPU = r"""ticks() { set -- $(sed 's/^.*) //' /proc/$1/stat); echo $((${12} + ${13})); }
pid=$(systemctl show -p MainPID --value mailfleet-deliveries)
children=0; for p in $(cat /proc/$pid/task/*/children 2>/dev/null); do children=$((children + $(ticks $p))); done
echo "$((  $(ticks $pid) + children )) $(ticks $(systemctl show -p MainPID --value opendkim)) $(getconf CLK_TCK)"
"""


def cpu_seconds(host) -> tuple[float, float]:
    """(delivery log, OpenDKIM) CPU seconds so far."""
    *ticks, rate = (int(word) for word in host.run(CPU)[1].split())
    return tuple(t / rate for t in ticks)


def sent_lines(host) -> int:
    return int(host.run(f"grep -c '\"status\":\"sent\"' {LOG} || true")[1].strip() or 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", default=SUITE, choices=list(SUITES))
    parser.add_argument("--messages", type=int, default=4000, help="messages in all (default 4000)")
    args = parser.parse_args()
    with booted(ips=[i["ip"] for i in INSTANCES] + ["198.51.100.7", "203.0.113.10"], suite=args.suite) as host, \
            tempfile.TemporaryDirectory() as folder, \
            receiving(host, Path(folder), zone=ZONE, dns_ip=DNS_IP, receivers=RECEIVERS, replies=REPLIES):
        use_test_resolver(host, DNS_IP)
        apply(host)
        use_test_resolver(host, DNS_IP)  # again, for the instances' chroots
        before_lines, before_cpu, started = sent_lines(host), cpu_seconds(host), time.monotonic()
        per_instance = args.messages // len(INSTANCES)
        for instance in INSTANCES:
            host.run(f"smtp-source -s 10 -m {per_instance} -l 2048 -f news@example.com -t ok@plain.example "
                     f"{instance['ip']}:25", timeout=1800)
        total = per_instance * len(INSTANCES)
        while sent_lines(host) - before_lines < total and time.monotonic() - started < 1800:
            time.sleep(1)
        lag_started = time.monotonic()
        logged = sent_lines(host) - before_lines
        service, signer = (now - then for now, then in zip(cpu_seconds(host), before_cpu))
        elapsed = lag_started - started

        def per_message(seconds: float) -> str:
            return f"{seconds:.2f} s, {seconds * 1000 / max(logged, 1):.3f} ms per delivered message"

        print(f"{SUITES[args.suite]}: {total} messages submitted and delivered, {logged} sent lines in the "
              f"log in {elapsed:.0f} s ({logged / elapsed:.0f} a second)")
        print(f"mailfleet-deliveries CPU (reading the journal in-process): {per_message(service)}")
        print(f"OpenDKIM signing the same messages, for scale: {per_message(signer)}")


if __name__ == "__main__":
    main()
