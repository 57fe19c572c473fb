"""The warm-up policy service (mailfleet/warmup.py): budgets per day and group, held mail first in
first out, counts that survive a restart, and the release that follows the plan, over its socket
and against a real shaping map service (mailfleet/shaping_map.py, domain lists only)."""

import json
import threading

import pytest

from mailfleet import shaping_map, warmup

GROUPS = {"google": {"transport": "smtp-google", "domains": ["gmail.com"], "mxSuffixes": []},
          "microsoft": {"transport": "smtp-microsoft", "domains": ["outlook.com"], "mxSuffixes": []}}


@pytest.fixture
def sockets(tmp_path, monkeypatch):
    """A running shaping map that knows the domain lists only (no DNS: everything else is default)."""
    groups = shaping_map.GroupMap(GROUPS, resolver=lambda domain, servers: None, servers=["127.0.0.1"])
    map_socket = str(tmp_path / "map.sock")
    threading.Thread(target=shaping_map.serve, args=(groups, map_socket), daemon=True).start()
    for directory in ("plans", "state"):
        (tmp_path / directory).mkdir()
    monkeypatch.setenv("MAILFLEET_WARMUP_TODAY", "2026-03-01")
    _wait_for(map_socket)
    return tmp_path, map_socket


def _wait_for(path):
    """Until the server accepts connections (its socket file appears before it listens)."""
    import socket
    import time
    for _ in range(250):
        try:
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing answers on {path}")


def write_plan(folder, instance="postfix-a", start="2026-03-01", plan=None):
    (folder / "plans" / f"{instance}.json").write_text(json.dumps(
        {"instance": instance, "start": start, "plan": plan or {"google": [2, 4], "microsoft": [1, 2]}}))


def policy(sockets):
    folder, map_socket = sockets
    result = warmup.Policy(str(folder / "plans"), str(folder / "state"), warmup.MapClient(map_socket))
    result.plans_checked = -10.0  # read the plans now
    return result


def send(policy, recipients, queue_id, instance="postfix-a", transaction=None):
    """One message as smtpd asks about it: RCPT TO for each recipient, then the end of DATA."""
    transaction = transaction or f"t-{queue_id}"
    actions = [policy.answer({"request": "smtpd_access_policy", "protocol_state": "RCPT", "policy_context": instance,
                              "instance": transaction, "recipient": r}) for r in recipients]
    policy.answer({"request": "smtpd_access_policy", "protocol_state": "END-OF-MESSAGE", "policy_context": instance,
                   "instance": transaction, "queue_id": queue_id})
    return "HOLD" if any(a.startswith("HOLD") for a in actions) else "DUNNO"


def state(policy, instance="postfix-a"):
    return json.loads(policy.answer({"request": "mailfleet_status", "policy_context": instance}))


def test_the_days_budget_goes_and_the_rest_is_held(sockets):
    write_plan(sockets[0])
    p = policy(sockets)
    got = [send(p, [f"u{n}@gmail.com"], f"G{n}") for n in range(5)]
    assert got == ["DUNNO", "DUNNO", "HOLD", "HOLD", "HOLD"]
    # Other groups have their own budget; a group without a plan is not counted.
    assert send(p, ["x@outlook.com"], "M1") == "DUNNO"
    assert send(p, ["y@plain.example"], "P1") == "DUNNO"
    s = state(p)
    assert s["day"] == 1 and s["date"] == "2026-03-01"
    assert s["groups"]["google"] == {"budget": 2, "sent": 2, "held": 3}
    assert s["groups"]["microsoft"] == {"budget": 1, "sent": 1, "held": 0}
    assert sorted(s["held_messages"]) == ["G2", "G3", "G4"]


def test_a_message_to_several_groups_waits_for_all_of_them(sockets):
    write_plan(sockets[0])
    p = policy(sockets)
    assert send(p, ["x@outlook.com"], "M1") == "DUNNO"
    # gmail fits, outlook does not: the whole message is held, and gmail's count goes back.
    assert send(p, ["a@gmail.com", "b@outlook.com", "c@plain.example"], "X1") == "HOLD"
    s = state(p)
    assert s["groups"]["google"] == {"budget": 2, "sent": 0, "held": 1}
    assert s["held_messages"]["X1"] == {"google": 1, "microsoft": 1, "default": 1}


