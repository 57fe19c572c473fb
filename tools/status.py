#!/usr/bin/env python3
"""Show a mailfleet stack at a glance: queues, the last hour's deliveries, warm-up, DNS, blocklists.

    status.py STACK                      ask pulumi for the stack's outputs and config, then the hosts
    status.py STACK --json               the same as one JSON document (docs/day2.md shows its shape)
    status.py STACK --outputs OUT.json --config CONFIG.json
                                         read both from files instead of running pulumi

Per instance: its IP (and public IP), its queues (`postqueue -j` over SSH), the delivery attempts
of the last hour by destination group with the commonest deferral replies (the host's
/var/log/mailfleet/deliveries.jsonl), its warm-up day (/var/lib/mailfleet/warmup/INSTANCE.json),
its DNS records as published vs expected (publish_dns.py's check), and its public address on the
DNS blocklists of `mailfleet:blocklists`, asked through the system resolver (or --resolver).

Hosts are reached over SSH as the program reaches them (their address, sshUser, sshPort and the
stack's sshPrivateKey; a created VM at its first instance IP as the `mailfleet` user, with the key
given by --identity), several at a time; a progress line goes to stderr when it is a terminal.

Exit status: 0 when nothing needs attention; 1 when something does (a host not read, a DNS
record missing or different, an address listed on a blocklist, or a blocklist whose answer is
unknown); 2 for bad input (the stack's config or outputs unreadable or invalid).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DELIVERY_LOG = "/var/log/mailfleet/deliveries.jsonl"
WARMUP_DIR = "/var/lib/mailfleet/warmup"
BACKOFF_STATE = "/var/lib/mailfleet-backoff/state.json"  # mailfleet/render.py's BACKOFF_STATE
VM_USER = "mailfleet"  # the sudo user cloud-init creates on the VMs the program makes (mailfleet/render.py)
WORKERS = 8  # hosts asked at once; DNS lookups run as many again


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 nothing needs attention, 1 something does, "
                                            "2 bad input.")
    parser.add_argument("stack", help="the Pulumi stack (its outputs and config are read with the pulumi CLI)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    parser.add_argument("--outputs", help="`pulumi stack output --json --show-secrets` saved in a file")
    parser.add_argument("--config", help="`pulumi config --json --show-secrets` saved in a file")
    parser.add_argument("--identity", help="SSH private key file for hosts (default: the stack's sshPrivateKey)")
    parser.add_argument("--resolver", help="ask this DNS server (IP) instead of the system resolver")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per DNS lookup (default 5)")
    parser.add_argument("--textfile", help="also write mailfleet_blocklist_listed to this Prometheus "
                                           "textfile (node exporter's textfile collector)")
    return parser


# ---- the stack: config and outputs ------------------------------------------------------------

def _pulumi_json(command: list[str]) -> dict:
    import subprocess
    from publish_dns import InputError
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise InputError("reading a stack needs the pulumi CLI on PATH (or --outputs and --config)") from None
    if result.returncode != 0:
        raise InputError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def read_config(stack: str, source: str | None) -> tuple[dict, list[str]]:
    """The stack's config as the program sees it (key -> string value), and its secret keys.

    Takes `pulumi config --json` (each key {"value", "secret"}) or a flat key -> value map."""
    from publish_dns import InputError
    if source:
        try:
            raw = json.loads(Path(source).read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read the config {source}: {error}") from None
    else:
        raw = _pulumi_json(["pulumi", "config", "--json", "--show-secrets", "--stack", stack])
    values, secrets = {}, []
    for key, item in raw.items():
        if isinstance(item, dict) and "value" in item:
            if item.get("secret"):
                secrets.append(key)
            item = item["value"]
        values[key] = item if isinstance(item, str) else json.dumps(item)
    return values, secrets


def read_fleet(stack: str, source: str | None):
    from publish_dns import InputError
    from mailfleet.config import ConfigError, parse_config
    values, secrets = read_config(stack, source)
    try:
        return parse_config(values, secrets)
    except ConfigError as error:
        raise InputError(f"the stack's config is not valid:\n{error}") from None


# ---- DNS: the stack's records, per instance ----------------------------------------------------

def dns_state(outputs: dict, lookup) -> dict[str, tuple[dict[str, str], list[str]]]:
    """Per instance: A, PTR, SPF and DKIM as published vs expected (publish_dns.py's comparison),
    each present, missing or different, and a note per record that is not present.

    A is its hostname's, PTR its public address's, SPF its HELO record and every domain record
    that names its address, DKIM every key's record (every instance signs for every domain)."""
    from publish_dns import PRESENT, compare_record, dns_records, instances, txt_kind
    checks = [compare_record(record, lookup(record["name"], record["type"])) for record in dns_records(outputs)]
    found = {}
    for name, item in instances(outputs).items():
        address, hostname = item.get("publicIp") or item["ip"], item["hostname"].lower().rstrip(".")
        reverse = ipaddress.ip_address(address).reverse_pointer
        kinds: dict[str, list] = {kind: [] for kind in ("A", "PTR", "SPF", "DKIM")}
        for check in checks:
            record = check.record
            record_name = record["name"].lower().rstrip(".")
            if record["type"] == "A" and record_name == hostname:
                kinds["A"].append(check)
            elif record["type"] == "PTR" and record_name == reverse:
                kinds["PTR"].append(check)
            elif record["type"] == "TXT" and txt_kind(record["value"]) == "spf" and (
                    record_name == hostname or f"ip4:{address}" in record["value"].split()):
                kinds["SPF"].append(check)
            elif record["type"] == "TXT" and txt_kind(record["value"]) == "dkim":
                kinds["DKIM"].append(check)
        state, notes = {}, []
        for kind, kind_checks in kinds.items():
            wrong = [check for check in kind_checks if check.status != PRESENT]
            if not kind_checks:
                state[kind] = "missing"
                notes.append(f"DNS {kind}: the stack outputs hold no such record for this instance")
            elif wrong:
                lookup_failed = all(check.note.startswith("lookup failed") for check in wrong)
                state[kind] = "unknown" if lookup_failed else wrong[0].status
                for check in wrong:
                    seen = check.note or (" | ".join(check.found) if check.found else "nothing")
                    notes.append(f"DNS {kind} {check.record['name']}: {check.status}, found {seen}")
            else:
                state[kind] = PRESENT
        found[name] = (state, notes)
    return found


def resolver(nameserver: str | None, timeout: float):
    import dns.resolver
    resolver = dns.resolver.Resolver(configure=nameserver is None)
    if nameserver:
        resolver.nameservers = [nameserver]
    resolver.lifetime = timeout
    return resolver


def record_lookup(dns_resolver) -> Callable:
    """publish_dns's Answer lookup, where a server that does not answer is one record's
    "unknown", not the end of the run."""
    import dns.exception
    import dns.resolver
    from publish_dns import Answer, absolute

    def lookup(name: str, record_type: str) -> Answer:
        try:
            answer = dns_resolver.resolve(absolute(name), record_type, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Answer()
        except dns.exception.DNSException as error:
            return Answer(error=str(error) or type(error).__name__)
        if answer.rrset is None:
            return Answer()
        if record_type == "TXT":
            return Answer([b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset])
        if record_type == "PTR":
            return Answer([r.target.to_text() for r in answer.rrset])
        return Answer([r.to_text() for r in answer.rrset])

    return lookup


def blocklist_lookup(dns_resolver, address: str, zone: str):
    """One DNSBL asked about one address: an A query, then TXT for the reason when listed."""
    import dns.exception
    import dns.resolver
    from mailfleet.status import LISTED, dnsbl_name, interpret_dnsbl
    name = dnsbl_name(address, zone) + "."
    try:
        answer = dns_resolver.resolve(name, "A", search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return interpret_dnsbl(zone, None)
    except dns.exception.DNSException as error:
        return interpret_dnsbl(zone, None, error=str(error) or type(error).__name__)
    codes = [r.to_text() for r in answer.rrset] if answer.rrset is not None else None
    listing = interpret_dnsbl(zone, codes)
    if listing.status == LISTED:
        try:
            texts = dns_resolver.resolve(name, "TXT", search=False, raise_on_no_answer=False)
            if texts.rrset is not None:
                listing.reason = " ".join(b"".join(r.strings).decode("utf-8", "replace") for r in texts.rrset)
        except dns.exception.DNSException:
            pass  # the listing stands; its reason is only a help
    return listing


# ---- the hosts ----------------------------------------------------------------------------------

def host_commands(instance_names: list[str], since: str, user: str) -> str:
    """One shell script for a host: each instance's queue and warm-up state, and the delivery log
    lines since `since`, newest first, each part after a marker line."""
    sudo = "" if user == "root" else "sudo -n "
    lines = ["set -u"]
    for name in instance_names:
        lines.append(f"echo '@@queue {name}'; {sudo}postqueue -c /etc/{name} -j || echo '@@failed'")
        lines.append(f"echo '@@warmup {name}'; {sudo}cat {WARMUP_DIR}/{name}.json 2>/dev/null || true")
    lines.append(f"echo '@@backoff'; cat {BACKOFF_STATE} 2>/dev/null; echo")  # a line of its own for @@log
    # The log is written in time order with `time` first: read it backwards up to the first older
    # line (and its rotated predecessor, when the hour spans a rotation) instead of copying it all.
    older = f"awk -v c='{since}' 'substr($0, 10, 24) < c {{ exit }} {{ print }}'"
    lines.append(f"echo '@@log'; if [ -e {DELIVERY_LOG} ]; then "
                 f"{sudo}tac {DELIVERY_LOG} | {older}; "
                 f"if [ -e {DELIVERY_LOG}.1 ]; then {sudo}tac {DELIVERY_LOG}.1 | {older}; fi; "
                 "else echo '@@nolog'; fi")
    return "\n".join(lines) + "\n"


def parse_host_output(text: str) -> dict:
    """The sections of host_commands' output: queue and warmup per instance, and the log."""
    parts: dict = {"queue": {}, "warmup": {}, "backoff": "", "log": [], "nolog": False, "failed": []}
    section = None
    for line in text.splitlines():
        if line.startswith("@@queue ") or line.startswith("@@warmup "):
            kind, name = line[2:].split(" ", 1)
            section = (kind, name)
            parts[kind][name] = ""
        elif line == "@@log":
            section = ("log", None)
        elif line == "@@backoff":
            section = ("backoff", None)
        elif section and section[0] == "backoff":
            parts["backoff"] += line + "\n"
        elif line == "@@nolog":
            parts["nolog"] = True
        elif line == "@@failed" and section:
            parts["failed"].append(section[1])
        elif section and section[0] == "log":
            parts["log"].append(line)
        elif section:
            parts[section[0]][section[1]] += line + "\n"
    return parts


def read_host(host, key, since: str) -> dict:
    import paramiko
    address, user, port = ((host.address, host.ssh_user, host.ssh_port) if host.existing
                           else (host.instances[0].ip, VM_USER, 22))
    client = paramiko.SSHClient()
    # As the program's own connections (pulumi-command checks no host key unless given one).
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(address, port, username=user, pkey=key, timeout=15, banner_timeout=15,
                       auth_timeout=15, look_for_keys=False, allow_agent=False)
        _, stdout, stderr = client.exec_command("sh -s", timeout=120)
        stdout.channel.sendall(host_commands([i.name for i in host.instances], since, user).encode())
        stdout.channel.shutdown_write()
        text = stdout.read().decode("utf-8", "replace")
        errors = stderr.read().decode("utf-8", "replace").strip()
        parts = parse_host_output(text)
        parts["errors"] = errors
        return parts
    finally:
        client.close()


# ---- gathering -------------------------------------------------------------------------------------

class Progress:
    """One line on stderr, rewritten as hosts and lookups finish; nothing when it is not a terminal."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self.lock = threading.Lock()

    def step(self, what: str) -> None:
        with self.lock:
            self.done += 1
            if self.enabled:
                print(f"\rstatus: {self.done}/{self.total} done, last: {what}\033[K", end="", file=sys.stderr,
                      flush=True)

    def close(self) -> None:
        if self.enabled:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def gather(fleet, outputs: dict, key, blocklists: list[str], dns_resolver, progress_enabled: bool):
    from mailfleet.status import (InstanceStatus, backoff_summary, last_hour, queue_counts, rfc3339, since_for,
                                  warmup_summary)
    from publish_dns import instances as output_instances
    now = datetime.now(timezone.utc)
    since = since_for(now)
    published = output_instances(outputs)
    statuses = {}
    for host, instance in fleet.instances:
        item = published.get(instance.name, {})
        statuses[instance.name] = InstanceStatus(instance.name, host.name, instance.ip, instance.public_ip,
                                                 item.get("hostname", instance.hostname))
    progress = Progress(len(fleet.hosts) + len(statuses) * len(blocklists) + 1, progress_enabled)

    def one_host(host):
        try:
            if key(host) is None:
                raise RuntimeError("no SSH key for this host: give --identity (for a created VM, a key "
                                   "of sshAuthorizedKeys)")
            parts = read_host(host, key(host), rfc3339(since))
        except Exception as error:  # noqa: BLE001 - one unreachable host must not hide the others
            for instance in host.instances:
                statuses[instance.name].error = f"{type(error).__name__}: {error}"
            progress.step(host.name)
            return
        hours = last_hour(parts["log"], since)
        for instance in host.instances:
            item = statuses[instance.name]
            if instance.name in parts["failed"] or instance.name not in parts["queue"]:
                item.error = f"postqueue failed: {parts['errors'] or 'no output'}"
            else:
                item.queue = queue_counts(parts["queue"][instance.name])
            warmup = parts["warmup"].get(instance.name, "").strip()
            try:
                item.warmup = warmup_summary(json.loads(warmup)) if warmup else None
            except ValueError:
                item.dns_notes.append("warm-up state file is not JSON")
            try:
                item.backoffs = backoff_summary(json.loads(parts["backoff"] or "{}"), instance.name, now)
            except ValueError:
                item.dns_notes.append("back-off state file is not JSON")
            item.log = not parts["nolog"]
            item.hour = hours.get(instance.name, item.hour)
        progress.step(host.name)

    def one_listing(name: str, zone: str):
        listing = blocklist_lookup(dns_resolver, statuses[name].address, zone)
        progress.step(f"{statuses[name].address} on {zone}")
        return name, listing

    def records():
        state = dns_state(outputs, record_lookup(dns_resolver))
        progress.step("DNS records")
        return state

    with ThreadPoolExecutor(WORKERS) as hosts, ThreadPoolExecutor(WORKERS) as lookups:
        host_jobs = [hosts.submit(one_host, host) for host in fleet.hosts]
        dns_job = lookups.submit(records)
        listing_jobs = [lookups.submit(one_listing, name, zone) for name in statuses for zone in blocklists]
        for job in host_jobs:
            job.result()
        for name, (state, notes) in dns_job.result().items():
            if name in statuses:
                statuses[name].dns, statuses[name].dns_notes = state, statuses[name].dns_notes + notes
        for job in listing_jobs:
            name, listing = job.result()
            statuses[name].listings.append(listing)
    progress.close()
    return now, since, list(statuses.values())


def textfile_metrics(instances) -> str:
    """mailfleet_blocklist_listed per instance, address and zone: 1 listed, 0 not; an unknown
    answer writes no sample, so it is neither."""
    lines = ["# HELP mailfleet_blocklist_listed Whether the instance's public address is listed on the DNSBL zone "
             "(absent: the answer was unknown).",
             "# TYPE mailfleet_blocklist_listed gauge"]
    for item in instances:
        for listing in item.listings:
            if listing.status in ("listed", "clean"):
                lines.append(f'mailfleet_blocklist_listed{{instance="{item.name}",ip="{item.address}",'
                             f'zone="{listing.zone}"}} {int(listing.status == "listed")}')
    return "\n".join(lines) + "\n"


def write_textfile(path: str, text: str) -> None:
    # Written aside and renamed, so the collector never reads half a file.
    temporary = f"{path}.{os.getpid()}.tmp"
    Path(temporary).write_text(text)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mailfleet import status
    from publish_dns import InputError, read_outputs
    from mailfleet.ssh_keys import paramiko_key  # here: --help needs no paramiko
    try:
        fleet = read_fleet(args.stack, args.config)
        outputs = read_outputs(args.outputs, None if args.outputs else args.stack, show_secrets=True)
        if args.identity:
            try:
                identity = paramiko_key(Path(args.identity).read_text())
            except (OSError, ValueError) as error:
                raise InputError(f"cannot use --identity {args.identity}: {error}") from None
        stack_key = paramiko_key(fleet.ssh_private_key) if fleet.ssh_private_key else None

        def key(host):
            return identity if args.identity else (stack_key if host.existing else None)

        dns_resolver = resolver(args.resolver, args.timeout)
        now, since, instances = gather(fleet, outputs, key, list(fleet.blocklists), dns_resolver,
                                       sys.stderr.isatty())
    except InputError as error:
        print(f"status: {error}", file=sys.stderr)
        return 2
    if args.textfile:
        write_textfile(args.textfile, textfile_metrics(instances))
    if args.json:
        print(json.dumps(status.as_json(args.stack, now, since, instances), indent=2))
    else:
        sys.stdout.write(status.table(args.stack, now, since, instances))
    return 1 if any(item.attention() for item in instances) else 0


if __name__ == "__main__":
    sys.exit(main())
