#!/usr/bin/python3
"""mailfleet-webhook: POSTs the delivery log's records (mailfleet/deliveries.py) to a webhook.

It follows the log file and sends its lines in batches: a JSON array whose items are the log's
lines as they are (up to batchSize records, or what has come within about a second), with
`Content-Type: application/json`. With a secret, each request is signed:

    X-Mailfleet-Timestamp: 1733412345                       (seconds since the epoch, at sending)
    X-Mailfleet-Signature: sha256=HEX(HMAC-SHA256(secret, timestamp + "." + body))

The timestamp is inside the MAC so that a captured request cannot be replayed later: a receiver
refuses one whose timestamp is too old (say, five minutes); retries carry a fresh one.

Never a record lost, rarely one twice: a checkpoint file (atomic rename) holds the log file's
inode and the offset after the last batch the endpoint accepted (2xx), and moves only then. A
failure (no connection, a timeout, any other status) sends the same batch again after a back-off
that doubles up to 5 minutes; one line goes to the journal when the failure changes (and when it
is over), never the secret or the URL's query. A restart resumes at the checkpoint: the batch in
flight when it stopped is sent again (a receiver that must not count a record twice keys on
host, instance, queue_id, recipient, time and attempt).

Rotation (logrotate renames the log, then mailfleet-deliveries opens a new one): the renamed file
is finished by its inode (the open file, or `.1` after a restart), then the next one is read
from its start. The log writer is another process; this one only reads, at low priority: it
cannot hold up the delivery log or Postfix, however slow or absent the endpoint.

    mailfleet-webhook --config /etc/mailfleet/webhook.json --log FILE --state FILE
    mailfleet-webhook --config FILE --check     (reads the settings: exits non-zero if it cannot)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

BATCH_SECONDS = 1.0  # a batch goes when it is full or when its first record has waited this long
POLL_SECONDS = 0.2  # how often the end of the log is read again
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0
TIMEOUT_SECONDS = 30


def say(message: str):
    print(message, file=sys.stderr, flush=True)


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Mailfleet-Signature of a request: what a receiver computes again to verify it."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def body_of(lines: list[bytes]) -> bytes:
    """The request body: a JSON array of the log's lines, byte for byte."""
    return b"[" + b",".join(line.rstrip(b"\n") for line in lines) + b"]"


class Checkpoint:
    """The log file's inode and the offset up to which the endpoint has every record."""

    def __init__(self, path: str):
        self.path = path

    def load(self) -> tuple[int, int] | None:
        try:
            with open(self.path) as f:
                state = json.load(f)
            return int(state["inode"]), int(state["offset"])
        except FileNotFoundError:
            return None

    def save(self, inode: int, offset: int):
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"inode": inode, "offset": offset}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class LogFollower:
    """Complete lines of the log from a position on, across rotations, by inode."""

    def __init__(self, path: str):
        self.path = path
        self.file = None
        self.inode = 0
        self.offset = 0

    def _open(self, path: str, offset: int) -> bool:
        try:
            file = open(path, "rb")
        except FileNotFoundError:
            return False
        if self.file:
            self.file.close()
        self.file, self.inode = file, os.fstat(file.fileno()).st_ino
        self.offset = offset if os.fstat(file.fileno()).st_size >= offset else 0
        if self.offset != offset:
            say(f"{path} is shorter than the checkpoint's offset {offset} (truncated?): reading it from its start")
        self.file.seek(self.offset)
        return True

    def start(self, checkpoint: tuple[int, int] | None) -> str:
        """Open the checkpoint's file at its offset (the log, or `.1` once rotated); without a
        checkpoint, the log from its start. Says where it starts."""
        if checkpoint:
            inode, offset = checkpoint
            for path in (self.path, f"{self.path}.1"):
                if _inode(path) == inode and self._open(path, offset):
                    return f"{path} (inode {inode}) from offset {self.offset}"
            # Rotated past `.1` and compressed while this service was stopped: its unsent tail is
            # in the .gz files; go on with the oldest file still plain.
            say(f"the checkpoint's file (inode {inode}) is no longer {self.path} or {self.path}.1: "
                f"records after its offset {offset} were not sent; going on with the next file")
            if self._open(f"{self.path}.1", 0):
                return f"{self.path}.1 from its start"
        if self._open(self.path, 0):
            return f"{self.path} from its start"
        return f"{self.path} once it exists"

    def read(self, limit: int) -> list[bytes]:
        """Up to `limit` complete lines; a line still being written is left for the next read."""
        lines: list[bytes] = []
        if not self.file and not self._open(self.path, 0):
            return lines
        while len(lines) < limit:
            line = self.file.readline()
            if not line.endswith(b"\n"):
                self.file.seek(self.offset)
                break
            self.offset += len(line)
            lines.append(line)
        return lines

    def next_file(self) -> str | None:
        """The file that follows this one when the log has been rotated past it, else None.

        The writer opens the new log only after its last write to the renamed one, so once the
        log is another file, this one holds all it ever will (the caller reads it once more)."""
        at_log = _inode(self.path)
        if not self.file or at_log in (None, self.inode):
            return None
        # `.1` is newer than this file unless it is this file (this one was rotated twice).
        rotated = _inode(f"{self.path}.1")
        if rotated not in (None, self.inode, at_log):
            return f"{self.path}.1"
        return self.path

    def switch(self, path: str) -> bool:
        return self._open(path, 0)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


