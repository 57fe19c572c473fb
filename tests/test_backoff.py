"""Back-off on push-back: the decision (mailfleet/backoff.py), the delivery log service that makes
it, the shaping map's answers, and the Postfix settings they switch between."""

import json

from mailfleet import backoff, render, shaping
from mailfleet.backoff import PushBack
from mailfleet.deliveries import DeliveryLog, Tracker
from mailfleet.shaping_map import Backoffs, GroupMap
from test_deliveries import entries, read
from test_render import settings
from test_shaping import fleet_with, prod_hosts

RULES = {"google": {"backoff": {"patterns": [r"4\.7\.28"], "minutes": 90}},
         "yahoo": {"backoff": {"patterns": [r"\[TS0[1-3]\]"], "minutes": 30},
                   "suspend": {"patterns": [r"\[TS04\]"], "minutes": 120}}}
T = backoff.parse_time("2026-12-05T08:00:00.000Z")
GMAIL_421 = "421-4.7.28 [127.0.0.43] Our system has detected an unusual rate of unsolicited mail"


def record(seconds=0.0, instance="postfix-43", group="google", reply=GMAIL_421, status="deferred",
           relay="gmail-smtp-in.l.google.com[127.0.0.61]:25"):
    return {"time": backoff.stamp(T + seconds).replace("Z", ".000Z"), "instance": instance, "group": group,
            "status": status, "reply": reply, "relay": relay}


def pushback():
    return PushBack(RULES, ["postfix-43", "postfix-45"])


def test_a_matching_reply_backs_off_that_instance_and_group_only():
    p = pushback()
    [line] = p.observe(record(), now=T)
    assert line.startswith("postfix-43: backed off the google group until 2026-12-05T09:30:00Z (reply matched '4\\\\.7\\\\.28'")
    assert list(p.active) == [("postfix-43", "google")]
    entry = p.active[("postfix-43", "google")]
    assert (entry["action"], entry["pattern"], entry["until"]) == ("backoff", r"4\.7\.28", T + 90 * 60)
    # The same reply of another group's receivers, other replies, Postfix's own reasons: nothing.
    assert p.observe(record(group="yahoo"), T) == []
    assert p.observe(record(instance="postfix-45", reply="421 4.7.0 try later"), T) == []
    assert p.observe(record(instance="postfix-45", relay="none"), T) == []  # not the receiver's reply
    assert p.observe(record(instance="postfix-45", status="sent"), T) == []
    assert p.observe(record(instance="postfix", group="google"), T) == []  # not a shaped instance
    assert list(p.active) == [("postfix-43", "google")]


def test_a_later_match_pushes_the_end_out_without_a_new_line():
    p = pushback()
    p.observe(record(), T)
    assert p.changed
    p.changed = False
    assert p.observe(record(600), T + 600) == []
    assert p.active[("postfix-43", "google")]["until"] == T + 600 + 90 * 60
    assert p.changed  # the state file is written again: the shaping map must see the new end
    p.changed = False
    assert p.observe(record(300), T + 600) == []  # an older record never shortens it
    assert p.active[("postfix-43", "google")]["until"] == T + 600 + 90 * 60 and not p.changed


def test_suspend_beats_backoff_both_ways():
    p = pushback()
    assert p.match("yahoo", "421 4.7.0 [TS04] deferred") == ("suspend", r"\[TS04\]", 120)
    assert p.match("yahoo", "421 4.7.0 [TS01] deferred") == ("backoff", r"\[TS0[1-3]\]", 30)
    [started] = p.observe(record(group="yahoo", reply="421 4.7.0 [TS01] deferred"), T)
    [suspended] = p.observe(record(60, group="yahoo", reply="421 4.7.0 [TS04] deferred"), T + 60)
    assert "backed off the yahoo group" in started and "suspended the yahoo group until 2026-12-05T10:01:00Z" in suspended
    assert p.observe(record(120, group="yahoo", reply="421 4.7.0 [TS02] deferred"), T + 120) == []
    assert p.active[("postfix-43", "yahoo")]["action"] == "suspend"
    assert p.active[("postfix-43", "yahoo")]["until"] == T + 60 + 120 * 60


