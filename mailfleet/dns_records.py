"""The DNS records a fleet needs, as the stack outputs `dnsRecords`, `dkimRecords` and `zoneFile`.

Pure functions of the validated configuration and the DKIM public keys (PEM text).
"""

from __future__ import annotations

import base64
import ipaddress

from mailfleet import spf
from mailfleet.config import Fleet

TTL = 3600
TXT_CHUNK = 255  # a DNS character-string holds at most 255 bytes


# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE, AlgorithmIdentifier
# 1.3.101.112, BIT STRING of 33 bytes; the 32 raw key bytes follow.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


def dkim_value(public_key_pem: str, algorithm: str | None = None) -> str:
    """The DKIM TXT value of a public key (PEM SubjectPublicKeyInfo, as pulumi-tls gives it).

    RSA: `p=` is the base64 DER SubjectPublicKeyInfo, which is exactly the body of the PEM.
    Ed25519 (RFC 8463): `p=` is the raw 32-byte key, the last 32 bytes of that DER. The
    algorithm is read from the key itself; `algorithm` ("rsa" or "ed25519"), when given, must agree.
    """
    lines = [line.strip() for line in public_key_pem.strip().splitlines()]
    if not lines or lines[0] != "-----BEGIN PUBLIC KEY-----" or lines[-1] != "-----END PUBLIC KEY-----":
        raise ValueError("expected a PEM 'PUBLIC KEY' (SubjectPublicKeyInfo)")
    body = "".join(lines[1:-1])
    der = base64.b64decode(body, validate=True)
    found = "ed25519" if len(der) == 44 and der.startswith(_ED25519_SPKI_PREFIX) else "rsa"
    if algorithm is not None and algorithm != found:
        raise ValueError(f"expected an {algorithm} public key, got {found}")
    if found == "ed25519":
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(der[-32:]).decode()}"
    return f"v=DKIM1; k=rsa; p={body}"


def dkim_records(fleet: Fleet, public_keys: dict[str, str]) -> dict[str, str]:
    """`public_keys` maps each key's record name (selector._domainkey.domain) to its PEM."""
    return {key.record_name: dkim_value(public_keys[key.record_name], key.algorithm) for key in fleet.dkim}


def reverse_name(ip: str) -> str:
    return ipaddress.IPv4Address(ip).reverse_pointer


def _record(name: str, type_: str, value: str, purpose: str) -> dict:
    return {"name": name, "type": type_, "value": value, "ttl": TTL, "purpose": purpose}


def fleet_spf(fleet: Fleet, extra: tuple[str, ...] = ()) -> str:
    """The fleet's SPF record: every instance's public address, then `extra` terms, then -all."""
    return spf.record([instance.public_address for _, instance in fleet.instances], extra)


def dns_records(fleet: Fleet, public_keys: dict[str, str]) -> list[dict]:
    """Every address here is what receivers see: an instance's publicIp where it has one."""
    records = []
    for host, instance in fleet.instances:
        address = instance.public_address
        records.append(_record(instance.hostname, "A", address, f"address of instance {instance.name} on {host.name}"))
        records.append(_record(reverse_name(address), "PTR", instance.hostname,
                               f"reverse DNS of {address}: must name the HELO hostname"))
        records.append(_record(instance.hostname, "TXT", "v=spf1 a -all", f"SPF for the HELO identity of {instance.name}"))
    domains = list(dict.fromkeys(key.domain for key in fleet.dkim))
    for domain in domains:
        extra = fleet.spf_extra.get(domain, ())
        purpose = f"SPF: the fleet's IPs may send for {domain}" + (" (and the senders of spfExtra)" if extra else "")
        records.append(_record(domain, "TXT", fleet_spf(fleet, extra), purpose))
    if fleet.spf_shared:
        records.append(_record(fleet.spf_shared, "TXT", fleet_spf(fleet),
                               "SPF of the fleet alone, for domains managed elsewhere to include"))
    for key in fleet.dkim:
        records.append(_record(key.record_name, "TXT", dkim_value(public_keys[key.record_name]),
                               f"DKIM public key, selector {key.selector}"))
    dmarc = f"v=DMARC1; p={fleet.dmarc.policy}" + (f"; rua={fleet.dmarc.rua}" if fleet.dmarc.rua else "")
    for domain in domains:
        records.append(_record(f"_dmarc.{domain}", "TXT", dmarc, f"DMARC policy for {domain}"))
    return records


def split_txt(value: str) -> list[str]:
    """Split TXT text into character-strings of at most 255 bytes (UTF-8), never inside a
    character. Receivers join them back without separators, so the split points do not matter."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for char in value:
        width = len(char.encode("utf-8"))
        if size + width > TXT_CHUNK:
            chunks.append("".join(current))
            current, size = [], 0
        current.append(char)
        size += width
    chunks.append("".join(current))
    return chunks


def quote_txt_chunk(chunk: str) -> str:
    """One character-string in zone-file presentation format: quoted, with `"` and `\\` escaped
    and bytes outside printable ASCII as \\DDD, which BIND and nsupdate both read."""
    out = []
    for byte in chunk.encode("utf-8"):
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


def presentation_value(record: dict) -> str:
    """The RDATA as zone files and nsupdate write it."""
    if record["type"] == "TXT":
        return " ".join(quote_txt_chunk(chunk) for chunk in split_txt(record["value"]))
    if record["type"] == "PTR":
        return absolute(record["value"])
    return record["value"]


def zone_line(record: dict) -> str:
    return f"{absolute(record['name'])} {record['ttl']} IN {record['type']} {presentation_value(record)}"


def zone_file(records: list[dict]) -> str:
    header = "; mailfleet: records to publish, in BIND syntax with absolute names.\n"
    return header + "".join(f"{zone_line(r)}\n" for r in records)

