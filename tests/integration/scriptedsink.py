"""Fake receivers with scripted replies, for the delivery log tests: each recipient's local part
picks the answer to its RCPT TO from a JSON table (a 4xx defers it, a 5xx bounces it); any other
recipient is accepted. Every accepted message is counted in the log file, one JSON line each:
    {"receiver": NAME, "peer": IP, "recipients": [...]}

Run inside the test namespace:
    ip netns exec NS python scriptedsink.py --replies FILE --log FILE --listen NAME=127.0.0.61 [--listen ...]
Plain text only (no STARTTLS offered), multi-line replies as the table gives them ("550-...\\r\\n550 ...").
"""

import argparse
import asyncio
import json
import signal


def handler(name, replies, log):
    async def session(reader, writer):
        peer = writer.get_extra_info("peername")[0]
        accepted = []
        try:
            writer.write(f"220 {name}.test ESMTP scripted sink\r\n".encode())
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(f"250-{name}.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n".encode())
                elif verb == b"MAIL":
                    accepted = []
                    writer.write(b"250 2.1.0 ok\r\n")
                elif verb == b"RCPT":
                    address = line.decode("utf-8", "replace").split(":", 1)[1].strip().strip("<>").split(">")[0]
                    reply = replies.get(address.split("@")[0].lower())
                    if reply:
                        writer.write(reply.encode() + b"\r\n")
                    else:
                        accepted.append(address)
                        writer.write(b"250 2.1.5 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    while (data := await reader.readline()) not in (b".\r\n", b".\n", b""):
                        pass
                    log.write(json.dumps({"receiver": name, "peer": peer, "recipients": accepted}) + "\n")
                    log.flush()
                    writer.write(b"250 2.0.0 accepted\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
    return session


async def serve(replies, log_path, listens):
    with open(log_path, "a") as log:
        servers = [await asyncio.start_server(handler(name, replies, log), address, 25, reuse_address=True)
                   for name, address in listens]
        print("ready", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
        for server in servers:
            server.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--replies", required=True, help="JSON: recipient local part -> RCPT reply")
    parser.add_argument("--log", required=True)
    parser.add_argument("--listen", action="append", required=True, help="NAME=ADDRESS")
    args = parser.parse_args()
    with open(args.replies) as f:
        replies = {k.lower(): v for k, v in json.load(f).items()}
    asyncio.run(serve(replies, args.log, [tuple(item.split("=", 1)) for item in args.listen]))


if __name__ == "__main__":
    main()
