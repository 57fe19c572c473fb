"""Read and validate the stack configuration (the `mailfleet:` keys of docs/configuration.md).

`parse_config(raw)` takes the raw config map that Pulumi hands the program (full keys such as
`mailfleet:hosts`; structured values arrive as JSON text) and returns a `Fleet`, or raises
`ConfigError` listing every problem at once, each naming the key path. `fleet_warnings(fleet)`
lists what is allowed but probably wrong. Nothing here knows Pulumi, so the program can stop
before any resource is registered and the rules are tested as a table.

The stack config is a tree of pydantic models (camelCase aliases are the config keys). Checking
takes two passes, so that every problem is reported at once and at its own index:
1. the models: types, the rules of each value (`DnsName`, `SenderIPv4`, `SingleLine`, ...) and
   the rules inside one object (a vSphere host needs `network`);
2. `_relations`: rules across objects (unique names and IPs, an IP inside its host's network,
   SPF terms and lookups), read from the raw values, each value re-checked on its own, so an
   invalid entry elsewhere neither hides a duplicate nor shifts its index.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool,
                      StrictStr, TypeAdapter, ValidationError, WithJsonSchema, model_validator)
from pydantic.alias_generators import to_camel
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


# ---- the rules of single values ------------------------------------------------------------

def _problem(message: str, at: str = "") -> PydanticCustomError:
    """A problem in the project's words; `at` extends the key path (".gateway", "[1]")."""
    return PydanticCustomError("mailfleet", "{message}", {"message": message, "at": at})


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


def _schema(**schema: Any) -> Field:
    return Field(json_schema_extra=schema)


def _rule(check: Callable[[Any], Any], schema: dict[str, Any] | None = None, base: Any = StrictStr) -> Any:
    """A reusable annotated type: `base`, then `check` (which returns the normalized value)."""
    return Annotated[base, AfterValidator(check), Field(json_schema_extra=schema or {})]


def _single_line(value: str) -> str:
    # str.isprintable() is False for every control character (\n, \r, \t, \x00, \x7f, \u2028, ...):
    # one of them in a value breaks main.cf, the signer's tables, a remote script or cloud-init.
    if not value.isprintable():
        raise _problem(f"{value!r} contains a control character (e.g. a newline)")
    return value


def _nonempty_line(value: str) -> str:
    _single_line(value)
    if not value.strip():
        raise _problem(f"must be a non-empty string, got {value!r}")
    return value


_NO_CONTROL = r"^[^\u0000-\u001f\u007f]+$"
SingleLine = _rule(_nonempty_line, {"pattern": _NO_CONTROL})
"""A non-empty string on one line, without control characters anywhere."""

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_TOP_LABEL = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
_FQDN = re.compile(rf"(?:{_LABEL}\.)+{_TOP_LABEL}")
_DNS_LABEL = re.compile(_LABEL)


def _fqdn(value: str) -> str:
    _single_line(value)
    name = value.lower().removesuffix(".")
    if len(name) > 253 or not _FQDN.fullmatch(name):
        raise _problem(f"{value!r} is not a fully qualified domain name")
    return name


def _pattern(regex: str) -> str:
    """A JSON-schema pattern (ECMA: searched, so anchored here) for a Python fullmatch regex."""
    return f"^(?:{regex})$"


DnsName = _rule(_fqdn, {"pattern": _pattern(rf"(?:{_LABEL}\.)+{_TOP_LABEL}\.?").replace("a-z", "a-zA-Z"),
                        "maxLength": 254})
"""A fully qualified domain name, lowercased, without the final dot."""


_TXT_NAME = re.compile(rf"(?:_?{_LABEL}\.)+{_TOP_LABEL}")


def _txt_name(value: str) -> str:
    _single_line(value)
    name = value.lower().removesuffix(".")
    if len(name) > 253 or not _TXT_NAME.fullmatch(name):
        raise _problem(f"{value!r} is not a fully qualified domain name")
    return name


TxtName = _rule(_txt_name, {"pattern": _pattern(_TXT_NAME.pattern + r"\.?").replace("a-z", "a-zA-Z"),
                            "maxLength": 254})
"""A DNS name for a TXT record: like DnsName, and its labels may start with '_' (_spf.example.com)."""


def _dns_label(value: str) -> str:
    _single_line(value)
    if not _DNS_LABEL.fullmatch(value):
        raise _problem(f"{value!r} is not a DNS label (lowercase letters, digits and '-', at most 63)")
    return value


DnsLabel = _rule(_dns_label, {"pattern": _pattern(_LABEL)})

_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def _selector(value: str) -> str:
    _single_line(value)
    if not _SELECTOR.fullmatch(value):
        raise _problem(f"{value!r} is not a DNS selector (lowercase labels separated by dots)")
    return value


Selector = _rule(_selector, {"pattern": _pattern(_SELECTOR.pattern)})

_INSTANCE_NAME = re.compile(r"postfix-[a-z0-9][a-z0-9-]*")  # postmulti's own rule


def _instance_name(value: str) -> str:
    _single_line(value)
    if not _INSTANCE_NAME.fullmatch(value):
        raise _problem(f"{value!r} must match ^postfix-[a-z0-9][a-z0-9-]*$ (postmulti's rule)")
    return value


InstanceName = _rule(_instance_name, {"pattern": _pattern(_INSTANCE_NAME.pattern)})

_INTERFACE = re.compile(r"[A-Za-z0-9_.:-]{1,15}")


def _interface(value: str) -> str:
    _single_line(value)
    if not _INTERFACE.fullmatch(value):
        raise _problem(f"{value!r} is not a network interface name")
    return value


InterfaceName = _rule(_interface, {"pattern": _pattern(_INTERFACE.pattern)})

