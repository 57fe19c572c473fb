"""The rules of single values: each config value's type, as a reusable annotated type.

A rule raises `problem(...)`, a pydantic error in the project's words that parse_config reports
with the key path; `at` extends that path when a rule of one object names one of its fields.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StrictStr, WithJsonSchema
from pydantic_core import PydanticCustomError

from mailfleet import spf

NAMESPACE = "mailfleet"

DKIM_MIN_BITS = 2048
DKIM_MAX_BITS = 4096  # RFC 8301: verifiers need only handle keys up to 4096 bits
DEFAULT_INTERFACE = "ens192"
# The default Postfix instance listens here; no sender instance may take it.
DEFAULT_INSTANCE_ADDRESS = "127.0.0.1"
WIDEST_RELAY_PREFIX = 8  # a relay network wider than this lets a large part of the internet send
CGNAT = ipaddress.IPv4Network("100.64.0.0/10")  # RFC 6598: behind the carrier's NAT
_DOCUMENTATION = [ipaddress.IPv4Network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def problem(message: str, at: str = "") -> PydanticCustomError:
    """A problem in the project's words; `at` extends the key path (".gateway", "[1]")."""
    return PydanticCustomError("mailfleet", "{message}", {"message": message, "at": at})


def kind_of(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def json_schema(**keywords: Any) -> Field:
    return Field(json_schema_extra=keywords)


def rule(check: Callable[[Any], Any], schema: dict[str, Any] | None = None, base: Any = StrictStr) -> Any:
    """A reusable annotated type: `base`, then `check` (which returns the normalized value)."""
    return Annotated[base, AfterValidator(check), Field(json_schema_extra=schema or {})]


def _single_line(value: str) -> str:
    # str.isprintable() is False for every control character (\n, \r, \t, \x00, \x7f, \u2028, ...):
    # one of them in a value breaks main.cf, the signer's tables, a remote script or cloud-init.
    if not value.isprintable():
        raise problem(f"{value!r} contains a control character (e.g. a newline)")
    return value


def _nonempty_line(value: str) -> str:
    _single_line(value)
    if not value.strip():
        raise problem(f"must be a non-empty string, got {value!r}")
    return value


def _pattern(regex: str) -> str:
    """A JSON-schema pattern (ECMA: searched, so anchored here) for a Python fullmatch regex."""
    return f"^(?:{regex})$"


def named(regex: str, message: str) -> Any:
    """A name of one line that matches `regex` whole; `message` says what it is not ({value})."""
    compiled = re.compile(regex)

    def check(value: str) -> str:
        _single_line(value)
        if not compiled.fullmatch(value):
            raise problem(message.format(value=repr(value)))
        return value
    return rule(check, {"pattern": _pattern(regex)})


NO_CONTROL = r"^[^\u0000-\u001f\u007f]+$"
SingleLine = rule(_nonempty_line, {"pattern": NO_CONTROL})
"""A non-empty string on one line, without control characters anywhere."""

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_TOP_LABEL = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_FQDN = re.compile(rf"(?:{_LABEL}\.)+{_TOP_LABEL}")
_DNS_LABEL = re.compile(_LABEL)


def _dns_name(regex: re.Pattern) -> Callable[[str], str]:
    def check(value: str) -> str:
        _single_line(value)
        name = value.lower().removesuffix(".")
        if len(name) > 253 or not regex.fullmatch(name):
            raise problem(f"{value!r} is not a fully qualified domain name")
        return name
    return check


DnsLabel = named(_LABEL, "{value} is not a DNS label (lowercase letters, digits and '-', at most 63)")

DnsName = rule(_dns_name(_FQDN), {"pattern": _pattern(rf"(?:{_LABEL}\.)+{_TOP_LABEL}\.?").replace("a-z", "a-zA-Z"),
                        "maxLength": 254})
"""A fully qualified domain name, lowercased, without the final dot."""


# The DNS blocklists status checks by default: the ones receivers of bulk mail query most.
# zen.spamhaus.org (SBL, XBL, PBL; big receivers refuse mail from a listed IP) answers only a
# resolver of your own (not a public one) at low, non-commercial volume, else its registered
# service; bl.spamcop.net (user reports, expires in a day) answers anyone; b.barracudacentral.org
# (Barracuda appliances' list) answers only resolvers registered with Barracuda, free.
DEFAULT_BLOCKLISTS = ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")


_TXT_NAME = re.compile(rf"(?:_?{_LABEL}\.)+{_TOP_LABEL}")


TxtName = rule(_dns_name(_TXT_NAME), {"pattern": _pattern(_TXT_NAME.pattern + r"\.?").replace("a-z", "a-zA-Z"),
                            "maxLength": 254})
"""A DNS name for a TXT record: like DnsName, and its labels may start with '_' (_spf.example.com)."""


Selector = named(rf"{_LABEL}(?:\.{_LABEL})*", "{value} is not a DNS selector (lowercase labels separated by dots)")
InstanceName = named(r"postfix-[a-z0-9][a-z0-9-]*",  # postmulti's own rule
                     "{value} must match ^postfix-[a-z0-9][a-z0-9-]*$ (postmulti's rule)")
InterfaceName = named(r"[A-Za-z0-9_.:-]{1,15}", "{value} is not a network interface name")
UnixUser = named(r"[a-z_][a-z0-9_-]{0,31}", "{value} is not a user name")
TenantName = named(r"[a-z0-9][a-z0-9._-]{0,63}", "{value} must be 1 to 64 lowercase letters, digits, '.', '_' or '-' "
                   "(it is the SASL login name)")
GroupName = named(r"[a-z][a-z0-9]{0,19}", "{value} is not a group name (a lowercase letter, then up to 19 letters or "
                  "digits): it names a Postfix transport and its parameters")

_IPV4_PATTERN = _pattern(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                         r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def _ipv4(value: Any) -> ipaddress.IPv4Address:
    # Only dotted text: ipaddress would take an integer ("IP" 167772161), a YAML typo's result.
    if not isinstance(value, str):
        raise problem(f"{value!r} is not an IPv4 address (write it dotted, e.g. 192.0.2.43)")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise problem(f"{value!r} is not an IPv4 address") from None


def _not_a_host(address: ipaddress.IPv4Address) -> bool:
    # is_reserved is 240/4, which holds the limited broadcast 255.255.255.255.
    return address.is_unspecified or address.is_multicast or address.is_reserved or address.is_link_local


def _host_ipv4(what: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        address = _ipv4(value)
        if _not_a_host(address):
            raise problem(f"{address} {what}")
        return str(address)
    return check


_unicast_ipv4 = _host_ipv4("is not a unicast host address")
UnicastIPv4 = rule(_unicast_ipv4, {"type": "string", "pattern": _IPV4_PATTERN}, base=Any)
"""A dotted IPv4 address of one host: not 0.0.0.0, multicast, 240/4, link-local or broadcast."""
SenderIPv4 = rule(_host_ipv4("cannot be a sender address"), {"type": "string", "pattern": _IPV4_PATTERN}, base=Any)
"""An address mail can be sent from (and so listened on)."""


def _instance_ip(value: str) -> str:
    if value == DEFAULT_INSTANCE_ADDRESS:
        raise problem(f"{value} is reserved for the default (local-only) Postfix instance")
    return value


InstanceIp = Annotated[SenderIPv4, AfterValidator(_instance_ip)]


def is_private(address: str) -> bool:
    """RFC 1918, CGNAT (RFC 6598) or loopback: an address receivers never see as the client."""
    ip = ipaddress.IPv4Address(address)
    return ip in CGNAT or ip.is_loopback or (ip.is_private and not any(ip in n for n in _DOCUMENTATION))


def _public_ipv4(value: str) -> str:
    # Documentation networks (RFC 5737) stand for public addresses in examples and tests.
    if is_private(value):
        raise problem(f"{value} is not a public address (private, CGNAT or loopback): publicIp is "
                       "the address receivers see")
    return value


PublicIPv4 = Annotated[SenderIPv4, AfterValidator(_public_ipv4)]


def _relay_network(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"{value!r} is not an IPv4 CIDR")
    _single_line(value)
    try:
        network = ipaddress.IPv4Network(value, strict=True)
    except ValueError as error:
        hint = ""
        try:
            hint = f"; did you mean {ipaddress.IPv4Network(value, strict=False)}?"
        except ValueError:
            pass
        raise problem(f"{value!r} is not an IPv4 CIDR ({error}){hint}") from None
    if network.prefixlen == 0:
        raise problem(f"{value!r} opens the relay to the whole internet: anyone could send, signed, "
                       "from the fleet's IPs")
    if network.prefixlen < WIDEST_RELAY_PREFIX:
        raise problem(f"{value!r} is wider than /{WIDEST_RELAY_PREFIX}: relay networks are your own "
                       "clients, not a part of the internet")
    return str(network)


RelayNetwork = rule(_relay_network, {"type": "string", "pattern": _pattern(
    r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}/(?:[89]|[12][0-9]|3[0-2])")}, base=Any)

def _metrics_network(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"{value!r} is not a CIDR (e.g. 192.0.2.0/24 or 2001:db8::/48)")
    try:
        network = ipaddress.ip_network(value)
    except ValueError as error:
        hint = ""
        try:
            hint = f"; did you mean {ipaddress.ip_network(value, strict=False)}?"
        except ValueError:
            pass
        raise problem(f"{value!r} is not a CIDR ({error}){hint}") from None
    if network.prefixlen == 0:
        raise problem(f"{value!r} would let anyone read the fleet's metrics: list your Prometheus servers' networks")
    return str(network)


# The clients allowed to scrape the hosts' metrics (mailfleet/metrics.py), IPv4 or IPv6.
MetricsNetwork = rule(_metrics_network, {"type": "string", "pattern": _pattern(
    r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*/[0-9]{1,3})")}, base=Any)

_POSTFIX_TIME = re.compile(r"[1-9][0-9]*[smhdw]?")


def _postfix_time(value: Any) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _POSTFIX_TIME.fullmatch(text):
        raise problem(f"{value!r} is not a positive Postfix time (a number with an optional s, m, h, d or w)")
    return text


PostfixTime = Annotated[Any, AfterValidator(_postfix_time), WithJsonSchema(
    {"anyOf": [{"type": "string", "pattern": _pattern(_POSTFIX_TIME.pattern)}, {"type": "integer", "minimum": 1}]})]


def int_range(low: int, high: int, why: str = "") -> Any:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise problem(why.format(value=value) if why else f"{value} is out of range ({low} to {high})")
        return value
    return Annotated[int, BeforeValidator(_strict_int), AfterValidator(check),
                     Field(json_schema_extra={"minimum": low, "maximum": high})]


def _strict_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise problem(f"must be an integer, got {kind_of(value)}")
    return value


def non_empty(what: str) -> Any:
    """A list that must hold at least one item; `what` says what for the message."""
    def check(items: Any) -> Any:
        if not items:
            raise problem(f"must list at least one {what}")
        return items
    return AfterValidator(check)


_MAIL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")


def _mail_name(value: str) -> str:
    if not _MAIL_NAME.fullmatch(value):
        raise problem(f"{value!r} must be 1 to 64 letters, digits, spaces, '.', '_' or '-'")
    return value


MailName = rule(_mail_name, {"pattern": _pattern(_MAIL_NAME.pattern)})


_SSH_PUBLIC_KEY = re.compile(r"(?:ssh-(?:ed25519|rsa)|ecdsa-sha2-nistp(?:256|384|521)|sk-\S+@openssh\.com) "
                             r"[A-Za-z0-9+/]+=*(?: [^\x00-\x1f\x7f]*)?")


def _ssh_public_key(value: str) -> str:
    if not _SSH_PUBLIC_KEY.fullmatch(value):
        raise problem("is not an OpenSSH public key line (e.g. 'ssh-ed25519 AAAA... user@host')")
    return value


SshPublicKey = rule(_ssh_public_key, {"pattern": _pattern(_SSH_PUBLIC_KEY.pattern)})


def _host_address(value: str) -> str:
    _single_line(value)
    try:
        return _unicast_ipv4(value)
    except PydanticCustomError:
        pass
    if _FQDN.fullmatch(value.lower()) or _DNS_LABEL.fullmatch(value.lower()):
        return value
    raise problem(f"{value!r} is neither an IPv4 address nor a DNS name")


HostAddress = rule(_host_address, {"pattern": NO_CONTROL})


_RELAYHOST = re.compile(r"(?:\[(?P<bracketed>[^\]]+)\]|(?P<plain>[^:\[\]]+))(?::(?P<port>[0-9]+))?")


def _relayhost(value: str) -> str:
    _single_line(value)
    match = _RELAYHOST.fullmatch(value)
    host = match and (match["bracketed"] or match["plain"])
    if not host or not (_IPV4.fullmatch(host) or _FQDN.fullmatch(host.lower()) or _DNS_LABEL.fullmatch(host.lower())):
        raise problem(f"{value!r} is not a relay host: expected host, [host] or [host]:port")
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        raise problem(f"port {match['port']} is out of range (1 to 65535)")
    return value


RelayHost = rule(_relayhost, {"pattern": NO_CONTROL})


_IPV4 = re.compile(_IPV4_PATTERN[1:-1])
_EMAIL = re.compile(rf"[^@\s;,!]+@{_FQDN.pattern}")


def _mailto(value: str) -> str:
    _single_line(value)
    address = value.removeprefix("mailto:")
    if not _EMAIL.fullmatch(address.lower()):
        raise problem(f"{value!r} is not a mail address (mailto:reports@example.com)")
    return f"mailto:{address}"


MailTo = rule(_mailto, {"pattern": NO_CONTROL})


def _pem(marker: str, what: str) -> Any:
    def check(value: str) -> str:
        # Never echo the value: it may be a secret.
        if any(not (c.isprintable() or c in "\r\n") for c in value):
            raise problem("contains a control character other than line breaks")
        if "-----BEGIN " not in value or marker not in value:
            raise problem(f"is not {what} (no '-----BEGIN ...{marker}' block)")
        return value
    return Annotated[StrictStr, AfterValidator(check)]


CertificatePem = _pem("CERTIFICATE-----", "PEM text")
PrivateKeyPem = _pem("PRIVATE KEY-----", "PEM text")
SshPrivateKeyPem = _pem("PRIVATE KEY-----", "a PEM or OpenSSH private key")


def _spf_term(value: str) -> str:
    _single_line(value)
    try:
        return spf.check_term(value)
    except ValueError as error:
        raise problem(str(error)) from None


SpfTerm = rule(_spf_term, {"pattern": _pattern(r"[^\s]+")})


TENANT_PASSWORD_MIN_LENGTH = 16
TENANT_PASSWORD_MIN_DISTINCT = 6


def _tenant_password(value: str) -> str:
    # Never echo the value: it is a secret.
    if any(not c.isprintable() for c in value):
        raise problem("contains a control character")
    if not value:
        raise problem(f"is empty; a tenant password needs at least {TENANT_PASSWORD_MIN_LENGTH} characters")
    if len(value) < TENANT_PASSWORD_MIN_LENGTH:
        raise problem(f"is {len(value)} characters long; a tenant password needs at least "
                       f"{TENANT_PASSWORD_MIN_LENGTH} (e.g. `openssl rand -base64 24`)")
    if len(set(value)) < TENANT_PASSWORD_MIN_DISTINCT:
        raise problem(f"is weak: it has fewer than {TENANT_PASSWORD_MIN_DISTINCT} different characters")
    return value


TenantPassword = rule(_tenant_password, {"minLength": TENANT_PASSWORD_MIN_LENGTH})


def _webhook_url(value: str) -> str:
    # The records name recipients: plain HTTP only to a forwarder on the host itself (loopback).
    _single_line(value)
    try:
        url = urllib.parse.urlsplit(value)
        port = url.port
    except ValueError as error:
        raise problem(f"{value!r} is not a URL ({error})") from None
    if url.scheme not in ("https", "http") or not url.hostname or any(c.isspace() for c in value):
        raise problem(f"{value!r} is not an https:// URL")
    if url.username is not None or url.password is not None:
        raise problem("holds credentials (user:password@): the URL is not secret; sign with secret instead")
    if url.fragment or value.endswith("#"):
        raise problem(f"{value!r} has a #fragment, which is never sent")
    if url.scheme == "http" and not _is_loopback(url.hostname):
        raise problem(f"{value!r} is plain HTTP to another machine: the records hold recipient addresses; "
                       "use https://, or http:// to a loopback address only (a forwarder on the host)")
    if port == 0:
        raise problem("port 0 is out of range (1 to 65535)")
    return value


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


WebhookUrl = rule(_webhook_url, {"pattern": _pattern(r"https?://[^\u0000-\u0020\u007f]+")})
WEBHOOK_SECRET_MIN_LENGTH = 16


def _webhook_secret(value: str) -> str:
    # Never echo the value: it is a secret.
    if any(not c.isprintable() for c in value):
        raise problem("contains a control character")
    if len(value) < WEBHOOK_SECRET_MIN_LENGTH:
        raise problem(f"is {len(value)} characters long; a signing secret needs at least "
                       f"{WEBHOOK_SECRET_MIN_LENGTH} (e.g. `openssl rand -hex 32`)")
    return value


WebhookSecret = rule(_webhook_secret, {"minLength": WEBHOOK_SECRET_MIN_LENGTH})


# Dovecot's strong password schemes and the shape of their hashes; other schemes Dovecot knows are
# fast hashes (or clear text) that a stolen passwd-file gives up quickly.
PASSWORD_SCHEMES = {
    "ARGON2ID": re.compile(r"\$argon2id\$v=19\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"),
    "ARGON2I": re.compile(r"\$argon2i\$v=19\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"),
    "SHA512-CRYPT": re.compile(r"\$6\$(?:rounds=[0-9]+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}"),
    "BLF-CRYPT": re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}"),
}
_WEAK_SCHEMES = {"PLAIN", "CLEAR", "CLEARTEXT", "PLAIN-TRUNC", "CRAM-MD5", "DIGEST-MD5", "MD5", "PLAIN-MD5", "LDAP-MD5",
                 "SMD5", "MD5-CRYPT", "CRYPT", "DES-CRYPT", "SHA", "SHA1", "SSHA", "SHA256", "SSHA256", "SHA512",
                 "SSHA512", "SHA256-CRYPT", "PBKDF2", "SCRAM-SHA-1", "SCRAM-SHA-256", "LANMAN", "NTLM", "OTP", "RPA",
                 "SKEY", "PLAIN-MD4"}
_SCHEMED = re.compile(r"\{([A-Za-z0-9.-]+)\}(.*)")


def _password_hash(value: str) -> str:
    # Not echoed either: a hash is what an attacker would want to crack offline.
    match = _SCHEMED.fullmatch(value)
    known = ", ".join(f"{{{s}}}" for s in PASSWORD_SCHEMES)
    if not match:
        raise problem(f"is not a Dovecot password hash: expected {{SCHEME}}hash with a scheme of {known} "
                       "(e.g. from `doveadm pw -s ARGON2ID`)")
    scheme = match[1].upper()
    if scheme in _WEAK_SCHEMES:
        raise problem(f"{{{match[1]}}} is a weak scheme: use one of {known}")
    if scheme not in PASSWORD_SCHEMES:
        raise problem(f"{{{match[1]}}} is an unknown scheme: use one of {known}")
    if not PASSWORD_SCHEMES[scheme].fullmatch(match[2]):
        raise problem(f"is not a valid {{{scheme}}} hash")
    return f"{{{scheme}}}{match[2]}"


PasswordHash = rule(_password_hash, {"pattern": _pattern(r"\{[A-Za-z0-9.-]+\}.+")})


def _regex(value: str) -> str:
    _single_line(value)
    try:
        re.compile(value)
    except re.error as error:
        raise problem(f"{value!r} is not a valid regular expression ({error})") from None
    return value


Regex = rule(_regex, {"pattern": NO_CONTROL})
Limit = int_range(1, 1_000_000, "{value} is not a limit: it must be a positive integer")
Budget = int_range(1, 100_000_000, "{value} is not a budget: it must be a positive number of messages a day")

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _date(value: str) -> str:
    if not _DATE.fullmatch(value):
        raise problem(f"{value!r} is not a date (YYYY-MM-DD)")
    try:
        datetime.date.fromisoformat(value)
    except ValueError as error:
        raise problem(f"{value!r} is not a date ({error})") from None
    return value


IsoDate = rule(_date, {"pattern": _pattern(_DATE.pattern), "format": "date"})


def growing(days: tuple[int, ...]) -> tuple[int, ...]:
    """A warm-up plan's days: each allows more than the day before."""
    for n in range(1, len(days)):
        if days[n] <= days[n - 1]:
            raise problem(f"day {n + 1} ({days[n]}) is not more than day {n} ({days[n - 1]}): "
                          "a warm-up plan grows day by day", at=f"[{n}]")
    return days


# Provided certificates

def key_matches_certificate(cert_pem: str, key_pem: str) -> tuple[str, str] | None:
    """(message, key) when the provided key does not belong to the first certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificates(cert_pem.encode())[0]
    except ValueError as error:
        return f"is not a PEM certificate ({error})", ".certPem"
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        return "is not an unencrypted PEM private key", ".keyPem"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != certificate.public_key().public_bytes(der, spki):
        return ("does not belong to the certificate in certPem (their public keys differ): 587 and 465 "
                f"would fail every TLS handshake; certPem is for {certificate_names(certificate) or 'no name'}"), ".keyPem"
    return None


def certificate_names(certificate) -> list[str]:
    from cryptography import x509

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [n.lower() for n in names.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        return [a.value.lower() for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]


def certificate_covers(names: Iterable[str], hostname: str) -> bool:
    """RFC 6125: an exact name, or a wildcard for exactly one leftmost label."""
    hostname = hostname.lower()
    for name in names:
        if name == hostname:
            return True
        if name.startswith("*.") and "." in hostname and hostname.split(".", 1)[1] == name[2:]:
            return True
    return False
