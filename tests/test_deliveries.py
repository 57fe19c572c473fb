"""The delivery log service's parsing and checkpoints, on log lines as Postfix writes them."""

import json
import os
import subprocess
import sys

from mailfleet import deliveries
from mailfleet.deliveries import KEYS, DeliveryLog, Tracker

T0 = 1_764_849_600_123_456  # 2025-12-04T12:00:00.123456Z

# (identifier, message) as journald keeps them (SYSLOG_IDENTIFIER, MESSAGE)
LINES = [
    ("postfix-43/submission/smtpd", "4dMx1Q2BcRz9t: client=unknown[203.0.113.10], sasl_method=PLAIN, sasl_username=alice"),
    ("postfix-43/cleanup", "4dMx1Q2BcRz9t: message-id=<m1@app.example>"),
    ("postfix-43/qmgr", "4dMx1Q2BcRz9t: from=<news@example.com>, size=812, nrcpt=3 (queue active)"),
    ("postfix-43/smtp-google/smtp", "4dMx1Q2BcRz9t: to=<a@gmail.com>, relay=gmail-smtp-in.l.google.com[127.0.0.61]:25, "
     "delay=0.31, delays=0.1/0.01/0.1/0.1, dsn=2.0.0, status=sent (250 2.0.0 accepted)"),
    ("postfix-43/smtp-google/smtp", "4dMx1Q2BcRz9t: to=<Nobody@Gmail.com>, relay=gmail-smtp-in.l.google.com[127.0.0.61]:25, "
     "delay=0.32, delays=0.1/0.01/0.1/0.1, dsn=5.1.1, status=bounced (host gmail-smtp-in.l.google.com[127.0.0.61] "
     "said: 550-5.1.1 The email account that you tried to reach does not exist. (in reply to RCPT TO command))"),
    ("postfix-43/smtp-default/smtp", "4dMx1Q2BcRz9t: to=<late@plain.example>, relay=mx.plain.example[127.0.0.63]:25, "
     "delay=0.4, delays=0.1/0.01/0.2/0, dsn=4.7.0, status=deferred (host mx.plain.example[127.0.0.63] said: "
     "421 4.7.0 [TS01] Messages from 127.0.0.43 temporarily deferred (in reply to end of DATA command))"),
    ("postfix-43/bounce", "4dMx1Q2BcRz9t: sender non-delivery notification: 4dMx1R0000000"),
    ("postfix-43/error", "4dMx1Q2BcRz9t: to=<other@plain.example>, relay=none, delay=1.2, delays=1.2/0/0/0, dsn=4.4.1, "
     "status=deferred (delivery temporarily suspended: connect to mx.plain.example[127.0.0.63]:25: Connection refused)"),
    ("postfix-43/qmgr", "4dMx1Q2BcRz9t: from=<news@example.com>, status=expired, returned to sender"),
    ("postfix-43/qmgr", "4dMx1Q2BcRz9t: removed"),
    ("postfix/smtp", "4dMy00000000a: to=<root@example.com>, relay=127.0.0.43[127.0.0.43]:25, delay=0.1, "
     "delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4dMy1)"),
    ("opendkim", "4dMx1Q2BcRz9t: DKIM-Signature field added"),
]


def entries(lines=LINES):
    return [{"__REALTIME_TIMESTAMP": str(T0 + n * 1000), "__CURSOR": f"c{n}", "SYSLOG_IDENTIFIER": ident,
             "MESSAGE": text} for n, (ident, text) in enumerate(lines)]


def tracker():
    return Tracker("mailtest", {"postfix": "127.0.0.1", "postfix-43": "127.0.0.43"})


def records(lines=LINES):
    t = tracker()
    return [r for e in entries(lines) for r in t.entry(int(e["__REALTIME_TIMESTAMP"]), e["SYSLOG_IDENTIFIER"], e["MESSAGE"])]


def test_one_record_per_attempt_with_the_contract_keys_in_order():
    got = records()
    assert [(r["recipient"], r["status"]) for r in got] == [
        ("a@gmail.com", "sent"), ("Nobody@Gmail.com", "bounced"), ("late@plain.example", "deferred"),
        ("other@plain.example", "deferred"), ("late@plain.example", "expired"), ("other@plain.example", "expired"),
        ("root@example.com", "sent")]
    assert all(tuple(r) == KEYS for r in got)
    sent = got[0]
    assert sent == {"time": "2025-12-04T12:00:00.126Z", "host": "mailtest", "instance": "postfix-43",
                    "ip": "127.0.0.43", "queue_id": "4dMx1Q2BcRz9t", "message_id": "m1@app.example",
                    "sender": "news@example.com", "recipient": "a@gmail.com", "domain": "gmail.com",
                    "group": "google", "tenant": "alice", "status": "sent", "dsn": "2.0.0", "category": None,
                    "kind": None, "reply": "250 2.0.0 accepted",
                    "relay": "gmail-smtp-in.l.google.com[127.0.0.61]:25", "delay": 0.31, "attempt": None}


