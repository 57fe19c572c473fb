"""Fake receivers for the shaping tests: accept every message, and log each connection and
message, so a test can count per source IP what a receiver counts (simultaneous connections,
messages per connection, messages per minute).

Run inside the test namespace:
    ip netns exec NS python countingsink.py --log FILE --listen NAME=127.0.0.61 [--listen ...]

FILE gets one JSON line per event, written as it happens:
    {"t": seconds, "receiver": NAME, "peer": IP, "conn": N, "event": "open" | "mail" | "message" | "close"}
("mail" is MAIL FROM: a transaction begins; "message" its end, accepted; "close" QUIT or EOF).
A small SMTP server of its own (no TLS offered, so clients send in plain text): aiosmtpd does not
expose the connection's life, which is what is counted here.
"""

import argparse
import asyncio
import json
import signal
import time


class Receivers:
    def __init__(self, log):
        self.log = log
        self.connections = 0

    def record(self, receiver, peer, conn, event):
        self.log.write(json.dumps({"t": time.time(), "receiver": receiver, "peer": peer, "conn": conn,
                                   "event": event}) + "\n")
        self.log.flush()

    def handler(self, receiver):
        async def session(reader, writer):
            self.connections += 1
            conn, peer = self.connections, writer.get_extra_info("peername")[0]
            self.record(receiver, peer, conn, "open")
            closed = False
            try:
                writer.write(f"220 {receiver}.test ESMTP counting sink\r\n".encode())
                while line := await reader.readline():
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        writer.write(f"250-{receiver}.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n".encode())
                    elif verb == b"MAIL":
                        self.record(receiver, peer, conn, "mail")
                        writer.write(b"250 2.0.0 ok\r\n")
                    elif verb == b"DATA":
                        writer.write(b"354 go ahead\r\n")
                        await writer.drain()
                        while (data := await reader.readline()) not in (b".\r\n", b".\n", b""):
                            pass
                        self.record(receiver, peer, conn, "message")
                        writer.write(b"250 2.0.0 accepted\r\n")
                    elif verb == b"QUIT":
                        # Closed as the client says so: it waits for the 221 (smtp_skip_quit_response=no).
                        self.record(receiver, peer, conn, "close")
                        closed = True
                        writer.write(b"221 2.0.0 bye\r\n")
                        await writer.drain()
                        break
                    else:  # RCPT, RSET, NOOP
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


async def serve(log_path, listens):
    with open(log_path, "a") as log:
        receivers = Receivers(log)
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
    args = parser.parse_args()
    asyncio.run(serve(args.log, [tuple(item.split("=", 1)) for item in args.listen]))


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
        else:
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
