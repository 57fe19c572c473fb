"""mailfleet-webhook (mailfleet/webhook.py) against a local HTTP receiver: batches, signatures,
retries that keep the batch, checkpoints across restarts, and rotation."""

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mailfleet import webhook
from mailfleet.webhook import Checkpoint, LogFollower, Sender, run

SECRET = "s3cret-Webhook-Key-0123456789"


def record(n: int) -> bytes:
    return json.dumps({"time": f"2026-12-05T12:00:{n % 60:02d}.000Z", "recipient": f"r{n}@example.com",
                       "status": "sent"}, separators=(",", ":")).encode() + b"\n"


class Receiver:
    """An HTTP endpoint on 127.0.0.1 that keeps every request and answers from a script of
    statuses (200 once the script is used up)."""

    def __init__(self):
        self.requests: list[tuple[dict, bytes]] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=query-secret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> list[bytes]:
        """Every record of every accepted request, in order, as the log's lines."""
        return [json.dumps(item, separators=(",", ":")).encode() + b"\n"
                for _, body, status in self.requests if status == 200 for item in json.loads(body)]


@pytest.fixture
def receiver():
    endpoint = Receiver()
    yield endpoint
    endpoint.server.shutdown()


@pytest.fixture
def paths(tmp_path):
    return tmp_path / "deliveries.jsonl", tmp_path / "webhook.state"


def send_all(log, state, url, secret=SECRET, batch_size=100, sleep=lambda seconds: None):
    """One run of the service that stops when all the log holds now is sent."""
    run(LogFollower(str(log)), Checkpoint(str(state)), Sender(url, secret, sleep=sleep), batch_size, once=True)


def append(path, lines):
    with open(path, "ab") as f:
        f.writelines(lines)


def test_records_go_in_batches_of_at_most_batch_size_as_the_logs_own_lines(receiver, paths):
    log, state = paths
    lines = [record(n) for n in range(250)]
    append(log, lines)
    send_all(log, state, receiver.url, batch_size=100)
    assert [len(json.loads(body)) for _, body, _ in receiver.requests] == [100, 100, 50]
    assert receiver.accepted() == lines
    headers, body, _ = receiver.requests[0]
    assert headers["Content-Type"] == "application/json"
    assert body == b"[" + b",".join(line.rstrip(b"\n") for line in lines[:100]) + b"]"


