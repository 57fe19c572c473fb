"""Signing benchmark: what DKIM signing costs a Postfix instance, measured on the real test host.

Boots the test host, applies the program (the same helpers as test_apply.py), points the relay
at Postfix's own `smtp-sink` inside the host and drives one instance with Postfix's own
`smtp-source` (8 KB messages): 10 sessions and 1 session, each with the instance's milters on
(signing) and off (the same instance with smtpd_milters/non_smtpd_milters emptied for the run,
restored afterwards). Queues are drained between runs. Every message of a signed run must
reach the sink with a DKIM-Signature, and a sample must verify against the stack's dkimRecords.

`opendkim` is the signer the program deploys (Debian's OpenDKIM 2.11 under mailfleet's
configuration and hardening drop-in). `noop-milter` (tests/integration/noop_milter.c, which signs
nothing) runs in its place on its socket: the cost of the milter protocol alone, the floor under any
milter signer. The summary puts them side by side.

Prints figures only; it asserts no time. Run: scripts/benchmark-signing [--rounds N] [--signers ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, as pytest does

from integration.test_apply import (INSTANCES, RELAY_CLIENT, apply, config_for,  # noqa: E402
                                    verify_dkim)
from integration.testhost import SUITE, SUITES, TestHost  # noqa: E402
from mailfleet.signing import RSA  # noqa: E402

INSTANCE = INSTANCES[0]
SINK_PORT = 2526  # smtp-sink inside the host; the aiosmtpd sink of the tests keeps 2525
SINK_DIR = "/var/tmp/bench-sink"
SIZE = 8192
SENDER, RECIPIENT = "news@example.com", "someone@example.org"
ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
SIGNERS = ("opendkim", "noop-milter")
BENCH_UNIT = "bench-signer"  # the transient unit the no-op milter runs as
SIGNER_UNIT, SIGNER_SOCKET = RSA.unit, RSA.socket  # the bench stack has RSA keys only


def build_noop_milter() -> Path:
    """The no-op milter, built here against Debian's libmilter."""
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / "noop-milter"
    if not Path("/usr/include/libmilter/mfapi.h").exists():
        subprocess.run(["apt-get", "install", "-y", "-q", "libmilter-dev"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["gcc", "-O2", "-Wall", "-o", binary, Path(__file__).with_name("noop_milter.c"), "-lmilter"],
                   check=True)
    return binary


class Bench:
    def __init__(self, host: TestHost, dkim_records: dict[str, str]):
        self.host, self.dkim_records = host, dkim_records
        self.conf = f"/etc/{INSTANCE['name']}"
        self.queue = f"/var/spool/{INSTANCE['name']}"
        self.unit = SIGNER_UNIT

    def use_signer(self, signer: str):
        """Put `signer` on the deployed signer's socket: the instance's milter settings stay as applied."""
        self.sh(f"systemctl stop {BENCH_UNIT} 2>/dev/null; true")
        if signer == "opendkim":
            self.sh(f"systemctl start {SIGNER_UNIT}")
            self.unit = SIGNER_UNIT
            return
        self.sh(f"systemctl stop {SIGNER_UNIT}")
        shutil.copy(build_noop_milter(), self.host.rootfs / "usr/local/sbin" / signer)
        # Group postfix (as the setgid socket directory gives) and umask 007: Postfix, and only
        # Postfix, connects.
        self.sh(f"rm -f {SIGNER_SOCKET}; systemd-run --unit={BENCH_UNIT} -p User=opendkim -p Group=postfix "
                f"-p UMask=0007 /usr/local/sbin/{signer} {SIGNER_SOCKET} noreply; "
                f"for i in $(seq 50); do [ -S {SIGNER_SOCKET} ] && break; sleep 0.1; done")
        if self.host.run(f"systemctl is-active -q {BENCH_UNIT}", check=False)[0] != 0:
            raise RuntimeError(f"{signer} did not start:\n" + self.sh(f"journalctl -o cat -u {BENCH_UNIT} | tail -20"))
        self.unit = BENCH_UNIT

    def sh(self, command: str, timeout: float = 600) -> str:
        return self.host.run(command, timeout=timeout)[1]

    def start_sink(self):
        self.sh(f"install -d -o nobody -g nogroup {SINK_DIR}")
        # As root, smtp-sink needs -u or it exits at once (and the instance only queues).
        self.sink_pid = int(self.sh(
            f"nohup smtp-sink -u nobody -d {SINK_DIR}/m. 127.0.0.1:{SINK_PORT} 256 "
            ">/var/tmp/bench-sink.log 2>&1 </dev/null & echo $!"))

    def stop_sink(self):
        self.sh(f"kill {self.sink_pid}; rm -rf {SINK_DIR}")

    def signer_cpu_ms(self) -> float:
        """utime+stime of the signer's main process (all its threads), in ms."""
        pid = self.sh(f"systemctl show -p MainPID --value {self.unit}").strip()
        fields = self.sh(f"cat /proc/{pid}/stat").rsplit(")", 1)[1].split()
        ticks = int(self.sh("getconf CLK_TCK"))
        return (int(fields[11]) + int(fields[12])) * 1000 / ticks

    def queued(self) -> int:
        return int(self.sh(f"find {self.queue}/maildrop {self.queue}/incoming {self.queue}/active "
                           f"{self.queue}/deferred -type f | wc -l"))

    def drain(self, expected: int, timeout: float = 300):
        """Wait until the queue is empty and the sink holds `expected` messages."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queued() == 0 and self.sink_count() >= expected:
                return
            self.sh(f"postqueue -c {self.conf} -f")
            time.sleep(1)
        raise RuntimeError(f"queue not drained in {timeout}s: {self.queued()} queued, "
                           f"{self.sink_count()}/{expected} at the sink")

    def sink_count(self, pattern: str = "") -> int:
        if pattern:
            return int(self.sh(f"grep -l -F '{pattern}' {SINK_DIR} -r | wc -l"))
        return int(self.sh(f"find {SINK_DIR} -type f | wc -l"))

    def set_milters(self, on: bool):
        if on:
            self.sh(f"cp -p {self.conf}/main.cf.bench {self.conf}/main.cf && rm {self.conf}/main.cf.bench")
        else:
            self.sh(f"cp -p {self.conf}/main.cf {self.conf}/main.cf.bench && "
                    f"postconf -c {self.conf} -e smtpd_milters= non_smtpd_milters=")
        self.sh(f"postfix -c {self.conf} reload >/dev/null 2>&1")
        time.sleep(2)  # new smtpd processes pick up the change

    def run(self, sessions: int, messages: int, signed: bool, signs: bool = True) -> dict:
        """`signed`: through the instance's milters (else with them off); `signs`: the milter there
        signs (every message must then arrive signed), or is the no-op one."""
        self.sh(f"find {SINK_DIR} -type f -delete")
        cpu = self.signer_cpu_ms()
        started = time.monotonic()
        # -c prints a count on stderr; the elapsed time is measured inside the host.
        out = self.sh(f"s=$(date +%s.%N); smtp-source -s {sessions} -m {messages} -l {SIZE} "
                      f"-f {SENDER} -t {RECIPIENT} -S bench {INSTANCE['ip']}:25 2>&1; "
                      "e=$(date +%s.%N); echo elapsed $(echo \"$e - $s\" | awk '{print $1 - $3}')")
        seconds = float(out.split("elapsed")[-1])
        cpu = self.signer_cpu_ms() - cpu
        self.drain(messages)
        result = {"sessions": sessions, "signed": signed, "rate": messages / seconds,
                  "ms": seconds * 1000 / messages, "signer_cpu_ms": cpu / messages,
                  "wall_s": time.monotonic() - started}
        delivered, with_signature = self.sink_count(), self.sink_count("DKIM-Signature:")
        if signed and signs:
            if with_signature != messages or delivered != messages:
                raise RuntimeError(f"signed run: {delivered} delivered, {with_signature} signed, of {messages}")
            for name in self.sh(f"find {SINK_DIR} -type f | head -3").split():
                data = self.sh(f"cat {name}").replace("\r\n", "\n")
                if not verify_dkim(data, self.dkim_records):
                    raise RuntimeError(f"signature does not verify: {name}")
        elif with_signature:
            raise RuntimeError(f"unsigned run: {with_signature} signed messages")
        return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternations of off/on per figure")
    parser.add_argument("--messages", type=int, default=2000, help="messages per 10-session run")
    parser.add_argument("--single", type=int, default=500, help="messages per 1-session run")
    parser.add_argument("--signers", default="opendkim,noop-milter",
                        help=f"comma-separated, measured in this order: {', '.join(SIGNERS)}")
    parser.add_argument("--suite", default=SUITE, choices=SUITES, help="the test host's Debian release")
    parser.add_argument("--keep", metavar="FILE", help="then leave the host up until FILE is removed")
    args = parser.parse_args()
    signers = args.signers.split(",")
    if unknown := set(signers) - set(SIGNERS):
        parser.error(f"--signers: unknown {', '.join(sorted(unknown))}; known: {', '.join(SIGNERS)}")

    host = TestHost(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT], suite=args.suite)
    host.start()
    try:
        run, _, seconds = apply(host, config_for(host, **{"mailfleet:relayhost": f"[127.0.0.1]:{SINK_PORT}"}))
        print(f"{args.suite}: applied in {seconds:.1f} s; load: {os.getloadavg()[0]:.2f}", flush=True)
        exposure = host.run(f"systemd-analyze security --no-pager {SIGNER_UNIT}.service | tail -n 1")[1].strip()
        print(f"{args.suite}: {exposure}", flush=True)
        bench = Bench(host, run.outputs["dkimRecords"])
        bench.start_sink()
        summary = {signer: measure(bench, signer, args) for signer in signers}
        if len(summary) > 1:
            print(f"\nsigners side by side (medians of paired runs, {args.rounds} round(s)):")
            print("| signer | 10 sessions vs milters off | 1 session, added | signer CPU a message |")
            print("|---|---|---|---|")
            for signer, (ratio, added, cpu) in summary.items():
                print(f"| {signer} | {ratio:.2f}x | +{added:.1f} ms | {cpu:.2f} ms |")
        if args.keep:
            Path(args.keep).touch()
            print(f"host up (netns {host.netns}, container leader under nspawn pid {host._nspawn.pid}); "
                  f"rm {args.keep} to stop it", flush=True)
            while Path(args.keep).exists():
                time.sleep(2)
        bench.use_signer("opendkim")
        bench.stop_sink()
    finally:
        host.stop()


def measure(bench: Bench, signer: str, args) -> tuple[float, float, float]:
    bench.use_signer(signer)
    signs = signer != "noop-milter"
    bench.run(1, 20, signed=True, signs=signs)  # warm-up: first connections, caches
    results = []
    for _ in range(args.rounds):
        for sessions, messages in ((10, args.messages), (1, args.single)):
            bench.set_milters(False)
            try:
                results.append(bench.run(sessions, messages, signed=False))
            finally:
                bench.set_milters(True)
            results.append(bench.run(sessions, messages, signed=True, signs=signs))
            for result in results[-2:]:
                print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in result.items()), flush=True)
    return report(signer, results, signs)


def report(signer: str, results: list[dict], signs: bool) -> tuple[float, float, float]:
    """Each signed run is paired with the milters-off run just before it: on a shared machine the
    load moves both alike, so the per-pair ratio and difference are steadier than either figure."""
    def pairs(sessions):
        runs = [r for r in results if r["sessions"] == sessions]
        return list(zip(runs[0::2], runs[1::2]))  # (off, on), in the order they ran
    ratio = statistics.median(on["rate"] / off["rate"] for off, on in pairs(10))
    added = statistics.median(on["ms"] - off["ms"] for off, on in pairs(1))
    def median(sessions, signed, key):
        return statistics.median(r[key] for r in results if r["sessions"] == sessions and r["signed"] == signed)
    print(f"\nsigning benchmark: {signer} ({SIZE // 1024} KB, instance {INSTANCE['name']}, "
          f"medians of {len(pairs(10))} round(s), load {os.getloadavg()[0]:.2f}):")
    print("| | signing | milters off | signing vs off (median of paired runs) |")
    print("|---|---|---|---|")
    print(f"| 10 sessions msgs/s | {median(10, True, 'rate'):.0f} | {median(10, False, 'rate'):.0f} | {ratio:.2f}x |")
    print(f"| 1 session ms a message | {median(1, True, 'ms'):.2f} | {median(1, False, 'ms'):.2f} | +{added:.1f} ms |")
    cpu = median(10, True, 'signer_cpu_ms')
    print(f"signer CPU a message: {cpu:.2f} ms (10 sessions), {median(1, True, 'signer_cpu_ms'):.2f} ms "
          "(1 session); " + ("every message of the signed runs carried a DKIM-Signature, a sample verified"
                             if signs else "no message was signed (the no-op milter)"), flush=True)
    return ratio, added, cpu


if __name__ == "__main__":
    main()