def test_the_reply_category_kind_and_group_of_failures():
    got = records()
    bounced, deferred, suspended, expired = got[1], got[2], got[3], got[4]
    assert (bounced["domain"], bounced["group"], bounced["category"], bounced["kind"]) == \
        ("gmail.com", "google", "bad-mailbox", "hard")
    assert bounced["reply"] == "550-5.1.1 The email account that you tried to reach does not exist."
    assert (deferred["group"], deferred["category"], deferred["kind"]) == ("default", "policy-related", "soft")
    # The error agent names no group: the domain's group from its earlier attempt.
    assert (suspended["group"], suspended["category"], suspended["relay"]) == ("default", "bad-connection", "none")
    assert (expired["dsn"], expired["category"], expired["kind"], expired["tenant"]) == \
        ("5.4.7", "message-expired", "soft", "alice")
    assert expired["reply"].startswith("message expired; last attempt: 421 4.7.0 [TS01]")
    assert got[-1]["instance"] == "postfix" and got[-1]["ip"] == "127.0.0.1" and got[-1]["message_id"] is None


def test_lines_are_compact_utf8_json():
    record = records()[0]
    text = deliveries.line({**record, "reply": "250 ok ünïcode"})
    assert text.endswith("\n") and ", " not in text.split('"reply"')[0] and "ünïcode" in text


def test_memory_is_bounded_and_removed_messages_are_forgotten(monkeypatch):
    monkeypatch.setattr(deliveries, "QUEUE_IDS", 10)
    t = tracker()
    for n in range(50):
        t.entry(T0, "postfix-43/cleanup", f"QUEUE{n:05d}: message-id=<{n}@x>")
    assert len(t.messages) == 10 and "postfix-43/QUEUE00049" in t.messages
    t.entry(T0, "postfix-43/qmgr", "QUEUE00049: removed")
    assert "postfix-43/QUEUE00049" not in t.messages


class Position:
    """The sd-journal reader as the checkpoint sees it: the cursor of the entry last read."""

    def __init__(self):
        self.cursor = None

    def _get_cursor(self):
        return self.cursor


def read(log: DeliveryLog, feed: list[dict]):
    """The entries into the log as the service's reader hands them over."""
    log.reader = log.reader or Position()
    for e in feed:
        log.reader.cursor = e["__CURSOR"]
        log.entry(int(e["__REALTIME_TIMESTAMP"]), e["SYSLOG_IDENTIFIER"], e["MESSAGE"])


def test_a_restart_after_a_crash_between_writing_and_checkpointing_repeats_nothing(tmp_path):
    log, state = str(tmp_path / "deliveries.jsonl"), str(tmp_path / "state.json")
    feed = entries()
    first = DeliveryLog(tracker(), log, state, "boot")
    first.load()
    read(first, feed[:5])
    first.checkpoint()
    read(first, feed[5:9])  # written, but the checkpoint never happens: the process dies
    first.log.write("".join(first.pending))
    first.log.write('{"time":"partial')  # and in mid-line
    first.log.close()
    second = DeliveryLog(tracker(), log, state, "boot")
    second.load()
    assert second.cursor == "c4" and second.skip == 4
    read(second, feed[5:])
    second.checkpoint()
    assert second.cursor == f"c{len(feed) - 1}"
    lines = open(log).read().splitlines()
    assert [json.loads(x)["recipient"] for x in lines] == [r["recipient"] for r in records()]


def test_parse_mode_prints_the_records(tmp_path):
    config = tmp_path / "deliveries.json"
    config.write_text(json.dumps({"host": "mailtest", "instances": {"postfix-43": "127.0.0.43"}}))
    result = subprocess.run([sys.executable, "-I", deliveries.__file__, "--config", str(config), "--parse"],
                            input="".join(json.dumps(e) + "\n" for e in entries()), capture_output=True, text=True,
                            env={**os.environ}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 7
