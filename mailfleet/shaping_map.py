#!/usr/bin/python3
"""mailfleet-shaping-map: which receiver group a recipient domain belongs to, by its MX hosts.

Postfix asks it at routing time (the instances' transport_maps, after the groups' domain lists):
    proxy:socketmap:unix:/run/mailfleet-shaping/map.sock:transport
A Postfix socketmap server (socketmap_table(5): netstring requests "NAME KEY", replies "OK VALUE",
"NOTFOUND ", "TEMP reason"). For a domain it answers `OK smtp-GROUP:` when the domain is in a
group's list, or when its best MX host ends with one of a group's MX suffixes (a company domain
hosted by Google Workspace or Microsoft 365 belongs to that group); NOTFOUND otherwise (the default
group: default_transport). Postfix asks with the full recipient address (a socketmap is a pattern
table to it); the domain decides. Parent-domain keys and address literals are NOTFOUND at once.

MX records come from the host's resolver (/etc/resolv.conf), cached for their TTL (at most an
hour; NXDOMAIN and no-MX answers for five minutes). When DNS fails, the answer falls back to the
domain lists and is kept for a minute only. Python's standard library alone (it runs on the
host, where only python3 is installed): a minimal DNS client for one question type, MX.

Back-off on push-back (mailfleet/backoff.py): each instance also asks, first, under its own name
    proxy:socketmap:unix:/run/mailfleet-shaping/map.sock:backoff-INSTANCE
and gets NOTFOUND (its usual routing follows) unless the delivery log service has backed off or
suspended that instance's path to the recipient's group. Suspended: `OK retry:4.7.0 ...` (the
message is deferred, never bounced, and tried again at its next queue run). Backed off: the
group's slow transport `OK smtp-GROUP-backoff:` for at most the back-off's messages a minute,
`retry:` for the others. The bound matters because the queue manager routes a message once, when
it enters the active queue, and keeps it on that transport until it has been tried: without it
every deferred message coming back during a back-off would wait in the slow transport's queue,
long after the back-off has ended. (The count is of answers: a recipient that smtpd resolves at
RCPT time uses one too, so fewer may go the slow way, never more.) The back-offs come from a
state file (--backoff-state), read again when it changes; an entry ends at its time, without any
new event.

    mailfleet-shaping-map --groups /etc/mailfleet/shaping-map.json --socket /run/mailfleet-shaping/map.sock
    mailfleet-shaping-map --groups FILE --query DOMAIN    (prints the answer, for checks)
    mailfleet-shaping-map --socket PATH --query DOMAIN    (asks the running service: the probe)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections import OrderedDict

MX = 15
CACHE_ENTRIES = 50_000
MAX_TTL = 3600
NEGATIVE_TTL = 300
FAILURE_TTL = 60
DEFAULT_GROUP = "default"
BACKOFF_PREFIX = "backoff-"  # the map name an instance asks for its back-offs: backoff-INSTANCE
DNS_TIMEOUT = 3.0


class DnsError(Exception):
    pass


def _name(domain: str) -> bytes:
    labels = domain.rstrip(".").encode("idna").split(b".")
    return b"".join(struct.pack("B", len(label)) + label for label in labels) + b"\0"


def _read_name(message: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed) name at offset: the name and the offset after it."""
    labels, end, jumps = [], None, 0
    while True:
        length = message[offset]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | message[offset + 1]
            jumps += 1
            if jumps > 50:
                raise DnsError("a compression loop")
            continue
        if length == 0:
            return ".".join(labels).lower(), (end if end is not None else offset + 1)
        labels.append(message[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length


def parse_mx(message: bytes, query_id: int) -> tuple[list[tuple[int, str]], int] | None:
    """(MX records as (preference, host), TTL) from a response; None for NXDOMAIN."""
    if len(message) < 12:
        raise DnsError("a short answer")
    ident, flags, questions, answers, _, _ = struct.unpack("!HHHHHH", message[:12])
    if ident != query_id:
        raise DnsError("an answer to another question")
    rcode = flags & 0xF
    if rcode == 3:
        return None
    if rcode != 0:
        raise DnsError(f"rcode {rcode}")
    offset = 12
    for _ in range(questions):
        offset = _read_name(message, offset)[1] + 4
    records, ttl = [], MAX_TTL
    for _ in range(answers):
        offset = _read_name(message, offset)[1]
        rtype, _, record_ttl, length = struct.unpack("!HHIH", message[offset:offset + 10])
        offset += 10
        if rtype == MX:
            preference = struct.unpack("!H", message[offset:offset + 2])[0]
            records.append((preference, _read_name(message, offset + 2)[0]))
            ttl = min(ttl, record_ttl)
        offset += length
    return sorted(records), ttl


def nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    servers = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append(parts[1])
    except OSError:
        pass
    return servers or ["127.0.0.1"]


def _exchange(server: str, query: bytes, timeout: float, port: int) -> bytes:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as udp:
        udp.settimeout(timeout)
        udp.connect((server, port))
        udp.send(query)
        answer = udp.recv(4096)
    if len(answer) > 2 and answer[2] & 0x02:  # truncated: ask again over TCP
        with socket.create_connection((server, port), timeout=timeout) as tcp:
            tcp.sendall(struct.pack("!H", len(query)) + query)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
                chunk = tcp.recv(65536)
                if not chunk:
                    raise DnsError("the TCP answer was cut short")
                data += chunk
            answer = data[2:2 + struct.unpack("!H", data[:2])[0]]
    return answer


def lookup_mx(domain: str, servers: list[str], timeout: float = DNS_TIMEOUT, port: int = 53):
    """(MX records, TTL), None for NXDOMAIN; DnsError when no server answers."""
    problems = []
    for server in servers:
        query_id = random.randrange(65536)
        query = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + _name(domain) + struct.pack("!HH", MX, 1)
        try:
            return parse_mx(_exchange(server, query, timeout, port), query_id)
        except (OSError, DnsError, IndexError, struct.error, UnicodeError) as error:
            problems.append(f"{server}: {error or type(error).__name__}")
    raise DnsError("; ".join(problems))


class Backoffs:
    """The active back-offs per instance, from the delivery log service's state file (mailfleet/
    backoff.py writes it atomically): read again when its modification time or size changes."""

    def __init__(self, path: str, clock=time.time):
        self.path, self.clock = path, clock
        self.seen: tuple | None = None
        self.by_instance: dict[str, dict[str, dict]] = {}
        self.lock = threading.Lock()

    def active(self, instance: str) -> dict[str, dict]:
        try:
            stat = os.stat(self.path)
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            seen = None
        with self.lock:
            if seen != self.seen:
                self.seen, self.by_instance = seen, {}
                if seen is not None:
                    try:
                        with open(self.path) as f:
                            entries = json.load(f).get("active", [])
                    except (OSError, ValueError) as error:
                        print(f"warning: {self.path} unreadable ({error}): no back-off", file=sys.stderr, flush=True)
                        entries = []
                    for entry in entries:
                        self.by_instance.setdefault(entry["instance"], {})[entry["group"]] = entry
            now = self.clock()
            return {group: entry for group, entry in self.by_instance.get(instance, {}).items() if entry["until"] > now}


class GroupMap:
    def __init__(self, groups: dict, resolver=lookup_mx, servers=None, clock=time.monotonic,
                 backoffs: Backoffs | None = None, slow: dict[str, dict] | None = None):
        self.groups = {g["transport"]: name for name, g in groups.items()}
        # group -> {"transport": smtp-GROUP-backoff, "messagesPerMinute": N}
        self.backoffs, self.slow = backoffs, slow or {}
        self.answered: dict[tuple[str, str], list[float]] = {}  # slow answers in the last minute
        self.domains = {d: g["transport"] for g in groups.values() for d in g.get("domains", [])}
        self.suffixes = [(s.lower().strip("."), g["transport"]) for g in groups.values() for s in g.get("mxSuffixes", [])]
        self.resolver, self.servers, self.clock = resolver, servers, clock
        self.cache: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self.lock = threading.Lock()

    def _by_mx(self, records: list[tuple[int, str]]) -> str | None:
        """The group of the best (lowest preference) MX hosts: where the mail goes."""
        best = min((preference for preference, _ in records), default=None)
        for host in (host for preference, host in records if preference == best):
            for suffix, transport in self.suffixes:
                if host == suffix or host.endswith("." + suffix):
                    return transport
        return None

    def transport(self, key: str) -> str | None:
        """The transport for a transport_maps key, or None (not found)."""
        # Postfix treats a socketmap as a pattern table: transport_maps asks it for the whole
        # recipient address only (never the domain alone), so the domain is taken from it.
        key = key.lower().rsplit("@", 1)[-1].rstrip(".")
        if not key or key.startswith(".") or key == "*" or key.startswith("["):
            return None
        if key in self.domains:
            return self.domains[key]
        now = self.clock()
        with self.lock:
            cached = self.cache.get(key)
            if cached and cached[1] > now:
                self.cache.move_to_end(key)
                return cached[0]
        try:
            result = self.resolver(key, self.servers or nameservers())
            if result is None:
                answer, ttl = None, NEGATIVE_TTL
            else:
                records, ttl = result
                answer = self._by_mx(records)
                ttl = min(max(ttl, 1), MAX_TTL) if records else NEGATIVE_TTL
        except DnsError as error:
            print(f"warning: MX lookup of {key} failed ({error}): the domain lists decide for "
                  f"{FAILURE_TTL} s", file=sys.stderr, flush=True)
            answer, ttl = None, FAILURE_TTL
        with self.lock:
            self.cache[key] = (answer, now + ttl)
            self.cache.move_to_end(key)
            while len(self.cache) > CACHE_ENTRIES:
                self.cache.popitem(last=False)
        return answer

    def group(self, key: str) -> str:
        """The receiver group of a transport_maps key: the default group when no list or MX says."""
        transport = self.transport(key)
        return self.groups.get(transport, DEFAULT_GROUP)

    def reply(self, request: str) -> str:
        name, _, key = request.partition(" ")
        if name.startswith(BACKOFF_PREFIX):
            return self.backoff_reply(name[len(BACKOFF_PREFIX):], key)
        transport = self.transport(key)
        return f"OK {transport}:" if transport else "NOTFOUND "

    def backoff_reply(self, instance: str, key: str) -> str:
        active = self.backoffs.active(instance) if self.backoffs else {}
        if not active:
            return "NOTFOUND "  # the common case: no MX lookup, no group
        entry = active.get(self.group(key))
        if entry is None:
            return "NOTFOUND "
        group = entry["group"]
        until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["until"]))
        slow = self.slow.get(group)
        if entry["action"] == "backoff" and slow is None:
            return "NOTFOUND "  # the group lost its rule (a new configuration): its usual transport
        if entry["action"] == "backoff" and self._take(instance, group, slow["messagesPerMinute"]):
            return f"OK {slow['transport']}:"
        state = "suspended" if entry["action"] == "suspend" else "backing off"
        return f"OK retry:4.7.0 mailfleet: the {group} group is {state} on this IP until {until} (its receivers pushed back)"

    def _take(self, instance: str, group: str, per_minute: int) -> bool:
        """One of the back-off's answers for the slow transport in the last minute, if any is left."""
        now = self.clock()
        with self.lock:
            times = [t for t in self.answered.get((instance, group), []) if t > now - 60]
            taken = len(times) < per_minute
            if taken:
                times.append(now)
            self.answered[(instance, group)] = times
            return taken


