#!/usr/bin/python3
"""mailfleet-deliveries: the delivery log, one JSON line per delivery attempt of every Postfix instance.

It follows the journal in-process (libsystemd's sd-journal through Debian's python3-systemd, matched
to Postfix's processes: no journalctl, no JSON in between), correlates each instance's
lines per queue id (cleanup's message-id=, qmgr's from=, smtpd's sasl_username=, the delivery
agent's to=/relay=/delay=/dsn=/status=) and appends one record per recipient per attempt to the
log file: compact JSON, the keys of KEYS in that order (docs/host.md describes each).

The receiver group of an attempt comes from the log tag: each group's transport (smtp-GROUP) runs
with syslog_name ${multi_instance_name}/smtp-GROUP, so its lines read `postfix-43/smtp-google/smtp`
(and `postfix-43/smtp-google-backoff/smtp` while that group is backed off: still group google).

Exactly once across restarts: records are written in batches, and after each batch a checkpoint
(atomic rename) holds the journal cursor of the last entry read, the per-queue-id memory, and the
log file's inode and size. A restart resumes after that cursor with that memory, so it makes the
same records again from there; lines already in the file past the checkpoint (a crash between the
two writes) are counted and that many records are skipped. Rotation: logrotate renames the file
and sends SIGHUP (ExecReload); until then lines go to the renamed file, then to a new one: no line
is lost, unlike copytruncate, which loses what is written between its copy and its truncate.

It only reads the journal, which Postfix writes to whatever happens here: it cannot block Postfix.

Back-off on push-back: when the settings name rules (pushBack), each record also goes to
mailfleet/backoff.py, which decides whether the receiver's reply backs off or suspends that
instance's path to that group; the active back-offs are written to a state file (before the
checkpoint, so a crash between the two makes them again) that the shaping map reads, and a line
goes to the journal when one starts and when it ends (checked every second, without a new event).

    mailfleet-deliveries --config /etc/mailfleet/deliveries.json --log FILE --state FILE
    mailfleet-deliveries --config FILE --parse < journalctl-json-lines   (records on stdout, for checks)
    mailfleet-deliveries --config FILE --journal   (this boot's records, read as the service reads, on stdout)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import socket
import sys
import time
from collections import OrderedDict

try:
    from mailfleet.backoff import BACKOFF_SUFFIX, PushBack, read_state, write_state
    from mailfleet.bounces import classify
except ImportError:  # on a host (python3 -I: no script directory on the path): installed beside it
    sys.path[:0] = ["/usr/local/lib/mailfleet-deliveries", os.path.dirname(os.path.abspath(__file__))]
    from backoff import BACKOFF_SUFFIX, PushBack, read_state, write_state  # type: ignore[no-redef]
    from bounces import classify  # type: ignore[no-redef]

KEYS = ("time", "host", "instance", "ip", "queue_id", "message_id", "sender", "recipient", "domain", "group",
        "tenant", "status", "dsn", "category", "kind", "reply", "relay", "delay", "attempt")
STATUSES = ("sent", "deferred", "bounced")
# The processes whose lines matter (journal field _COMM): submission (smtpd, pickup, cleanup), the
# queue manager, the delivery agents, and postsuper (removed). Everything else is not read at all.
PROCESSES = ("smtpd", "cleanup", "qmgr", "smtp", "lmtp", "local", "virtual", "error", "discard", "postsuper")
QUEUE_IDS = 100_000  # messages remembered (evicted at "removed"; the oldest go first past this)
DOMAINS = 10_000  # recipient domain -> group, for attempts outside a group's transport (error, retry)
BATCH_SECONDS = 1.0
BATCH_RECORDS = 5_000
ROUND_ENTRIES = 20_000  # entries read between two looks at the clock (checkpoint, back-offs, stop)

_QUEUED = re.compile(r"([0-9A-Za-z]{5,}): (.*)\Z", re.S)
_DELIVERY = re.compile(r"to=<(?P<to>.*?)>, (?P<fields>.*?)status=(?P<status>[a-z]+)(?: \((?P<reply>.*)\))?\Z", re.S)
_FIELD = re.compile(r"(\w+)=([^,]*), ")
_SAID = re.compile(r"host \S+ said: (.*?)(?: \(in reply to [^)]*\))?\Z", re.S)


def rfc3339(microseconds: int) -> str:
    seconds, micro = divmod(microseconds, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micro // 1000:03d}Z"


def reply_text(reason: str) -> str:
    """The receiver's own reply out of Postfix's reason; Postfix's reason when it has none."""
    said = _SAID.search(reason)
    return said.group(1) if said else reason