def test_it_ends_at_its_time_and_old_records_start_nothing():
    p = pushback()
    p.observe(record(), T)
    p.observe(record(group="yahoo", instance="postfix-45", reply="[TS01]"), T)
    assert p.expire(T + 30 * 60 - 1) == []
    [ended] = p.expire(T + 30 * 60)
    assert ended == ("postfix-45: the yahoo group's back-off ended at 2026-12-05T08:30:00Z (pattern '\\\\[TS0[1-3]\\\\]'):"
                     " its own limits again")
    assert list(p.active) == [("postfix-43", "google")]
    assert len(p.expire(T + 90 * 60)) == 1 and p.active == {}
    # Read again after a restart, a record whose back-off is over starts none.
    assert p.observe(record(), T + 90 * 60) == [] and p.active == {}


def test_the_state_survives_a_restart_less_what_ended_or_lost_its_rule(tmp_path):
    p = pushback()
    p.observe(record(), T)
    p.observe(record(group="yahoo", reply="[TS04]"), T)
    path = str(tmp_path / "state.json")
    backoff.write_state(path, p.state())
    assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o644
    again = pushback()
    again.restore(backoff.read_state(path), T + 60)
    assert again.active == p.active
    google_only = PushBack({"google": RULES["google"]}, ["postfix-43"])
    google_only.restore(backoff.read_state(path), T + 60)
    assert list(google_only.active) == [("postfix-43", "google")]
    later = pushback()
    later.restore(backoff.read_state(path), T + 100 * 60)
    assert list(later.active) == [("postfix-43", "yahoo")]
    assert backoff.read_state(str(tmp_path / "missing.json")) == {}


def test_the_delivery_log_service_writes_the_back_offs_and_ends_them(tmp_path, capsys):
    clock = [T]
    lines = [("postfix-43/qmgr", "4dMx1Q2BcRz9t: from=<news@example.com>, size=812, nrcpt=2 (queue active)"),
             ("postfix-43/smtp-google/smtp", "4dMx1Q2BcRz9t: to=<a@gmail.com>, relay=gmail-smtp-in.l.google.com"
              "[127.0.0.61]:25, delay=0.3, delays=0.1/0.01/0.1/0.1, dsn=4.7.28, status=deferred (host "
              f"gmail-smtp-in.l.google.com[127.0.0.61] said: {GMAIL_421} (in reply to RCPT TO command))"),
             ("postfix-43/smtp-google-backoff/smtp", "4dMx1Q2BcRz9t: to=<b@gmail.com>, relay=gmail-smtp-in.l.google.com"
              "[127.0.0.61]:25, delay=0.3, delays=0.1/0.01/0.1/0.1, dsn=2.0.0, status=sent (250 2.0.0 accepted)")]
    feed = entries(lines)
    for e in feed:
        e["__REALTIME_TIMESTAMP"] = str(int(T * 1_000_000))
    state = tmp_path / "backoff.json"
    service = DeliveryLog(Tracker("mailtest", {"postfix-43": "127.0.0.43"}), str(tmp_path / "log"),
                          str(tmp_path / "checkpoint"), "boot", PushBack(RULES, ["postfix-43"]), str(state),
                          clock=lambda: clock[0])
    service.load()
    read(service, feed)
    service.checkpoint()
    records = [json.loads(x) for x in open(tmp_path / "log")]
    assert [r["group"] for r in records] == ["google", "google"]  # the slow transport is the group too
    [active] = json.loads(state.read_text())["active"]
    assert (active["instance"], active["group"], active["action"], active["until"]) == \
        ("postfix-43", "google", "backoff", T + 90 * 60)
    assert "postfix-43: backed off the google group until 2026-12-05T09:30:00Z" in capsys.readouterr().out
    # A later 421 pushes the end out, in the file too, without a new line.
    later = entries([lines[1]])[0]
    later.update({"__REALTIME_TIMESTAMP": str(int((T + 60) * 1_000_000)), "__CURSOR": "c9"})
    clock[0] = T + 60
    read(service, [later])
    service.checkpoint()
    assert json.loads(state.read_text())["active"][0]["until"] == T + 60 + 90 * 60
    assert capsys.readouterr().out == ""
    clock[0] = T + 91 * 60  # no new event: the service's tick ends it
    service.expire()
    assert json.loads(state.read_text())["active"] == []
    assert "postfix-43: the google group's back-off ended at 2026-12-05T09:31:00Z" in capsys.readouterr().out
    service.expire()
    assert capsys.readouterr().out == ""


