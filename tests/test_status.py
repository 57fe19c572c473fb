"""The status tool's pure parts (mailfleet/status.py) and its DNS half (tools/status.py) against
the test DNS server on 127.0.0.153: queues, the last hour of the delivery log, blocklist answers,
DNS state per instance, the table and the JSON shape. The hosts' half is proven on a real host
(tests/integration/test_status.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dns.resolver
import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))
import status as tool  # noqa: E402
from integration.dnsserver import serving  # noqa: E402
from mailfleet import status  # noqa: E402
from mailfleet.status import CLEAN, LISTED, UNKNOWN, InstanceStatus, interpret_dnsbl  # noqa: E402

NOW = datetime(2026, 12, 4, 19, 30, tzinfo=timezone.utc)
SINCE = NOW - timedelta(hours=1)
SERVER_ADDRESS = "127.0.0.153"


def delivery(minutes_ago: float, instance: str, group: str, status_: str, reply: str = "250 2.0.0 Ok") -> str:
    """One delivery-log line, keys in the log's order."""
    moment = status.rfc3339(NOW - timedelta(minutes=minutes_ago))
    record = {"time": moment, "host": "mx1", "instance": instance, "ip": "192.0.2.43", "queue_id": "4Q1xyz",
              "message_id": "<m@example.com>", "sender": "news@example.com", "recipient": "a@gmail.com",
              "domain": "gmail.com", "group": group, "tenant": None, "status": status_, "dsn": "2.0.0",
              "category": None, "kind": None, "reply": reply, "relay": "gmail-smtp-in.l.google.com[192.0.2.1]:25",
              "delay": 1.2, "attempt": 1}
    return json.dumps(record, separators=(",", ":"))


TSS04 = "421 4.7.0 [TSS04] Messages from 192.0.2.43 temporarily deferred"
LOG = [
    delivery(61, "postfix-43", "google", "sent"),  # older than the hour: not counted
    delivery(59, "postfix-43", "google", "sent"),
    delivery(30, "postfix-43", "google", "sent"),
    delivery(20, "postfix-43", "google", "deferred", TSS04),
    delivery(10, "postfix-43", "google", "deferred", TSS04),
    delivery(9, "postfix-43", "microsoft", "deferred", "451 4.7.500 Server busy"),
    delivery(5, "postfix-43", "microsoft", "bounced", "550 5.1.1 no such user"),
    delivery(4, "postfix-43", "default", "expired", "timed out"),
    delivery(3, "postfix-45", "default", "sent"),
    '{"time":"2026-12-04T19:29:59.000Z","instance":"postfix-4',  # a torn last line
]


def test_last_hour_counts_attempts_per_instance_group_and_outcome():
    hours = status.last_hour(LOG, SINCE)
    first = hours["postfix-43"]
    assert first.groups == {
        "google": {"sent": 2, "deferred": 2, "bounced": 0, "expired": 0},
        "microsoft": {"sent": 0, "deferred": 1, "bounced": 1, "expired": 0},
        "default": {"sent": 0, "deferred": 0, "bounced": 0, "expired": 1},
    }
    assert first.totals() == {"sent": 2, "deferred": 3, "bounced": 1, "expired": 1}
    assert first.top_deferrals() == [{"reply": TSS04, "count": 2}, {"reply": "451 4.7.500 Server busy", "count": 1}]
    assert hours["postfix-45"].totals() == {"sent": 1, "deferred": 0, "bounced": 0, "expired": 0}
    assert hours[""].unreadable == 1


def test_queue_counts_per_queue_from_postqueue_json():
    lines = [json.dumps({"queue_name": name, "queue_id": str(n), "recipients": []})
             for n, name in enumerate(["deferred", "deferred", "hold", "active", "maildrop"])]
    assert status.queue_counts("\n".join(lines) + "\n") == {"incoming": 1, "active": 1, "deferred": 2, "hold": 1}
    assert status.queue_counts("") == {"incoming": 0, "active": 0, "deferred": 0, "hold": 0}