def test_the_signature_is_an_hmac_of_timestamp_and_exact_body_with_the_secret(receiver, paths):
    log, state = paths
    append(log, [record(n) for n in range(3)])
    send_all(log, state, receiver.url)
    headers, body, _ = receiver.requests[0]
    mac = hmac.new(SECRET.encode(), headers["X-Mailfleet-Timestamp"].encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(headers["X-Mailfleet-Signature"], "sha256=" + mac.hexdigest())
    # Any other key, or a changed body, does not verify.
    assert webhook.signature(b"another-key-0123456789", headers["X-Mailfleet-Timestamp"], body) != \
        headers["X-Mailfleet-Signature"]
    assert webhook.signature(SECRET.encode(), headers["X-Mailfleet-Timestamp"], body + b" ") != \
        headers["X-Mailfleet-Signature"]


def test_without_a_secret_requests_are_not_signed(receiver, paths):
    log, state = paths
    append(log, [record(1)])
    send_all(log, state, receiver.url, secret=None)
    headers, _, _ = receiver.requests[0]
    assert "X-Mailfleet-Signature" not in headers and "X-Mailfleet-Timestamp" not in headers


def test_a_503_keeps_the_batch_backs_off_and_delivers_it_once_accepted(receiver, paths, capsys):
    log, state = paths
    lines = [record(n) for n in range(5)]
    append(log, lines)
    receiver.statuses = [503, 503, 503, 500]
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        # The checkpoint does not move while the batch is refused.
        assert Checkpoint(str(state)).load() is None

    send_all(log, state, receiver.url, sleep=sleep)
    assert [status for _, _, status in receiver.requests] == [503, 503, 503, 500, 200]
    assert len({body for _, body, _ in receiver.requests}) == 1  # the same batch each time
    assert receiver.accepted() == lines
    assert waits == [1, 2, 4, 8]
    said = capsys.readouterr().err
    # One line per change of the failure, one when it is over; never the secret or the query.
    assert said.count("failed: HTTP status 503") == 1 and said.count("failed: HTTP status 500") == 1
    assert "accepts records again, after 4 failed tries" in said
    assert SECRET not in said and "query-secret" not in said


def test_the_back_off_doubles_up_to_five_minutes():
    waits = []
    sender = Sender("http://127.0.0.1:9/", None, sleep=waits.append)
    answers = iter([f"HTTP status 503"] * 12 + [None])
    sender.post = lambda body: next(answers)
    sender.deliver(b"[]", 0)
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_no_answer_at_all_is_retried_too(paths, receiver, capsys):
    log, state = paths
    append(log, [record(1)])
    tries = []

    def sleep(seconds):
        tries.append(seconds)
        if len(tries) == 2:
            sender.url = receiver.url  # the endpoint comes up

    sender = Sender("http://127.0.0.1:9/closed", SECRET, sleep=sleep)
    run(LogFollower(str(log)), Checkpoint(str(state)), sender, 100, once=True)
    assert receiver.accepted() == [record(1)]
    assert "failed: no answer" in capsys.readouterr().err


def test_a_restart_resumes_at_the_checkpoint_without_repeating_a_record(receiver, paths):
    log, state = paths
    first = [record(n) for n in range(10)]
    append(log, first)
    send_all(log, state, receiver.url)
    assert Checkpoint(str(state)).load() == (os.stat(log).st_ino, os.path.getsize(log))
    more = [record(n) for n in range(10, 15)]
    append(log, more)
    send_all(log, state, receiver.url)
    assert receiver.accepted() == first + more


def test_a_stop_while_the_endpoint_refuses_sends_that_batch_again_after_the_restart(receiver, paths):
    log, state = paths
    lines = [record(n) for n in range(4)]
    append(log, lines)
    receiver.statuses = [503]

    def killed(seconds):
        raise SystemExit("stopped")

    with pytest.raises(SystemExit):
        send_all(log, state, receiver.url, sleep=killed)
    assert Checkpoint(str(state)).load() is None
    send_all(log, state, receiver.url)
    assert receiver.accepted() == lines


def test_a_line_being_written_waits_for_its_end(paths):
    log, _ = paths
    append(log, [record(1), record(2)[:10]])
    follower = LogFollower(str(log))
    follower.start(None)
    assert follower.read(100) == [record(1)]
    append(log, [record(2)[10:]])
    assert follower.read(100) == [record(2)]


def test_rotation_between_two_reads_loses_nothing(paths):
    """logrotate renames the log; the writer adds to the renamed file until it reopens."""
    log, _ = paths
    append(log, [record(n) for n in range(3)])
    follower = LogFollower(str(log))
    follower.start(None)
    assert follower.read(100) == [record(n) for n in range(3)]
    os.rename(log, f"{log}.1")
    assert follower.next_file() is None  # the writer has not reopened: the renamed file may grow
    append(f"{log}.1", [record(3)])
    append(log, [record(4)])  # the writer reopened
    assert follower.next_file() == str(log)
    assert follower.read(100) == [record(3)]
    assert follower.read(100) == []
    assert follower.switch(follower.next_file())
    assert follower.read(100) == [record(4)]


def test_after_two_rotations_the_next_file_is_dot_1_not_the_log(paths):
    log, _ = paths
    append(log, [record(0)])
    follower = LogFollower(str(log))
    follower.start(None)
    follower.read(100)
    os.rename(log, f"{log}.1")
    append(log, [record(1)])
    os.rename(f"{log}.1", f"{log}.2")  # compressed, as far as this reader is concerned
    os.rename(log, f"{log}.1")
    append(log, [record(2)])
    assert follower.next_file() == f"{log}.1"
    follower.switch(f"{log}.1")
    assert follower.read(100) == [record(1)]
    assert follower.next_file() == str(log)


def test_a_restart_after_rotation_finishes_the_renamed_file_by_inode_then_the_new_one(receiver, paths):
    log, state = paths
    append(log, [record(n) for n in range(5)])
    send_all(log, state, receiver.url)
    append(log, [record(5), record(6)])  # written, not yet sent, when the service stopped
    os.rename(log, f"{log}.1")
    append(log, [record(7)])
    send_all(log, state, receiver.url)
    assert receiver.accepted() == [record(n) for n in range(8)]
    assert Checkpoint(str(state)).load() == (os.stat(log).st_ino, os.path.getsize(log))


def test_a_damaged_line_is_skipped_and_said_rather_than_blocking_every_batch(receiver, paths, capsys):
    log, state = paths
    append(log, [record(1), b"{not json\n", record(2)])
    send_all(log, state, receiver.url)
    assert receiver.accepted() == [record(1), record(2)]
    assert "skipped a line" in capsys.readouterr().err


def test_a_redirect_is_a_failure_not_followed(paths):
    """A POST that follows a redirect would go as a GET, maybe elsewhere in the clear."""
    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert Sender(f"http://127.0.0.1:{server.server_address[1]}/", None).post(b"[]") == "HTTP status 302"
    finally:
        server.shutdown()


def test_the_program_runs_as_installed_from_its_settings_file(receiver, paths, tmp_path):
    log, state = paths
    append(log, [record(n) for n in range(3)])
    settings = tmp_path / "webhook.json"
    settings.write_text(json.dumps({"url": receiver.url, "secret": SECRET, "batchSize": 2}))
    result = subprocess.run([sys.executable, "-I", webhook.__file__, "--config", str(settings), "--log", str(log),
                             "--state", str(state), "--once"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert [len(json.loads(body)) for _, body, _ in receiver.requests] == [2, 1]
    assert SECRET not in result.stderr