GROUPS = {"google": {"transport": "smtp-google", "domains": ["gmail.com"], "mxSuffixes": ["google.com"]},
          "yahoo": {"transport": "smtp-yahoo", "domains": ["yahoo.com"], "mxSuffixes": []}}
SLOW = {"google": {"transport": "smtp-google-backoff", "messagesPerMinute": 100},
        "yahoo": {"transport": "smtp-yahoo-backoff", "messagesPerMinute": 100},
        "default": {"transport": "smtp-default-backoff", "messagesPerMinute": 100}}


def test_the_shaping_map_answers_each_instance_its_own_back_offs(tmp_path):
    path = tmp_path / "state.json"
    clock = [T]
    mx = {"corp.example": ([(1, "aspmx.l.google.com")], 300), "plain.example": ([(10, "mx.plain.example")], 300)}
    groups = GroupMap(GROUPS, resolver=lambda domain, servers: mx.get(domain), servers=["127.0.0.1"],
                      backoffs=Backoffs(str(path), clock=lambda: clock[0]), slow=SLOW, clock=lambda: clock[0])

    def ask(instance, key):
        return groups.reply(f"backoff-{instance} {key}")
    assert ask("postfix-43", "a@gmail.com") == "NOTFOUND "  # no state file yet
    p = pushback()
    p.observe(record(), T)
    p.observe(record(instance="postfix-45", group="yahoo", reply="[TS04]"), T)
    backoff.write_state(str(path), p.state())
    assert ask("postfix-43", "a@gmail.com") == "OK smtp-google-backoff:"
    assert ask("postfix-43", "b@corp.example") == "OK smtp-google-backoff:"  # by MX: Workspace
    assert ask("postfix-43", "c@yahoo.com") == "NOTFOUND "
    assert ask("postfix-43", "d@plain.example") == "NOTFOUND "
    assert ask("postfix-45", "a@gmail.com") == "NOTFOUND "
    assert ask("postfix-45", "c@yahoo.com") == ("OK retry:4.7.0 mailfleet: the yahoo group is suspended on this IP "
                                                "until 2026-12-05T10:00:00Z (its receivers pushed back)")
    assert groups.reply("transport a@gmail.com") == "OK smtp-google:"  # the usual map is unchanged
    # The default group (NOTFOUND in the usual map) backs off too.
    default = PushBack({"default": {"backoff": {"patterns": ["4.7.0"], "minutes": 5}}}, ["postfix-43"])
    default.observe(record(group="default", reply="421 4.7.0 slow down"), T)
    backoff.write_state(str(path), default.state())
    assert ask("postfix-43", "d@plain.example") == "OK smtp-default-backoff:"
    assert ask("postfix-43", "a@gmail.com") == "NOTFOUND "
    clock[0] = T + 5 * 60  # it ends at its time, with no new state file
    assert ask("postfix-43", "d@plain.example") == "NOTFOUND "


def test_a_back_off_sends_at_most_its_rate_the_slow_way_and_the_rest_waits_in_the_queue(tmp_path):
    path = tmp_path / "state.json"
    clock = [T]
    slow = {"google": {"transport": "smtp-google-backoff", "messagesPerMinute": 3}}
    groups = GroupMap(GROUPS, resolver=lambda domain, servers: None, servers=["127.0.0.1"],
                      backoffs=Backoffs(str(path), clock=lambda: clock[0]), slow=slow, clock=lambda: clock[0])
    p = pushback()
    p.observe(record(), T)
    p.observe(record(instance="postfix-45"), T)
    backoff.write_state(str(path), p.state())
    answers = [groups.reply(f"backoff-postfix-43 u{n}@gmail.com") for n in range(5)]
    assert answers[:3] == ["OK smtp-google-backoff:"] * 3
    assert answers[3:] == ["OK retry:4.7.0 mailfleet: the google group is backing off on this IP until "
                           "2026-12-05T09:30:00Z (its receivers pushed back)"] * 2
    assert groups.reply("backoff-postfix-45 u@gmail.com") == "OK smtp-google-backoff:"  # its own count
    clock[0] = T + 60
    assert groups.reply("backoff-postfix-43 u9@gmail.com") == "OK smtp-google-backoff:"


