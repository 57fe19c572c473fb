"""Shaping rendered: each receiver group's per-IP limits as Postfix settings, per instance."""

import json
import shutil
import subprocess

from harness import REPO, stack_config
from keys import openssh_private_key
from mailfleet import render, shaping
from mailfleet.config import fleet_warnings, parse_config
from skips import skip_or_fail
from test_render import settings

KEY = openssh_private_key()


def fleet_with(**config):
    raw = {**stack_config(REPO / "Pulumi.prod.yaml", {"mailfleet:sshPrivateKey": KEY})[0],
           **{k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}}
    return parse_config(raw)


def prod_hosts(**instance_shaping):
    """Pulumi.prod.yaml's host, its instances with the given `shaping` by name."""
    raw = stack_config(REPO / "Pulumi.prod.yaml", {"mailfleet:sshPrivateKey": KEY})[0]
    hosts = json.loads(raw["mailfleet:hosts"])
    for instance in hosts[0]["instances"]:
        if instance["name"] in instance_shaping:
            instance["shaping"] = instance_shaping[instance["name"]]
    return hosts


def test_rate_delay_is_whole_seconds_and_never_above_the_limit():
    assert [shaping.rate_delay(m) for m in (1, 20, 30, 45, 59, 60, 61, 6000)] == [60, 3, 2, 2, 2, 1, 0, 0]
    for m in range(1, 61):
        assert 60 / shaping.rate_delay(m) <= m


def test_each_group_is_a_transport_with_the_instance_limits_over_the_fleet():
    fleet = fleet_with(**{
        "mailfleet:shaping": {"groups": {"google": {"connections": 3}, "corp": {"mxSuffixes": ["corp-mx.example"],
                                                                                 "messagesPerMinute": 30}}},
        "mailfleet:hosts": prod_hosts(**{"postfix-45": {"google": {"connections": 1, "messagesPerMinute": 20}}}),
        "mailfleet:queue": {}})
    warm, cold = (instance for _, instance in fleet.instances)
    by_group = {t.group: t for t in shaping.transports(fleet, warm)}
    assert list(by_group) == ["google", "microsoft", "yahoo", "apple", "corp", "default"]
    assert (by_group["google"].connections, by_group["google"].messages_per_connection) == (3, 50)  # stack over built-in
    assert by_group["corp"].connections == 10 and by_group["corp"].rate_delay == 2  # the default group's, then its own
    assert by_group["google"].rate_delay == 0
    main, master = render.instance_main_cf(fleet, warm), render.instance_master_cf(fleet, warm)
    values = settings(main)
    assert values["transport_maps"] == ("proxy:socketmap:unix:/run/mailfleet-shaping/map.sock:backoff-postfix-43, "
                                        f"texthash:/etc/{warm.name}/transport_shaping, "
                                        "proxy:socketmap:unix:/run/mailfleet-shaping/map.sock:transport")
    assert values["default_transport"] == "smtp-default"
    assert values["smtp-google_destination_concurrency_limit"] == "3"
    assert "smtp-google_transport_rate_delay" not in values and values["smtp-corp_transport_rate_delay"] == "2s"
    assert "\nsmtp-google unix  -       -       y       -       3       smtp\n" in master
    # Reused 49 times after the first message: 50 messages a connection.
    assert "  -o smtp_connection_reuse_count_limit=49\n" in master.split("smtp-google unix")[1].split("smtp-microsoft")[0]
    cold_values = settings(render.instance_main_cf(fleet, cold))
    assert cold_values["smtp-google_destination_concurrency_limit"] == "1"
    assert cold_values["smtp-google_transport_rate_delay"] == "3s"
    assert "\nsmtp-google unix  -       -       y       -       1       smtp\n" in render.instance_master_cf(fleet, cold)
    table = render.instance_tables(fleet, warm)[f"/etc/{warm.name}/transport_shaping"]
    assert "\ngmail.com smtp-google:\n" in table and "\naol.com smtp-yahoo:\n" in table and "corp" not in table


def test_one_message_a_connection_turns_the_connection_cache_off():
    fleet = fleet_with(**{"mailfleet:hosts": prod_hosts(**{"postfix-43": {"apple": {"messagesPerConnection": 1}}})})
    master = render.instance_master_cf(fleet, fleet.instances[0][1])
    apple = master.split("smtp-apple unix")[1].split("smtp-default")[0]
    assert "-o smtp_connection_cache_on_demand=no" in apple and "reuse_count_limit" not in apple


