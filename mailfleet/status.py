"""The fleet at a glance: the pure half of tools/status.py (no SSH, no DNS, no Pulumi).

What each host tells (its queues from `postqueue -j`, the last hour of its delivery log, its
warm-up day), what DNS says about each instance (its records; its public address on DNS
blocklists) are read by the tool; this module turns them into figures, a table and a JSON
document, and says what needs attention.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

QUEUES = ("incoming", "active", "deferred", "hold")
OUTCOMES = ("sent", "deferred", "bounced", "expired")
LISTED, CLEAN, UNKNOWN = "listed", "clean", "unknown"
TOP_DEFERRALS = 3


# ---- queues ----------------------------------------------------------------------------------

def queue_counts(postqueue_json: str) -> dict[str, int]:
    """Messages per queue from `postqueue -j` (one JSON object a line, one line a message)."""
    counts = dict.fromkeys(QUEUES, 0)
    for line in postqueue_json.splitlines():
        if line.strip():
            name = json.loads(line).get("queue_name", "")
            # maildrop is mail not yet picked up by pickup: it is on its way in.
            name = "incoming" if name == "maildrop" else name
            counts[name] = counts.get(name, 0) + 1
    return counts


# ---- the delivery log ------------------------------------------------------------------------

def parse_time(text: str) -> datetime:
    """RFC 3339 UTC as the delivery log writes it (2026-12-04T19:05:00.123Z)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class LastHour:
    """One instance's delivery attempts since `since`: counts per group and outcome, and the
    commonest replies of its deferrals."""
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    deferrals: Counter = field(default_factory=Counter)
    unreadable: int = 0  # lines that are not a delivery record (a torn last line, say)

    def totals(self) -> dict[str, int]:
        return {outcome: sum(counts[outcome] for counts in self.groups.values()) for outcome in OUTCOMES}

    def top_deferrals(self, count: int = TOP_DEFERRALS) -> list[dict]:
        # Ties in the order the replies were first seen, so the output is stable.
        return [{"reply": reply, "count": n} for reply, n in self.deferrals.most_common(count)]


def last_hour(lines: Iterable[str], since: datetime) -> dict[str, LastHour]:
    """Per instance, the delivery attempts logged at or after `since`."""
    found: dict[str, LastHour] = {}
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            moment = parse_time(record["time"])
            instance, status = record["instance"], record["status"]
        except (ValueError, KeyError, TypeError, AttributeError):
            found.setdefault("", LastHour()).unreadable += 1
            continue
        if moment < since or status not in OUTCOMES:
            continue
        figures = found.setdefault(instance, LastHour())
        group = record.get("group") or "default"
        figures.groups.setdefault(group, dict.fromkeys(OUTCOMES, 0))[status] += 1
        if status == "deferred":
            figures.deferrals[" ".join(str(record.get("reply") or record.get("dsn") or "?").split())] += 1
    return found


# ---- blocklists ------------------------------------------------------------------------------

def dnsbl_name(address: str, zone: str) -> str:
    """The name a DNSBL is asked for an IPv4 address: its octets reversed, then the zone."""
    return ".".join(reversed(address.split("."))) + "." + zone.rstrip(".")


@dataclass
class Listing:
    zone: str
    status: str  # listed, clean or unknown
    codes: list[str] = field(default_factory=list)
    reason: str = ""  # the list's TXT text when listed; why, when unknown


# Spamhaus answers these instead of a listing when it refuses to answer (its "return codes" page):
# the caller must not read them as "listed", nor as "clean".
REFUSALS = {
    "127.255.255.252": "the list says the query was malformed (a typo in the zone name?)",
    "127.255.255.254": "the list refuses queries from public or open resolvers: use your own resolver "
                       "(or the list's registered service)",
    "127.255.255.255": "the list refuses this resolver: too many queries (registered service needed)",
}


def interpret_dnsbl(zone: str, answer: list[str] | None, error: str | None = None,
                    reason: str = "") -> Listing:
    """What one DNSBL's A answer for an address means.

    `answer` is None for NXDOMAIN (or no A record): not listed. An address in 127.0.0.0/8 is a
    listing, except the refusal codes above and 127.0.0.1 (no list lists with it; some use it to
    say "query refused"). Anything else (an error, a timeout, an answer outside 127/8, which a
    resolver that rewrites NXDOMAIN gives) is unknown: never read as clean.
    """
    if error:
        return Listing(zone, UNKNOWN, reason=f"lookup failed: {error}")
    if not answer:
        return Listing(zone, CLEAN)
    codes = sorted(set(answer))
    refused = [REFUSALS[code] for code in codes if code in REFUSALS]
    if refused:
        return Listing(zone, UNKNOWN, codes, f"{codes[0]}: {refused[0]}")
    odd = [code for code in codes if not _listing_code(code)]
    if odd:
        return Listing(zone, UNKNOWN, codes, f"{', '.join(odd)} is no listing code (a resolver rewriting "
                                             "NXDOMAIN, or a list that refuses this query)")
    return Listing(zone, LISTED, codes, reason)


