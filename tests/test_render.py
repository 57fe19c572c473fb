"""Rendered files against golden copies.

UPDATE_GOLDEN=1 rewrites them and fails (review the diff, then run again without it); under CI it is
refused, so a CI run never blesses its own output."""

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from harness import REPO, stack_config
from mailfleet import render
from mailfleet.config import parse_config
from rendered import rendered_files
from keys import openssh_private_key

GOLDEN = Path(__file__).resolve().parent / "golden"
KEY = openssh_private_key()


def fleet_of(stack: str):
    config, _ = stack_config(REPO / f"Pulumi.{stack}.yaml", {"mailfleet:sshPrivateKey": KEY})
    return parse_config(config)


def rewrite_golden(folder: Path, files: dict[str, str]):
    """Write the goldens anew and fail: a rewrite compares the files with themselves, so it is
    never a pass. Refused under CI, where nobody reviews the diff."""
    if os.environ.get("CI"):
        pytest.fail("UPDATE_GOLDEN=1 is refused under CI: rewrite the goldens locally and commit them")
    for stale in (p for p in folder.rglob("*") if p.is_file()):
        if str(stale.relative_to(folder)) not in files:
            stale.unlink()
    for path, content in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(content)
    pytest.fail(f"goldens in {folder} rewritten: review the diff (git diff {folder}), then run again "
                "without UPDATE_GOLDEN")


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_rendered_files_match_golden(stack):
    files = rendered_files(fleet_of(stack))
    folder = GOLDEN / stack
    if os.environ.get("UPDATE_GOLDEN") == "1":
        rewrite_golden(folder, files)
    golden = {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(golden)
    for path, content in files.items():
        assert content == golden[path], f"{stack}/{path} differs from its golden copy"


WEBHOOK = {"url": "https://hooks.example.com/mailfleet?source=dev", "secret": "golden-signing-secret-0123456789",
           "batchSize": 250}


def test_the_webhook_files_match_golden():
    """The dev stack with deliveryWebhook: only the webhook's own files are compared here."""
    config, secret_keys = stack_config(REPO / "Pulumi.dev.yaml", {"mailfleet:sshPrivateKey": KEY})
    fleet = parse_config({**config, "mailfleet:deliveryWebhook": json.dumps(WEBHOOK)},
                         [*secret_keys, "mailfleet:deliveryWebhook"])
    files = {path.lstrip("/"): content for path, content in render.webhook_files(fleet).items()
             if path != render.WEBHOOK_PROGRAM}
    folder = GOLDEN / "webhook"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        rewrite_golden(folder, files)
    golden = {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}
    assert files == golden
    assert json.loads(files["etc/mailfleet/webhook.json"]) == WEBHOOK
    assert render.webhook_files(fleet_of("dev")) == {}


def test_update_golden_is_never_a_pass_and_is_refused_under_ci(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "GOLDEN", tmp_path)
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.fail.Exception, match="review the diff"):
        test_rendered_files_match_golden("dev")
    main_cf = tmp_path / "dev/etc/postfix/main.cf"
    assert main_cf.read_text() == rendered_files(fleet_of("dev"))["etc/postfix/main.cf"]
    main_cf.write_text("edited by hand\n")
    monkeypatch.setenv("CI", "1")  # any non-empty CI is strict
    with pytest.raises(pytest.fail.Exception, match="refused under CI"):
        test_rendered_files_match_golden("dev")
    assert main_cf.read_text() == "edited by hand\n"


