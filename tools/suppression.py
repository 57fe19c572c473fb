#!/usr/bin/env python3
"""Suppression list: the hard-bounced recipients of a delivery log, per sender domain, as CSV.

Reads mailfleet's delivery log (/var/log/mailfleet/deliveries.jsonl, one JSON record per delivery
attempt, docs/host.md) from files given, or from hosts over SSH (`--ssh [USER@]HOST`, through sudo
when USER is not root; rotated and compressed files included with --all). A recipient is listed
when an attempt bounced with kind "hard" (bad mailbox, bad domain, inactive mailbox) and no later
attempt from the same sender domain was sent to it. Columns, one row per sender domain and recipient:

    sender_domain,recipient,last_bounce,dsn,category,reply,host,instance

    tools/suppression.py deliveries.jsonl [more files...]
    tools/suppression.py --ssh root@mail1.example.com --ssh deploy@mail2.example.com --all
    tools/suppression.py deliveries.jsonl --sender-domain example.com > suppress.csv
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import subprocess
import sys

LOG = "/var/log/mailfleet/deliveries.jsonl"
COLUMNS = ("sender_domain", "recipient", "last_bounce", "dsn", "category", "reply", "host", "instance")


def read_lines(path: str):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        yield from f


def remote_lines(target: str, port: int | None, everything: bool):
    user = target.split("@", 1)[0] if "@" in target else ""
    sudo = "" if user in ("", "root") else "sudo -n "
    files = f"$(ls -tr {LOG}* 2>/dev/null)" if everything else LOG
    command = ["ssh", "-o", "BatchMode=yes", *(["-p", str(port)] if port else []), target,
               f"{sudo}sh -c 'for f in {files}; do zcat -f \"$f\"; done'"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"{target}: {result.stderr.strip() or f'ssh exited {result.returncode}'}")
    yield from result.stdout.splitlines()


def suppressions(lines, sender_domain: str | None = None) -> list[dict]:
    """Rows for the hard-bounced recipients, in time order of the records read."""
    rows: dict[tuple[str, str], dict] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash or a copy in progress
        domain = (record.get("sender") or "").rpartition("@")[2].lower()
        if not domain or (sender_domain and domain != sender_domain.lower()):
            continue
        key = (domain, record["recipient"].lower())
        if record["status"] == "bounced" and record["kind"] == "hard":
            rows[key] = {"sender_domain": domain, "recipient": record["recipient"], "last_bounce": record["time"],
                         "dsn": record["dsn"], "category": record["category"], "reply": record["reply"],
                         "host": record["host"], "instance": record["instance"]}
        elif record["status"] == "sent":
            rows.pop(key, None)  # delivered since: the address works again
    return sorted(rows.values(), key=lambda row: (row["sender_domain"], row["recipient"].lower()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[1:]))
    parser.add_argument("files", nargs="*", help="delivery log files (.gz too); none: --ssh")
    parser.add_argument("--ssh", action="append", default=[], metavar="[USER@]HOST", help="read a host's log over SSH")
    parser.add_argument("--port", type=int, help="SSH port")
    parser.add_argument("--all", action="store_true", help="with --ssh: the rotated files too")
    parser.add_argument("--sender-domain", help="only this sender domain")
    args = parser.parse_args()
    if not args.files and not args.ssh:
        parser.error("give delivery log files or --ssh HOST")

    def lines():
        for path in args.files:
            yield from read_lines(path)
        for target in args.ssh:
            yield from remote_lines(target, args.port, args.all)

    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(suppressions(lines(), args.sender_domain))


if __name__ == "__main__":
    main()
