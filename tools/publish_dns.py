#!/usr/bin/env python3
"""Publish and check the DNS records a mailfleet stack needs.

Reads the stack outputs (`dnsRecords`, `instances`) from `pulumi stack output --json` (a file,
`-` for stdin, or `--stack NAME` to run pulumi here) and prints them in the shape a DNS server or
provider takes, or checks them against live DNS:

    publish_dns.py zone outputs.json                 BIND zone fragment
    publish_dns.py nsupdate - --server ns1.example.com < outputs.json
    publish_dns.py json --stack prod                 flat list for provider imports
    publish_dns.py csv --stack prod
    publish_dns.py check --stack prod [--nameserver IP [--port N]]

`check` exits 0 when every record is present and right and every instance passes
forward-confirmed reverse DNS (the PTR of the address receivers see, its `publicIp` or else its
`ip`, names its hostname, whose A record holds that address); 1 otherwise. Bad input, or a name
server that does not answer within --timeout, exits 2.

Runs from the program's venv (`scripts/setup`): `check` needs dnspython, which
requirements.txt installs; the other commands need nothing beyond the program's own code.
"""

from __future__ import annotations

import argparse
import csv
import io
import ipaddress
import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable

from pathlib import Path

# The zone-file formatting is the program's own (the zoneFile output), so both say the same.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mailfleet.dns_records import absolute, presentation_value, quote_txt_chunk, split_txt, zone_line  # noqa: E402
SUPPORTED_TYPES = ("A", "PTR", "TXT")


class InputError(Exception):
    """The stack outputs are missing or not what mailfleet produces."""


# ---- reading the stack outputs -------------------------------------------------------------

def read_outputs(source: str | None, stack: str | None, show_secrets: bool = False) -> dict:
    """The stack outputs as a dict, from a JSON file, stdin ('-') or `pulumi stack output`."""
    if stack:
        command = ["pulumi", "stack", "output", "--json", "--stack", stack]
        if show_secrets:
            command.append("--show-secrets")
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise InputError("--stack needs the pulumi CLI on PATH") from None
        if result.returncode != 0:
            raise InputError(f"{' '.join(command)} failed: {result.stderr.strip()}")
        text = result.stdout
    elif source == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(source, encoding="utf-8") as file:
                text = file.read()
        except OSError as error:
            raise InputError(f"cannot read {source}: {error.strerror}") from None
    try:
        outputs = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"stack outputs are not JSON: {error}") from None
    if not isinstance(outputs, dict):
        raise InputError("stack outputs must be a JSON object")
    return outputs


def dns_records(outputs: dict) -> list[dict]:
    records = outputs.get("dnsRecords")
    if records == "[secret]":
        # `pulumi stack output --json` masks secret outputs unless asked to show them.
        raise InputError("dnsRecords is a secret output in this stack: add --show-secrets")
    if not isinstance(records, list):
        raise InputError("stack outputs have no dnsRecords list")
    for index, record in enumerate(records):
        missing = [key for key in ("name", "type", "value", "ttl") if key not in record]
        if missing:
            raise InputError(f"dnsRecords[{index}] lacks {', '.join(missing)}")
        if record["type"] not in SUPPORTED_TYPES:
            raise InputError(f"dnsRecords[{index}]: unsupported type {record['type']!r}")
    return records


def instances(outputs: dict) -> dict[str, dict]:
    found = outputs.get("instances", {})
    if found == "[secret]":
        raise InputError("instances is a secret output in this stack: add --show-secrets")
    if not isinstance(found, dict):
        raise InputError("the instances output must be a map")
    for name, item in found.items():
        if not isinstance(item, dict) or not {"ip", "hostname"} <= item.keys():
            raise InputError(f"instances[{name!r}] lacks ip or hostname")
    return found


# ---- formatting ----------------------------------------------------------------------------

def zone_lines(records: Iterable[dict]) -> list[str]:
    return [zone_line(record) for record in records]


def in_zone(name: str, zone: str) -> bool:
    name, zone = name.lower().rstrip("."), zone.lower().rstrip(".")
    return name == zone or name.endswith("." + zone)


def nsupdate_lines(records: list[dict], server: str | None = None, zone: str | None = None) -> list[str]:
    """An nsupdate batch that replaces each record set.

    `update delete NAME TYPE` removes the whole set, so each (name, type) is deleted once, before
    its records are added: deleting again between two adds would undo the first add. One UPDATE
    message goes to one zone, so without --zone every name gets its own message (nsupdate finds
    the zone of each by SOA lookups); with --zone only the records inside that zone are sent,
    in one message.
    """
    lines = [
        "; Replaces these record sets. Note: `update delete NAME TXT` removes every TXT record at",
        "; NAME, including ones mailfleet does not manage (e.g. site verification at a domain apex).",
    ]
    if server:
        lines.append(f"server {server}")
    if zone:
        lines.append(f"zone {absolute(zone)}")
        skipped = [record for record in records if not in_zone(record["name"], zone)]
        records = [record for record in records if in_zone(record["name"], zone)]
        if not records:
            # An empty batch would "succeed" and publish nothing.
            suffixes = sorted({".".join(r["name"].lower().rstrip(".").split(".")[-2:]) for r in skipped})
            raise InputError(f"no record of the stack is inside zone {zone} (its names end in "
                             f"{', '.join(suffixes)}): give --zone a zone that holds them, or leave it out")
        if skipped:
            lines.append(f"; {len(skipped)} records outside {zone} left out")

    by_name: dict[str, list[dict]] = {}
    for record in records:
        by_name.setdefault(record["name"].lower(), []).append(record)

    for name_records in by_name.values():
        for record_type in dict.fromkeys(record["type"] for record in name_records):
            lines.append(f"update delete {absolute(name_records[0]['name'])} {record_type}")
        for record in name_records:
            lines.append(f"update add {absolute(record['name'])} {record['ttl']} "
                         f"{record['type']} {presentation_value(record)}")
        if not zone:
            lines.append("send")
    if zone and records:
        lines.append("send")
    return lines


