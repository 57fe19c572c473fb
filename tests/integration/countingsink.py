"""Fake receivers for the shaping tests: accept every message, and log each connection and
message, so a test can count per source IP what a receiver counts (simultaneous connections,
messages per connection, messages per minute).

Run inside the test namespace:
    ip netns exec NS python countingsink.py --log FILE --listen NAME=127.0.0.61 [--listen ...]

FILE gets one JSON line per event, written as it happens:
    {"t": seconds, "receiver": NAME, "peer": IP, "conn": N, "event": "open" | "mail" | "message" | "close"}
("mail" is MAIL FROM: a transaction begins; "message" its end, accepted; "close" QUIT or EOF).
With --push-back NAME=N=REPLY, receiver NAME answers RCPT TO with REPLY (lines separated by "|")
while it has accepted N messages from that source IP in the last 60 s, as a receiver that pushes
back beyond a rate does (event "pushback"); the client's MAIL FROM then ends with RSET or QUIT.
A small SMTP server of its own (no TLS offered, so clients send in plain text): aiosmtpd does not
expose the connection's life, which is what is counted here.
"""

import argparse
import asyncio
import json
import signal
import time


class Receivers:
    def __init__(self, log, push_back=None):
        self.log = log
        self.connections = 0
        self.push_back = push_back or {}  # receiver -> (messages a minute, reply)
        self.accepted: dict[tuple[str, str], list[float]] = {}

    def pushes_back(self, receiver, peer):
        if receiver not in self.push_back:
            return None
        limit, reply = self.push_back[receiver]
        now = time.time()
        recent = self.accepted[(receiver, peer)] = [t for t in self.accepted.get((receiver, peer), []) if t > now - 60]
        if len(recent) < limit:
            return None
        lines = reply.split("|")
        return "".join(f"{line}\r\n" for line in lines).encode()

    def record(self, receiver, peer, conn, event):
        self.log.write(json.dumps({"t": time.time(), "receiver": receiver, "peer": peer, "conn": conn,
                                   "event": event}) + "\n")
        self.log.flush()

    def handler(self, receiver):
        async def session(reader, writer):
            self.connections += 1
            conn, peer = self.connections, writer.get_extra_info("peername")[0]
            self.record(receiver, peer, conn, "open")
            closed, recipients = False, 0
            try:
                writer.write(f"220 {receiver}.test ESMTP counting sink\r\n".encode())
                while line := await reader.readline():
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        writer.write(f"250-{receiver}.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n".encode())
                    elif verb == b"MAIL":
                        self.record(receiver, peer, conn, "mail")
                        recipients = 0
                        writer.write(b"250 2.0.0 ok\r\n")
                    elif verb == b"DATA" and not recipients:  # every RCPT pushed back (pipelined DATA)
                        writer.write(b"554 5.5.1 no valid recipients\r\n")
                    elif verb == b"DATA":
                        writer.write(b"354 go ahead\r\n")
                        await writer.drain()
                        while (data := await reader.readline()) not in (b".\r\n", b".\n", b""):
                            pass
                        self.record(receiver, peer, conn, "message")
                        self.accepted.setdefault((receiver, peer), []).append(time.time())
                        writer.write(b"250 2.0.0 accepted\r\n")
                    elif verb == b"QUIT":
                        # Closed as the client says so: it waits for the 221 (smtp_skip_quit_response=no).
                        self.record(receiver, peer, conn, "close")
                        closed = True
                        writer.write(b"221 2.0.0 bye\r\n")
                        await writer.drain()
                        break
                    elif verb == b"RCPT" and (reply := self.pushes_back(receiver, peer)):
                        self.record(receiver, peer, conn, "pushback")
                        writer.write(reply)
                    else:  # RCPT, RSET, NOOP
                        recipients += verb == b"RCPT"
                        if verb == b"RSET":
                            self.record(receiver, peer, conn, "rset")
                        writer.write(b"250 2.0.0 ok\r\n")
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                if not closed:
                    self.record(receiver, peer, conn, "close")
                writer.close()
        return session


async def serve(log_path, listens, push_back=None):
    with open(log_path, "a") as log:
        receivers = Receivers(log, push_back)
        servers = []
        for name, address in listens:
            host, _, port = address.partition(":")
            servers.append(await asyncio.start_server(receivers.handler(name), host, int(port or 25),
                                                      reuse_address=True))
        print("ready", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        for server in servers:
            server.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--listen", action="append", required=True, help="NAME=ADDRESS[:PORT]")
    parser.add_argument("--push-back", action="append", default=[], help="NAME=MESSAGES_A_MINUTE=REPLY")
    args = parser.parse_args()
    push_back = {name: (int(limit), reply) for name, limit, reply in (item.split("=", 2) for item in args.push_back)}
    asyncio.run(serve(args.log, [tuple(item.split("=", 1)) for item in args.listen], push_back))


if __name__ == "__main__":
    main()


def read_events(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def counts(events: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (receiver, source IP): messages, the most simultaneous connections, the most mail
    transactions at once (MAIL FROM to the end of DATA: deliveries in progress), the most messages
    on one connection, the most messages in any 60 s, and the steady rate (messages a minute
    from the first message to the last)."""
    result: dict[tuple[str, str], dict] = {}
    open_now: dict[tuple[str, str], int] = {}
    in_transaction: dict[tuple[str, str], int] = {}
    transacting: set[int] = set()
    per_connection: dict[int, int] = {}
    times: dict[tuple[str, str], list[float]] = {}
    for event in sorted(events, key=lambda e: e["t"]):
        key = (event["receiver"], event["peer"])
        entry = result.setdefault(key, {"messages": 0, "connections": 0, "max_connections": 0, "max_transactions": 0,
                                        "max_per_connection": 0, "max_per_minute": 0, "per_minute": None})
        if event["event"] in ("message", "rset", "close") and event["conn"] in transacting:
            transacting.discard(event["conn"])
            in_transaction[key] -= 1
        if event["event"] == "mail":
            transacting.add(event["conn"])
            in_transaction[key] = in_transaction.get(key, 0) + 1
            entry["max_transactions"] = max(entry["max_transactions"], in_transaction[key])
        elif event["event"] == "rset":
            pass
        elif event["event"] == "open":
            open_now[key] = open_now.get(key, 0) + 1
            entry["connections"] += 1
            entry["max_connections"] = max(entry["max_connections"], open_now[key])
        elif event["event"] == "close":
            open_now[key] -= 1
        elif event["event"] == "message":  # not "pushback": a refused recipient is no message
            entry["messages"] += 1
            per_connection[event["conn"]] = per_connection.get(event["conn"], 0) + 1
            entry["max_per_connection"] = max(entry["max_per_connection"], per_connection[event["conn"]])
            times.setdefault(key, []).append(event["t"])
    for key, stamps in times.items():
        start = 0
        for end, stamp in enumerate(stamps):
            while stamp - stamps[start] >= 60:
                start += 1
            result[key]["max_per_minute"] = max(result[key]["max_per_minute"], end - start + 1)
        if len(stamps) > 1 and stamps[-1] > stamps[0]:
            result[key]["per_minute"] = round((len(stamps) - 1) * 60 / (stamps[-1] - stamps[0]), 1)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        result[key]["min_gap"] = round(min(gaps), 3) if gaps else None
    return result
