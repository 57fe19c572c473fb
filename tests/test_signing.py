"""What mailfleet/signing.py renders for OpenDKIM: tables, configuration, units, what the probe expects."""

import configparser

from mailfleet import render, signing
from test_render import fleet_of, fleet_with as fleet_with_config, settings


def fleet_with(dkim: str):
    return fleet_with_config(**{"mailfleet:dkim": dkim})


def table(files: dict[str, str], path: str) -> list[str]:
    return [line for line in files[path].splitlines() if not line.startswith("#")]


def conf(text: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))


def test_signing_table_uses_patterns_for_domains_and_subdomains_deepest_first():
    fleet = fleet_with('[{"domain": "example.com", "selector": "a"},'
                       ' {"domain": "mail.example.com", "selector": "b"},'
                       ' {"domain": "example.com", "selector": "next"}]')
    files = signing.files(fleet.dkim, render.mynetworks(fleet))
    assert table(files, "/etc/opendkim/SigningTable") == [
        "*@mail.example.com b._domainkey.mail.example.com",
        "*@*.mail.example.com b._domainkey.mail.example.com",
        "*@example.com a._domainkey.example.com",
        "*@*.example.com a._domainkey.example.com",
    ]
    # Every key is in the KeyTable, also the one waiting to take over (rotation).
    assert "next._domainkey.example.com example.com:next:/etc/opendkim/keys/example.com/next.private" \
        in table(files, "/etc/opendkim/KeyTable")
    # RSA only: Debian's unit with mailfleet's drop-in, no Ed25519 process.
    assert set(files) == {"/etc/opendkim.conf", "/etc/opendkim/KeyTable", "/etc/opendkim/SigningTable",
                          "/etc/opendkim/TrustedHosts", "/etc/systemd/system/opendkim.service.d/mailfleet.conf"}
    # Mail of the subdomain carries both signatures; the probe expects exactly those.
    assert signing.expected_signatures(fleet.dkim, signing.RSA, "mail.example.com") == [
        "d=example.com s=a a=rsa-sha256", "d=mail.example.com s=b a=rsa-sha256"]
    assert signing.expected_signatures(fleet.dkim, signing.RSA, "example.com") == ["d=example.com s=a a=rsa-sha256"]
    assert signing.expected_signatures(fleet.dkim, signing.RSA, "notexample.com") == []
    main = settings(render.instance_main_cf(fleet, fleet.instances[0][1]))
    assert main["smtpd_milters"] == "unix:/var/spool/opendkim/opendkim.sock"


def test_an_ed25519_key_gets_its_own_opendkim_and_every_instance_calls_both():
    fleet = fleet_with('[{"domain": "example.com", "selector": "r1"},'
                       ' {"domain": "example.com", "selector": "e1", "algorithm": "ed25519"},'
                       ' {"domain": "example.com", "selector": "e2", "algorithm": "ed25519"},'
                       ' {"domain": "example.net", "selector": "r2"}]')
    files = signing.files(fleet.dkim, render.mynetworks(fleet))
    assert table(files, "/etc/opendkim/SigningTable") == [
        "*@example.com r1._domainkey.example.com", "*@*.example.com r1._domainkey.example.com",
        "*@example.net r2._domainkey.example.net", "*@*.example.net r2._domainkey.example.net"]
    # The first Ed25519 key signs; e2 is published only (rotation).
    assert table(files, "/etc/opendkim/ed25519/SigningTable") == [
        "*@example.com e1._domainkey.example.com", "*@*.example.com e1._domainkey.example.com"]
    assert "e2._domainkey.example.com example.com:e2:/etc/opendkim/keys/example.com/e2.private" \
        in table(files, "/etc/opendkim/ed25519/KeyTable")
    assert conf(files["/etc/opendkim.conf"])["SignatureAlgorithm"] == "rsa-sha256"
    assert conf(files["/etc/opendkim-ed25519.conf"])["SignatureAlgorithm"] == "ed25519-sha256"
    assert conf(files["/etc/opendkim-ed25519.conf"])["Socket"] == "local:/var/spool/opendkim/opendkim-ed25519.sock"
    assert "/etc/systemd/system/opendkim-ed25519.service" in files
    assert signing.expected_signatures(fleet.dkim, signing.ED25519, "example.com") == ["d=example.com s=e1 a=ed25519-sha256"]
    assert signing.expected_signatures(fleet.dkim, signing.ED25519, "example.net") == []
    main = settings(render.instance_main_cf(fleet, fleet.instances[0][1]))
    assert main["smtpd_milters"] == ("unix:/var/spool/opendkim/opendkim.sock,"
                                     " unix:/var/spool/opendkim/opendkim-ed25519.sock")