def flat_records(records: Iterable[dict]) -> list[dict]:
    """The columns DNS provider imports take; TXT stays whole (providers split it themselves)."""
    return [{"name": r["name"], "type": r["type"], "ttl": r["ttl"], "value": r["value"]} for r in records]


def csv_text(records: Iterable[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["name", "type", "ttl", "value"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat_records(records))
    return buffer.getvalue()


# ---- checking live DNS ---------------------------------------------------------------------

PRESENT, MISSING, DIFFERENT = "present", "missing", "different"


@dataclass
class Answer:
    """What DNS holds for a name and type, as comparable strings (TXT strings joined)."""
    values: list[str] = field(default_factory=list)
    error: str | None = None  # a failed lookup (timeout, SERVFAIL), not "no such record"


@dataclass
class RecordCheck:
    record: dict
    status: str
    found: list[str]
    note: str = ""


Lookup = Callable[[str, str], Answer]


def txt_kind(text: str) -> str | None:
    """SPF, DMARC or DKIM, by the version tag a record of that kind starts with."""
    head = text.lstrip().lower()
    for tag, kind in (("v=spf1", "spf"), ("v=dmarc1", "dmarc"), ("v=dkim1", "dkim")):
        if head == tag or head.startswith(tag + " ") or head.startswith(tag + ";"):
            return kind
    return None


def _normal_txt(text: str, kind: str | None) -> str:
    # DKIM allows whitespace between tags and inside the base64 key (RFC 6376 3.2, 3.6.1), and
    # provider consoles add some; SPF and DMARC are compared exactly.
    return "".join(text.split()) if kind == "dkim" else text


def _normal_name(name: str) -> str:
    return name.lower().rstrip(".")


def compare_record(record: dict, answer: Answer) -> RecordCheck:
    """Is the expected record among what DNS answered?"""
    if answer.error:
        return RecordCheck(record, MISSING, [], f"lookup failed: {answer.error}")
    if record["type"] != "TXT":
        normalize = _normal_name if record["type"] == "PTR" else str
        expected = normalize(record["value"])
        found = [normalize(value) for value in answer.values]
        if expected in found:
            return RecordCheck(record, PRESENT, found)
        return RecordCheck(record, DIFFERENT if found else MISSING, found)

    kind = txt_kind(record["value"])
    # Other TXT records at the name (site verification, another kind) are not ours to judge.
    candidates = [text for text in answer.values if kind is None or txt_kind(text) == kind]
    expected = _normal_txt(record["value"], kind)
    if expected in (_normal_txt(text, kind) for text in candidates):
        if kind in ("spf", "dmarc") and len(candidates) > 1:
            # RFC 7208 4.5 and RFC 7489 6.6.3: two such records make the result an error.
            return RecordCheck(record, DIFFERENT, candidates,
                               f"{len(candidates)} {kind.upper()} records at this name; receivers ignore them all")
        return RecordCheck(record, PRESENT, candidates)
    return RecordCheck(record, DIFFERENT if candidates else MISSING, candidates)


@dataclass
class ReverseCheck:
    instance: str
    ip: str
    hostname: str
    ok: bool
    note: str


def confirm_reverse(instance: str, ip: str, hostname: str, lookup: Lookup) -> ReverseCheck:
    """Forward-confirmed reverse DNS: PTR(ip) names hostname, and A(hostname) holds ip."""
    ptr_name = ipaddress.ip_address(ip).reverse_pointer
    ptr = lookup(ptr_name, "PTR")
    ptr_names = [_normal_name(value) for value in ptr.values]
    if _normal_name(hostname) not in ptr_names:
        seen = ptr.error or (", ".join(ptr_names) if ptr_names else "no PTR record")
        return ReverseCheck(instance, ip, hostname, False, f"PTR of {ip}: {seen}; expected {hostname}")
    forward = lookup(hostname, "A")
    if ip not in forward.values:
        seen = forward.error or (", ".join(forward.values) if forward.values else "no A record")
        return ReverseCheck(instance, ip, hostname, False, f"A of {hostname}: {seen}; expected {ip}")
    return ReverseCheck(instance, ip, hostname, True, f"{ip} -> {hostname} -> {ip}")


def resolver_lookup(nameserver: str | None = None, port: int = 53, timeout: float = 5.0) -> Lookup:
    """A Lookup that asks the given server, or the system resolver."""
    try:
        import dns.exception
        import dns.resolver
    except ImportError:
        raise InputError("check needs dnspython: run the tool with the program's venv "
                         "(scripts/setup, then venv/bin/python tools/publish_dns.py), or "
                         "pip install -r requirements.txt") from None
    resolver = dns.resolver.Resolver(configure=nameserver is None)
    if nameserver:
        resolver.nameservers = [nameserver]
        resolver.port = port
    resolver.lifetime = timeout

    def lookup(name: str, record_type: str) -> Answer:
        try:
            answer = resolver.resolve(absolute(name), record_type, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return Answer()
        except dns.exception.Timeout:
            # One server that does not answer would time out on every record: say so once, now.
            server = f"name server {nameserver} (port {port})" if nameserver else "the system resolver"
            raise InputError(f"{server} did not answer within {timeout:g} s: check the address and port, "
                             "and that DNS over UDP reaches it from here") from None
        except dns.exception.DNSException as error:
            return Answer(error=str(error) or type(error).__name__)
        if answer.rrset is None:
            return Answer()
        if record_type == "TXT":
            return Answer([b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer.rrset])
        if record_type == "PTR":
            return Answer([rdata.target.to_text() for rdata in answer.rrset])
        return Answer([rdata.to_text() for rdata in answer.rrset])

    return lookup


def _short(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def check_report(outputs: dict, lookup: Lookup) -> tuple[list[str], bool]:
    """Report lines, and whether everything is in place."""
    lines: list[str] = []
    checks = [compare_record(record, lookup(record["name"], record["type"])) for record in dns_records(outputs)]
    for check in checks:
        record = check.record
        lines.append(f"{check.status:<9} {record['type']:<3} {record['name']}  {_short(record['value'])}")
        if check.status != PRESENT:
            lines.append(f"    expected: {record['value']}")
            lines.append("    found:    " + (" | ".join(check.found) if check.found else "nothing"))
        if check.note:
            lines.append(f"    note:     {check.note}")

    # Receivers see the public address (publicIp, behind one-to-one NAT) where there is one.
    reverse = [confirm_reverse(name, item.get("publicIp") or item["ip"], item["hostname"], lookup)
               for name, item in sorted(instances(outputs).items())]
    for result in reverse:
        lines.append(f"{'fcrdns ok' if result.ok else 'fcrdns FAILED'}  {result.instance}  {result.note}")

    counts = {status: sum(c.status == status for c in checks) for status in (PRESENT, MISSING, DIFFERENT)}
    confirmed = sum(result.ok for result in reverse)
    lines.append(f"{len(checks)} records: {counts[PRESENT]} present, {counts[MISSING]} missing, "
                 f"{counts[DIFFERENT]} different; FCrDNS: {confirmed} of {len(reverse)} instances confirmed")
    all_good = counts[PRESENT] == len(checks) and confirmed == len(reverse)
    return lines, all_good


# ---- command line --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument("outputs", nargs="?",
                        help="`pulumi stack output --json` as a file, or - for stdin")
    source.add_argument("--stack", help="run `pulumi stack output --json` for this stack instead")
    source.add_argument("--show-secrets", action="store_true",
                        help="with --stack: pass --show-secrets, for stacks whose records are secret outputs")

    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("zone", parents=[source], help="BIND zone fragment")
    nsupdate = commands.add_parser("nsupdate", parents=[source], help="nsupdate batch")
    nsupdate.add_argument("--server", help="the primary to update: 'HOST' or 'HOST PORT'")
    nsupdate.add_argument("--zone", help="send only the records in this zone, in one message")
    commands.add_parser("json", parents=[source], help="flat JSON list: name, type, ttl, value")
    commands.add_parser("csv", parents=[source], help="CSV: name, type, ttl, value")
    check = commands.add_parser("check", parents=[source], help="compare with live DNS")
    check.add_argument("--nameserver", help="ask this server (IP) instead of the system resolver")
    check.add_argument("--port", type=int, default=53)
    check.add_argument("--timeout", type=float, default=5.0, help="seconds per lookup")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.outputs) == bool(args.stack):
        parser.error("give the stack outputs as a file or -, or --stack NAME (one of them)")
    try:
        outputs = read_outputs(args.outputs, args.stack, args.show_secrets)
        records = dns_records(outputs)
        if args.command == "zone":
            print("\n".join(zone_lines(records)))
        elif args.command == "nsupdate":
            print("\n".join(nsupdate_lines(records, args.server, args.zone)))
        elif args.command == "json":
            print(json.dumps(flat_records(records), indent=2))
        elif args.command == "csv":
            sys.stdout.write(csv_text(records))
        else:
            lookup = resolver_lookup(args.nameserver, args.port, args.timeout)
            lines, all_good = check_report(outputs, lookup)
            print("\n".join(lines))
            return 0 if all_good else 1
    except InputError as error:
        print(f"publish_dns: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
