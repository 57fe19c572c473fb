"""The DNS records a fleet needs, as the stack outputs `dnsRecords`, `dkimRecords` and `zoneFile`.

Pure functions of the validated configuration and the DKIM public keys (PEM text).
"""

from __future__ import annotations

import ipaddress

from mailfleet.config import DkimKey, Fleet

TTL = 3600
TXT_CHUNK = 255  # a DNS character-string holds at most 255 bytes


def dkim_value(public_key_pem: str) -> str:
    """`p=` is the base64 DER SubjectPublicKeyInfo, which is exactly the body of the PEM."""
    lines = [line.strip() for line in public_key_pem.strip().splitlines()]
    if not lines or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise ValueError("expected a PEM 'PUBLIC KEY' (SubjectPublicKeyInfo)")
    return f"v=DKIM1; k=rsa; p={''.join(lines[1:-1])}"


def dkim_records(fleet: Fleet, public_keys: dict[str, str]) -> dict[str, str]:
    """`public_keys` maps each key's record name (selector._domainkey.domain) to its PEM."""
    return {key.record_name: dkim_value(public_keys[key.record_name]) for key in fleet.dkim}


def reverse_name(ip: str) -> str:
    return ipaddress.IPv4Address(ip).reverse_pointer


def _record(name: str, type_: str, value: str, purpose: str) -> dict:
    return {"name": name, "type": type_, "value": value, "ttl": TTL, "purpose": purpose}


def dns_records(fleet: Fleet, public_keys: dict[str, str]) -> list[dict]:
    records = []
    for host, instance in fleet.instances:
        records.append(_record(instance.hostname, "A", instance.ip, f"address of instance {instance.name} on {host.name}"))
        records.append(_record(reverse_name(instance.ip), "PTR", instance.hostname,
                               f"reverse DNS of {instance.ip}: must name the HELO hostname"))
        records.append(_record(instance.hostname, "TXT", "v=spf1 a -all", f"SPF for the HELO identity of {instance.name}"))
    sender_ips = " ".join(f"ip4:{instance.ip}" for _, instance in fleet.instances)
    domains = list(dict.fromkeys(key.domain for key in fleet.dkim))
    for domain in domains:
        records.append(_record(domain, "TXT", f"v=spf1 {sender_ips} -all", f"SPF: the fleet's IPs may send for {domain}"))
    for key in fleet.dkim:
        records.append(_record(key.record_name, "TXT", dkim_value(public_keys[key.record_name]),
                               f"DKIM public key, selector {key.selector}"))
    dmarc = f"v=DMARC1; p={fleet.dmarc.policy}" + (f"; rua={fleet.dmarc.rua}" if fleet.dmarc.rua else "")
    for domain in domains:
        records.append(_record(f"_dmarc.{domain}", "TXT", dmarc, f"DMARC policy for {domain}"))
    return records


def split_txt(value: str) -> list[str]:
    """Cut a TXT value into character-strings of at most 255 bytes (values here are ASCII)."""
    data = value.encode()
    return [data[i:i + TXT_CHUNK].decode() for i in range(0, len(data), TXT_CHUNK)] or [""]


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def zone_line(record: dict) -> str:
    value = record["value"]
    if record["type"] == "TXT":
        value = " ".join(_quoted(part) for part in split_txt(value))
    elif record["type"] == "PTR":
        value = f"{value}."
    return f"{record['name']}.\t{record['ttl']}\tIN\t{record['type']}\t{value}"


def zone_file(records: list[dict]) -> str:
    header = "; mailfleet: records to publish, in BIND syntax with absolute names.\n"
    return header + "".join(f"{zone_line(r)}\n" for r in records)


def key_names(keys: tuple[DkimKey, ...]) -> list[str]:
    return [key.record_name for key in keys]