def test_the_dnsbl_name_reverses_the_octets():
    assert status.dnsbl_name("192.0.2.43", "zen.spamhaus.org") == "43.2.0.192.zen.spamhaus.org"


@pytest.mark.parametrize("answer, error, expected", [
    (None, None, CLEAN),                                  # NXDOMAIN
    ([], None, CLEAN),                                    # NOERROR, no A record
    (["127.0.0.2"], None, LISTED),
    (["127.0.0.4", "127.0.0.10"], None, LISTED),
    (["127.255.255.254"], None, UNKNOWN),                 # Spamhaus: public resolver refused
    (["127.255.255.255"], None, UNKNOWN),                 # Spamhaus: too many queries
    (["127.0.0.1"], None, UNKNOWN),                       # no list lists with it
    (["198.51.100.80"], None, UNKNOWN),                   # a resolver rewriting NXDOMAIN
    (None, "The DNS operation timed out.", UNKNOWN),
    (None, "SERVFAIL", UNKNOWN),
], ids=["nxdomain", "nodata", "listed", "two-codes", "spamhaus-public-resolver", "spamhaus-volume",
        "loopback-one", "outside-127", "timeout", "servfail"])
def test_dnsbl_answers_mean_listed_clean_or_unknown(answer, error, expected):
    assert interpret_dnsbl("zone.example", answer, error).status == expected


def test_a_refused_query_says_why():
    listing = interpret_dnsbl("zen.spamhaus.org", ["127.255.255.254"])
    assert "public or open resolvers" in listing.reason and listing.codes == ["127.255.255.254"]


@pytest.fixture(scope="module")
def dns_server():
    zone = """\
43.113.0.203.listed.test. 300 IN A 127.0.0.2
43.113.0.203.listed.test. 300 IN TXT "listed for testing, see https://listed.test/203.0.113.43"
43.113.0.203.refusing.test. 300 IN A 127.255.255.254
"""
    with serving(zone, SERVER_ADDRESS) as port:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = [SERVER_ADDRESS], port, 3
        yield resolver


def test_blocklist_lookup_reads_listing_reason_nxdomain_and_refusal_from_a_real_server(dns_server):
    listed = tool.blocklist_lookup(dns_server, "203.0.113.43", "listed.test")
    assert (listed.status, listed.codes) == (LISTED, ["127.0.0.2"])
    assert listed.reason == "listed for testing, see https://listed.test/203.0.113.43"
    assert tool.blocklist_lookup(dns_server, "203.0.113.45", "listed.test").status == CLEAN
    refused = tool.blocklist_lookup(dns_server, "203.0.113.43", "refusing.test")
    assert refused.status == UNKNOWN and "public or open resolvers" in refused.reason


def test_a_resolver_that_does_not_answer_is_unknown_never_clean():
    silent = dns.resolver.Resolver(configure=False)
    # A port on loopback nobody serves: the query times out (or is refused) quickly.
    silent.nameservers, silent.port, silent.lifetime = [SERVER_ADDRESS], 9, 0.5
    listing = tool.blocklist_lookup(silent, "203.0.113.43", "listed.test")
    assert listing.status == UNKNOWN and listing.reason.startswith("lookup failed")


def outputs() -> dict:
    instances = {"postfix-43": {"host": "mx1", "ip": "10.0.0.43", "publicIp": "203.0.113.43",
                                "hostname": "s43.mail.example.com"},
                 "postfix-45": {"host": "mx1", "ip": "203.0.113.45", "hostname": "s45.mail.example.com"}}
    records = [
        {"name": "s43.mail.example.com", "type": "A", "value": "203.0.113.43", "ttl": 300},
        {"name": "s45.mail.example.com", "type": "A", "value": "203.0.113.45", "ttl": 300},
        {"name": "43.113.0.203.in-addr.arpa", "type": "PTR", "value": "s43.mail.example.com", "ttl": 300},
        {"name": "45.113.0.203.in-addr.arpa", "type": "PTR", "value": "s45.mail.example.com", "ttl": 300},
        {"name": "example.com", "type": "TXT", "value": "v=spf1 ip4:203.0.113.43 ip4:203.0.113.45 -all", "ttl": 300},
        {"name": "s43.mail.example.com", "type": "TXT", "value": "v=spf1 a -all", "ttl": 300},
        {"name": "s45.mail.example.com", "type": "TXT", "value": "v=spf1 a -all", "ttl": 300},
        {"name": "s1._domainkey.example.com", "type": "TXT", "value": "v=DKIM1; k=rsa; p=AAAA", "ttl": 300},
    ]
    return {"instances": instances, "dnsRecords": records}


