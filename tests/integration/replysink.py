"""Fake receivers that answer each recipient as scripted, for the metrics tests.

Run inside the test namespace:
    ip netns exec NS python replysink.py --log FILE --cert PEM --listen NAME=127.0.0.61 [--listen ...]

RCPT TO a local part starting with "defer" gets `451 4.7.1 try again later`, one starting with
"bounce" gets `550 5.1.1 no such user`; every other recipient is accepted. STARTTLS is offered
with the certificate and key in PEM (one file). FILE gets one JSON line per event:
    {"t": seconds, "receiver": NAME, "peer": IP, "event": "open" | "tls" | "accepted" | "deferred" | "bounced", "rcpt": ADDRESS}
"""

import argparse
import asyncio
import json
import signal
import ssl
import time

REPLIES = {"defer": ("deferred", b"451 4.7.1 try again later\r\n"),
           "bounce": ("bounced", b"550 5.1.1 no such user\r\n")}


def serve_forever(log, cert, listens):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert)

    def record(receiver, peer, event, rcpt=None):
        log.write(json.dumps({"t": time.time(), "receiver": receiver, "peer": peer, "event": event, "rcpt": rcpt}) + "\n")
        log.flush()

    def handler(receiver):
        async def session(reader, writer):
            peer = writer.get_extra_info("peername")[0]
            record(receiver, peer, "open")
            rcpts, tls = [], False
            try:
                writer.write(f"220 {receiver}.test ESMTP reply sink\r\n".encode())
                while line := await reader.readline():
                    verb = line[:4].upper()
                    if verb in (b"EHLO", b"HELO"):
                        starttls = b"" if tls else b"250-STARTTLS\r\n"
                        writer.write(f"250-{receiver}.test\r\n".encode() + starttls + b"250 8BITMIME\r\n")
                    elif verb == b"STAR" and not tls:
                        writer.write(b"220 2.0.0 go ahead\r\n")
                        await writer.drain()
                        await writer.start_tls(context)
                        tls = True
                        record(receiver, peer, "tls")
                    elif verb == b"RCPT":
                        address = line.decode().split(":", 1)[1].strip().strip("<>").split(">")[0]
                        event, reply = next((REPLIES[prefix] for prefix in REPLIES if address.startswith(prefix)),
                                            ("accepted", b"250 2.1.5 ok\r\n"))
                        if event == "accepted":
                            rcpts.append(address)
                        else:
                            record(receiver, peer, event, address)
                        writer.write(reply)
                    elif verb == b"DATA":
                        writer.write(b"354 go ahead\r\n")
                        await writer.drain()
                        while (data := await reader.readline()) not in (b".\r\n", b".\n", b""):
                            pass
                        for address in rcpts:
                            record(receiver, peer, "accepted", address)
                        rcpts = []
                        writer.write(b"250 2.0.0 accepted\r\n")
                    elif verb == b"QUIT":
                        writer.write(b"221 2.0.0 bye\r\n")
                        await writer.drain()
                        break
                    else:  # MAIL, RSET, NOOP
                        if verb == b"RSET":
                            rcpts = []
                        writer.write(b"250 2.0.0 ok\r\n")
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                writer.close()
        return session

    async def main():
        servers = [await asyncio.start_server(handler(name), address, 25, reuse_address=True)
                   for name, address in listens]
        print("ready", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        for server in servers:
            server.close()

    asyncio.run(main())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--cert", required=True, help="certificate and key, PEM, in one file")
    parser.add_argument("--listen", action="append", required=True, help="NAME=ADDRESS")
    args = parser.parse_args()
    with open(args.log, "a") as log:
        serve_forever(log, args.cert, [tuple(item.split("=", 1)) for item in args.listen])