_IPV4_PATTERN = _pattern(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                         r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")


def _ipv4(value: Any) -> ipaddress.IPv4Address:
    # Only dotted text: ipaddress would take an integer ("IP" 167772161), a YAML typo's result.
    if not isinstance(value, str):
        raise _problem(f"{value!r} is not an IPv4 address (write it dotted, e.g. 192.0.2.43)")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise _problem(f"{value!r} is not an IPv4 address") from None


def _not_a_host(address: ipaddress.IPv4Address) -> bool:
    # is_reserved is 240/4, which holds the limited broadcast 255.255.255.255.
    return address.is_unspecified or address.is_multicast or address.is_reserved or address.is_link_local


def _unicast_ipv4(value: Any) -> str:
    address = _ipv4(value)
    if _not_a_host(address):
        raise _problem(f"{address} is not a unicast host address")
    return str(address)


UnicastIPv4 = _rule(_unicast_ipv4, {"type": "string", "pattern": _IPV4_PATTERN}, base=Any)
"""A dotted IPv4 address of one host: not 0.0.0.0, multicast, 240/4, link-local or broadcast."""


def _sender_ipv4(value: Any) -> str:
    address = _ipv4(value)
    if _not_a_host(address):
        raise _problem(f"{address} cannot be a sender address")
    return str(address)


SenderIPv4 = _rule(_sender_ipv4, {"type": "string", "pattern": _IPV4_PATTERN}, base=Any)
"""An address mail can be sent from (and so listened on)."""


def _instance_ip(value: str) -> str:
    if value == DEFAULT_INSTANCE_ADDRESS:
        raise _problem(f"{value} is reserved for the default (local-only) Postfix instance")
    return value


InstanceIp = Annotated[SenderIPv4, AfterValidator(_instance_ip)]


def is_private(address: str) -> bool:
    """RFC 1918, CGNAT (RFC 6598) or loopback: an address receivers never see as the client."""
    ip = ipaddress.IPv4Address(address)
    return ip in CGNAT or ip.is_loopback or (ip.is_private and not any(ip in n for n in _DOCUMENTATION))


def _public_ipv4(value: str) -> str:
    # Documentation networks (RFC 5737) stand for public addresses in examples and tests.
    if is_private(value):
        raise _problem(f"{value} is not a public address (private, CGNAT or loopback): publicIp is "
                       "the address receivers see")
    return value


PublicIPv4 = Annotated[SenderIPv4, AfterValidator(_public_ipv4)]


def _relay_network(value: Any) -> str:
    if not isinstance(value, str):
        raise _problem(f"{value!r} is not an IPv4 CIDR")
    _single_line(value)
    try:
        network = ipaddress.IPv4Network(value, strict=True)
    except ValueError as error:
        hint = ""
        try:
            hint = f"; did you mean {ipaddress.IPv4Network(value, strict=False)}?"
        except ValueError:
            pass
        raise _problem(f"{value!r} is not an IPv4 CIDR ({error}){hint}") from None
    if network.prefixlen == 0:
        raise _problem(f"{value!r} opens the relay to the whole internet: anyone could send, signed, "
                       "from the fleet's IPs")
    if network.prefixlen < WIDEST_RELAY_PREFIX:
        raise _problem(f"{value!r} is wider than /{WIDEST_RELAY_PREFIX}: relay networks are your own "
                       "clients, not a part of the internet")
    return str(network)


RelayNetwork = _rule(_relay_network, {"type": "string", "pattern": _pattern(
    r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}/(?:[89]|[12][0-9]|3[0-2])")}, base=Any)

_POSTFIX_TIME = re.compile(r"[1-9][0-9]*[smhdw]?")


def _postfix_time(value: Any) -> str:
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _POSTFIX_TIME.fullmatch(text):
        raise _problem(f"{value!r} is not a positive Postfix time (a number with an optional s, m, h, d or w)")
    return text


PostfixTime = Annotated[Any, AfterValidator(_postfix_time), WithJsonSchema(
    {"anyOf": [{"type": "string", "pattern": _pattern(_POSTFIX_TIME.pattern)}, {"type": "integer", "minimum": 1}]})]


def int_range(low: int, high: int, why: str = "") -> Any:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise _problem(why.format(value=value) if why else f"{value} is out of range ({low} to {high})")
        return value
    return Annotated[int, BeforeValidator(_strict_int), AfterValidator(check),
                     Field(json_schema_extra={"minimum": low, "maximum": high})]


def _strict_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _problem(f"must be an integer, got {_kind(value)}")
    return value


def non_empty(what: str) -> Any:
    """A list that must hold at least one item; `what` says what for the message."""
    def check(items: Any) -> Any:
        if not items:
            raise _problem(f"must list at least one {what}")
        return items
    return AfterValidator(check)


_MAIL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")


def _mail_name(value: str) -> str:
    if not _MAIL_NAME.fullmatch(value):
        raise _problem(f"{value!r} must be 1 to 64 letters, digits, spaces, '.', '_' or '-'")
    return value


_SSH_PUBLIC_KEY = re.compile(r"(?:ssh-(?:ed25519|rsa)|ecdsa-sha2-nistp(?:256|384|521)|sk-\S+@openssh\.com) "
                             r"[A-Za-z0-9+/]+=*(?: [^\x00-\x1f\x7f]*)?")


def _ssh_public_key(value: str) -> str:
    if not _SSH_PUBLIC_KEY.fullmatch(value):
        raise _problem("is not an OpenSSH public key line (e.g. 'ssh-ed25519 AAAA... user@host')")
    return value


_UNIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _unix_user(value: str) -> str:
    _single_line(value)
    if not _UNIX_USER.fullmatch(value):
        raise _problem(f"{value!r} is not a user name")
    return value


def _host_address(value: str) -> str:
    _single_line(value)
    try:
        return _unicast_ipv4(value)
    except PydanticCustomError:
        pass
    if _FQDN.fullmatch(value.lower()) or _DNS_LABEL.fullmatch(value.lower()):
        return value
    raise _problem(f"{value!r} is neither an IPv4 address nor a DNS name")


_RELAYHOST = re.compile(r"(?:\[(?P<bracketed>[^\]]+)\]|(?P<plain>[^:\[\]]+))(?::(?P<port>[0-9]+))?")


def _relayhost(value: str) -> str:
    _single_line(value)
    match = _RELAYHOST.fullmatch(value)
    host = match and (match["bracketed"] or match["plain"])
    if not host or not (_IPV4.fullmatch(host) or _FQDN.fullmatch(host.lower()) or _DNS_LABEL.fullmatch(host.lower())):
        raise _problem(f"{value!r} is not a relay host: expected host, [host] or [host]:port")
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        raise _problem(f"port {match['port']} is out of range (1 to 65535)")
    return value


_IPV4 = re.compile(_IPV4_PATTERN[1:-1])
_EMAIL = re.compile(rf"[^@\s;,!]+@{_FQDN.pattern}")


def _mailto(value: str) -> str:
    _single_line(value)
    address = value.removeprefix("mailto:")
    if not _EMAIL.fullmatch(address.lower()):
        raise _problem(f"{value!r} is not a mail address (mailto:reports@example.com)")
    return f"mailto:{address}"


def _pem(marker: str, what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        # Never echo the value: it may be a secret.
        if any(not (c.isprintable() or c in "\r\n") for c in value):
            raise _problem("contains a control character other than line breaks")
        if f"-----BEGIN " not in value or marker not in value:
            raise _problem(f"is not {what} (no '-----BEGIN ...{marker}' block)")
        return value
    return check


def _spf_term(value: str) -> str:
    _single_line(value)
    try:
        return spf.check_term(value)
    except ValueError as error:
        raise _problem(str(error)) from None


SpfTerm = _rule(_spf_term, {"pattern": _pattern(r"[^\s]+")})


_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _tenant_name(value: str) -> str:
    _single_line(value)
    if not _TENANT_NAME.fullmatch(value):
        raise _problem(f"{value!r} must be 1 to 64 lowercase letters, digits, '.', '_' or '-' (it is the SASL "
                       "login name)")
    return value


TenantName = _rule(_tenant_name, {"pattern": _pattern(_TENANT_NAME.pattern)})

TENANT_PASSWORD_MIN_LENGTH = 16
TENANT_PASSWORD_MIN_DISTINCT = 6


def _tenant_password(value: str) -> str:
    # Never echo the value: it is a secret.
    if any(not c.isprintable() for c in value):
        raise _problem("contains a control character")
    if not value:
        raise _problem(f"is empty; a tenant password needs at least {TENANT_PASSWORD_MIN_LENGTH} characters")
    if len(value) < TENANT_PASSWORD_MIN_LENGTH:
        raise _problem(f"is {len(value)} characters long; a tenant password needs at least "
                       f"{TENANT_PASSWORD_MIN_LENGTH} (e.g. `openssl rand -base64 24`)")
    if len(set(value)) < TENANT_PASSWORD_MIN_DISTINCT:
        raise _problem(f"is weak: it has fewer than {TENANT_PASSWORD_MIN_DISTINCT} different characters")
    return value


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
        raise _problem(f"is not a Dovecot password hash: expected {{SCHEME}}hash with a scheme of {known} "
                       "(e.g. from `doveadm pw -s ARGON2ID`)")
    scheme = match[1].upper()
    if scheme in _WEAK_SCHEMES:
        raise _problem(f"{{{match[1]}}} is a weak scheme: use one of {known}")
    if scheme not in PASSWORD_SCHEMES:
        raise _problem(f"{{{match[1]}}} is an unknown scheme: use one of {known}")
    if not PASSWORD_SCHEMES[scheme].fullmatch(match[2]):
        raise _problem(f"is not a valid {{{scheme}}} hash")
    return f"{{{scheme}}}{match[2]}"


# ---- the models ----------------------------------------------------------------------------

class _Model(BaseModel):
    """Frozen (hashable: a DkimKey keys dicts), camelCase keys, unknown keys refused. Code may
    build one with snake_case names too; the stack config may not (parse_config: by_name=False)."""
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel,
                              validate_by_name=True, validate_by_alias=True)


# ---- shaping: per-IP limits by receiver group -----------------------------------------------

_GROUP_NAME = re.compile(r"[a-z][a-z0-9]{0,19}")


def _group_name(value: str) -> str:
    _single_line(value)
    if not _GROUP_NAME.fullmatch(value):
        raise _problem(f"{value!r} is not a group name (a lowercase letter, then up to 19 letters or digits): "
                       "it names a Postfix transport and its parameters")
    return value


GroupName = _rule(_group_name, {"pattern": _pattern(_GROUP_NAME.pattern)})


def _regex(value: str) -> str:
    _single_line(value)
    try:
        re.compile(value)
    except re.error as error:
        raise _problem(f"{value!r} is not a valid regular expression ({error})") from None
    return value


Regex = _rule(_regex, {"pattern": _NO_CONTROL})
Limit = int_range(1, 1_000_000, "{value} is not a limit: it must be a positive integer")


class ShapingLimits(_Model):
    """Per-IP limits for one receiver group; None keeps the value from the level above."""

    connections: Limit | None = Field(None, description="simultaneous SMTP connections from one IP to the group")
    messages_per_connection: Limit | None = Field(None, description="messages sent over one connection before it is closed")
    messages_per_minute: Limit | None = Field(None, description="messages per minute from one IP to the group")


class Backoff(_Model):
    patterns: Annotated[tuple[Regex, ...], non_empty("pattern"), _schema(minItems=1)] = Field(
        description="regular expressions searched in the receiver's reply")
    minutes: int_range(1, 10080) = 90
    connections: Limit = 1
    messages_per_minute: Limit = 1


class Suspend(_Model):
    patterns: Annotated[tuple[Regex, ...], non_empty("pattern"), _schema(minItems=1)] = Field(
        description="regular expressions searched in the receiver's reply")
    minutes: int_range(1, 10080) = 120


class ShapingGroup(ShapingLimits):
    """A receiver group: recipient domains, and MX host suffixes (a company domain hosted by the
    provider belongs to it too). Fields left out keep the built-in group's value, or the default
    group's limits for a new group."""

    domains: tuple[DnsName, ...] | None = None
    mx_suffixes: tuple[DnsName, ...] | None = None
    backoff: Backoff | None = None
    suspend: Suspend | None = None


DEFAULT_GROUP = "default"
# Published practice (KumoMTA's shaping defaults, the providers' sender guidelines), per IP.
# Rates above 60 a minute are not paced by Postfix (whole-second rate delays; see shaping.py).
BUILTIN_GROUPS: dict[str, dict[str, Any]] = {
    "google": {
        "domains": ["gmail.com", "googlemail.com"],
        "mxSuffixes": ["google.com", "googlemail.com"],
        "connections": 5, "messagesPerConnection": 50, "messagesPerMinute": 600,
        "backoff": {"patterns": [r"4\.7\.28"], "minutes": 90},
    },
    "microsoft": {
        "domains": ["outlook.com", "hotmail.com", "live.com", "msn.com", "hotmail.co.uk", "hotmail.fr",
                    "outlook.fr", "live.co.uk"],
        "mxSuffixes": ["protection.outlook.com"],
        "connections": 5, "messagesPerConnection": 50, "messagesPerMinute": 600,
        "backoff": {"patterns": [r"4\.7\.650", r"S3150"], "minutes": 90},
    },
    "yahoo": {
        "domains": ["yahoo.com", "ymail.com", "rocketmail.com", "yahoo.co.uk", "yahoo.fr", "aol.com", "aim.com"],
        "mxSuffixes": ["yahoodns.net"],
        "connections": 5, "messagesPerConnection": 20, "messagesPerMinute": 600,
        "backoff": {"patterns": [r"\[TS0[1-3]\]"], "minutes": 90},
        "suspend": {"patterns": [r"\[TS04\]"], "minutes": 120},
    },
    "apple": {
        "domains": ["icloud.com", "me.com", "mac.com"],
        "mxSuffixes": ["mail.icloud.com"],
        "connections": 10, "messagesPerConnection": 5, "messagesPerMinute": 600,
    },
    DEFAULT_GROUP: {"connections": 10, "messagesPerConnection": 100, "messagesPerMinute": 6000},
}
_LIMIT_KEYS = {"connections": "connections", "messages_per_connection": "messagesPerConnection",
               "messages_per_minute": "messagesPerMinute"}


class Shaping(_Model):
    groups: dict[GroupName, ShapingGroup] = Field(
        {}, description="receiver groups by name: the built-in google, microsoft, yahoo, apple and default, "
                        "each field overridable, and new groups")

    @model_validator(mode="before")
    @classmethod
    def _with_builtins(cls, data: Any) -> Any:
        """The built-in groups, with the stack's fields over them; a new group takes the default
        group's limits for those it leaves out."""
        if not isinstance(data, dict) or not isinstance(data.get("groups", {}), dict):
            return data
        given = data.get("groups", {})
        default = {**BUILTIN_GROUPS[DEFAULT_GROUP], **(given.get(DEFAULT_GROUP) or {})} \
            if isinstance(given.get(DEFAULT_GROUP, {}), dict) else BUILTIN_GROUPS[DEFAULT_GROUP]
        groups = {}
        for name in dict.fromkeys([*BUILTIN_GROUPS, *given]):
            value = given.get(name, {})
            if not isinstance(value, dict):
                groups[name] = value  # reported by the model as not an object
                continue
            base = BUILTIN_GROUPS.get(name) or {key: default[key] for key in _LIMIT_KEYS.values() if key in default}
            merged = {**base, **value}
            for key in ("backoff", "suspend"):  # a stack may change one field of them: minutes, say
                if isinstance(base.get(key), dict) and isinstance(value.get(key), dict):
                    merged[key] = {**base[key], **value[key]}
            groups[name] = merged
        return {**data, "groups": groups}

    def limits(self, group: str, instance: "Instance") -> ShapingLimits:
        """The limits of `group` on `instance`: the instance's own over the fleet's."""
        base = self.groups[group]
        own = instance.shaping.get(group) if instance.shaping else None
        values = {field: getattr(base, field) for field in _LIMIT_KEYS}
        if own is not None:
            values.update({field: getattr(own, field) for field in _LIMIT_KEYS if getattr(own, field) is not None})
        return ShapingLimits(**values)


class Instance(_Model):
    name: InstanceName = Field(description="the postmulti instance name, postfix-...")
    ip: InstanceIp = Field(description="the IPv4 address the instance listens on and sends from")
    hostname: DnsName = Field(description="the FQDN that is this IP's PTR and HELO")
    public_ip: PublicIPv4 | None = Field(None, description="the address receivers see, when ip is behind one-to-one NAT")
    shaping: dict[GroupName, ShapingLimits] | None = Field(
        None, description="per receiver group (mailfleet:shaping): limits for this IP over the fleet's")

    @property
    def public_address(self) -> str:
        """The address DNS names (A, PTR, SPF): what receivers see as the client."""
        return self.public_ip or self.ip


class VmSize(_Model):
    cpus: int_range(1, 128) = 2
    memory_mb: int_range(1024, 1048576) = 4096
    disk_gb: int_range(10, 65536) = 20


class HostNetwork(_Model):
    interface: InterfaceName = DEFAULT_INTERFACE
    prefix_length: int_range(1, 32) = Field(description="the prefix of the instance IPs' network, e.g. 24")
    gateway: UnicastIPv4 = Field(description="the default route")
    nameservers: Annotated[tuple[UnicastIPv4, ...], non_empty("nameserver"), _schema(minItems=1)]

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.gateway}/{self.prefix_length}", strict=False)


class Host(_Model):
    name: DnsLabel = Field(description="a DNS label, also the VM name")
    instances: Annotated[tuple[Instance, ...], non_empty("instance"), _schema(minItems=1)] = Field(
        description="at least one {name, ip, hostname}: one Postfix instance per IP")
    address: _rule(_host_address, {"pattern": _NO_CONTROL}) | None = Field(
        None, description="existing-host mode: SSH here; without it a VM is created on vSphere")
    ssh_user: _rule(_unix_user, {"pattern": _pattern(_UNIX_USER.pattern)}) = "root"
    ssh_port: int_range(1, 65535) = 22
    vm: VmSize | None = None
    network: HostNetwork | None = None

    @property
    def existing(self) -> bool:
        return self.address is not None

    @model_validator(mode="before")
    @classmethod
    def _vm_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("address") is None and "vm" not in data:
            data = {**data, "vm": {}}
        return data

    @model_validator(mode="after")
    def _mode(self) -> Host:
        # By value, not by the keys given, so that code may copy a Host with all its fields.
        if self.existing:
            for field in ("vm", "network"):
                if getattr(self, field) is not None:
                    raise _problem("applies only to vSphere hosts (without an address)", f".{field}")
        else:
            for field, key, default in (("ssh_user", "sshUser", "root"), ("ssh_port", "sshPort", 22)):
                if getattr(self, field) != default:
                    raise _problem("applies only to existing hosts (with an address); created VMs are "
                                   "reached as the generated 'mailfleet' user", f".{key}")
            if self.network is None:
                raise _problem("is required for a vSphere host: prefixLength, gateway and nameservers", ".network")
        return self


class Vsphere(_Model):
    datacenter: SingleLine
    cluster: SingleLine
    datastore: SingleLine
    network: SingleLine
    template: SingleLine
    folder: SingleLine | None = None
    resource_pool: SingleLine | None = None


class DkimKey(_Model):
    domain: DnsName = Field(description="mail whose From: is in this domain (or below) is signed")
    selector: Selector = Field(description="the DKIM selector: the key is published at SELECTOR._domainkey.DOMAIN")
    bits: int_range(DKIM_MIN_BITS, DKIM_MAX_BITS,
                    f"{{value}} is not allowed: RSA keys must be {DKIM_MIN_BITS} to {DKIM_MAX_BITS} bits") = DKIM_MIN_BITS
    algorithm: Literal["rsa", "ed25519"] = "rsa"  # ed25519: RFC 8463; bits does not apply

    @model_validator(mode="after")
    def _bits(self) -> DkimKey:
        if "bits" in self.model_fields_set and self.algorithm != "rsa":
            raise _problem(f"applies only to RSA keys (an {self.algorithm} key has a fixed size)", ".bits")
        return self

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


class Queue(_Model):
    """Postfix queue settings; None keeps Postfix's default."""

    maximal_queue_lifetime: PostfixTime | None = None
    maximal_backoff_time: PostfixTime | None = None
    destination_concurrency_limit: int_range(1, 1000) | None = None
    bounce_size_limit: int_range(1, 1 << 31) | None = None


class Tls(_Model):
    mode: Literal["selfSigned", "provided"] = "selfSigned"
    cert_pem: Annotated[StrictStr, AfterValidator(_pem("CERTIFICATE-----", "PEM text"))] | None = None
    key_pem: Annotated[StrictStr, AfterValidator(_pem("PRIVATE KEY-----", "PEM text"))] | None = Field(None, repr=False)
    chain_pem: Annotated[StrictStr, AfterValidator(_pem("CERTIFICATE-----", "PEM text"))] | None = None

    @model_validator(mode="after")
    def _provided(self) -> Tls:
        given = self.model_fields_set
        if self.mode == "selfSigned":
            for field, key in (("cert_pem", "certPem"), ("key_pem", "keyPem"), ("chain_pem", "chainPem")):
                if field in given:
                    raise _problem("applies only with mode: provided", f".{key}")
            return self
        for field, key in (("cert_pem", "certPem"), ("key_pem", "keyPem")):
            if getattr(self, field) is None:
                raise _problem("is required with mode: provided", f".{key}")
        problem = _key_matches_certificate(self.cert_pem, self.key_pem)
        if problem:
            raise _problem(*problem)
        return self


class Dmarc(_Model):
    policy: Literal["none", "quarantine", "reject"] = "none"
    rua: _rule(_mailto, {"pattern": _NO_CONTROL}) | None = Field(None, description="mailto: address for aggregate reports")


class Tenant(_Model):
    """A client application that submits with SASL on 587/465, bound to its domains and instances."""

    name: TenantName = Field(
        description="the SASL login name")
    password: _rule(_tenant_password, {"minLength": TENANT_PASSWORD_MIN_LENGTH}) | None = Field(
        None, repr=False, description="a secret (pulumi config set --secret --path 'mailfleet:tenants[N].password')")
    password_hash: _rule(_password_hash, {"pattern": _pattern(r"\{[A-Za-z0-9.-]+\}.+")}) | None = Field(
        None, repr=False, description="instead of password: a Dovecot hash, {ARGON2ID}, {SHA512-CRYPT}, ...")
    domains: Annotated[tuple[DnsName, ...], non_empty("domain"), _schema(minItems=1)] = Field(
        description="the only envelope sender domains the tenant may use: signing domains or their subdomains")
    instances: Annotated[tuple[InstanceName, ...], non_empty("instance (leave instances out for all)"),
                         _schema(minItems=1)] | None = Field(
        None, description="the instances where the tenant may authenticate (default: all)")

    @model_validator(mode="after")
    def _one_password(self) -> Tenant:
        if (self.password is None) == (self.password_hash is None):
            raise _problem("needs exactly one of password (a secret) and passwordHash")
        return self

    def allowed_on(self, instance: Instance) -> bool:
        return self.instances is None or instance.name in self.instances


class Fleet(_Model):
    """The whole `mailfleet:` configuration of a stack (each field is one `mailfleet:KEY`)."""

    hosts: Annotated[tuple[Host, ...], non_empty("host"), _schema(minItems=1)] = Field(
        description="a list of hosts, each with its instances")
    dkim: Annotated[tuple[DkimKey, ...], non_empty("{domain, selector}"), _schema(minItems=1)] = Field(
        description="at least one {domain, selector}: a signing key each")
    vsphere: Vsphere | None = None
    ssh_private_key: Annotated[StrictStr, AfterValidator(_pem("PRIVATE KEY-----", "a PEM or OpenSSH private key"))
                               ] | None = Field(None, repr=False)
    ssh_authorized_keys: tuple[_rule(_ssh_public_key, {"pattern": _pattern(_SSH_PUBLIC_KEY.pattern)}), ...] = ()
    relay_networks: tuple[RelayNetwork, ...] = ()
    relayhost: _rule(_relayhost, {"pattern": _NO_CONTROL}) | None = None
    mail_name: _rule(_mail_name, {"pattern": _pattern(_MAIL_NAME.pattern)}) = "Postfix"
    queue: Queue = Queue()
    shaping: Shaping = Shaping()
    tls: Tls = Tls()
    dmarc: Dmarc = Dmarc()
    spf_extra: dict[DnsName, tuple[SpfTerm, ...]] = Field(
        {}, description="per signing domain: SPF terms kept before -all, for the domain's other senders")
    spf_shared: TxtName | None = Field(None, description="also publish the fleet's SPF record at this name")
    allow_unsigned_senders: StrictBool = False
    tenants: tuple[Tenant, ...] = Field((), description="client applications that submit with SASL on 587/465")

    @property
    def instances(self) -> list[tuple[Host, Instance]]:
        return [(host, instance) for host in self.hosts for instance in host.instances]


# ---- provided certificates -----------------------------------------------------------------

def _key_matches_certificate(cert_pem: str, key_pem: str) -> tuple[str, str] | None:
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
                f"would fail every TLS handshake; certPem is for {_certificate_names(certificate) or 'no name'}"), ".keyPem"
    return None


def _certificate_names(certificate) -> list[str]:
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


# ---- reading the raw map, and the rules across objects -------------------------------------

class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


_KEYS = {field.alias: name for name, field in Fleet.model_fields.items()}
# Everything but plain strings arrives from Pulumi as JSON text.
_STRUCTURED = {"hosts", "vsphere", "sshAuthorizedKeys", "dkim", "relayNetworks", "queue", "shaping", "tls", "dmarc",
               "spfExtra", "allowUnsignedSenders", "tenants"}


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def parse_config(raw: dict[str, Any], secret_keys: Iterable[str] = ()) -> Fleet:
    """Validate the raw `mailfleet:*` config map; other namespaces (vsphere:, ...) are ignored,
    unless one is a typo of `mailfleet`. `secret_keys` are the full keys Pulumi holds as secrets:
    a tenant password in any other key is refused."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    unreadable: set[str] = set()
    for full_key, value in raw.items():
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            if _edit_distance(namespace.lower(), NAMESPACE) <= 2:
                problems.append(f"{full_key}: namespace {namespace!r} is not {NAMESPACE!r}: did you mean "
                                f"{NAMESPACE}:{key}? (this key would be ignored)")
            continue
        if key in _STRUCTURED and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                problems.append(f"{full_key}: must be structured YAML (a list or an object), got a plain string")
                unreadable.add(key)
        values[key] = value

    fleet = None
    try:
        fleet = Fleet.model_validate(values, by_alias=True, by_name=False)
    except ValidationError as error:
        problems += [problem for key, problem in _problems(error) if key not in unreadable]
    problems += [f"{path}: {message}" for path, message in _relations(values)]
    problems += [f"{path}: {message}" for path, message in _plain_passwords(values, set(secret_keys))]
    if problems:
        raise ConfigError(problems)
    return fleet


def _path(loc: tuple) -> str:
    path = NAMESPACE
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += (":" if i == 0 else ".") + (part if str(part).isprintable() else repr(part))
    return path


def _problems(error: ValidationError) -> Iterator[tuple[Any, str]]:
    """(top-level key, "path: message") for each error pydantic found, in the project's words."""
    for item in error.errors(include_url=False):
        loc, kind, value, context = item["loc"], item["type"], item.get("input"), item.get("ctx") or {}
        path = _path(loc)
        if kind == "mailfleet":
            path += context.get("at", "")
            message = context["message"]
        elif kind == "missing":
            field = _field_at(loc)
            message = "is required" + (f": {field.description}" if field and field.description else "")
        elif kind == "extra_forbidden":
            parent = _field_at(loc[:-1])
            model = _model_in(parent.annotation) if parent else Fleet
            known = sorted(f.alias for f in model.model_fields.values()) if model else []
            message = f"unknown key (expected one of: {', '.join(known)})"
        elif kind == "string_type":
            message = f"must be a string, got {_kind(value)}"
        elif kind in ("list_type", "tuple_type"):
            message = f"must be a list, got {_kind(value)}"
        elif kind in ("dict_type", "model_type", "model_attributes_type"):
            message = f"must be an object, got {_kind(value)}"
        elif kind == "bool_type":
            message = f"must be true or false, got {_kind(value)}"
        elif kind == "literal_error":
            message = f"{value!r} must be {context['expected'].replace(chr(39), '')}"
        else:
            message = item["msg"]
        yield loc[0] if loc else None, f"{path}: {message}"


def _field_at(loc: tuple) -> Any:
    """The pydantic FieldInfo at `loc` in the Fleet tree, or None (for hints in messages)."""
    model, field = Fleet, None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None
        field = next((f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        model = _model_in(field.annotation)
    return field


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_in(argument)
        if found:
            return found
    return None


_ADAPTERS: dict[int, TypeAdapter] = {}


def _valid(type_: Any, value: Any) -> Any:
    """The value checked by one annotated type, or None when it is not valid (reported already)."""
    adapter = _ADAPTERS.get(id(type_)) or _ADAPTERS.setdefault(id(type_), TypeAdapter(type_))
    try:
        return adapter.validate_python(value, by_alias=True, by_name=False)
    except ValidationError:
        return None


def _items(value: Any) -> list[tuple[int, dict]]:
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)] if isinstance(value, list) else []


def _relations(values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Rules across objects, on the raw values, each value re-checked alone (see the module doc)."""
    hosts = _items(values.get("hosts"))
    first_seen: dict[tuple[str, str], str] = {}

    def unique(kind: str, value: Any, path: str, key: str, what: str) -> Iterator[tuple[str, str]]:
        if value is None:
            return
        first = first_seen.setdefault((kind, value), path)
        if first != path:
            yield f"{path}.{key}", f"duplicate {what} {value!r} (also {first})"

    given_groups = values.get("shaping", {}).get("groups") if isinstance(values.get("shaping"), dict) else None
    groups = {*BUILTIN_GROUPS, *(given_groups if isinstance(given_groups, dict) else {})}
    public_addresses: list[tuple[str, str]] = []
    seen_public: dict[str, tuple[str, str]] = {}
    for h, host in hosts:
        host_path = f"{NAMESPACE}:hosts[{h}]"
        yield from unique("host", _valid(DnsLabel, host.get("name")), host_path, "name", "host name")
        network = _valid(HostNetwork, host.get("network")) if host.get("address") is None else None
        if network is not None:
            yield from _network_sanity(network, f"{host_path}.network")
        for i, instance in _items(host.get("instances")):
            path = f"{host_path}.instances[{i}]"
            name = _valid(InstanceName, instance.get("name"))
            ip = _valid(InstanceIp, instance.get("ip"))
            public_ip = _valid(PublicIPv4, instance.get("publicIp"))
            yield from unique("name", name, path, "name", "instance name")
            yield from unique("ip", ip, path, "ip", "instance ip")
            yield from unique("hostname", _valid(DnsName, instance.get("hostname")), path, "hostname", "instance hostname")
            # The address receivers see must be unique too: a publicIp may not be another
            # instance's publicIp, nor the ip of one without NAT (two ips alike: reported above).
            seen_as = public_ip and "publicIp" or ip and "ip"
            if seen_as:
                first, first_as = seen_public.setdefault(public_ip or ip, (path, seen_as))
                if first != path and "publicIp" in (seen_as, first_as):
                    yield f"{path}.{seen_as}", f"duplicate public address {public_ip or ip!r} (also {first})"
            if ip is not None and network is not None:
                yield from _inside_network(ip, network, f"{path}.ip")
            if ip is not None or public_ip is not None:
                public_addresses.append((public_ip or ip, path))
            shaping = instance.get("shaping")
            for group in (shaping if isinstance(shaping, dict) else {}):
                if group not in groups:
                    yield f"{path}.shaping.{group}", (f"unknown group {group!r} (groups: {', '.join(sorted(groups))}; "
                                                      "add it to mailfleet:shaping.groups)")

    vsphere_hosts = [str(host.get("name")) for _, host in hosts if host.get("address") is None]
    if vsphere_hosts and "vsphere" not in values:
        yield f"{NAMESPACE}:vsphere", (f"is required: host(s) {', '.join(vsphere_hosts)} have no address, "
                                       "so they are VMs to create")
    existing_hosts = [str(host.get("name")) for _, host in hosts if host.get("address") is not None]
    if existing_hosts and values.get("sshPrivateKey") is None:
        yield f"{NAMESPACE}:sshPrivateKey", (
            f"is not set; it is required to reach existing host(s) {', '.join(existing_hosts)} "
            "(set it: pulumi config set --secret mailfleet:sshPrivateKey < KEYFILE)")

    dkim_domains: list[str] = []
    seen_keys: set[tuple[str, str]] = set()
    for i, item in _items(values.get("dkim")):
        domain, selector = _valid(DnsName, item.get("domain")), _valid(Selector, item.get("selector"))
        if domain is None or selector is None:
            continue
        dkim_domains.append(domain)
        if (domain, selector) in seen_keys:
            yield f"{NAMESPACE}:dkim[{i}]", f"duplicate DKIM key {selector}._domainkey.{domain}"
        seen_keys.add((domain, selector))

    yield from _spf(values, dkim_domains, public_addresses, hosts)
    instance_names = {_valid(InstanceName, i.get("name")) for _, h in hosts for _, i in _items(h.get("instances"))}
    yield from _tenants(values, dkim_domains, instance_names - {None})
    yield from _shaping_groups(given_groups if isinstance(given_groups, dict) else {})


def _tenants(values: dict[str, Any], dkim_domains: list[str], instance_names: set[str]) -> Iterator[tuple[str, str]]:
    seen: dict[str, str] = {}
    for t, tenant in _items(values.get("tenants")):
        path = f"{NAMESPACE}:tenants[{t}]"
        name = _valid(TenantName, tenant.get("name"))
        if name is not None:
            first = seen.setdefault(name, path)
            if first != path:
                yield f"{path}.name", f"duplicate tenant name {name!r} (also {first})"
        domains = tenant.get("domains")
        own: set[str] = set()
        for d, raw_domain in enumerate(domains if isinstance(domains, list) else []):
            domain = _valid(DnsName, raw_domain)
            if domain is None:
                continue
            if domain in own:
                yield f"{path}.domains[{d}]", f"duplicate domain {domain!r}"
            own.add(domain)
            if dkim_domains and not any(domain == s or domain.endswith(f".{s}") for s in dkim_domains):
                yield f"{path}.domains[{d}]", (
                    f"{domain} is not a signing domain (mailfleet:dkim) or a subdomain of one: its mail would "
                    f"leave unsigned; signing domains: {', '.join(dict.fromkeys(dkim_domains))}")
        instances = tenant.get("instances")
        for i, raw_instance in enumerate(instances if isinstance(instances, list) else []):
            instance = _valid(InstanceName, raw_instance)
            if instance is not None and instance_names and instance not in instance_names:
                yield f"{path}.instances[{i}]", (f"{instance!r} is not an instance of mailfleet:hosts "
                                                 f"({', '.join(sorted(instance_names))})")


def _plain_passwords(values: dict[str, Any], secret_keys: set[str]) -> Iterator[tuple[str, str]]:
    """A tenant password must come from a Pulumi secret: in plain config it sits in clear in
    Pulumi.<stack>.yaml (and in git), and the program would not know to keep it secret."""
    if f"{NAMESPACE}:tenants" in secret_keys:
        return
    for t, tenant in _items(values.get("tenants")):
        if tenant.get("password") is not None:
            yield f"{NAMESPACE}:tenants[{t}].password", (
                f"is not a secret: set it with `pulumi config set --secret --path '{NAMESPACE}:tenants[{t}].password'` "
                "(or give passwordHash instead)")


def _shaping_groups(given: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Each group has members, the default group none, and no domain is in two groups."""
    owner: dict[str, str] = {}
    for name in dict.fromkeys([*BUILTIN_GROUPS, *given]):
        group = {**BUILTIN_GROUPS.get(name, {}), **(given.get(name) if isinstance(given.get(name), dict) else {})}
        path = f"{NAMESPACE}:shaping.groups.{name}"
        domains = [_valid(DnsName, d) for d in group.get("domains") or [] if isinstance(group.get("domains"), list)]
        if name == DEFAULT_GROUP:
            if group.get("domains") or group.get("mxSuffixes"):
                yield path, "takes no domains or mxSuffixes: it is every domain that no other group has"
            continue
        if not group.get("domains") and not group.get("mxSuffixes"):
            yield path, "needs domains or mxSuffixes (or both): nothing would belong to the group"
        for d, domain in enumerate(domains):
            if domain is not None and owner.setdefault(domain, name) != name:
                yield f"{path}.domains[{d}]", f"{domain} is also in group {owner[domain]}"


def _network_sanity(network: HostNetwork, path: str) -> Iterator[tuple[str, str]]:
    subnet = network.subnet
    ends = {subnet.network_address: "network", subnet.broadcast_address: "broadcast"} if subnet.prefixlen < 31 else {}
    gateway = ipaddress.IPv4Address(network.gateway)
    if gateway in ends:
        yield f"{path}.gateway", f"{gateway} is the {ends[gateway]} address of {subnet}, not a router"
    seen: set[str] = set()
    for n, nameserver in enumerate(network.nameservers):
        address = ipaddress.IPv4Address(nameserver)
        if address in ends:
            yield f"{path}.nameservers[{n}]", f"{address} is the {ends[address]} address of {subnet}"
        elif nameserver in seen:
            yield f"{path}.nameservers[{n}]", f"duplicate nameserver {nameserver}"
        seen.add(nameserver)


def _inside_network(ip: str, network: HostNetwork, path: str) -> Iterator[tuple[str, str]]:
    subnet, address = network.subnet, ipaddress.IPv4Address(ip)
    if address not in subnet:
        yield path, f"{ip} is outside the host's network {subnet} (gateway {network.gateway}/{network.prefix_length})"
    elif subnet.prefixlen < 31 and address in (subnet.network_address, subnet.broadcast_address):
        yield path, f"{ip} is the network or broadcast address of {subnet}"
    elif ip == network.gateway:
        yield path, f"{ip} is the host's gateway"


def _spf(values: dict[str, Any], dkim_domains: list[str], public_addresses: list[tuple[str, str]],
         hosts: list[tuple[int, dict]]) -> Iterator[tuple[str, str]]:
    own = {f"ip4:{address}" for address, _ in public_addresses} | {f"ip4:{address}/32" for address, _ in public_addresses}
    extra = values.get("spfExtra")
    for raw_domain, terms in (extra.items() if isinstance(extra, dict) else []):
        domain = _valid(DnsName, raw_domain)
        path = f"{NAMESPACE}:spfExtra.{raw_domain}"
        if domain is None:
            continue
        if dkim_domains and domain not in dkim_domains:
            yield path, (f"{domain} is not a signing domain (mailfleet:dkim): the fleet publishes SPF only "
                         f"for {', '.join(dict.fromkeys(dkim_domains))}")
        valid_terms = [(t, _valid(SpfTerm, term)) for t, term in enumerate(terms if isinstance(terms, list) else [])]
        seen: set[str] = set()
        for t, term in valid_terms:
            if term is None:
                continue
            plain = term.lower().lstrip("+")
            if plain in own:
                yield f"{path}[{t}]", f"{term!r} is one of the fleet's own addresses, already in the record"
            elif plain in seen:
                yield f"{path}[{t}]", f"duplicate SPF term {term!r}"
            seen.add(plain)
        lookups = sum(spf.lookups(term) for _, term in valid_terms if term is not None)
        if lookups > spf.LOOKUP_LIMIT:
            yield path, (f"{lookups} terms that cost a DNS lookup (include, a, mx, ptr, exists, redirect) "
                         f"exceed SPF's limit of {spf.LOOKUP_LIMIT} (RFC 7208 4.6.4), and receivers then fail "
                         "the whole record; this counts the record's own terms only: each include also costs "
                         "the lookups of the record it includes")

    shared = _valid(TxtName, values.get("spfShared")) if "spfShared" in values else None
    if shared is not None:
        path = f"{NAMESPACE}:spfShared"
        hostnames = {_valid(DnsName, i.get("hostname")) for _, h in hosts for _, i in _items(h.get("instances"))}
        if shared in dkim_domains:
            yield path, f"{shared} is a signing domain, which already has the fleet's SPF record; use another name"
        elif shared in hostnames:
            yield path, f"{shared} is an instance hostname, which has its own SPF record (v=spf1 a -all)"


# ---- warnings --------------------------------------------------------------------------------

def fleet_warnings(fleet: Fleet) -> list[str]:
    """What is allowed but probably wrong, for the program to print (pulumi.log.warn)."""
    warnings = []
    # A fleet on loopback addresses only is a demo or test host (scripts/run local): no receiver
    # ever sees it, so there is no public address to name. One loopback among real ones is a slip.
    loopback_only = all(ipaddress.IPv4Address(instance.ip).is_loopback for _, instance in fleet.instances)
    for h, host in enumerate(fleet.hosts):
        for i, instance in enumerate(host.instances):
            if instance.public_ip is None and is_private(instance.ip) and not loopback_only:
                kind = "a loopback (test)" if ipaddress.IPv4Address(instance.ip).is_loopback else "a private"
                warnings.append(
                    f"{NAMESPACE}:hosts[{h}].instances[{i}]: instance {instance.name} sends from {kind} address "
                    f"{instance.ip} and has no publicIp: receivers see the NAT's public address, so the A, PTR "
                    "and SPF records published for it will not match; set publicIp to that address")
    shaped = "shaping" in fleet.model_fields_set or any(i.shaping for _, i in fleet.instances)
    if shaped and fleet.relayhost is not None:
        warnings.append(f"{NAMESPACE}:shaping: applies to mail the instances deliver to the receivers themselves; "
                        f"with {NAMESPACE}:relayhost every message goes to the relay, so it is not used")
    if fleet.tls.mode == "provided":
        from cryptography import x509

        certificate = x509.load_pem_x509_certificates(fleet.tls.cert_pem.encode())[0]
        names = _certificate_names(certificate)
        for host, instance in fleet.instances:
            if not certificate_covers(names, instance.hostname):
                warnings.append(
                    f"{NAMESPACE}:tls.certPem: the certificate ({', '.join(names) or 'no DNS names'}) does not cover "
                    f"{instance.hostname}, the hostname of instance {instance.name}: clients of 587/465 that check "
                    "the name will refuse it")
    return warnings


def stack_file_schema() -> dict[str, Any]:
    """JSON Schema of a whole Pulumi.<stack>.yaml, with the `mailfleet:` keys from the models."""
    fleet = Fleet.model_json_schema(by_alias=True, mode="validation")
    definitions = fleet.pop("$defs", {})
    secure = {"type": "object", "properties": {"secure": {"type": "string"}}, "required": ["secure"],
              "additionalProperties": False, "description": "a secret set with `pulumi config set --secret`"}
    properties = {}
    for key, schema in fleet["properties"].items():
        if key in ("sshPrivateKey", "tls", "tenants"):
            schema = {"anyOf": [schema, {"$ref": "#/$defs/secure"}]}
        properties[f"{NAMESPACE}:{key}"] = schema
    tls = definitions["Tls"]["properties"]
    tls["keyPem"] = {"anyOf": [tls["keyPem"], {"$ref": "#/$defs/secure"}]}
    # In the file a tenant password is only ever a secret (`pulumi config set --secret --path`).
    tenant = definitions["Tenant"]["properties"]
    tenant["password"] = {"$ref": "#/$defs/secure", "description": tenant["password"]["description"]}
    config = {
        "type": "object",
        "description": "Stack configuration: mailfleet's keys, and other namespaces (vsphere:, ...) left alone.",
        "properties": properties,
        "patternProperties": {rf"^(?!{NAMESPACE}:)[^:]+:.+$": {}},
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:mailfleet:pulumi-stack-file",
        "title": "Pulumi.<stack>.yaml of mailfleet",
        "type": "object",
        "properties": {
            "config": config,
            "environment": {"type": "array", "items": {"type": "string"}},
            "secretsprovider": {"type": "string"},
            "encryptedkey": {"type": "string"},
            "encryptionsalt": {"type": "string"},
        },
        # Required keys may come from a Pulumi ESC environment instead of the file.
        "if": {"not": {"required": ["environment"]}},
        "then": {"properties": {"config": {"required": [f"{NAMESPACE}:{key}" for key in fleet.get("required", [])]}},
                 "required": ["config"]},
        "$defs": {**definitions, "secure": secure},
    }


if __name__ == "__main__":  # venv/bin/python -m mailfleet.config > schema/mailfleet-stack.schema.json
    print(json.dumps(stack_file_schema(), indent=2))