class Tracker:
    """Per-queue-id memory of every instance, and the records it makes of the log lines."""

    def __init__(self, host: str, ips: dict[str, str]):
        self.host, self.ips = host, ips
        # (instance, queue id) -> {"message_id", "sender", "tenant", "deferred": {recipient: [record]}}
        self.messages: OrderedDict[str, dict] = OrderedDict()
        self.groups: OrderedDict[str, str] = OrderedDict()

    def state(self) -> dict:
        return {"messages": list(self.messages.items()), "groups": list(self.groups.items())}

    def restore(self, state: dict):
        self.messages = OrderedDict((k, v) for k, v in state.get("messages", []))
        self.groups = OrderedDict((k, v) for k, v in state.get("groups", []))

    def _message(self, key: str) -> dict:
        message = self.messages.get(key)
        if message is None:
            message = self.messages[key] = {"message_id": None, "sender": None, "tenant": None, "deferred": {}}
            while len(self.messages) > QUEUE_IDS:
                self.messages.popitem(last=False)
        return message

    def entry(self, realtime: int, identifier: str, text: str) -> list[dict]:
        """The records that one journal entry makes (most make none)."""
        parts = identifier.split("/")
        instance = parts[0]
        if not instance.startswith("postfix"):
            return []
        queued = _QUEUED.match(text)
        if not queued:
            return []
        queue_id, rest = queued.groups()
        key = f"{instance}/{queue_id}"
        if rest.startswith("to="):
            return self._delivery(realtime, parts, instance, queue_id, key, rest)
        if rest == "removed":
            self.messages.pop(key, None)
        elif rest.startswith("message-id="):
            self._message(key)["message_id"] = rest[11:].strip().strip("<>") or None
        elif rest.startswith("from="):
            sender, _, tail = rest[6:].partition(">")
            message = self._message(key)
            message["sender"] = sender
            if tail.startswith(", status=expired"):
                return self._expired(realtime, instance, queue_id, key, message)
        elif rest.startswith("client=") and ", sasl_username=" in rest:
            self._message(key)["tenant"] = rest.split(", sasl_username=", 1)[1].split(",", 1)[0].strip() or None
        return []

    def _delivery(self, realtime, parts, instance, queue_id, key, rest) -> list[dict]:
        delivery = _DELIVERY.match(rest)
        if not delivery or delivery["status"] not in STATUSES:
            return []
        fields = dict(_FIELD.findall(delivery["fields"]))
        recipient, status = delivery["to"], delivery["status"]
        domain = recipient.rpartition("@")[2].lower().rstrip(".")
        service = parts[1] if len(parts) >= 3 else parts[-1]
        if service.startswith("smtp-"):
            group = service[5:].removesuffix(BACKOFF_SUFFIX)  # the group's slow transport is the group too
            if self.groups.get(domain) != group:
                self.groups[domain] = group
                while len(self.groups) > DOMAINS:
                    self.groups.popitem(last=False)
            self.groups.move_to_end(domain)
        else:
            group = self.groups.get(domain, "default")
        dsn, reply = fields.get("dsn", ""), reply_text(delivery["reply"] or "")
        message = self._message(key)
        category, kind = classify(status, dsn, reply)
        try:
            delay = float(fields.get("delay", ""))
        except ValueError:
            delay = None
        record = [rfc3339(realtime), self.host, instance, self.ips.get(instance), queue_id, message["message_id"],
                  message["sender"], recipient, domain, group, message["tenant"], status, dsn, category, kind,
                  reply, fields.get("relay"), delay, None]
        if status == "deferred":
            message["deferred"][recipient] = record
        else:
            message["deferred"].pop(recipient, None)
        return [dict(zip(KEYS, record))]

    def _expired(self, realtime, instance, queue_id, key, message) -> list[dict]:
        """qmgr gives up on a message once: one record for each recipient still deferred."""
        records = []
        for recipient, last in message["deferred"].items():
            last = dict(zip(KEYS, last))
            reply = f"message expired; last attempt: {last['reply']}"
            category, kind = classify("expired", "5.4.7", reply)
            records.append({**last, "time": rfc3339(realtime), "message_id": message["message_id"],
                            "sender": message["sender"], "tenant": message["tenant"], "status": "expired",
                            "dsn": "5.4.7", "category": category, "kind": kind, "reply": reply})
        message["deferred"] = {}
        return records


def line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def journal_text(value) -> str:
    """A field as journalctl's JSON gives it: a string; an array of bytes when it is not UTF-8; an
    array of those when the entry has the field more than once (sd-journal reads the first)."""
    if isinstance(value, list) and value and not isinstance(value[0], int):
        value = value[0]
    if isinstance(value, list):
        return bytes(value).decode("utf-8", "replace")
    return value or ""