def test_dns_state_per_instance_from_publish_dns_comparison():
    from publish_dns import Answer
    published = {(r["name"], r["type"]): [r["value"]] for r in outputs()["dnsRecords"]}
    published.pop(("45.113.0.203.in-addr.arpa", "PTR"))
    published[("s43.mail.example.com", "A")] = ["203.0.113.99"]

    def lookup(name, record_type):
        if name == "s1._domainkey.example.com":
            return Answer(error="SERVFAIL")
        return Answer(published.get((name, record_type), []))

    state = tool.dns_state(outputs(), lookup)
    assert state["postfix-43"][0] == {"A": "different", "PTR": "present", "SPF": "present", "DKIM": "unknown"}
    assert state["postfix-45"][0] == {"A": "present", "PTR": "missing", "SPF": "present", "DKIM": "unknown"}
    assert any("203.0.113.99" in note for note in state["postfix-43"][1])


def sample_instances() -> list[InstanceStatus]:
    hours = status.last_hour(LOG, SINCE)
    first = InstanceStatus("postfix-43", "mx1", "10.0.0.43", "203.0.113.43", "s43.mail.example.com",
                           queue={"incoming": 0, "active": 1, "deferred": 3, "hold": 2}, log=True,
                           hour=hours["postfix-43"],
                           warmup={"day": 3, "date": "2026-12-04", "start": "2026-12-02",
                                   "groups": {"google": {"budget": 500, "sent": 120, "held": 4}}},
                           dns={"A": "present", "PTR": "present", "SPF": "present", "DKIM": "present"},
                           listings=[interpret_dnsbl("zen.example", ["127.0.0.2"], reason="see zen.example"),
                                     interpret_dnsbl("bl.example", None)])
    second = InstanceStatus("postfix-45", "mx1", "203.0.113.45", None, "s45.mail.example.com",
                            queue={"incoming": 0, "active": 0, "deferred": 0, "hold": 0}, log=False,
                            dns={"A": "present", "PTR": "missing", "SPF": "present", "DKIM": "present"},
                            listings=[interpret_dnsbl("zen.example", ["127.255.255.254"]),
                                      interpret_dnsbl("bl.example", None)])
    down = InstanceStatus("postfix-47", "mx2", "203.0.113.47", None, "s47.mail.example.com",
                          error="NoValidConnectionsError: unable to connect")
    return [first, second, down]


def test_the_table_has_one_line_per_instance_then_details():
    text = status.table("prod", NOW, SINCE, sample_instances())
    lines = text.splitlines()
    header = lines[2]
    assert header.split() == ["INSTANCE", "HOST", "IP", "/", "PUBLIC", "IP", "QUEUE", "a/d/h/i", "SENT", "DEFER",
                              "BOUNCE", "WARM-UP", "DNS", "BLOCKLISTS"]
    assert lines[3].split() == ["postfix-43", "mx1", "10.0.0.43", "/", "203.0.113.43", "1/3/2/0", "2", "3", "2",
                                "day", "3", "ok", "LISTED", "zen.example"]
    assert lines[4].split() == ["postfix-45", "mx1", "203.0.113.45", "0/0/0/0", "-", "-", "-", "-", "PTR", "missing",
                                "1", "unknown"]
    assert lines[5].split() == ["postfix-47", "mx2", "203.0.113.47", "?", "?", "?", "?", "-", "-", "-"]
    # The columns line up: each header starts where its cells do.
    assert lines[3].index("1/3/2/0") == header.index("QUEUE")
    assert f"deferred 2x: {TSS04}" in text
    assert "by group (sent/defer/bounce): default 0/0/1  google 2/2/0  microsoft 0/1/1" in text
    assert "warm-up day 3 (2026-12-04), sent/budget: google 120/500 (4 held)" in text
    assert "listed on zen.example (127.0.0.2): see zen.example" in text
    assert "no delivery log" in text
    assert "zen.example: unknown, 127.255.255.254: the list refuses queries from public" in text
    assert "not read: NoValidConnectionsError: unable to connect" in text
    assert lines[-1] == "needs attention: 3 of 3 instances"


