"""Back-off on push-back: which (instance, group) paths a receiver's replies slow down or suspend.

The delivery log service (mailfleet/deliveries.py) hands every delivery record to `PushBack.observe`.
When the receiver's own reply (an attempt that reached a host: relay is not "none") matches one of
the group's patterns (mailfleet:shaping groups.G.backoff / .suspend), that instance's path to that
group is backed off or suspended until the record's time plus the rule's minutes; a later match
pushes the end out, a suspend pattern turns a back-off into a suspension (a block is the stronger
signal) and a back-off match never shortens or weakens a suspension. Other instances and other
groups are never touched. The active paths go to a state file that the shaping map reads
(mailfleet/shaping_map.py): it answers that instance's transport_maps lookups for the group with
the slow transport `smtp-GROUP-backoff:` or with `retry:` (deferred, never bounced) until the end.

Python's standard library only, and no I/O but `write_state`: installed beside the delivery log
service on the host, and tested as it is.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import time

BACKOFF_SUFFIX = "-backoff"  # the slow transport of group G is smtp-G-backoff (group names have no "-")
MAP_PREFIX = "backoff-"  # the socketmap name each instance asks: backoff-INSTANCE
ACTIONS = ("suspend", "backoff")  # the stronger first


def rules_of(groups: dict) -> dict:
    """The JSON the service reads, from the groups' settings (snake_case models or camelCase dicts):
    {group: {"backoff": {"patterns": [...], "minutes": N}, "suspend": {...}}}, groups without rules left out."""
    rules = {}
    for name, group in groups.items():
        own = {}
        for action in ACTIONS:
            rule = group.get(action) if isinstance(group, dict) else getattr(group, action)
            if rule is not None:
                patterns = rule["patterns"] if isinstance(rule, dict) else rule.patterns
                minutes = rule["minutes"] if isinstance(rule, dict) else rule.minutes
                own[action] = {"patterns": list(patterns), "minutes": minutes}
        if own:
            rules[name] = own
    return rules


def parse_time(text: str) -> float:
    """A delivery record's time (RFC 3339, UTC, milliseconds) as seconds since the epoch."""
    main, _, fraction = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{fraction or 0}")


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class PushBack:
    """The active back-offs and suspensions of a host's instances, keyed by (instance, group)."""

    def __init__(self, rules: dict, instances):
        self.rules = {group: {action: (tuple(re.compile(p) for p in rule["patterns"]), rule["minutes"])
                              for action, rule in own.items()} for group, own in rules.items()}
        self.instances = set(instances)
        self.active: dict[tuple[str, str], dict] = {}
        self.changed = False  # since the state was last written (the caller resets it)

    def match(self, group: str, reply: str) -> tuple[str, str, int] | None:
        """(action, the pattern that matched, minutes) for a reply of the group's receivers, or None."""
        own = self.rules.get(group, {})
        for action in ACTIONS:
            if action in own:
                patterns, minutes = own[action]
                for pattern in patterns:
                    if pattern.search(reply):
                        return action, pattern.pattern, minutes
        return None

    def observe(self, record: dict, now: float) -> list[str]:
        """Take one delivery record; the log lines for what it starts (none for most records)."""
        instance, group, reply = record.get("instance"), record.get("group"), record.get("reply") or ""
        if instance not in self.instances or record.get("relay") in (None, "none") \
                or record.get("status") not in ("deferred", "bounced"):
            return []  # not the receiver's own reply (Postfix's reason, the retry transport's deferral)
        found = self.match(group, reply)
        if found is None:
            return []
        action, pattern, minutes = found
        at = parse_time(record["time"])
        until = at + 60 * minutes
        if until <= now:
            return []  # an old record (read again after a restart): that back-off is over
        key = (instance, group)
        current = self.active.get(key)
        if current and current["until"] > at:
            if current["action"] == "suspend" and action == "backoff":
                return []  # a suspension is not weakened by a back-off reply
            if current["action"] == action:
                if until > current["until"]:
                    current.update(until=until, pattern=pattern)
                    self.changed = True
                return []  # still the same back-off: it ends later, no new line
        self.active[key] = {"instance": instance, "group": group, "action": action, "pattern": pattern,
                            "since": at, "until": until}
        self.changed = True
        verb = "suspended" if action == "suspend" else "backed off"
        return [f"{instance}: {verb} the {group} group until {stamp(until)} (reply matched {pattern!r}: {reply[:200]})"]

    def expire(self, now: float) -> list[str]:
        """End what is over; a log line for each."""
        lines = []
        for key, entry in sorted(self.active.items()):
            if entry["until"] <= now:
                del self.active[key]
                self.changed = True
                what = "suspension" if entry["action"] == "suspend" else "back-off"
                lines.append(f"{entry['instance']}: the {entry['group']} group's {what} ended at {stamp(entry['until'])}"
                             f" (pattern {entry['pattern']!r}): its own limits again")
        return lines

    def state(self) -> dict:
        return {"active": [self.active[key] for key in sorted(self.active)]}

    def restore(self, state: dict, now: float):
        """What a state file held, less what has ended or lost its rule (the configuration changed)."""
        for entry in state.get("active", []):
            if entry.get("until", 0) > now and entry.get("action") in self.rules.get(entry.get("group"), {}) \
                    and entry.get("instance") in self.instances:
                self.active[(entry["instance"], entry["group"])] = dict(entry)
        self.changed = True  # written again less what has ended


def read_state(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def write_state(path: str, state: dict):
    """Atomically (rename), readable by the shaping map (another account): it holds no secret."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