def test_the_queue_destination_limit_caps_each_destination_not_the_group():
    fleet = fleet_with(**{"mailfleet:queue": {"destinationConcurrencyLimit": 2}})
    instance = fleet.instances[0][1]
    values = settings(render.instance_main_cf(fleet, instance))
    assert values["smtp-apple_destination_concurrency_limit"] == "2"
    assert "\nsmtp-apple unix  -       -       y       -       10      smtp\n" in render.instance_master_cf(fleet, instance)


def test_with_a_relayhost_there_is_no_shaping_and_a_warning_when_it_was_configured():
    fleet = fleet_with(**{"mailfleet:relayhost": "[relay.example.com]:25"})
    instance = fleet.instances[0][1]
    assert "transport_maps" not in settings(render.instance_main_cf(fleet, instance))
    assert "smtp-google" not in render.instance_master_cf(fleet, instance)
    assert set(render.instance_tables(fleet, instance)) == {f"/etc/{instance.name}/recipient_access",
                                                           f"/etc/{instance.name}/header_checks",
                                                           f"/etc/{instance.name}/body_checks"}
    assert not [w for w in fleet_warnings(fleet) if "shaping" in w]
    shaped = fleet_with(**{"mailfleet:relayhost": "[relay.example.com]:25",
                           "mailfleet:shaping": {"groups": {"google": {"connections": 2}}}})
    assert [w for w in fleet_warnings(shaped) if w.startswith("mailfleet:shaping: ")]


def test_postfix_routes_the_group_domains_by_the_table(tmp_path):
    if not shutil.which("postmap"):
        skip_or_fail("Debian's postfix is not installed (scripts/test installs it)")
    fleet = fleet_with()
    instance = fleet.instances[0][1]
    table = tmp_path / "transport_shaping"
    table.write_text(render.instance_tables(fleet, instance)[f"/etc/{instance.name}/transport_shaping"])
    (tmp_path / "main.cf").write_text("")

    def lookup(key):
        return subprocess.run(["postmap", "-c", str(tmp_path), "-q", key, f"texthash:{table}"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    assert [lookup(d) for d in ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "example.org")] == [
        "smtp-google:", "smtp-microsoft:", "smtp-yahoo:", "smtp-apple:", ""]


def test_the_built_in_patterns_recognise_the_providers_push_back():
    fleet = fleet_with()
    replies = [
        ("google", "421-4.7.28 [192.0.2.43] Our system has detected an unusual rate of unsolicited mail", "backoff"),
        ("google", "250 2.0.0 OK 1733300000 a1si123", None),
        ("microsoft", "451 4.7.650 The mail server [192.0.2.43] has been temporarily rate limited due to IP reputation",
         "backoff"),
        ("microsoft", "550 5.7.1 Unfortunately, messages from [192.0.2.43] weren't sent. (S3150)", "backoff"),
        ("yahoo", "421 4.7.0 [TSS04] Messages from 192.0.2.43 temporarily deferred", None),  # not a TS code
        ("yahoo", "421 4.7.0 [TS01] Messages from 192.0.2.43 temporarily deferred", "backoff"),
        ("yahoo", "421 4.7.0 [TS04] Messages from 192.0.2.43 temporarily deferred", "suspend"),
        ("default", "421 4.7.28 rate", None),  # the default group has no patterns
    ]
    for group, reply, action in replies:
        assert shaping.push_back(fleet, group, reply) == action, (group, reply)
    custom = fleet_with(**{"mailfleet:shaping": {"groups": {"google": {
        "suspend": {"patterns": [r"^550-5\.7\.1 .*blocked"], "minutes": 240}}}}})
    assert shaping.push_back(custom, "google", "550-5.7.1 [192.0.2.43] ... blocked") == "suspend"
    assert custom.shaping.groups["google"].backoff.minutes == 90  # the built-in backoff stays
    shorter = fleet_with(**{"mailfleet:shaping": {"groups": {"yahoo": {"backoff": {"minutes": 30}}}}})
    assert shorter.shaping.groups["yahoo"].backoff.minutes == 30
    assert shorter.shaping.groups["yahoo"].backoff.patterns == (r"\[TS0[1-3]\]",)
