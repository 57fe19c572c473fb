"""The DNS records to publish: DKIM from a known key, SPF with every IP, zone-file splitting."""

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import REPO, stack_config
from mailfleet import dns_records
from mailfleet.config import parse_config
from keys import openssh_private_key, rsa_private_key

KEY = openssh_private_key()


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem_of(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_dkim_value_is_the_der_subject_public_key_info(rsa_key):
    der = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    value = dns_records.dkim_value(pem_of(rsa_key))
    assert value == f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    assert 390 < len(value) < 420  # RSA-2048: longer than one TXT string


def test_dkim_value_rejects_what_is_not_a_public_key():
    with pytest.raises(ValueError):
        dns_records.dkim_value(rsa_private_key())


def fleet_with_two_hosts():
    config, _ = stack_config(REPO / "Pulumi.prod.yaml")
    config["mailfleet:dmarc"] = '{"policy": "quarantine", "rua": "mailto:dmarc@ecrm.com.tw"}'
    config["mailfleet:dkim"] = '[{"domain": "tt5.ecrm.com.tw", "selector": "s1"}, {"domain": "ecrm.com.tw", "selector": "s2"}]'
    config["mailfleet:sshPrivateKey"] = KEY
    config["mailfleet:hosts"] = config["mailfleet:hosts"][:-1] + (
        ', {"name": "other", "address": "192.0.2.1", "instances": [{"name": "postfix-9", "ip": "192.0.2.9", "hostname": "s9.ecrm.com.tw"}]}]')
    return parse_config(config)


def test_records_cover_every_ip_hostname_and_domain(rsa_key):
    fleet = fleet_with_two_hosts()
    keys = {k.record_name: pem_of(rsa_key) for k in fleet.dkim}
    records = {(r["name"], r["type"]): r["value"] for r in dns_records.dns_records(fleet, keys)}
    assert records[("s43.11.ecrm.com.tw", "A")] == "10.1.11.43"
    assert records[("9.2.0.192.in-addr.arpa", "PTR")] == "s9.ecrm.com.tw"
    assert records[("s45.11.ecrm.com.tw", "TXT")] == "v=spf1 a -all"
    spf = "v=spf1 ip4:10.1.11.43 ip4:10.1.11.45 ip4:192.0.2.9 -all"
    assert records[("tt5.ecrm.com.tw", "TXT")] == records[("ecrm.com.tw", "TXT")] == spf
    assert records[("s1._domainkey.tt5.ecrm.com.tw", "TXT")] == dns_records.dkim_value(pem_of(rsa_key))
    assert records[("_dmarc.ecrm.com.tw", "TXT")] == "v=DMARC1; p=quarantine; rua=mailto:dmarc@ecrm.com.tw"
    assert all(r["ttl"] == 3600 and r["purpose"] for r in dns_records.dns_records(fleet, keys))


def test_zone_file_splits_long_txt_into_255_byte_strings(rsa_key):
    long_value = dns_records.dkim_value(pem_of(rsa_key))
    record = {"name": "s1._domainkey.example.com", "type": "TXT", "value": long_value, "ttl": 3600}
    line = dns_records.zone_line(record)
    name, ttl, klass, type_, data = line.split(" ", 4)
    assert (name, ttl, klass, type_) == ("s1._domainkey.example.com.", "3600", "IN", "TXT")
    strings = [s.strip('"') for s in data.split('" "')]
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert "".join(strings) == long_value


def test_split_txt_keeps_short_values_whole_and_quotes_safely():
    assert dns_records.split_txt("v=spf1 a -all") == ["v=spf1 a -all"]
    assert len(dns_records.split_txt("x" * 511)) == 3
    line = dns_records.zone_line({"name": "a.example", "type": "TXT", "value": 'say "hi" \\', "ttl": 60})
    assert line.endswith('"say \\"hi\\" \\\\"')


def test_ptr_values_are_absolute_in_the_zone_file():
    line = dns_records.zone_line({"name": "43.11.1.10.in-addr.arpa", "type": "PTR", "value": "s43.example.com", "ttl": 60})
    assert line == "43.11.1.10.in-addr.arpa. 60 IN PTR s43.example.com."


def test_dkim_value_of_an_ed25519_key_is_the_raw_32_byte_key():
    from cryptography.hazmat.primitives.asymmetric import ed25519
    key = ed25519.Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    value = dns_records.dkim_value(pem_of(key), "ed25519")
    assert value == f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"  # RFC 8463, 44 characters
    assert dns_records.dkim_value(pem_of(key)) == value  # the algorithm is read from the key
    with pytest.raises(ValueError):
        dns_records.dkim_value(pem_of(key), "rsa")


def test_dkim_records_follow_each_keys_algorithm(rsa_key):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    config, _ = stack_config(REPO / "Pulumi.prod.yaml", {"mailfleet:sshPrivateKey": KEY})
    config["mailfleet:dkim"] = ('[{"domain": "example.com", "selector": "r"},'
                                ' {"domain": "example.com", "selector": "e", "algorithm": "ed25519"}]')
    fleet = parse_config(config)
    keys = {"r._domainkey.example.com": pem_of(rsa_key),
            "e._domainkey.example.com": pem_of(ed25519.Ed25519PrivateKey.generate())}
    records = dns_records.dkim_records(fleet, keys)
    assert records["r._domainkey.example.com"].startswith("v=DKIM1; k=rsa; p=MIIB")
    assert records["e._domainkey.example.com"].startswith("v=DKIM1; k=ed25519; p=")
    txt = {r["name"]: r["value"] for r in dns_records.dns_records(fleet, keys) if r["type"] == "TXT"}
    assert txt["e._domainkey.example.com"] == records["e._domainkey.example.com"]
