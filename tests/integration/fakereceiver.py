"""Fake receiving MTAs for the delivery tests: one small SMTP server per receiver name and address,
which logs what a receiver sees and answers each RCPT TO as a table says.

Run inside the test namespace (receiving.py starts it):
    ip netns exec NS python fakereceiver.py --log FILE --listen NAME=127.0.0.61[:PORT] [--listen ...]
        [--replies FILE] [--cert PEM]

--replies: JSON, recipient local-part prefix -> the reply to its RCPT TO ("451 4.7.1 ...", or a
multi-line "550-...\\r\\n550 ..."); a 4xx defers that recipient, a 5xx bounces it; every other
recipient is accepted. --push-back NAME=N=REPLY: receiver NAME answers every RCPT TO with REPLY
(lines separated by "|") while it has accepted N messages from that source IP in the last 60 s, as
a receiver that pushes back beyond a rate does. DATA without an accepted recipient (the client
pipelined it) gets 554. --cert: certificate and key in one PEM file; STARTTLS is offered only with it.

FILE gets one JSON line per event, written as it happens:
    {"t": seconds, "receiver": NAME, "peer": IP, "conn": N, "event": EVENT, ...}
EVENT: "open"; "tls"; "mail" (MAIL FROM: a transaction begins); "refused" (a RCPT TO answered from
the table, with "rcpt" and "reply"); "message" (the end of DATA, accepted, with "recipients");
"rset"; "close" (QUIT or EOF). A server of its own rather than aiosmtpd: aiosmtpd does not expose
a connection's life, which the shaping tests count.
"""

import argparse
import asyncio
import json
import signal
import ssl
import time


class Receivers:
    def __init__(self, log, replies: dict[str, str], tls: ssl.SSLContext | None,
                 push_back: dict[str, tuple[int, str]]):
        self.log, self.replies, self.tls, self.push_back = log, replies, tls, push_back
        self.connections = 0
        self.accepted_at: dict[tuple[str, str], list[float]] = {}  # (receiver, peer) -> message times

    def pushes_back(self, receiver, peer) -> str | None:
        if receiver not in self.push_back:
            return None
        limit, reply = self.push_back[receiver]
        now = time.time()
        recent = [t for t in self.accepted_at.get((receiver, peer), []) if t > now - 60]
        self.accepted_at[(receiver, peer)] = recent
        return "\r\n".join(reply.split("|")) if len(recent) >= limit else None

    def record(self, receiver, peer, conn, event, **details):
        self.log.write(json.dumps({"t": time.time(), "receiver": receiver, "peer": peer, "conn": conn,
                                   "event": event, **details}) + "\n")
        self.log.flush()

    def reply_to(self, address: str) -> str | None:
        local = address.split("@")[0].lower()
        return next((reply for prefix, reply in self.replies.items() if local.startswith(prefix)), None)

    def handler(self, receiver):
        async def session(reader, writer):
            self.connections += 1
            conn, peer = self.connections, writer.get_extra_info("peername")[0]
            self.record(receiver, peer, conn, "open")
            accepted, in_tls, closed = [], False, False
            try:
                writer.write(f"220 {receiver}.test ESMTP fake receiver\r\n".encode())
                while line := await reader.readline():
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        starttls = "250-STARTTLS\r\n" if self.tls and not in_tls else ""
                        writer.write(f"250-{receiver}.test\r\n{starttls}250-PIPELINING\r\n250 8BITMIME\r\n".encode())
                    elif verb == b"STAR" and self.tls and not in_tls:
                        writer.write(b"220 2.0.0 go ahead\r\n")
                        await writer.drain()
                        await writer.start_tls(self.tls)
                        in_tls = True
                        self.record(receiver, peer, conn, "tls")
                    elif verb == b"MAIL":
                        accepted = []
                        self.record(receiver, peer, conn, "mail")
                        writer.write(b"250 2.1.0 ok\r\n")
                    elif verb == b"RCPT":
                        address = line.decode("utf-8", "replace").split(":", 1)[1].strip().strip("<>").split(">")[0]
                        if reply := self.pushes_back(receiver, peer) or self.reply_to(address):
                            self.record(receiver, peer, conn, "refused", rcpt=address, reply=reply)
                            writer.write(reply.encode() + b"\r\n")
                        else:
                            accepted.append(address)
                            writer.write(b"250 2.1.5 ok\r\n")
                    elif verb == b"DATA" and not accepted:
                        writer.write(b"554 5.5.1 no valid recipients\r\n")
                    elif verb == b"DATA":
                        writer.write(b"354 go ahead\r\n")
                        await writer.drain()
                        while (await reader.readline()) not in (b".\r\n", b".\n", b""):
                            pass
                        self.record(receiver, peer, conn, "message", recipients=accepted)
                        self.accepted_at.setdefault((receiver, peer), []).append(time.time())
                        accepted = []
                        writer.write(b"250 2.0.0 accepted\r\n")
                    elif verb == b"QUIT":
                        # Closed as the client says so: it waits for the 221 (smtp_skip_quit_response=no).
                        self.record(receiver, peer, conn, "close")
                        closed = True
                        writer.write(b"221 2.0.0 bye\r\n")
                        await writer.drain()
                        break
                    else:  # RSET, NOOP
                        if verb == b"RSET":
                            accepted = []
                            self.record(receiver, peer, conn, "rset")
                        writer.write(b"250 2.0.0 ok\r\n")
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                if not closed:
                    self.record(receiver, peer, conn, "close")
                writer.close()
        return session


async def serve(receivers: Receivers, listens):
    servers = []
    for name, address in listens:
        host, _, port = address.partition(":")
        servers.append(await asyncio.start_server(receivers.handler(name), host, int(port or 25), reuse_address=True))
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
    parser.add_argument("--replies", help="JSON: recipient local-part prefix -> RCPT reply")
    parser.add_argument("--cert", help="certificate and key, PEM, in one file: offer STARTTLS")
    parser.add_argument("--push-back", action="append", default=[], help="NAME=MESSAGES_A_MINUTE=REPLY")
    args = parser.parse_args()
    push_back = {name: (int(limit), reply) for name, limit, reply in (item.split("=", 2) for item in args.push_back)}
    replies = {}
    if args.replies:
        with open(args.replies) as f:
            replies = {prefix.lower(): reply for prefix, reply in json.load(f).items()}
    tls = None
    if args.cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert)
    with open(args.log, "a") as log:
        asyncio.run(serve(Receivers(log, replies, tls, push_back), [tuple(item.split("=", 1)) for item in args.listen]))


if __name__ == "__main__":
    main()
