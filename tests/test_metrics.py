"""The metrics' pure parts: mailfleet's mtail programs run by this machine's mtail (Debian's) on
fixture lines, the firewall's address sets, and the scrape configuration the stack exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

from mailfleet import metrics
from keys import openssh_private_key
from mailfleet.config import parse_config
from mtail_cases import DELIVERY_COUNTERS, DELIVERY_LINES, JOURNAL_COUNTERS, JOURNAL_LINES, mailfleet_series
from skips import skip_or_fail


def one_shot(tmp_path, lines: list[str]) -> dict[str, float]:
    if not shutil.which("mtail"):
        skip_or_fail("Debian's mtail is not installed (scripts/test installs it)")
    programs = tmp_path / "programs"
    programs.mkdir()
    for name, text in metrics.programs().items():
        (programs / name).write_text(text)
    log = tmp_path / "lines.log"
    log.write_text("".join(f"{line}\n" for line in lines))
    result = subprocess.run(["mtail", "--one_shot", "--one_shot_format", "prometheus", "--progs", programs,
                             "--logs", log, "--port", "0", "--emit_prog_label=false", "--logtostderr"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return mailfleet_series(result.stdout)


def test_delivery_records_count_by_instance_ip_group_outcome_and_status_class(tmp_path):
    assert one_shot(tmp_path, DELIVERY_LINES) == {**DELIVERY_COUNTERS, "mailfleet_dkim_unsigned_total": 0}


def test_journal_lines_count_tls_connection_outcomes_and_the_signer(tmp_path):
    assert one_shot(tmp_path, JOURNAL_LINES) == JOURNAL_COUNTERS


def test_a_program_that_does_not_compile_fails_the_check(tmp_path):
    if not shutil.which("mtail"):
        skip_or_fail("Debian's mtail is not installed (scripts/test installs it)")
    (tmp_path / "broken.mtail").write_text("counter x\n/a/ { x++ }\n")
    result = subprocess.run(["mtail", "--compile_only", "--progs", tmp_path, "--port", "0", "--logtostderr"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "broken.mtail" in result.stderr


def fleet(metrics_networks=(), dkim=({"domain": "example.com", "selector": "s1"},)):
    hosts = [{"name": "mail1", "address": "203.0.113.10", "instances": [
                 {"name": "postfix-43", "ip": "10.1.11.43", "hostname": "s43.mail.example.com"},
                 {"name": "postfix-44", "ip": "10.1.11.44", "hostname": "s44.mail.example.com"}]},
             {"name": "mail2", "vm": {}, "instances": [
                 {"name": "postfix-51", "ip": "10.1.12.51", "hostname": "s51.mail.example.com"}],
              "network": {"interface": "ens160", "prefixLength": 24, "gateway": "10.1.12.254",
                          "nameservers": ["10.1.0.72"]}}]
    config = {"mailfleet:hosts": hosts, "mailfleet:dkim": list(dkim),
              "mailfleet:sshPrivateKey": openssh_private_key(),
              "mailfleet:vsphere": {"datacenter": "dc", "cluster": "c", "datastore": "ds", "network": "n",
                                    "template": "t"}}
    return parse_config({k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
                        ["mailfleet:sshPrivateKey"])


def test_only_the_host_itself_and_metrics_networks_may_scrape():
    host = fleet().hosts[0]
    # Adjacent prefixes merge; the loopback and the instance IPs are always there.
    assert metrics.scrapers(host, ["192.0.2.0/25", "192.0.2.128/25", "2001:db8::/32"]) == (
        ["10.1.11.43/32", "10.1.11.44/32", "127.0.0.0/8", "192.0.2.0/24"], ["::1/128", "2001:db8::/32"])
    rules = metrics.files(host, [], fleet().dkim)[metrics.FIREWALL_RULES]
    assert "ip saddr @scrapers4 accept" in rules and "reject with tcp reset" in rules
    assert "elements = { 10.1.11.43/32, 10.1.11.44/32, 127.0.0.0/8 }" in rules


def test_the_scrape_configs_name_every_instance_and_host():
    configs = {job["job_name"]: job for job in metrics.scrape_configs(fleet())}
    assert configs["mailfleet-queue"]["static_configs"] == [
        {"targets": ["10.1.11.43:9154"], "labels": {"instance": "postfix-43", "host": "mail1"}},
        {"targets": ["10.1.11.44:9154"], "labels": {"instance": "postfix-44", "host": "mail1"}},
        {"targets": ["10.1.12.51:9154"], "labels": {"instance": "postfix-51", "host": "mail2"}}]
    assert configs["mailfleet-logs"]["honor_labels"] is True
    assert configs["mailfleet-logs"]["static_configs"] == [
        {"targets": ["203.0.113.10:3903"], "labels": {"host": "mail1"}},
        {"targets": ["10.1.12.51:3903"], "labels": {"host": "mail2"}}]


def test_every_instance_gets_an_exporter_on_its_own_ip():
    files = metrics.files(fleet().hosts[0], [], fleet().dkim)
    assert files[f"{metrics.EXPORTER_ENV_DIR}/postfix-43.env"].endswith("LISTEN=10.1.11.43:9154\n")
    assert files[f"{metrics.EXPORTER_ENV_DIR}/postfix-44.env"].endswith("LISTEN=10.1.11.44:9154\n")
    unit = files[metrics.EXPORTER_UNIT_FILE]
    assert "--postfix.showq_path=/var/spool/%i/public/showq" in unit and "--postfix.logfile_path=/dev/null" in unit


def test_the_signer_probe_sends_each_signer_with_keys_mail_from_a_domain_it_signs():
    config = fleet()
    scripts = metrics.probe_scripts(config.dkim)
    rsa_domains = {key.domain for key in config.dkim if key.algorithm == "rsa"}
    assert list(scripts) == [f"{metrics.PROBE_SCRIPTS}/opendkim.lua"]
    sender = re.search(r'mt.mailfrom\(conn, "dkim-probe@([^"]+)"\)', scripts[f"{metrics.PROBE_SCRIPTS}/opendkim.lua"])
    assert sender and sender.group(1) in rsa_domains
    assert f'"i", "{metrics.PROBE_JOB}"' in scripts[f"{metrics.PROBE_SCRIPTS}/opendkim.lua"]
    # An Ed25519 key adds its signer's probe; a signer without keys has none (it would never sign).
    ed = fleet(dkim=[{"domain": "example.com", "selector": "ed1", "algorithm": "ed25519"}])
    assert list(metrics.probe_scripts(ed.dkim)) == [f"{metrics.PROBE_SCRIPTS}/opendkim-ed25519.lua"]
