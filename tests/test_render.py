"""Rendered files against golden copies (UPDATE_GOLDEN=1 rewrites them after a reviewed change)."""

import os
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


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_rendered_files_match_golden(stack):
    files = rendered_files(fleet_of(stack))
    folder = GOLDEN / stack
    if os.environ.get("UPDATE_GOLDEN") == "1":
        for path, content in files.items():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_text(content)
    golden = {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(golden)
    for path, content in files.items():
        assert content == golden[path], f"{stack}/{path} differs from its golden copy"


def settings(main_cf: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in main_cf.splitlines() if "=" in line and not line.startswith("#"))
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
        assert main["master_service_disable"] == "" and main["authorized_submit_users"] == "static:anyone"
        assert (main["maximal_queue_lifetime"], main["maximal_backoff_time"]) == ("6h", "900s")
        assert main["smtpd_tls_chain_files"] == f"/etc/mailfleet/tls/{instance.name}.pem"


def test_default_instance_is_bound_to_127_0_0_1_only():
    main = settings(render.default_main_cf(fleet_of("prod").hosts[0]))
    assert main["inet_interfaces"] == "127.0.0.1"
    assert main["multi_instance_enable"] == "yes"


def test_submission_ports_need_tls_and_no_sasl():
    master = render.instance_master_cf(fleet_of("prod").hosts[0].instances[0])
    assert "smtpd_sasl_auth_enable" not in master
    submission = master.split("submission inet")[1].split("\nsmtps")[0]
    assert "smtpd_tls_security_level=encrypt" in submission
    assert "smtpd_tls_wrappermode=yes" in master.split("smtps     inet")[1].split("\npickup")[0]


def test_signing_table_uses_patterns_for_domains_and_subdomains_deepest_first():
    fleet = parse_config({**stack_config(REPO / "Pulumi.prod.yaml")[0],
                          "mailfleet:dkim": '[{"domain": "example.com", "selector": "a"},'
                                            ' {"domain": "mail.example.com", "selector": "b"},'
                                            ' {"domain": "example.com", "selector": "next"}]'})
    files = render.opendkim_files(fleet)
    assert "SigningTable            refile:/etc/opendkim/SigningTable" in files["/etc/opendkim.conf"]
    lines = [line for line in files["/etc/opendkim/SigningTable"].splitlines() if not line.startswith("#")]
    assert lines == [
        "*@mail.example.com b._domainkey.mail.example.com",
        "*@*.mail.example.com b._domainkey.mail.example.com",
        "*@example.com a._domainkey.example.com",
        "*@*.example.com a._domainkey.example.com",
    ]
    # Every key is in the KeyTable, also the one waiting to take over (rotation).
    assert "next._domainkey.example.com example.com:next:/etc/opendkim/keys/example.com/next.private" \
        in files["/etc/opendkim/KeyTable"]


def test_opendkim_uses_tables_only_and_a_unix_socket_postfix_reaches():
    conf = render.opendkim_files(fleet_of("prod"))["/etc/opendkim.conf"]
    assert "Socket                  local:/var/spool/opendkim/opendkim.sock" in conf
    for single_key_setting in ("\nDomain", "\nKeyFile", "\nSelector"):
        assert single_key_setting not in conf


def test_cloud_init_puts_every_ip_on_one_interface():
    host = fleet_of("prod").hosts[0]
    metadata = yaml.safe_load(render.cloud_init_metadata(host))
    ens160 = metadata["network"]["ethernets"]["ens160"]
    assert ens160["addresses"] == ["10.1.11.43/24", "10.1.11.45/24"]
    assert ens160["routes"] == [{"to": "default", "via": "10.1.11.254"}]
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