def test_held_mail_goes_first_and_the_next_day_releases_its_budget(sockets, monkeypatch):
    write_plan(sockets[0])
    p = policy(sockets)
    for n in range(7):
        send(p, [f"u{n}@gmail.com"], f"G{n}")
    # Today's budget is spent: the release lets nothing go; a message held by hand is not ours.
    assert p.release(p.instances["postfix-a"], ["G2", "G3", "HAND", "G4", "G5", "G6"]) == []
    monkeypatch.setenv("MAILFLEET_WARMUP_TODAY", "2026-03-02")
    # Day 2: 4 of the held, oldest first (G5, G6 wait); G4 was deleted from the queue meanwhile.
    answer = p.answer({"request": "mailfleet_release", "policy_context": "postfix-a",
                       "held": "G2 G3 HAND G5 G6"})
    assert answer.split() == ["G2", "G3", "G5", "G6"]
    s = state(p)
    assert s["day"] == 2 and s["groups"]["google"] == {"budget": 4, "sent": 4, "held": 0}
    # New mail now waits: the budget is spent.
    assert send(p, ["late@gmail.com"], "G9") == "HOLD"


def test_new_mail_waits_behind_held_mail(sockets, monkeypatch):
    write_plan(sockets[0])
    p = policy(sockets)
    for n in range(3):
        send(p, [f"u{n}@gmail.com"], f"G{n}")
    monkeypatch.setenv("MAILFLEET_WARMUP_TODAY", "2026-03-02")
    # Day 2 has room, but G2 is still held: first in, first out.
    assert send(p, ["new@gmail.com"], "G3") == "HOLD"
    assert p.release(p.instances["postfix-a"], ["G2", "G3"]) == ["G2", "G3"]


def test_counts_survive_a_restart(sockets):
    write_plan(sockets[0])
    p = policy(sockets)
    for n in range(3):
        send(p, [f"u{n}@gmail.com"], f"G{n}")
    again = policy(sockets)
    assert state(again)["groups"]["google"] == {"budget": 2, "sent": 2, "held": 1}
    assert send(again, ["more@gmail.com"], "G3") == "HOLD"
    stored = json.loads((sockets[0] / "state" / "postfix-a.json").read_text())
    assert {"instance", "start", "day", "date", "groups"} <= set(stored)


def test_after_the_plan_and_without_a_plan_everything_goes(sockets, monkeypatch):
    write_plan(sockets[0])
    p = policy(sockets)
    for n in range(3):
        send(p, [f"u{n}@gmail.com"], f"G{n}")
    monkeypatch.setenv("MAILFLEET_WARMUP_TODAY", "2026-03-03")  # day 3: the plan has ended
    assert state(p)["groups"]["google"]["budget"] is None
    assert p.release(p.instances["postfix-a"], ["G2"]) == ["G2"]
    assert send(p, [f"u{n}@gmail.com" for n in range(50)], "BIG") == "DUNNO"
    # A plan removed: what it held goes.
    monkeypatch.setenv("MAILFLEET_WARMUP_TODAY", "2026-03-01")
    p2 = policy(sockets)
    p2.instances["postfix-a"].held_messages = {"Z1": {"google": 1}}
    (sockets[0] / "plans" / "postfix-a.json").unlink()
    p2.plans_checked = -10.0
    p2.load_plans()
    assert p2.release(p2.instances["postfix-a"], ["Z1"]) == ["Z1"]


def test_before_the_start_day_one_applies(sockets):
    write_plan(sockets[0], start="2026-03-10")
    p = policy(sockets)
    assert [send(p, [f"u{n}@gmail.com"], f"G{n}") for n in range(3)] == ["DUNNO", "DUNNO", "HOLD"]


def test_over_the_socket_with_the_policy_protocol(sockets):
    folder, _ = sockets
    write_plan(folder)
    p = policy(sockets)
    path = str(folder / "policy.sock")
    server = threading.Thread(target=_serve_quietly, args=(p, path), daemon=True)
    server.start()
    _wait_for(path)
    request = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "policy_context": "postfix-a",
               "instance": "t1", "recipient": "a@gmail.com"}
    assert warmup.ask(path, request) == "DUNNO"
    assert warmup.ask(path, {**request, "instance": "t2"}) == "DUNNO"
    assert warmup.ask(path, {**request, "instance": "t3"}).startswith("HOLD warm-up: google")
    assert warmup.ask(path, {"request": "mailfleet_instances"}) == "postfix-a"
    # No context (an instance that does not warm up): nothing to say.
    assert warmup.ask(path, {**request, "policy_context": ""}) == "DUNNO"


def _serve_quietly(p, path):
    import signal
    original = signal.signal
    signal.signal = lambda *args: None  # not the main thread: no SIGTERM handler
    try:
        warmup.serve(p, path)
    finally:
        signal.signal = original