class Sender:
    """POSTs one batch until the endpoint accepts it (2xx), backing off between tries."""

    def __init__(self, url: str, secret: str | None, sleep=time.sleep):
        self.url, self.secret, self.sleep = url, secret.encode() if secret else None, sleep
        parts = urllib.parse.urlsplit(url)
        self.where = f"{parts.scheme}://{parts.netloc}{parts.path}"  # the query may hold a token: never logged
        # No redirects (a POST would be re-sent as a GET, possibly in the clear) and no proxy
        # from the environment.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self.failing: str | None = None
        self.failures = 0

    def post(self, body: bytes) -> str | None:
        """None when the endpoint took the batch; what went wrong otherwise."""
        headers = {"Content-Type": "application/json", "User-Agent": "mailfleet-webhook"}
        if self.secret:
            timestamp = str(int(time.time()))
            headers["X-Mailfleet-Timestamp"] = timestamp
            headers["X-Mailfleet-Signature"] = signature(self.secret, timestamp, body)
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self.opener.open(request, timeout=TIMEOUT_SECONDS) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
            error.close()  # its response: the connection goes, not left to the garbage collector
        except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
            reason = getattr(error, "reason", error)
            return f"no answer ({reason})"
        return None if 200 <= status < 300 else f"HTTP status {status}"

    def deliver(self, body: bytes, records: int):
        delay = FIRST_RETRY_SECONDS
        while True:
            failure = self.post(body)
            if failure is None:
                if self.failing:
                    say(f"{self.where} accepts records again, after {self.failures} failed tries")
                    self.failing, self.failures = None, 0
                return
            self.failures += 1
            if failure != self.failing:
                say(f"POST of {records} records to {self.where} failed: {failure}; sending the same batch "
                    f"again, backing off up to {MAX_RETRY_SECONDS:.0f} s")
                self.failing = failure
            self.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def records_of(lines: list[bytes], where: str) -> list[bytes]:
    """The lines that are JSON objects (all of them, unless the log was damaged: a bad line would
    make the whole body invalid and be refused forever, so it is skipped, and said)."""
    good = []
    for line in lines:
        try:
            if isinstance(json.loads(line), dict):
                good.append(line)
                continue
        except ValueError:
            pass
        say(f"skipped a line of {where} that is not a JSON record ({len(line)} bytes)")
    return good


def run(log: LogFollower, checkpoint: Checkpoint, sender: Sender, batch_size: int, once: bool = False):
    """Send batches forever; with `once`, stop when everything readable now has been sent."""
    say(f"sending the delivery log's records to {sender.where}, starting at {log.start(checkpoint.load())}")
    pending: list[bytes] = []
    first_at = 0.0
    while True:
        lines = log.read(batch_size - len(pending))
        if lines and not pending:
            first_at = time.monotonic()
        pending += lines
        if pending and (len(pending) >= batch_size or time.monotonic() - first_at >= BATCH_SECONDS or once and not lines):
            records = records_of(pending, log.path)
            if records:
                sender.deliver(body_of(records), len(records))
            checkpoint.save(log.inode, log.offset)
            pending = []
            continue
        if lines:
            continue
        following = log.next_file() if not pending else None
        if following:
            # Read the rotated file once more: it holds all it will, now that the log is another.
            last = log.read(batch_size)
            if last:
                pending, first_at = last, time.monotonic()
                continue
            if log.switch(following):
                checkpoint.save(log.inode, log.offset)
                continue
        if once and not pending:
            return
        time.sleep(POLL_SECONDS)


def read_settings(path: str) -> dict:
    with open(path) as f:
        settings = json.load(f)
    if urllib.parse.urlsplit(settings["url"]).scheme not in ("http", "https"):
        raise SystemExit(f"{path}: url is not an http(s) URL")
    return {"url": settings["url"], "secret": settings.get("secret"), "batchSize": int(settings.get("batchSize", 100))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the settings file (url, secret, batchSize)")
    parser.add_argument("--log", help="the delivery log")
    parser.add_argument("--state", help="the checkpoint file")
    parser.add_argument("--once", action="store_true", help="send what the log holds now, then stop (for checks)")
    parser.add_argument("--check", action="store_true", help="read the settings, send nothing (for the install step)")
    args = parser.parse_args()
    settings = read_settings(args.config)
    if args.check:
        return
    if not (args.log and args.state):
        parser.error("--log and --state are needed to send")
    run(LogFollower(args.log), Checkpoint(args.state), Sender(settings["url"], settings["secret"]),
        settings["batchSize"], once=args.once)


if __name__ == "__main__":
    main()