def test_the_json_shape():
    document = status.as_json("prod", NOW, SINCE, sample_instances())
    assert document["stack"] == "prod" and document["attention"] is True
    assert (document["generated"], document["since"]) == ("2026-12-04T19:30:00.000Z", "2026-12-04T18:30:00.000Z")
    first, second, down = document["instances"]
    assert set(first) == {"name", "host", "ip", "publicIp", "hostname", "error", "queue", "lastHour", "warmup",
                          "backoffs", "dns", "blocklists", "attention"}
    assert first["lastHour"]["totals"] == {"sent": 2, "deferred": 3, "bounced": 1, "expired": 1}
    assert first["lastHour"]["groups"]["google"] == {"sent": 2, "deferred": 2, "bounced": 0, "expired": 0}
    assert first["lastHour"]["topDeferrals"][0] == {"reply": TSS04, "count": 2}
    assert first["blocklists"][0] == {"zone": "zen.example", "status": "listed", "codes": ["127.0.0.2"],
                                      "reason": "see zen.example"}
    assert first["attention"] == ["203.0.113.43 listed on zen.example"]
    assert second["lastHour"] == {"log": False, "totals": dict.fromkeys(status.OUTCOMES, 0), "groups": {},
                                  "topDeferrals": []}
    assert second["attention"][0] == "DNS PTR missing"
    assert down["queue"] is None and down["lastHour"] is None and down["error"].startswith("NoValid")
    json.dumps(document)  # plain JSON all through


def test_all_well_is_one_line_and_no_attention():
    item = InstanceStatus("postfix-43", "mx1", "203.0.113.43", None, "s43.mail.example.com",
                          queue={"incoming": 0, "active": 0, "deferred": 0, "hold": 0}, log=True,
                          dns=dict.fromkeys(status.DNS_KINDS, "present"),
                          listings=[interpret_dnsbl("bl.example", None)])
    text = status.table("prod", NOW, SINCE, [item])
    assert text.splitlines()[-1] == "all 1 instances ok" and "clean (1)" in text
    assert status.as_json("prod", NOW, SINCE, [item])["attention"] is False


def test_the_host_script_reads_the_log_back_to_the_hour_and_the_rotated_file(tmp_path):
    log = tmp_path / "deliveries.jsonl"
    rotated = tmp_path / "deliveries.jsonl.1"
    rotated.write_text("\n".join([delivery(70, "postfix-43", "google", "sent"),
                                  delivery(50, "postfix-43", "google", "sent")]) + "\n")
    log.write_text("\n".join([delivery(40, "postfix-43", "google", "sent"),
                              delivery(1, "postfix-43", "google", "deferred", TSS04)]) + "\n")
    script = tool.host_commands([], status.rfc3339(SINCE), "root").replace(tool.DELIVERY_LOG, str(log))
    parts = tool.parse_host_output(subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                                                  check=True).stdout)
    assert [json.loads(line)["time"] for line in parts["log"]] == [
        status.rfc3339(NOW - timedelta(minutes=m)) for m in (1, 40, 50)]
    log.unlink()
    rotated.unlink()
    missing = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert tool.parse_host_output(missing)["nolog"] is True


