"""The DNS records to publish: DKIM from a known key, SPF with every IP, zone-file splitting."""

import base64
import json

import dns.name
import dns.rdatatype
import dns.zone
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


def prod_without_nat() -> dict:
    """Pulumi.prod.yaml with its instances sending from their own addresses (no publicIp)."""
    config, _ = stack_config(REPO / "Pulumi.prod.yaml")
    hosts = json.loads(config["mailfleet:hosts"])
    for instance in hosts[0]["instances"]:
        instance.pop("publicIp", None)
    config["mailfleet:hosts"] = json.dumps(hosts)
    return config


def fleet_with_two_hosts():
    config = prod_without_nat()
    config["mailfleet:dmarc"] = '{"policy": "quarantine", "rua": "mailto:dmarc@ecrm.com.tw"}'
    config["mailfleet:dkim"] = '[{"domain": "tt5.ecrm.com.tw", "selector": "s1"}, {"domain": "ecrm.com.tw", "selector": "s2"}]'
    config["mailfleet:sshPrivateKey"] = KEY
    config["mailfleet:hosts"] = config["mailfleet:hosts"][:-1] + (
        ', {"name": "other", "address": "192.0.2.1", "instances": [{"name": "postfix-9", "ip": "192.0.2.9", "hostname": "s9.ecrm.com.tw"}]}]')
    return parse_config(config)


def own_keys(fleet) -> dict[str, str]:
    """A different key for every selector, so a record made from the wrong key shows."""
    return {k.record_name: pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048)) for k in fleet.dkim}


def test_records_cover_every_ip_hostname_and_domain():
    fleet = fleet_with_two_hosts()
    keys = own_keys(fleet)
    assert len(set(keys.values())) == len(keys) == 2
    records = {(r["name"], r["type"]): r["value"] for r in dns_records.dns_records(fleet, keys)}
    assert records[("s43.11.ecrm.com.tw", "A")] == "10.1.11.43"
    assert records[("9.2.0.192.in-addr.arpa", "PTR")] == "s9.ecrm.com.tw"
    assert records[("s45.11.ecrm.com.tw", "TXT")] == "v=spf1 a -all"
    spf = "v=spf1 ip4:10.1.11.43 ip4:10.1.11.45 ip4:192.0.2.9 -all"
    assert records[("tt5.ecrm.com.tw", "TXT")] == records[("ecrm.com.tw", "TXT")] == spf
    for name, pem in keys.items():
        assert records[(name, "TXT")] == dns_records.dkim_value(pem), name
    assert records[("_dmarc.ecrm.com.tw", "TXT")] == "v=DMARC1; p=quarantine; rua=mailto:dmarc@ecrm.com.tw"
    assert all(r["ttl"] == 3600 and r["purpose"] for r in dns_records.dns_records(fleet, keys))


def test_dkim_records_and_zone_file_carry_each_selector_its_own_key():
    fleet = fleet_with_two_hosts()
    keys = own_keys(fleet)
    assert dns_records.dkim_records(fleet, keys) == {name: dns_records.dkim_value(pem) for name, pem in keys.items()}
    zone = dns.zone.from_text(dns_records.zone_file(dns_records.dns_records(fleet, keys)), origin=dns.name.root,
                              relativize=False, check_origin=False)
    for name, pem in keys.items():
        (rdata,) = zone.find_rdataset(name + ".", dns.rdatatype.TXT)
        assert b"".join(rdata.strings).decode() == dns_records.dkim_value(pem), name


def test_public_ip_is_what_dns_names():
    config = prod_without_nat()
    hosts = json.loads(config["mailfleet:hosts"])
    hosts[0]["instances"][1]["publicIp"] = "203.0.113.45"
    config.update({"mailfleet:hosts": json.dumps(hosts), "mailfleet:sshPrivateKey": KEY})
    fleet = parse_config(config)
    records = dns_records.dns_records(fleet, own_keys(fleet))
    by_key = {(r["name"], r["type"]): r["value"] for r in records}
    assert by_key[("s45.11.ecrm.com.tw", "A")] == "203.0.113.45"
    assert by_key[("45.113.0.203.in-addr.arpa", "PTR")] == "s45.11.ecrm.com.tw"
    assert by_key[("tt5.ecrm.com.tw", "TXT")] == "v=spf1 ip4:10.1.11.43 ip4:203.0.113.45 -all"
    assert by_key[("s43.11.ecrm.com.tw", "A")] == "10.1.11.43"  # no publicIp: its own address
    assert not [r for r in records if "10.1.11.45" in r["value"] or r["name"] == "45.11.1.10.in-addr.arpa"]


def test_spf_extra_terms_come_before_all_and_spf_shared_is_the_fleet_alone():
    config = prod_without_nat()
    config.update({
        "mailfleet:dkim": '[{"domain": "tt5.ecrm.com.tw", "selector": "s1"}, {"domain": "ecrm.com.tw", "selector": "s2"}]',
        "mailfleet:spfExtra": '{"ecrm.com.tw": ["include:_spf.google.com", "~mx"]}',
        "mailfleet:spfShared": "_spf.mail.ecrm.com.tw",
    })
    fleet = parse_config(config)
    records = dns_records.dns_records(fleet, own_keys(fleet))
    spf = [(r["name"], r["value"]) for r in records if r["value"].startswith("v=spf1 ip4")]
    assert spf == [
        ("tt5.ecrm.com.tw", "v=spf1 ip4:10.1.11.43 ip4:10.1.11.45 -all"),
        ("ecrm.com.tw", "v=spf1 ip4:10.1.11.43 ip4:10.1.11.45 include:_spf.google.com ~mx -all"),
        ("_spf.mail.ecrm.com.tw", "v=spf1 ip4:10.1.11.43 ip4:10.1.11.45 -all"),
    ]
    # One SPF record per name (RFC 7208 4.5: two make receivers fail both).
    names = [r["name"] for r in records if r["type"] == "TXT" and r["value"].startswith("v=spf1")]
    assert len(names) == len(set(names))


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
