#!/usr/bin/python3
"""mailfleet-warmup: a warming instance's daily budget per receiver group, held in its own queue.

A Postfix policy service (SMTPD_POLICY_README: attribute lines in, `action=...` out) that every
warming instance's smtpd asks at RCPT TO (the last of smtpd_recipient_restrictions) and at the
end of DATA (smtpd_end_of_data_restrictions), over a unix socket. The instance names itself in
`policy_context` (smtpd_policy_service_policy_context). For each recipient it asks the shaping
map which receiver group the domain belongs to (the same answer transport_maps gets), and:
- DUNNO while today's budget of that group has room (the recipient counts as sent today);
- HOLD beyond it, and while older mail of that group is still held (first in, first out): Postfix
  puts the whole message on its instance's hold queue, where it waits, neither bounced nor moved.
  A message with recipients in several groups goes only when every one of them has room; one held
  recipient holds the message, and its other recipients count as held, not sent.
At the end of DATA a held message has its queue id: the service records it with its recipients'
groups, so that it releases only what it held (never mail an operator held), and knows which
budgets a held message needs.

`mailfleet-warmup release`, run by a timer every five minutes as root, lists each warming
instance's hold queue (postqueue -j), oldest first, asks the service which of the held messages
today's budgets let go (the service counts them as sent) and releases those (postsuper -H, then postqueue -i for each, so they leave now). So
day N+1's budget frees held mail without any deploy, and after a plan's last day (or when a plan
is removed) everything held goes.

A day is a UTC calendar day (00:00 UTC), whatever the host's time zone: day 1 is `start`; before
`start`, day 1's budget applies. MAILFLEET_WARMUP_TODAY=YYYY-MM-DD in the service's environment
fixes "today" (for checks). Counts survive restarts: the state, per instance, is written to
STATE_DIR/INSTANCE.json at every change (atomically): {"instance", "start", "day", "date",
"groups": {GROUP: {"budget", "sent", "held"}}, "held_messages": {QUEUE_ID: {GROUP: recipients}}};
budget is null for a group whose plan has ended.

What it does not see: mail that does not come through smtpd (local submission with sendmail,
Postfix's own bounces); those leave uncounted. A transaction that is abandoned after RCPT TO
still counts its recipients (the budget errs on the side of sending less).

    mailfleet-warmup serve --plans DIR --state DIR --socket PATH --map PATH
    mailfleet-warmup release --socket PATH [--config-dir-prefix /etc/]
    mailfleet-warmup status --socket PATH INSTANCE     (prints the instance's state: the probe)
Python's standard library alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict

DEFAULT_GROUP = "default"
MESSAGES_REMEMBERED = 10_000  # transactions in progress whose recipients are remembered
GROUP_CACHE_SECONDS = 60


def today() -> datetime.date:
    fixed = os.environ.get("MAILFLEET_WARMUP_TODAY")
    if fixed:
        return datetime.date.fromisoformat(fixed)
    return datetime.datetime.now(datetime.timezone.utc).date()


def plan_day(start: datetime.date, date: datetime.date) -> int:
    """Day 1 is `start`; before it, day 1 too (a cold IP is cold before its plan begins)."""
    return max(1, (date - start).days + 1)


def budget(plan: list[int], day: int) -> int | None:
    """The day's budget, or None once the plan has ended (the group's limits apply)."""
    return plan[day - 1] if day <= len(plan) else None


class MapClient:
    """Which group a recipient belongs to, as the shaping map answers transport_maps."""

    def __init__(self, path: str, prefix: str = "smtp-"):
        self.path, self.prefix = path, prefix
        self.cache: dict[str, tuple[str, float]] = {}
        self.lock = threading.Lock()

    def ask(self, key: str) -> str:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(self.path)
            data = f"transport {key}".encode()
            client.sendall(b"%d:%s," % (len(data), data))
            stream = client.makefile("rb")
            length = b""
            while (char := stream.read(1)) != b":":
                if not char or len(length) > 6:
                    raise ConnectionError("the shaping map gave no answer")
                length += char
            return stream.read(int(length) + 1)[:-1].decode()

    def group(self, recipient: str) -> str:
        domain = recipient.rsplit("@", 1)[-1].lower().rstrip(".")
        now = time.monotonic()
        with self.lock:
            cached = self.cache.get(domain)
            if cached and cached[1] > now:
                return cached[0]
        answer = self.ask(recipient)
        if answer.startswith("OK "):
            group = answer[3:].strip().rstrip(":").removeprefix(self.prefix)
        elif answer.startswith("NOTFOUND"):
            group = DEFAULT_GROUP
        else:
            raise ConnectionError(f"the shaping map answered [{answer}]")
        with self.lock:
            if len(self.cache) > 50_000:
                self.cache.clear()
            self.cache[domain] = (group, now + GROUP_CACHE_SECONDS)
        return group


class Instance:
    """One instance's plan and today's counts, persisted at every change."""

    def __init__(self, name: str, state_dir: str):
        self.name, self.path = name, os.path.join(state_dir, f"{name}.json")
        self.plan: dict[str, list[int]] = {}
        self.start: datetime.date | None = None
        self.date, self.sent, self.held_messages = None, {}, {}
        try:
            with open(self.path) as f:
                saved = json.load(f)
            self.date = datetime.date.fromisoformat(saved["date"])
            self.sent = {group: counts["sent"] for group, counts in saved["groups"].items()}
            self.held_messages = saved.get("held_messages", {})
        except (OSError, ValueError, KeyError, TypeError):
            pass

    def roll(self):
        """A new day: nothing sent yet today; held mail stays held until released."""
        now = today()
        if self.date != now:
            self.date, self.sent = now, {}

    def day(self) -> int:
        return plan_day(self.start, self.date) if self.start else 1

    def budget(self, group: str) -> int | None:
        return budget(self.plan[group], self.day()) if group in self.plan else None

    def held(self, group: str) -> int:
        return sum(groups.get(group, 0) for groups in self.held_messages.values())

    def room(self, group: str) -> float:
        limit = self.budget(group)
        return float("inf") if limit is None else limit - self.sent.get(group, 0)

    def state(self) -> dict:
        groups = sorted(set(self.plan) | set(self.sent) | {g for m in self.held_messages.values() for g in m})
        return {"instance": self.name, "start": self.start.isoformat() if self.start else None, "day": self.day(),
                "date": self.date.isoformat(),
                "groups": {g: {"budget": self.budget(g), "sent": self.sent.get(g, 0), "held": self.held(g)} for g in groups},
                "held_messages": self.held_messages}

    def save(self):
        directory = os.path.dirname(self.path)
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.state(), f, indent=1, sort_keys=True)
            f.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, self.path)


class Policy:
    def __init__(self, plans_dir: str, state_dir: str, groups: MapClient):
        self.plans_dir, self.state_dir, self.groups = plans_dir, state_dir, groups
        self.instances: dict[str, Instance] = {}
        self.messages: OrderedDict[str, dict] = OrderedDict()  # transaction -> {"held": bool, "groups": {g: n}}
        self.lock = threading.Lock()
        self.plans_seen: tuple = ()
        self.plans_checked = 0.0
        for name in os.listdir(state_dir):
            if name.endswith(".json") and not name.startswith("."):
                self.instance(name[:-5])
        self.load_plans()

    def instance(self, name: str) -> Instance:
        if name not in self.instances:
            self.instances[name] = Instance(name, self.state_dir)
        return self.instances[name]

    def load_plans(self):
        """Plans are re-read when a file in the plans directory changes: a new plan needs no restart."""
        now = time.monotonic()
        if now - self.plans_checked < 1:
            return
        self.plans_checked = now
        try:
            names = sorted(n for n in os.listdir(self.plans_dir) if n.endswith(".json"))
            seen = tuple((n, os.stat(os.path.join(self.plans_dir, n)).st_mtime_ns) for n in names)
        except OSError:
            names, seen = [], ()
        if seen == self.plans_seen:
            return
        self.plans_seen = seen
        for instance in self.instances.values():
            instance.plan, instance.start = {}, None
        for name in names:
            with open(os.path.join(self.plans_dir, name)) as f:
                plan = json.load(f)
            instance = self.instance(plan["instance"])
            instance.plan, instance.start = plan["plan"], datetime.date.fromisoformat(plan["start"])
        print(f"plans: {', '.join(n[:-5] for n in names) or 'none'}", flush=True)

    def rcpt(self, instance: Instance, transaction: str, recipient: str) -> str:
        group = self.groups.group(recipient)
        message = self.messages.setdefault(transaction, {"held": False, "groups": {}})
        self.messages.move_to_end(transaction)
        while len(self.messages) > MESSAGES_REMEMBERED:
            self.messages.popitem(last=False)
        if group not in instance.plan and not message["held"]:
            message["groups"][group] = message["groups"].get(group, 0) + 1
            return "DUNNO"
        if not message["held"] and (instance.held(group) or instance.room(group) < 1):
            # Beyond the budget (or behind held mail): the whole message waits, so the recipients
            # already counted as sent are held instead.
            message["held"] = True
            for other, count in message["groups"].items():
                if other in instance.sent:
                    instance.sent[other] -= count
        message["groups"][group] = message["groups"].get(group, 0) + 1
        if message["held"]:
            return f"HOLD warm-up: {group} is at day {instance.day()}'s budget of {instance.budget(group)}"
        if group in instance.plan:
            instance.sent[group] = instance.sent.get(group, 0) + 1
            instance.save()
        return "DUNNO"

    def end_of_data(self, instance: Instance, transaction: str, queue_id: str) -> str:
        message = self.messages.pop(transaction, None)
        if message and message["held"] and queue_id:
            instance.held_messages[queue_id] = message["groups"]
            instance.save()
        return "DUNNO"

    def release(self, instance: Instance, held: list[str]) -> list[str]:
        """Of the queue ids in the hold queue (oldest first), those the budgets let go now, counted."""
        in_queue = set(held)
        for queue_id in [q for q in instance.held_messages if q not in in_queue]:
            del instance.held_messages[queue_id]  # gone: delivered, deleted or released by hand
        released, blocked = [], set()
        for queue_id in held:
            groups = instance.held_messages.get(queue_id)
            if groups is None:
                continue  # not held by warm-up
            if not blocked & set(groups) and all(instance.room(g) >= n for g, n in groups.items()):
                for g, n in groups.items():
                    if g in instance.plan:
                        instance.sent[g] = instance.sent.get(g, 0) + n
                del instance.held_messages[queue_id]
                released.append(queue_id)
            else:
                # First in, first out within a group: a message that does not fit keeps the
                # younger mail of its groups waiting too.
                blocked |= {g for g in groups if g in instance.plan}
        instance.save()
        return released

    def answer(self, request: dict[str, str]) -> str:
        with self.lock:
            self.load_plans()
            name = request.get("policy_context", "")
            if not name:
                return "DUNNO"
            instance = self.instance(name)
            instance.roll()
            kind = request.get("request")
            if kind == "mailfleet_status":
                return json.dumps(instance.state(), sort_keys=True)
            if kind == "mailfleet_release":
                return " ".join(self.release(instance, request.get("held", "").split()))
            stage = request.get("protocol_state", "").upper()
            transaction = request.get("instance", "")
            if stage == "RCPT" and request.get("recipient"):
                return self.rcpt(instance, transaction, request["recipient"])
            if stage == "END-OF-MESSAGE":
                return self.end_of_data(instance, transaction, request.get("queue_id", ""))
            return "DUNNO"

    def instances_to_release(self) -> list[str]:
        with self.lock:
            self.load_plans()
            return sorted(n for n, i in self.instances.items() if i.plan or i.held_messages)


def serve(policy: Policy, path: str):
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            request: dict[str, str] = {}
            for raw in self.rfile:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if line:
                    name, _, value = line.partition("=")
                    request[name] = value
                    continue
                try:
                    if request.get("request") == "mailfleet_instances":
                        action = " ".join(policy.instances_to_release())
                    else:
                        action = policy.answer(request)
                except (OSError, ValueError) as error:
                    # The group is unknown for now (the shaping map is down): the client retries.
                    print(f"warning: {error}", file=sys.stderr, flush=True)
                    action = "DEFER_IF_PERMIT 4.3.0 warm-up: the receiver group is not known yet, try again later"
                self.wfile.write(f"action={action}\n\n".encode())
                self.wfile.flush()
                request = {}

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    if os.path.exists(path):
        os.unlink(path)
    server = Server(path, Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"answering on {path}", flush=True)
    server.serve_forever()


def ask(path: str, request: dict[str, str], timeout: float = 30) -> str:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(timeout)
        client.connect(path)
        client.sendall("".join(f"{k}={v}\n" for k, v in request.items()).encode() + b"\n")
        stream = client.makefile("rb")
        answer = b""
        while (line := stream.readline()) not in (b"\n", b""):
            answer += line
    if not answer.startswith(b"action="):
        raise ConnectionError(f"{path}: no answer")
    return answer.decode().strip()[len("action="):]


def release(path: str, prefix: str) -> int:
    """Every warming instance's held mail that today's budgets let go, released; the count."""
    total = 0
    for name in ask(path, {"request": "mailfleet_instances"}).split():
        directory = f"{prefix}{name}"
        if not os.path.isdir(directory):
            continue
        listing = subprocess.run(["postqueue", "-c", directory, "-j"], capture_output=True, text=True, check=True)
        held = sorted((json.loads(line) for line in listing.stdout.splitlines() if line.strip()),
                      key=lambda m: (m.get("arrival_time", 0), m["queue_id"]))
        held = [m["queue_id"] for m in held if m.get("queue_name") == "hold"]
        released = ask(path, {"request": "mailfleet_release", "policy_context": name, "held": " ".join(held)}).split()
        for start in range(0, len(released), 500):
            subprocess.run(["postsuper", "-c", directory, "-H", "-"], input="\n".join(released[start:start + 500]) + "\n",
                           text=True, capture_output=True, check=True)
        # Released mail lands in the deferred queue, which the queue manager would scan only at its
        # next queue run (minutes): each released message is scheduled now, nothing else is.
        for queue_id in released:
            subprocess.run(["postqueue", "-c", directory, "-i", queue_id], capture_output=True, check=False)
        if released:
            print(f"{name}: released {len(released)} of {len(held)} held messages", flush=True)
        total += len(released)
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serving = commands.add_parser("serve", help="answer the instances' smtpd")
    serving.add_argument("--plans", required=True)
    serving.add_argument("--state", required=True)
    serving.add_argument("--socket", required=True)
    serving.add_argument("--map", required=True)
    releasing = commands.add_parser("release", help="release held mail that today's budgets let go")
    releasing.add_argument("--socket", required=True)
    releasing.add_argument("--config-dir-prefix", default="/etc/")
    status = commands.add_parser("status", help="print an instance's warm-up state")
    status.add_argument("--socket", required=True)
    status.add_argument("instance")
    args = parser.parse_args()
    if args.command == "serve":
        serve(Policy(args.plans, args.state, MapClient(args.map)), args.socket)
    elif args.command == "release":
        release(args.socket, args.config_dir_prefix)
    else:
        print(ask(args.socket, {"request": "mailfleet_status", "policy_context": args.instance}))


if __name__ == "__main__":
    main()