def open_journal():
    """The system journal, matched to Postfix's processes (the same field ORs its values)."""
    from systemd import journal  # Debian's python3-systemd; only the service needs it, not --parse

    reader = journal.Reader()
    reader.data_threshold = 0  # fields in full, as journalctl --all (sd-journal cuts at 64 KiB by default)
    for name in PROCESSES:
        reader.add_match(f"_COMM={name}")
    return reader


def field(reader, name: str) -> str:
    """One field of the reader's current entry, as journal_text gives it from journalctl's JSON."""
    try:
        return reader._get(name).decode("utf-8", "replace")
    except KeyError:
        return ""


def entries(reader):
    """(realtime, identifier, text) of each entry from the reader's position on, until its end.
    The low-level calls: Reader.get_next() would decode and convert every field of every entry."""
    while reader._next():
        yield reader._get_realtime(), field(reader, "SYSLOG_IDENTIFIER"), field(reader, "MESSAGE")


class DeliveryLog:
    def __init__(self, tracker: Tracker, log_path: str, state_path: str, boot_id: str,
                 pushback: PushBack | None = None, pushback_path: str | None = None, clock=time.time):
        self.tracker, self.log_path, self.state_path, self.boot_id = tracker, log_path, state_path, boot_id
        self.pushback, self.pushback_path, self.clock = pushback, pushback_path, clock
        self.cursor: str | None = None
        self.reader = None  # the journal being read: the checkpoint takes its position as the cursor
        self.unsaved = False  # entries read since the cursor was last taken
        self.skip = 0
        self.pending: list[str] = []
        self.reopen = False
        self.stop = False
        self.log = None

    # ---- checkpoint ----
    def load(self):
        try:
            with open(self.state_path) as f:
                state = json.load(f)
        except FileNotFoundError:
            state = {}
        self.cursor = state.get("cursor")
        self.tracker.restore(state)
        written = state.get("file")
        if written:
            self.skip = self._lines_past(written["inode"], written["offset"])
        if self.pushback:
            self.pushback.restore(read_state(self.pushback_path), self.clock())  # written at the first checkpoint
        self._open()

    def _lines_past(self, inode: int, offset: int) -> int:
        """Complete lines written after the checkpoint (their records come again); a partial last
        line (a crash in mid-write) is cut off."""
        for path in (self.log_path, self.log_path + ".1"):
            try:
                if os.stat(path).st_ino != inode:
                    continue
                with open(path, "rb+") as f:
                    f.seek(offset)
                    tail = f.read()
                    if tail and not tail.endswith(b"\n"):
                        f.truncate(offset + tail.rfind(b"\n") + 1)
                    return tail.count(b"\n")
            except OSError:
                continue
        return 0

    def _open(self):
        if self.log:
            self.log.close()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.log = os.fdopen(fd, "a", encoding="utf-8")

    def checkpoint(self):
        if self.unsaved:
            self.cursor, self.unsaved = self.reader._get_cursor(), False
        if self.pushback and self.pushback.changed:  # started, pushed out or ended
            write_state(self.pushback_path, self.pushback.state())
            self.pushback.changed = False
        if self.pending:
            self.log.write("".join(self.pending))
            self.pending = []
        self.log.flush()
        stat = os.fstat(self.log.fileno())
        state = {"cursor": self.cursor, "file": {"inode": stat.st_ino, "offset": stat.st_size}, **self.tracker.state()}
        tmp = self.state_path + ".new"
        with open(tmp, "w") as f:
            json.dump(state, f, separators=(",", ":"))
        os.replace(tmp, self.state_path)
        if self.reopen:
            self.reopen = False
            self._open()
            self.checkpoint()

    # ---- entries ----
    def entry(self, realtime: int, identifier: str, text: str):
        self.unsaved = True
        for record in self.tracker.entry(realtime, identifier, text):
            if self.pushback:
                self._say(self.pushback.observe(record, self.clock()))
            if self.skip:
                self.skip -= 1
            else:
                self.pending.append(line(record))

    @staticmethod
    def _say(lines: list[str]):
        for text in lines:
            print(text, flush=True)

    def expire(self):
        """Back-offs end at their time, whether or not anything is logged meanwhile."""
        if self.pushback:
            self._say(self.pushback.expire(self.clock()))
            if self.pushback.changed:
                self.checkpoint()

    def follow(self):
        """The journal into the log, from the checkpoint (or, at the first start, from this boot's
        start), across boots, then as it grows, until the service stops."""
        self.reader = reader = open_journal()
        poller = select.poll()  # sd-journal's inotify descriptor, from the start: no change is missed
        poller.register(reader.fileno(), reader.get_events())
        if self.cursor:
            reader.seek_cursor(self.cursor)
            # Onto the checkpoint's entry, which was read; if the journal no longer has it
            # (vacuumed), onto the next entry, which was not.
            if reader._next() and not reader.test_cursor(self.cursor):
                self.entry(reader._get_realtime(), field(reader, "SYSLOG_IDENTIFIER"), field(reader, "MESSAGE"))
        else:
            reader.add_match(f"_BOOT_ID={self.boot_id}")  # what earlier boots logged is not this log's
            reader.seek_head()
        last = time.monotonic()
        while not self.stop:
            behind = False  # more entries wait: no pause before the next round
            for count, (realtime, identifier, text) in enumerate(entries(reader), 1):
                self.entry(realtime, identifier, text)
                if count >= ROUND_ENTRIES or len(self.pending) >= BATCH_RECORDS or self.stop:
                    behind = True
                    break
            self.expire()
            now = time.monotonic()
            if self.reopen or len(self.pending) >= BATCH_RECORDS or now - last >= BATCH_SECONDS:
                if self.pending or self.reopen or self.unsaved:
                    self.checkpoint()
                last = now
            if not behind and not self.stop:
                # Until the journal changes, at most a batch's time (back-offs end meanwhile).
                poller.poll(BATCH_SECONDS * 1000)
                reader.process()
        # Only whole entries were taken: what was read is all written before the exit.
        self.checkpoint()