def settings(main_cf: str) -> dict[str, str]:
    """main.cf as Postfix reads it: a line that starts with whitespace continues the one before."""
    logical = main_cf.replace("\n    ", " ").replace("\n  ", " ")
    pairs = (line.split("=", 1) for line in logical.splitlines() if "=" in line and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def test_each_instance_listens_and_sends_on_its_own_ip_as_its_hostname():
    fleet = fleet_of("prod")
    for _, instance in fleet.instances:
        main = settings(render.instance_main_cf(fleet, instance))
        assert main["inet_interfaces"] == main["smtp_bind_address"] == instance.ip
        assert main["myhostname"] == main["smtp_helo_name"] == instance.hostname
        assert main["multi_instance_name"] == instance.name and main["multi_instance_enable"] == "yes"
        assert main["mynetworks"] == "127.0.0.0/8, 10.0.0.0/16, 10.1.0.0/16"
        assert main["smtpd_relay_restrictions"].endswith("reject_unauth_destination")
        assert main["milter_default_action"] == "tempfail" and main["milter_protocol"] == "6"
        assert main["master_service_disable"] == "" and main["authorized_submit_users"] == "root, postfix"
        assert (main["maximal_queue_lifetime"], main["maximal_backoff_time"]) == ("6h", "900s")
        assert main["smtpd_tls_chain_files"] == f"/etc/mailfleet/tls/{instance.name}.pem"


def test_default_instance_is_bound_to_127_0_0_1_only():
    fleet = fleet_of("prod")
    main = settings(render.default_main_cf(fleet, fleet.hosts[0]))
    assert main["inet_interfaces"] == "127.0.0.1"
    assert main["multi_instance_enable"] == "yes"


def test_local_mail_leaves_from_the_loopback_with_a_signing_domain_sender():
    fleet = fleet_of("prod")
    main = settings(render.default_main_cf(fleet, fleet.hosts[0]))
    # 127.0.0.1 is in every instance's mynetworks, whatever relayNetworks holds.
    assert main["smtp_bind_address"] == "127.0.0.1"
    assert main["relayhost"] == f"[{fleet.hosts[0].instances[0].ip}]:25"
    assert main["myorigin"] == fleet.dkim[0].domain
    # Another name than the first instance's, or its SMTP client sees "mail loops back to myself".
    assert main["myhostname"] == f"local.{fleet.hosts[0].instances[0].hostname}"
    assert main["authorized_submit_users"] == "root, postfix"


def fleet_with(**config):
    raw = {**stack_config(REPO / "Pulumi.prod.yaml", {"mailfleet:sshPrivateKey": KEY})[0], **config}
    return parse_config(raw)


def test_senders_outside_the_signing_domains_are_refused_unless_allowed():
    fleet = fleet_with(**{"mailfleet:dkim": '[{"domain": "example.com", "selector": "a"},'
                                             ' {"domain": "example.net", "selector": "b"}]'})
    main = settings(render.instance_main_cf(fleet, fleet.instances[0][1]))
    restrictions = main["smtpd_sender_restrictions"]
    assert restrictions.startswith("check_sender_access inline:{ example.com=OK, example.net=OK },")
    assert "static:{550 5.7.1 sender domain is not signed" in restrictions
    assert main["smtpd_delay_reject"] == "no"  # sender restrictions answer at MAIL FROM
    allowed = fleet_with(**{"mailfleet:allowUnsignedSenders": "true"})
    main = settings(render.instance_main_cf(allowed, allowed.instances[0][1]))
    assert "smtpd_sender_restrictions" not in main and "smtpd_delay_reject" not in main


def test_senders_nothing_locally_and_speak_strict_protocol():
    fleet = fleet_of("prod")
    instance = fleet.instances[0][1]
    main = settings(render.instance_main_cf(fleet, instance))
    assert main["mydestination"] == "" and main["local_transport"].startswith("error:")
    assert main["smtpd_recipient_restrictions"] == f"check_recipient_access regexp:/etc/{instance.name}/recipient_access"
    assert main["disable_vrfy_command"] == main["smtpd_helo_required"] == "yes"
    assert main["tls_ssl_options"] == "NO_COMPRESSION, NO_RENEGOTIATION"
    assert main["local_header_rewrite_clients"] == "permit_inet_interfaces, permit_mynetworks"
    assert main["header_checks"] == f"regexp:/etc/{instance.name}/header_checks"
    lines = render.instance_main_cf(fleet, instance).splitlines()
    # Parameters that Postfix 3.6 lacks: the remote step keeps them where the host knows them.
    assert "# mailfleet:if-supported smtpd_forbid_bare_newline = yes" in lines
    assert "# mailfleet:if-supported smtp_bind_address_enforce = yes" in lines
    tables = render.instance_tables(fleet, instance)
    assert set(tables) == {f"/etc/{instance.name}/recipient_access", f"/etc/{instance.name}/header_checks",
                           f"/etc/{instance.name}/body_checks", f"/etc/{instance.name}/transport_shaping"}


def test_submission_ports_need_tls_and_no_sasl():
    fleet = fleet_of("prod")
    master = render.instance_master_cf(fleet, fleet.hosts[0].instances[0])
    assert "smtpd_sasl_auth_enable" not in master
    submission = master.split("submission inet")[1].split("\nsmtps")[0]
    smtps = master.split("smtps     inet")[1].split("\npickup")[0]
    assert "smtpd_tls_security_level=encrypt" in submission
    assert "smtpd_tls_wrappermode=yes" in smtps
    for service in (submission, smtps):
        assert "-o smtpd_tls_protocols=>=TLSv1.2" in service
        assert "-o smtpd_tls_mandatory_protocols=>=TLSv1.2" in service
    assert "TLSv1" not in master.split("submission inet")[0]  # 25 keeps Postfix's defaults


def test_cloud_init_puts_every_ip_on_one_interface():
    host = fleet_of("prod").hosts[0]
    metadata = yaml.safe_load(render.cloud_init_metadata(host))
    ens160 = metadata["network"]["ethernets"]["ens160"]
    assert ens160["addresses"] == ["10.1.11.43/24", "10.1.11.45/24"]
    # cloud-init 22.4 (Debian 12) refuses netplan's `to: default`: "Address default is not a valid ip address".
    assert ens160["routes"] == [{"to": "0.0.0.0/0", "via": "10.1.11.254"}]
    assert ens160["nameservers"]["addresses"] == ["10.1.0.72", "10.1.0.73"]
    assert metadata["local-hostname"] == "victorpostfix"
    userdata = render.cloud_init_userdata(host, ["ssh-ed25519 AAAAkey deploy"])
    assert userdata.startswith("#cloud-config\n")
    (user,) = yaml.safe_load(userdata)["users"]
    assert user["name"] == "mailfleet" and user["ssh_authorized_keys"] == ["ssh-ed25519 AAAAkey deploy"]


def test_cloud_init_instance_id_follows_the_addresses():
    host = fleet_of("prod").hosts[0]
    first = yaml.safe_load(render.cloud_init_metadata(host))["instance-id"]
    fewer = host.__class__(**{**host.__dict__, "instances": host.instances[:1]})
    assert yaml.safe_load(render.cloud_init_metadata(fewer))["instance-id"] != first
    assert yaml.safe_load(render.cloud_init_metadata(host))["instance-id"] == first