def _listing_code(code: str) -> bool:
    try:
        address = ipaddress.IPv4Address(code)
    except ValueError:
        return False
    return address in ipaddress.IPv4Network("127.0.0.0/8") and str(address) != "127.0.0.1"


# ---- one instance, and the fleet ---------------------------------------------------------------

DNS_KINDS = ("A", "PTR", "SPF", "DKIM")


@dataclass
class InstanceStatus:
    name: str
    host: str
    ip: str
    public_ip: str | None
    hostname: str
    error: str | None = None  # the host could not be asked (unreachable, a command failed)
    queue: dict[str, int] | None = None
    log: bool | None = None  # False: the host has no delivery log; None: not asked
    hour: LastHour = field(default_factory=LastHour)
    warmup: dict | None = None
    backoffs: list[dict] = field(default_factory=list)  # active back-offs and suspensions (backoff_summary)
    dns: dict[str, str] = field(default_factory=dict)  # kind -> present / missing / different / unknown
    dns_notes: list[str] = field(default_factory=list)
    listings: list[Listing] = field(default_factory=list)

    @property
    def address(self) -> str:
        """The address receivers see, which the blocklists list."""
        return self.public_ip or self.ip

    def attention(self) -> list[str]:
        """What an operator should look at, one short sentence each."""
        found = []
        if self.error:
            found.append(f"host not read: {self.error}")
        for entry in self.backoffs:
            if entry["action"] == "suspend":
                found.append(f"{entry['group']} suspended until {entry['until']}")
        for kind in DNS_KINDS:
            state = self.dns.get(kind)
            if state and state != "present":
                found.append(f"DNS {kind} {state}")
        for listing in self.listings:
            if listing.status == LISTED:
                found.append(f"{self.address} listed on {listing.zone}")
            elif listing.status == UNKNOWN:
                found.append(f"{listing.zone} unknown: {listing.reason}")
        return found


def warmup_summary(plan: dict | None) -> dict | None:
    """The fields of a warm-up state file that status shows; None when there is no plan."""
    if not plan:
        return None
    return {"day": plan.get("day"), "date": plan.get("date"), "start": plan.get("start"),
            "groups": plan.get("groups") or {}}


def backoff_summary(state: dict | None, instance: str, now: datetime) -> list[dict]:
    """The instance's active back-offs and suspensions from the host's back-off state file
    (mailfleet/backoff.py), by group: what has ended is left out."""
    found = []
    for entry in (state or {}).get("active", []):
        if entry.get("instance") == instance and entry.get("until", 0) > now.timestamp():
            found.append({"group": entry["group"], "action": entry["action"], "pattern": entry.get("pattern"),
                          "since": rfc3339(datetime.fromtimestamp(entry["since"], timezone.utc)),
                          "until": rfc3339(datetime.fromtimestamp(entry["until"], timezone.utc))})
    return sorted(found, key=lambda e: e["group"])


def as_json(stack: str, generated: datetime, since: datetime, instances: list[InstanceStatus]) -> dict:
    """The machine-readable status (docs/day2.md, "Reading status", shows the shape)."""
    items = []
    for item in instances:
        items.append({
            "name": item.name, "host": item.host, "ip": item.ip, "publicIp": item.public_ip,
            "hostname": item.hostname, "error": item.error,
            "queue": item.queue,
            "lastHour": None if item.log is None else {
                "log": item.log,
                "totals": item.hour.totals(),
                "groups": item.hour.groups,
                "topDeferrals": item.hour.top_deferrals(),
            },
            "warmup": item.warmup,
            "backoffs": item.backoffs,
            "dns": item.dns,
            "blocklists": [{"zone": x.zone, "status": x.status, "codes": x.codes, "reason": x.reason}
                           for x in item.listings],
            "attention": item.attention(),
        })
    return {"stack": stack, "generated": rfc3339(generated), "since": rfc3339(since), "instances": items,
            "attention": any(item["attention"] for item in items)}