def notify(message: str):
    """sd_notify(3) for Type=notify: systemd's start returns (or fails) with the service's own word."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


def current_boot_id() -> str | None:
    """This boot as the journal names it: that of systemd's (PID 1) newest entry, which is its
    start of this service; not this process's /proc/sys/kernel/random/boot_id, which in a container
    a sandboxed service (ProtectProc=, ProtectKernelTunables=) sees as the host kernel's.
    None when the system journal cannot be read: without the right to, sd-journal shows only the
    caller's own entries, and the log would stay empty."""
    from systemd import journal

    reader = journal.Reader()
    reader.add_match("_PID=1")
    reader.seek_tail()
    if not reader._previous():
        return None
    return field(reader, "_BOOT_ID") or None


def read_config(path: str) -> tuple[Tracker, PushBack | None, str | None]:
    """The tracker; the back-off rules and their state file, when the settings have them."""
    with open(path) as f:
        config = json.load(f)
    rules = config.get("pushBack")
    pushback = PushBack(rules["rules"], rules["instances"]) if rules else None
    return Tracker(config["host"], config["instances"]), pushback, rules["state"] if rules else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="JSON: {host, instances: {name: ip}}")
    parser.add_argument("--log", help="the delivery log (JSON lines), appended to")
    parser.add_argument("--state", help="the checkpoint: journal cursor, per-queue-id memory, log offset")
    parser.add_argument("--parse", action="store_true", help="records of journalctl JSON lines on stdin, to stdout")
    parser.add_argument("--journal", action="store_true",
                        help="records of this boot's journal, read as the service reads it, to stdout")
    args = parser.parse_args()
    tracker, pushback, pushback_path = read_config(args.config)
    if args.parse:
        for raw in sys.stdin:
            fields = json.loads(raw)
            for record in tracker.entry(int(fields["__REALTIME_TIMESTAMP"]), journal_text(fields.get("SYSLOG_IDENTIFIER")),
                                        journal_text(fields.get("MESSAGE"))):
                sys.stdout.write(line(record))
        return
    if args.journal:
        reader = open_journal()
        reader.add_match(f"_BOOT_ID={current_boot_id()}")
        for entry in entries(reader):
            for record in tracker.entry(*entry):
                sys.stdout.write(line(record))
        return
    if not args.log or not args.state:
        parser.error("--log and --state (follow the journal), or --parse, or --journal")
    boot_id = current_boot_id()
    if boot_id is None:
        raise SystemExit("cannot read the system journal (the service runs in group systemd-journal)")
    service = DeliveryLog(tracker, args.log, args.state, boot_id, pushback, pushback_path)
    service.load()
    service.checkpoint()

    def stop(*_):
        service.stop = True

    def reopen(*_):
        service.reopen = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reopen)
    print(f"following the journal {'after the checkpoint' if service.cursor else 'from this boot'}; "
          f"{len(tracker.messages)} messages remembered, {service.skip} records already written"
          + (f"; {len(pushback.active)} back-offs active, rules for {', '.join(sorted(pushback.rules))}"
             if pushback else ""), flush=True)
    notify("READY=1")
    service.follow()


if __name__ == "__main__":
    main()