def test_opendkim_is_configured_as_careful_senders_do():
    fleet = fleet_of("prod")
    settings_ = conf(signing.files(fleet.dkim, render.mynetworks(fleet))["/etc/opendkim.conf"])
    assert settings_["Canonicalization"] == "relaxed/relaxed"
    assert settings_["SyslogSuccess"] == "yes" and settings_["Mode"] == "s"
    signed = settings_["SignHeaders"].split(",")
    for field in ("From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version", "Content-Type",
                  "Content-Transfer-Encoding", "Sender", "In-Reply-To", "References", "List-Id", "Feedback-ID",
                  "List-Unsubscribe", "List-Unsubscribe-Post"):
        assert field in signed, field
    assert settings_["OversignHeaders"].split(",") == ["From", "To", "Cc", "Subject", "Reply-To", "List-Unsubscribe",
                                                      "List-Unsubscribe-Post"]
    # The tables choose the keys; the single-key settings would compete with them.
    assert settings_["KeyTable"] == "file:/etc/opendkim/KeyTable"
    assert settings_["SigningTable"] == "refile:/etc/opendkim/SigningTable"
    assert not {"Domain", "KeyFile", "Selector", "UserID", "PidFile"} & set(settings_)
    assert settings_["Socket"] == "local:/var/spool/opendkim/opendkim.sock" and settings_["UMask"] == "007"
    assert table(signing.files(fleet.dkim, render.mynetworks(fleet)), "/etc/opendkim/TrustedHosts") == \
        ["127.0.0.0/8", "10.0.0.0/16", "10.1.0.0/16"]


def test_opendkim_runs_unprivileged_and_confined_by_its_drop_in():
    fleet = fleet_of("prod")
    dropin = signing.files(fleet.dkim, render.mynetworks(fleet))["/etc/systemd/system/opendkim.service.d/mailfleet.conf"]
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(dropin)
    service = parser["Service"]
    assert service["User"] == service["Group"] == "opendkim" and service["UMask"] == "0007"
    assert service["Type"] == "simple"  # with -f: no PID file, no root phase
    assert service["ExecStart"].endswith("/usr/sbin/opendkim -f -x /etc/opendkim.conf")
    assert service["CapabilityBoundingSet"] == "" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["ReadWritePaths"] == "/var/spool/opendkim"
    assert service["RestrictAddressFamilies"] == "AF_UNIX"
    assert service["MemoryMax"] and service["TasksMax"]
    assert "@system-service" in dropin


def test_the_probe_wants_every_signing_domain_signed_by_each_process_as_configured():
    fleet = fleet_with('[{"domain": "example.com", "selector": "r1"},'
                       ' {"domain": "example.com", "selector": "e1", "algorithm": "ed25519"},'
                       ' {"domain": "example.net", "selector": "r2"}]')
    script = signing.config_step(fleet.dkim, render.mynetworks(fleet))
    probe = script.split("probe_opendkim /etc/opendkim/keys", 1)[1]
    lines = [line.strip(" \\") for line in probe.split("\n# Keys that")[0].splitlines() if line.strip(" \\")]
    assert lines == [
        "opendkim unix:/var/spool/opendkim/opendkim.sock postmaster@example.com 'd=example.com s=r1 a=rsa-sha256'",
        "opendkim unix:/var/spool/opendkim/opendkim.sock postmaster@example.net 'd=example.net s=r2 a=rsa-sha256'",
        "opendkim-ed25519 unix:/var/spool/opendkim/opendkim-ed25519.sock postmaster@example.com"
        " 'd=example.com s=e1 a=ed25519-sha256'",
        "opendkim-ed25519 unix:/var/spool/opendkim/opendkim-ed25519.sock postmaster@example.net ''",
    ]


def test_the_migration_from_mailfleet_signer_is_a_step_of_its_own():
    script = signing.migrate_signer_step("deploy")
    assert "disable -q --now mailfleet-signer" in script
    assert "/usr/local/sbin/mailfleet-signer /var/spool/mailfleet-signer" in script
    assert "getent passwd deploy" in script and "'.mailfleet-signer-*'" in script
    for step in (signing.config_step(fleet_of("prod").dkim, ["127.0.0.0/8"]), signing.keys_step({})):
        assert "mailfleet-signer" not in step


def test_with_tenants_each_signer_chooses_the_key_by_the_envelope_sender_and_only_then():
    fleet = fleet_with('[{"domain": "example.com", "selector": "r"},'
                       ' {"domain": "example.com", "selector": "e", "algorithm": "ed25519"}]')
    networks = render.mynetworks(fleet)
    for by_envelope, expected in ((False, None), (True, "{mail_addr}")):
        files = signing.files(fleet.dkim, networks, by_envelope)
        for signer in signing.signers(fleet.dkim):
            assert conf(files[signer.conf]).get("SenderMacro") == expected, (signer.unit, by_envelope)
