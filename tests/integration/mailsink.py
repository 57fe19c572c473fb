"""A mail sink for the integration tests: accepts every message, keeps each as one JSON file.

Run inside the test namespace by testhost.py:
    ip netns exec NS python mailsink.py --dir DIR [--host 127.0.0.1] [--port 2525]

Each file holds {"peer", "helo", "mail_from", "rcpt_tos", "data"}. "data" is the message
exactly as received (CRLF line ends), decoded as UTF-8 with surrogateescape, so
`data.encode("utf-8", "surrogateescape")` gives back the original bytes (e.g. for DKIM checks).
"""

import argparse
import json
import os
import signal
import time
import uuid

from aiosmtpd.controller import Controller


class SaveAsJson:
    def __init__(self, directory):
        self.directory = directory

    async def handle_DATA(self, server, session, envelope):
        record = {
            "peer": session.peer[0],
            "helo": session.host_name,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.original_content.decode("utf-8", "surrogateescape"),
        }
        # Time-ordered names; the rename makes a file appear only once it is complete.
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        partial = os.path.join(self.directory, name + ".tmp")
        with open(partial, "w") as f:
            json.dump(record, f)
        os.rename(partial, os.path.join(self.directory, name + ".json"))
        return "250 OK"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    args = parser.parse_args()

    # Blocked before the server thread starts, so SIGTERM reaches the sigwait below.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    # Room for the signing corpus's 30 MB attachment (about 41 MB encoded); aiosmtpd's default is 32 MB.
    controller = Controller(SaveAsJson(args.dir), hostname=args.host, port=args.port, data_size_limit=64 * 1024 * 1024)
    controller.start()
    signal.sigwait(stop_signals)
    controller.stop()


if __name__ == "__main__":
    main()