def read_netstring(stream) -> bytes | None:
    length = b""
    while (char := stream.read(1)) != b":":
        if not char:
            return None
        if not char.isdigit() or len(length) > 6:
            raise ValueError("not a netstring")
        length += char
    data = stream.read(int(length) + 1)
    if len(data) != int(length) + 1 or data[-1:] != b",":
        raise ValueError("not a netstring")
    return data[:-1]


def netstring(text: str) -> bytes:
    data = text.encode()
    return b"%d:%s," % (len(data), data)


def serve(groups: GroupMap, path: str):
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            try:
                while (request := read_netstring(self.rfile)) is not None:
                    self.wfile.write(netstring(groups.reply(request.decode("utf-8", "replace"))))
                    self.wfile.flush()
            except (ValueError, ConnectionError):
                pass

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    if os.path.exists(path):
        os.unlink(path)
    server = Server(path, Handler)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"answering on {path}: {len(groups.domains)} domains, {len(groups.suffixes)} MX suffixes", flush=True)
    server.serve_forever()


def ask(path: str, key: str, name: str = "transport", timeout: float = 10) -> str:
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(timeout)
        client.connect(path)
        stream = client.makefile("rwb")
        stream.write(netstring(f"{name} {key}"))
        stream.flush()
        answer = read_netstring(stream)
    if answer is None:
        raise ConnectionError(f"{path} closed the connection")
    return answer.decode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups")
    parser.add_argument("--socket")
    parser.add_argument("--query")
    parser.add_argument("--map", default="transport", help="the map name of --query (backoff-INSTANCE: its back-offs)")
    parser.add_argument("--backoff-state", help="the delivery log service's back-offs (JSON), read when it changes")
    args = parser.parse_args()
    if args.socket and args.query:
        print(ask(args.socket, args.query, args.map))
        return
    if not args.groups or not (args.socket or args.query):
        parser.error("--groups with --socket (serve) or --query (answer here); or --socket with --query (ask)")
    with open(args.groups) as f:
        settings = json.load(f)
    groups = GroupMap(settings["groups"], backoffs=Backoffs(args.backoff_state) if args.backoff_state else None,
                      slow=settings.get("backoffTransports"))
    if args.query:
        print(groups.reply(f"{args.map} {args.query}"))
    else:
        serve(groups, args.socket)


if __name__ == "__main__":
    main()