def test_textfile_metrics_leave_unknown_answers_out():
    text = tool.textfile_metrics(sample_instances())
    assert 'mailfleet_blocklist_listed{instance="postfix-43",ip="203.0.113.43",zone="zen.example"} 1' in text
    assert 'mailfleet_blocklist_listed{instance="postfix-45",ip="203.0.113.45",zone="bl.example"} 0' in text
    assert 'instance="postfix-45",ip="203.0.113.45",zone="zen.example"' not in text


def test_the_progress_line_rewrites_itself_on_a_terminal_and_is_silent_otherwise(capsys):
    progress = tool.Progress(3, enabled=True)
    progress.step("mx1")
    progress.step("203.0.113.43 on zen.example")
    progress.close()
    err = capsys.readouterr().err
    assert "\rstatus: 1/3 done, last: mx1" in err and "\rstatus: 2/3 done, last: 203.0.113.43 on zen.example" in err
    assert "\n" not in err
    quiet = tool.Progress(1, enabled=False)
    quiet.step("mx1")
    quiet.close()
    assert capsys.readouterr().err == ""


def test_the_config_is_read_as_pulumi_config_json_prints_it_or_as_a_flat_map(tmp_path):
    pulumi_shape = {"mailfleet:blocklists": {"value": '["dnsbl.example"]', "objectValue": ["dnsbl.example"],
                                             "secret": False},
                    "mailfleet:sshPrivateKey": {"value": "KEY TEXT", "secret": True},
                    "mailfleet:mailName": {"value": "WebMAX", "secret": False}}
    (tmp_path / "pulumi.json").write_text(json.dumps(pulumi_shape))
    values, secrets = tool.read_config("prod", str(tmp_path / "pulumi.json"))
    assert values == {"mailfleet:blocklists": '["dnsbl.example"]', "mailfleet:sshPrivateKey": "KEY TEXT",
                      "mailfleet:mailName": "WebMAX"}
    assert secrets == ["mailfleet:sshPrivateKey"]
    (tmp_path / "flat.json").write_text(json.dumps({"mailfleet:blocklists": ["dnsbl.example"]}))
    assert tool.read_config("prod", str(tmp_path / "flat.json")) == ({"mailfleet:blocklists": '["dnsbl.example"]'}, [])


def test_active_back_offs_show_per_instance_and_a_suspension_needs_attention(tmp_path):
    state = tmp_path / "state.json"
    now = NOW.timestamp()
    state.write_text(json.dumps({"active": [
        {"instance": "postfix-43", "group": "google", "action": "backoff", "pattern": "4\\.7\\.28",
         "since": now - 60, "until": now + 600},
        {"instance": "postfix-43", "group": "yahoo", "action": "suspend", "pattern": "\\[TS04\\]",
         "since": now - 60, "until": now + 3600},
        {"instance": "postfix-45", "group": "google", "action": "backoff", "pattern": "4\\.7\\.28",
         "since": now - 7200, "until": now - 1}]}))  # ended: not shown
    script = tool.host_commands([], status.rfc3339(SINCE), "root").replace(tool.BACKOFF_STATE, str(state))
    parts = tool.parse_host_output(subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                                                  check=True).stdout)
    first, second, _ = sample_instances()
    first.backoffs = status.backoff_summary(json.loads(parts["backoff"]), "postfix-43", NOW)
    second.backoffs = status.backoff_summary(json.loads(parts["backoff"]), "postfix-45", NOW)
    assert [(e["group"], e["action"], e["until"]) for e in first.backoffs] == [
        ("google", "backoff", "2026-12-04T19:40:00.000Z"), ("yahoo", "suspend", "2026-12-04T20:30:00.000Z")]
    assert second.backoffs == []
    text = status.table("prod", NOW, SINCE, [first, second])
    assert "google backed off until 2026-12-04T19:40:00.000Z (pattern 4\\.7\\.28)" in text
    assert "yahoo suspended until 2026-12-04T20:30:00.000Z" in text
    assert "yahoo suspended until 2026-12-04T20:30:00.000Z" in status.as_json("prod", NOW, SINCE, [first])[
        "instances"][0]["attention"]
    state.unlink()
    assert tool.parse_host_output(subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                                                 check=True).stdout)["backoff"].strip() == ""
