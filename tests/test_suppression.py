"""tools/suppression.py: hard bounces per sender domain, cleared by a later delivery."""

import csv
import io
import json
import subprocess
import sys

from harness import REPO

TOOL = REPO / "tools" / "suppression.py"


def record(recipient, status, kind=None, sender="news@example.com", time="2026-12-04T19:00:00.000Z"):
    return {"time": time, "host": "mailtest", "instance": "postfix-43", "ip": "127.0.0.43", "queue_id": "Q1",
            "message_id": None, "sender": sender, "recipient": recipient, "domain": recipient.split("@")[1],
            "group": "default", "tenant": None, "status": status, "dsn": "5.1.1" if kind else "2.0.0",
            "category": "bad-mailbox" if kind == "hard" else ("spam-related" if kind else None), "kind": kind,
            "reply": "550 5.1.1 user unknown", "relay": "mx[127.0.0.63]:25", "delay": 0.1, "attempt": None}


def test_lists_hard_bounces_per_sender_domain_only(tmp_path):
    log = tmp_path / "deliveries.jsonl"
    lines = [record("gone@a.example", "bounced", "hard"),
             record("gone@a.example", "bounced", "hard", sender="news@example.net"),
             record("blocked@a.example", "bounced", "soft"),
             record("back@a.example", "bounced", "hard"),
             record("back@a.example", "sent", time="2026-12-04T19:05:00.000Z"),
             record("later@a.example", "deferred", "soft")]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"cut')
    result = subprocess.run([sys.executable, str(TOOL), str(log)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(r["sender_domain"], r["recipient"], r["category"]) for r in rows] == [
        ("example.com", "gone@a.example", "bad-mailbox"), ("example.net", "gone@a.example", "bad-mailbox")]
    only = subprocess.run([sys.executable, str(TOOL), str(log), "--sender-domain", "example.net"],
                          capture_output=True, text=True, timeout=60)
    assert len(list(csv.DictReader(io.StringIO(only.stdout)))) == 1
