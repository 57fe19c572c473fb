"""Shaping in Postfix's terms: what each receiver group's per-IP limits become in an instance.

Each group gets its own delivery transport in the instance's master.cf, `smtp-GROUP`, an smtp
client with the group's settings; `transport_maps` sends a recipient domain to its group's
transport (first the groups' domain lists, then the MX lookup service, mailfleet-shaping-map),
and everything else goes to the default group's transport (`default_transport`).

What each limit becomes, per instance (so per IP, the instance's only source address):
- connections C: the transport's process limit (master.cf maxproc), which caps the group's
  simultaneous deliveries, and so connections, over all its domains (gmail.com, googlemail.com
  and every Workspace-hosted domain share one transport); and `smtp-GROUP_destination_
  concurrency_limit`, which caps one destination (one recipient domain) within it, so that the
  queue manager does not plan more parallel deliveries than the transport has processes (or
  mailfleet:queue.destinationConcurrencyLimit, when that is lower: it keeps its meaning, per
  destination, in every group).
- messages per connection N: `-o smtp_connection_reuse_count_limit=N-1` on the transport (an smtp
  client parameter, which has no per-transport name in main.cf; Postfix 3.4 and later): it counts
  the times a session is used again after its first message. N = 1 turns the connection cache off
  for the transport instead (`smtp_connection_cache_on_demand=no`: a limit of 0 means no limit).
- messages per minute M: `smtp-GROUP_transport_rate_delay` (Postfix 3.1 and later), a pause
  between two deliveries over the transport whatever their destination. Postfix takes whole
  seconds only, and a non-zero transport rate delay makes the transport deliver one message at a
  time. So M <= 60 becomes a delay of ceil(60/M) s (at most 60/ceil(60/M) a minute: exactly M
  when M divides 60, else the next lower rate; one connection at a time), and M > 60 is not paced
  by Postfix (connections and messages per connection still hold).
A destination rate delay is not used: it also serialises, per recipient domain, so it would
neither cap a group of domains nor keep the group's concurrency.

Back-off on push-back (mailfleet/backoff.py): a group with a `backoff` rule gets a second, slow
transport in every instance, `smtp-GROUP-backoff`, with the rule's connections and messages a
minute (never more than the group's own on that instance) the same way. Switching to it, or to
Postfix's `retry:` transport (deferred, never bounced), is only a routing answer: each instance's
transport_maps asks the shaping map first under its own name (backoff-INSTANCE), and that answer
changes while the delivery log service holds a back-off of that instance and group (the map sends
at most the back-off's rate the slow way, the rest to retry: mailfleet/shaping_map.py says why).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mailfleet.backoff import BACKOFF_SUFFIX, MAP_PREFIX, PushBack, rules_of
from mailfleet.config import DEFAULT_GROUP, Fleet, Instance

TRANSPORT_PREFIX = "smtp-"
MAX_PACED_PER_MINUTE = 60  # a 1 s transport rate delay, Postfix's smallest


@dataclass(frozen=True)
class GroupTransport:
    group: str
    transport: str
    connections: int
    messages_per_connection: int
    messages_per_minute: int
    rate_delay: int  # seconds; 0: not paced
    destination_concurrency: int  # per recipient domain: connections, or less (mailfleet:queue)
    backoff: bool = False  # the group's slow transport, used while its receivers push back

    @property
    def paced_per_minute(self) -> float | None:
        """The most messages a minute the rate delay lets through, or None when not paced."""
        return 60 / self.rate_delay if self.rate_delay else None


def transport_name(group: str) -> str:
    return f"{TRANSPORT_PREFIX}{group}"


def rate_delay(messages_per_minute: int) -> int:
    """Whole seconds between deliveries for at most `messages_per_minute`; 0 when Postfix cannot
    pace that fast."""
    if messages_per_minute > MAX_PACED_PER_MINUTE:
        return 0
    return math.ceil(60 / messages_per_minute)


def enabled(fleet: Fleet) -> bool:
    """Shaping is about the receivers: with a relayhost, every message goes to the relay instead."""
    return fleet.relayhost is None


def transports(fleet: Fleet, instance: Instance) -> list[GroupTransport]:
    """The instance's transports, one per group, the default group last."""
    names = [name for name in fleet.shaping.groups if name != DEFAULT_GROUP] + [DEFAULT_GROUP]
    result = []
    for name in names:
        limits = fleet.shaping.limits(name, instance)
        result.append(GroupTransport(
            group=name, transport=transport_name(name), connections=limits.connections,
            messages_per_connection=limits.messages_per_connection,
            messages_per_minute=limits.messages_per_minute, rate_delay=rate_delay(limits.messages_per_minute),
            destination_concurrency=min(limits.connections, fleet.queue.destination_concurrency_limit or limits.connections)))
    return result