# ---- the table ---------------------------------------------------------------------------------

COLUMNS = ("INSTANCE", "HOST", "IP / PUBLIC IP", "QUEUE a/d/h/i", "SENT", "DEFER", "BOUNCE", "WARM-UP", "DNS",
           "BLOCKLISTS")


def _queue_cell(item: InstanceStatus) -> str:
    if item.queue is None:
        return "?"
    return "/".join(str(item.queue.get(name, 0)) for name in ("active", "deferred", "hold", "incoming"))


def _dns_cell(item: InstanceStatus) -> str:
    wrong = [f"{kind} {item.dns[kind]}" for kind in DNS_KINDS if item.dns.get(kind, "present") != "present"]
    return ", ".join(wrong) if wrong else ("ok" if item.dns else "-")


def _blocklist_cell(item: InstanceStatus) -> str:
    listed = [x.zone for x in item.listings if x.status == LISTED]
    unknown = [x.zone for x in item.listings if x.status == UNKNOWN]
    parts = [f"LISTED {', '.join(listed)}"] if listed else []
    if unknown:
        parts.append(f"{len(unknown)} unknown")
    if not parts:
        return f"clean ({len(item.listings)})" if item.listings else "-"
    return "; ".join(parts)


def _row(item: InstanceStatus) -> list[str]:
    address = f"{item.ip} / {item.public_ip}" if item.public_ip else item.ip
    if item.log is None:
        sent = deferred = bounced = "?"
    elif item.log is False:
        sent = deferred = bounced = "-"
    else:
        totals = item.hour.totals()
        sent, deferred = str(totals["sent"]), str(totals["deferred"])
        bounced = str(totals["bounced"] + totals["expired"])
    warmup = f"day {item.warmup['day']}" if item.warmup else "-"
    return [item.name, item.host, address, _queue_cell(item), sent, deferred, bounced, warmup, _dns_cell(item),
            _blocklist_cell(item)]


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def table(stack: str, generated: datetime, since: datetime, instances: list[InstanceStatus]) -> str:
    """One line per instance, then, per instance with something to say, its groups, deferral
    replies, listings and problems, then one line: what needs attention."""
    rows = [list(COLUMNS)] + [_row(item) for item in instances]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    numeric = {4, 5, 6}
    lines = [f"mailfleet {stack}: {since:%Y-%m-%d %H:%M} to {generated:%H:%M} UTC "
             "(sent/defer/bounce: delivery attempts in the last hour)", ""]
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    for item in instances:
        details = []
        if item.log is False:
            details.append("no delivery log")
        if item.hour.groups:
            groups = "  ".join(f"{group} {c['sent']}/{c['deferred']}/{c['bounced'] + c['expired']}"
                               for group, c in sorted(item.hour.groups.items()))
            details.append(f"by group (sent/defer/bounce): {groups}")
        for deferral in item.hour.top_deferrals():
            details.append(f"deferred {deferral['count']}x: {_short(deferral['reply'], 90)}")
        if item.warmup and item.warmup.get("groups"):
            budgets = "  ".join(f"{group} {g.get('sent', 0)}/{g.get('budget', '?')}"
                                + (f" ({g['held']} held)" if g.get("held") else "")
                                for group, g in sorted(item.warmup["groups"].items()))
            details.append(f"warm-up day {item.warmup['day']} ({item.warmup.get('date')}), sent/budget: {budgets}")
        for entry in item.backoffs:
            state = "suspended" if entry["action"] == "suspend" else "backed off"
            details.append(f"{entry['group']} {state} until {entry['until']} (pattern {entry['pattern']})")
        for listing in item.listings:
            if listing.status == LISTED:
                reason = f": {_short(listing.reason, 80)}" if listing.reason else ""
                details.append(f"listed on {listing.zone} ({', '.join(listing.codes)}){reason}")
            elif listing.status == UNKNOWN:
                details.append(f"{listing.zone}: unknown, {_short(listing.reason, 140)}")
        details += item.dns_notes
        if item.error:
            details.append(f"not read: {item.error}")
        if details:
            lines.append("")
            lines.append(f"{item.name}:")
            lines += [f"  {detail}" for detail in details]
    attention = sum(bool(item.attention()) for item in instances)
    lines.append("")
    lines.append(f"needs attention: {attention} of {len(instances)} instances" if attention
                 else f"all {len(instances)} instances ok")
    return "\n".join(lines) + "\n"


def since_for(now: datetime) -> datetime:
    return now - timedelta(hours=1)