def test_each_instance_asks_its_back_offs_first_and_each_group_with_a_rule_has_a_slow_transport():
    fleet = fleet_with(**{
        "mailfleet:shaping": {"groups": {"google": {"backoff": {"connections": 2, "messagesPerMinute": 6}},
                                         "default": {"backoff": {"patterns": ["4\\.7\\.1 slow"]}}}},
        "mailfleet:hosts": prod_hosts(**{"postfix-45": {"google": {"connections": 1, "messagesPerMinute": 3}}})})
    warm, cold = (instance for _, instance in fleet.instances)
    values = settings(render.instance_main_cf(fleet, warm))
    assert values["transport_maps"].split(", ")[0] == "proxy:socketmap:unix:/run/mailfleet-shaping/map.sock:backoff-postfix-43"
    assert values["smtp-google-backoff_destination_concurrency_limit"] == "2"
    assert values["smtp-google-backoff_transport_rate_delay"] == "10s"
    assert values["smtp-default-backoff_transport_rate_delay"] == "60s"  # the rule's default: 1 a minute
    assert "smtp-apple-backoff_destination_concurrency_limit" not in values  # apple has no rule
    master = render.instance_master_cf(fleet, warm)
    assert "\nsmtp-google-backoff unix  -       -       y       -       2       smtp\n" in master
    assert "\nsmtp-yahoo-backoff unix  -       -       y       -       1       smtp\n" in master
    # A back-off never speeds up a cold IP: its own limits cap the rule's.
    cold_values = settings(render.instance_main_cf(fleet, cold))
    assert cold_values["transport_maps"].startswith("proxy:socketmap:unix:/run/mailfleet-shaping/map.sock:backoff-postfix-45, ")
    assert cold_values["smtp-google-backoff_transport_rate_delay"] == "20s"
    assert "\nsmtp-google-backoff unix  -       -       y       -       1       smtp\n" in render.instance_master_cf(fleet, cold)
    # The map knows the slow transports, the delivery log service the rules, the state file and the instances.
    map_files = render.shaping_map_files(fleet)
    assert json.loads(map_files[render.SHAPING_MAP_GROUPS])["backoffTransports"]["default"] == {
        "transport": "smtp-default-backoff", "messagesPerMinute": 1}
    assert "--backoff-state /var/lib/mailfleet-backoff/state.json" in map_files[render.SHAPING_MAP_UNIT_FILE]
    host = fleet.hosts[0]
    config = json.loads(render.deliveries_config(fleet, host))["pushBack"]
    assert config["state"] == render.BACKOFF_STATE and config["instances"] == ["postfix-43", "postfix-45"]
    assert config["rules"]["google"] == {"backoff": {"patterns": [r"4\.7\.28"], "minutes": 90}}
    assert "ReadWritePaths=/var/lib/mailfleet-backoff\n" in render.deliveries_files(fleet, host)[render.DELIVERIES_UNIT_FILE]


def test_without_any_rule_or_with_a_relayhost_nothing_reacts():
    quiet = fleet_with(**{"mailfleet:shaping": {"groups": {name: {"backoff": None, "suspend": None}
                                                           for name in ("google", "microsoft", "yahoo")}}})
    instance = quiet.instances[0][1]
    assert not shaping.reacts(quiet)
    assert "backoff" not in settings(render.instance_main_cf(quiet, instance))["transport_maps"]
    assert "-backoff unix" not in render.instance_master_cf(quiet, instance)
    assert "pushBack" not in json.loads(render.deliveries_config(quiet, quiet.hosts[0]))
    relayed = fleet_with(**{"mailfleet:relayhost": "[relay.example.com]:25"})
    assert not shaping.reacts(relayed)
    assert "-backoff unix" not in render.instance_master_cf(relayed, relayed.instances[0][1])