def backoff_transports(fleet: Fleet, instance: Instance) -> list[GroupTransport]:
    """The slow transport of each group with a back-off rule, on this instance: the rule's
    connections and rate, each capped by the group's own (a back-off never speeds a cold IP up)."""
    result = []
    for usual in transports(fleet, instance):
        rule = fleet.shaping.groups[usual.group].backoff
        if rule is None:
            continue
        connections = min(rule.connections, usual.connections)
        per_minute = min(rule.messages_per_minute, usual.messages_per_minute)
        result.append(GroupTransport(
            group=usual.group, transport=usual.transport + BACKOFF_SUFFIX, connections=connections,
            messages_per_connection=usual.messages_per_connection, messages_per_minute=per_minute,
            rate_delay=rate_delay(per_minute), destination_concurrency=min(connections, usual.destination_concurrency),
            backoff=True))
    return result


def reacts(fleet: Fleet) -> bool:
    """Whether any group backs off or suspends: then instances ask the shaping map for back-offs."""
    return enabled(fleet) and bool(rules_of(fleet.shaping.groups))


def backoff_map_name(instance: Instance) -> str:
    return f"{MAP_PREFIX}{instance.name}"


def domain_table(fleet: Fleet) -> str:
    """transport_maps entries for the groups' own domains (texthash: no postmap, no .db file)."""
    lines = ["# Managed by mailfleet: recipient domain -> its receiver group's transport (mailfleet:shaping)."]
    for name, group in fleet.shaping.groups.items():
        for domain in group.domains or ():
            lines.append(f"{domain} {transport_name(name)}:")
    return "\n".join(lines) + "\n"


def mx_groups(fleet: Fleet) -> dict[str, dict[str, list[str]]]:
    """What the MX lookup service needs: per group, its domains and MX suffixes, and its transport."""
    return {name: {"transport": transport_name(name), "domains": list(group.domains or ()),
                   "mxSuffixes": list(group.mx_suffixes or ())}
            for name, group in fleet.shaping.groups.items() if name != DEFAULT_GROUP}


def backoff_transport_names(fleet: Fleet) -> dict[str, dict]:
    """group -> its slow transport and the back-off's messages a minute, for the shaping map (the
    groups with a back-off rule), which sends at most that many a minute the slow way."""
    return {name: {"transport": transport_name(name) + BACKOFF_SUFFIX,
                   "messagesPerMinute": group.backoff.messages_per_minute}
            for name, group in fleet.shaping.groups.items() if group.backoff is not None}


def push_back(fleet: Fleet, group: str, reply: str) -> str | None:
    """What a receiver's reply asks of the group: "suspend" (a block pattern matched), "backoff"
    (a reputation or rate deferral), or None. Suspend wins: a block is the stronger signal.
    The delivery log service decides the same way on the host (mailfleet/backoff.py)."""
    found = PushBack(rules_of(fleet.shaping.groups), ()).match(group, reply)
    return found[0] if found else None
