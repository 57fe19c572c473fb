"""Read and validate the stack configuration (the `mailfleet:` keys of shared/guide/interface.md).

`parse_config(raw)` takes the raw config map that Pulumi hands the program (full keys such as
`mailfleet:hosts`; structured values arrive as JSON text) and returns a `Fleet`, or raises
`ConfigError` listing every problem at once, each naming the key path. Nothing here knows Pulumi,
so the program can stop before any resource is registered and the rules are tested as a table.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "mailfleet"

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DNS_LABEL = re.compile(rf"^{_LABEL}$")
_FQDN = re.compile(rf"^(?:{_LABEL}\.)+[a-z](?:[a-z0-9-]{{0,61}}[a-z0-9])?$")
_SELECTOR = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_INSTANCE_NAME = re.compile(r"^postfix-[a-z0-9][a-z0-9-]*$")  # postmulti's own rule
_INTERFACE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_POSTFIX_TIME = re.compile(r"^[1-9][0-9]*[smhdw]?$")
_EMAIL = re.compile(rf"^[^@\s;,!]+@{_FQDN.pattern[1:-1]}$")
_SSH_PUBLIC_KEY = re.compile(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp(256|384|521)|sk-\S+@openssh\.com) [A-Za-z0-9+/]+=*( .*)?$")
_RELAYHOST = re.compile(r"^(?:\[(?P<bracketed>[^\]]+)\]|(?P<plain>[^:\[\]]+))(?::(?P<port>[0-9]+))?$")

DKIM_MIN_BITS = 2048
DKIM_MAX_BITS = 4096  # RFC 8301: verifiers need only handle keys up to 4096 bits
DEFAULT_INTERFACE = "ens192"
# The default Postfix instance listens here; no sender instance may take it.
DEFAULT_INSTANCE_ADDRESS = "127.0.0.1"


@dataclass(frozen=True)
class Instance:
    name: str
    ip: str
    hostname: str
    public_ip: str | None = None  # the address receivers see, when `ip` is behind one-to-one NAT

    @property
    def public_address(self) -> str:
        """The address DNS names (A, PTR, SPF): what receivers see as the client."""
        return self.public_ip or self.ip


@dataclass(frozen=True)
class VmSize:
    cpus: int = 2
    memory_mb: int = 4096
    disk_gb: int = 20


@dataclass(frozen=True)
class HostNetwork:
    interface: str
    prefix_length: int
    gateway: str
    nameservers: tuple[str, ...]


@dataclass(frozen=True)
class Host:
    name: str
    instances: tuple[Instance, ...]
    address: str | None = None  # set: existing-host mode; unset: a VM is created on vSphere
    ssh_user: str = "root"
    ssh_port: int = 22
    vm: VmSize | None = None
    network: HostNetwork | None = None

    @property
    def existing(self) -> bool:
        return self.address is not None


@dataclass(frozen=True)
class Vsphere:
    datacenter: str
    cluster: str
    datastore: str
    network: str
    template: str
    folder: str | None = None
    resource_pool: str | None = None


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    bits: int = DKIM_MIN_BITS
    algorithm: str = "rsa"  # or "ed25519" (RFC 8463; bits does not apply)

    @property
    def record_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


@dataclass(frozen=True)
class Queue:
    """Postfix queue settings; None keeps Postfix's default."""

    maximal_queue_lifetime: str | None = None
    maximal_backoff_time: str | None = None
    destination_concurrency_limit: int | None = None
    bounce_size_limit: int | None = None


@dataclass(frozen=True)
class Tls:
    mode: str = "selfSigned"
    cert_pem: str | None = None
    key_pem: str | None = None
    chain_pem: str | None = None


@dataclass(frozen=True)
class Dmarc:
    policy: str = "none"
    rua: str | None = None  # always "mailto:..." once parsed


@dataclass(frozen=True)
class Fleet:
    hosts: tuple[Host, ...]
    dkim: tuple[DkimKey, ...]
    vsphere: Vsphere | None = None
    ssh_private_key: str | None = None
    ssh_authorized_keys: tuple[str, ...] = ()
    relay_networks: tuple[str, ...] = ()
    relayhost: str | None = None
    mail_name: str = "Postfix"
    queue: Queue = field(default_factory=Queue)
    tls: Tls = field(default_factory=Tls)
    dmarc: Dmarc = field(default_factory=Dmarc)
    spf_extra: dict[str, tuple[str, ...]] = field(default_factory=dict)
    spf_shared: str | None = None
    allow_unsigned_senders: bool = False

    @property
    def instances(self) -> list[tuple[Host, Instance]]:
        return [(host, instance) for host in self.hosts for instance in host.instances]


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


_MISSING = object()


class _Checker:
    """Collects problems while walking the raw values, so the user sees all of them at once."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, path: str, value: Any, known: set[str]) -> dict | None:
        if not isinstance(value, dict):
            self.problem(path, f"must be an object, got {_kind(value)}")
            return None
        for key in sorted(set(value) - known):
            self.problem(f"{path}.{key}", f"unknown key (expected one of: {', '.join(sorted(known))})")
        return value

    def sequence(self, path: str, value: Any) -> list | None:
        if not isinstance(value, list):
            self.problem(path, f"must be a list, got {_kind(value)}")
            return None
        return value

    def text(self, path: str, obj: dict, key: str, default: Any = _MISSING) -> str | None:
        value = obj.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                self.problem(f"{path}.{key}", "is required")
            return None if default is _MISSING else default
        if not isinstance(value, str) or not value.strip():
            self.problem(f"{path}.{key}", f"must be a non-empty string, got {_kind(value)}")
            return None
        return value

    def integer(self, path: str, obj: dict, key: str, default: Any, low: int, high: int) -> int | None:
        value = obj.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                self.problem(f"{path}.{key}", "is required")
                return None
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(f"{path}.{key}", f"must be an integer, got {_kind(value)}")
            return None
        if not low <= value <= high:
            self.problem(f"{path}.{key}", f"{value} is out of range ({low} to {high})")
            return None
        return value

    def ipv4(self, path: str, value: Any) -> str | None:
        try:
            return str(ipaddress.IPv4Address(value))
        except (ipaddress.AddressValueError, ValueError, TypeError):
            self.problem(path, f"{value!r} is not an IPv4 address")
            return None

    def fqdn(self, path: str, value: Any) -> str | None:
        if isinstance(value, str) and len(value) <= 253 and _FQDN.match(value.lower().rstrip(".")):
            return value.lower().rstrip(".")
        self.problem(path, f"{value!r} is not a fully qualified domain name")
        return None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


_TOP_LEVEL = {
    "hosts", "vsphere", "sshPrivateKey", "sshAuthorizedKeys", "dkim", "relayNetworks",
    "relayhost", "mailName", "queue", "tls", "dmarc", "spfExtra", "spfShared", "allowUnsignedSenders",
}
_STRUCTURED = {"hosts", "vsphere", "sshAuthorizedKeys", "dkim", "relayNetworks", "queue", "tls", "dmarc",
               "spfExtra", "allowUnsignedSenders"}


def parse_config(raw: dict[str, Any]) -> Fleet:
    """Validate the raw `mailfleet:*` config map; other namespaces (vsphere:, ...) are ignored."""
    check = _Checker()
    values: dict[str, Any] = {}
    for full_key, value in raw.items():
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            continue
        if key not in _TOP_LEVEL:
            check.problem(full_key, f"unknown key (expected one of: {', '.join(sorted(_TOP_LEVEL))})")
            continue
        if key in _STRUCTURED and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                check.problem(full_key, "must be structured YAML (a list or an object), got a plain string")
                continue
        values[key] = value

    hosts = _hosts(check, values.get("hosts", _MISSING))
    dkim = _dkim(check, values.get("dkim", _MISSING))
    vsphere = None
    if any(not h.existing for h in hosts):
        if "vsphere" in values:
            vsphere = _vsphere(check, values["vsphere"])
        else:
            names = ", ".join(h.name for h in hosts if not h.existing)
            check.problem("mailfleet:vsphere", f"is required: host(s) {names} have no address, so they are VMs to create")
    elif "vsphere" in values:
        _vsphere(check, values["vsphere"])  # still validated: a typo should not wait for the first VM

    ssh_private_key = values.get("sshPrivateKey")
    if ssh_private_key is not None and "PRIVATE KEY-----" not in str(ssh_private_key):
        check.problem("mailfleet:sshPrivateKey", "is not a PEM or OpenSSH private key")
        ssh_private_key = None
    if ssh_private_key is None and "sshPrivateKey" not in values and any(h.existing for h in hosts):
        names = ", ".join(h.name for h in hosts if h.existing)
        check.problem("mailfleet:sshPrivateKey", f"is required to reach existing host(s) {names} "
                      "(pulumi config set --secret mailfleet:sshPrivateKey < key)")

    fleet = Fleet(
        hosts=tuple(hosts),
        dkim=tuple(dkim),
        vsphere=vsphere,
        ssh_private_key=ssh_private_key,
        ssh_authorized_keys=tuple(_ssh_authorized_keys(check, values.get("sshAuthorizedKeys", []))),
        relay_networks=tuple(_relay_networks(check, values.get("relayNetworks", []))),
        relayhost=_relayhost(check, values.get("relayhost")),
        mail_name=_mail_name(check, values.get("mailName", "Postfix")),
        queue=_queue(check, values.get("queue", {})),
        tls=_tls(check, values.get("tls", {"mode": "selfSigned"})),
        dmarc=_dmarc(check, values.get("dmarc", {"policy": "none"})),
        # Minimal reading of this round's keys; full validation comes with the typed model.
        spf_extra={d: tuple(t) for d, t in (values.get("spfExtra") or {}).items()},
        spf_shared=values.get("spfShared"),
        allow_unsigned_senders=values.get("allowUnsignedSenders", False) is True,
    )
    _check_fleet_uniqueness(check, fleet)
    if check.problems:
        raise ConfigError(check.problems)
    return fleet


def _hosts(check: _Checker, value: Any) -> list[Host]:
    path = "mailfleet:hosts"
    if value is _MISSING:
        check.problem(path, "is required: a list of hosts, each with its instances")
        return []
    items = check.sequence(path, value)
    if items is None:
        return []
    if not items:
        check.problem(path, "must list at least one host")
    hosts = [_host(check, f"{path}[{i}]", item) for i, item in enumerate(items)]
    return [h for h in hosts if h is not None]


_HOST_KEYS = {"name", "address", "sshUser", "sshPort", "vm", "network", "instances"}


def _host(check: _Checker, path: str, value: Any) -> Host | None:
    obj = check.mapping(path, value, _HOST_KEYS)
    if obj is None:
        return None
    name = check.text(path, obj, "name")
    if name is not None and not _DNS_LABEL.match(name):
        check.problem(f"{path}.name", f"{name!r} is not a DNS label (lowercase letters, digits and '-', at most 63)")
    address = check.text(path, obj, "address", default=None)
    if address is not None:
        try:
            ipaddress.IPv4Address(address)
        except ValueError:
            if not (_FQDN.match(address.lower()) or _DNS_LABEL.match(address.lower())):
                check.problem(f"{path}.address", f"{address!r} is neither an IPv4 address nor a DNS name")
    existing = address is not None
    ssh_user = check.text(path, obj, "sshUser", default="root")
    ssh_port = check.integer(path, obj, "sshPort", 22, 1, 65535)
    if not existing:
        for key in ("sshUser", "sshPort"):
            if key in obj:
                check.problem(f"{path}.{key}", "applies only to existing hosts (with an address); "
                              "created VMs are reached as the generated 'mailfleet' user")
    vm = network = None
    if existing:
        for key in ("vm", "network"):
            if key in obj:
                check.problem(f"{path}.{key}", "applies only to vSphere hosts (without an address)")
    else:
        vm = _vm(check, f"{path}.vm", obj.get("vm", {}))
        if "network" in obj:
            network = _network(check, f"{path}.network", obj["network"])
        else:
            check.problem(f"{path}.network", "is required for a vSphere host: prefixLength, gateway and nameservers")
    instances = _instances(check, f"{path}.instances", obj.get("instances", _MISSING), network)
    if name is None:
        return None
    return Host(name=name, address=address, ssh_user=ssh_user or "root", ssh_port=ssh_port or 22,
                vm=vm, network=network, instances=tuple(instances))


def _vm(check: _Checker, path: str, value: Any) -> VmSize:
    obj = check.mapping(path, value, {"cpus", "memoryMb", "diskGb"}) or {}
    defaults = VmSize()
    return VmSize(
        cpus=check.integer(path, obj, "cpus", defaults.cpus, 1, 128) or defaults.cpus,
        memory_mb=check.integer(path, obj, "memoryMb", defaults.memory_mb, 1024, 1048576) or defaults.memory_mb,
        disk_gb=check.integer(path, obj, "diskGb", defaults.disk_gb, 10, 65536) or defaults.disk_gb,
    )


def _network(check: _Checker, path: str, value: Any) -> HostNetwork | None:
    obj = check.mapping(path, value, {"interface", "prefixLength", "gateway", "nameservers"})
    if obj is None:
        return None
    interface = check.text(path, obj, "interface", default=DEFAULT_INTERFACE)
    if interface is not None and not _INTERFACE.match(interface):
        check.problem(f"{path}.interface", f"{interface!r} is not a network interface name")
    prefix_length = check.integer(path, obj, "prefixLength", _MISSING, 1, 32)
    gateway = check.ipv4(f"{path}.gateway", obj["gateway"]) if "gateway" in obj else None
    if "gateway" not in obj:
        check.problem(f"{path}.gateway", "is required")
    nameservers = check.sequence(f"{path}.nameservers", obj.get("nameservers", []))
    if nameservers == []:
        check.problem(f"{path}.nameservers", "must list at least one nameserver")
    resolved = [check.ipv4(f"{path}.nameservers[{i}]", ns) for i, ns in enumerate(nameservers or [])]
    if None in (interface, prefix_length, gateway) or None in resolved:
        return None
    return HostNetwork(interface=interface, prefix_length=prefix_length, gateway=gateway,
                       nameservers=tuple(resolved))


def _instances(check: _Checker, path: str, value: Any, network: HostNetwork | None) -> list[Instance]:
    if value is _MISSING:
        check.problem(path, "is required: at least one {name, ip, hostname}")
        return []
    items = check.sequence(path, value)
    if items is None:
        return []
    if not items:
        check.problem(path, "must list at least one instance")
    subnet = None
    if network is not None:
        subnet = ipaddress.IPv4Network(f"{network.gateway}/{network.prefix_length}", strict=False)
    instances = []
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]"
        obj = check.mapping(item_path, item, {"name", "ip", "hostname", "publicIp"})
        if obj is None:
            continue
        name = check.text(item_path, obj, "name")
        if name is not None and not _INSTANCE_NAME.match(name):
            check.problem(f"{item_path}.name", f"{name!r} must match ^postfix-[a-z0-9][a-z0-9-]*$ (postmulti's rule)")
            name = None
        ip = check.ipv4(f"{item_path}.ip", obj["ip"]) if "ip" in obj else None
        if "ip" not in obj:
            check.problem(f"{item_path}.ip", "is required")
        if ip is not None:
            ip = _usable_instance_ip(check, f"{item_path}.ip", ip, subnet, network)
        hostname = check.fqdn(f"{item_path}.hostname", obj["hostname"]) if "hostname" in obj else None
        if "hostname" not in obj:
            check.problem(f"{item_path}.hostname", "is required: the FQDN that is this IP's PTR and HELO")
        public_ip = check.ipv4(f"{item_path}.publicIp", obj["publicIp"]) if "publicIp" in obj else None
        if None not in (name, ip, hostname):
            instances.append(Instance(name=name, ip=ip, hostname=hostname, public_ip=public_ip))
    return instances


def _usable_instance_ip(check, path, ip, subnet, network) -> str | None:
    address = ipaddress.IPv4Address(ip)
    if ip == DEFAULT_INSTANCE_ADDRESS:
        check.problem(path, f"{ip} is reserved for the default (local-only) Postfix instance")
    elif address.is_unspecified or address.is_multicast or address.is_link_local:
        check.problem(path, f"{ip} cannot be a sender address")
    elif subnet is not None and address not in subnet:
        check.problem(path, f"{ip} is outside the host's network {subnet} (gateway {network.gateway}/{network.prefix_length})")
    elif subnet is not None and subnet.prefixlen < 31 and address in (subnet.network_address, subnet.broadcast_address):
        check.problem(path, f"{ip} is the network or broadcast address of {subnet}")
    elif network is not None and ip == network.gateway:
        check.problem(path, f"{ip} is the host's gateway")
    else:
        return ip
    return None


_VSPHERE_KEYS = {"datacenter", "cluster", "datastore", "network", "template", "folder", "resourcePool"}


def _vsphere(check: _Checker, value: Any) -> Vsphere | None:
    path = "mailfleet:vsphere"
    obj = check.mapping(path, value, _VSPHERE_KEYS)
    if obj is None:
        return None
    required = {key: check.text(path, obj, key) for key in ("datacenter", "cluster", "datastore", "network", "template")}
    folder = check.text(path, obj, "folder", default=None)
    resource_pool = check.text(path, obj, "resourcePool", default=None)
    if None in required.values():
        return None
    return Vsphere(**required, folder=folder, resource_pool=resource_pool)


def _dkim(check: _Checker, value: Any) -> list[DkimKey]:
    path = "mailfleet:dkim"
    if value is _MISSING:
        check.problem(path, "is required: at least one {domain, selector}")
        return []
    items = check.sequence(path, value)
    if items is None:
        return []
    if not items:
        check.problem(path, "must list at least one {domain, selector}")
    keys, seen = [], set()
    for i, item in enumerate(items):
        item_path = f"{path}[{i}]"
        obj = check.mapping(item_path, item, {"domain", "selector", "bits", "algorithm"})
        if obj is None:
            continue
        domain = check.fqdn(f"{item_path}.domain", obj["domain"]) if "domain" in obj else None
        if "domain" not in obj:
            check.problem(f"{item_path}.domain", "is required")
        selector = check.text(item_path, obj, "selector")
        if selector is not None and not _SELECTOR.match(selector):
            check.problem(f"{item_path}.selector", f"{selector!r} is not a DNS selector (lowercase labels separated by dots)")
            selector = None
        bits = check.integer(item_path, obj, "bits", DKIM_MIN_BITS, 0, 1 << 20)
        if bits is not None and not DKIM_MIN_BITS <= bits <= DKIM_MAX_BITS:
            check.problem(f"{item_path}.bits", f"{bits} is not allowed: RSA keys must be {DKIM_MIN_BITS} to {DKIM_MAX_BITS} bits")
            bits = None
        if None in (domain, selector, bits):
            continue
        if (domain, selector) in seen:
            check.problem(item_path, f"duplicate DKIM key {selector}._domainkey.{domain}")
            continue
        seen.add((domain, selector))
        algorithm = obj.get("algorithm", "rsa")
        if algorithm not in ("rsa", "ed25519"):
            check.problem(f"{item_path}.algorithm", f"{algorithm!r} must be rsa or ed25519")
            continue
        keys.append(DkimKey(domain=domain, selector=selector, bits=bits, algorithm=algorithm))
    return keys


def _ssh_authorized_keys(check: _Checker, value: Any) -> list[str]:
    path = "mailfleet:sshAuthorizedKeys"
    items = check.sequence(path, value) or []
    good = []
    for i, key in enumerate(items):
        if isinstance(key, str) and _SSH_PUBLIC_KEY.match(key.strip()):
            good.append(key.strip())
        else:
            check.problem(f"{path}[{i}]", "is not an OpenSSH public key line (e.g. 'ssh-ed25519 AAAA... user@host')")
    return good


def _relay_networks(check: _Checker, value: Any) -> list[str]:
    path = "mailfleet:relayNetworks"
    items = check.sequence(path, value) or []
    networks = []
    for i, item in enumerate(items):
        try:
            networks.append(str(ipaddress.IPv4Network(item, strict=True)))
        except ValueError as error:
            hint = ""
            try:
                hint = f"; did you mean {ipaddress.IPv4Network(item, strict=False)}?"
            except (ValueError, TypeError):
                pass
            check.problem(f"{path}[{i}]", f"{item!r} is not an IPv4 CIDR ({error}){hint}")
        except TypeError:
            check.problem(f"{path}[{i}]", f"{item!r} is not an IPv4 CIDR")
    return networks


def _relayhost(check: _Checker, value: Any) -> str | None:
    if value is None or value == "":
        return None
    path = "mailfleet:relayhost"
    match = _RELAYHOST.match(value) if isinstance(value, str) else None
    host = match and (match["bracketed"] or match["plain"])
    valid_host = False
    if host:
        try:
            ipaddress.IPv4Address(host)
            valid_host = True
        except ValueError:
            valid_host = bool(_FQDN.match(host.lower()) or _DNS_LABEL.match(host.lower()))
    if not valid_host:
        check.problem(path, f"{value!r} is not a relay host: expected host, [host] or [host]:port")
        return None
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        check.problem(path, f"port {match['port']} is out of range (1 to 65535)")
        return None
    return value


def _mail_name(check: _Checker, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}", value):
        check.problem("mailfleet:mailName", f"{value!r} must be 1 to 64 letters, digits, spaces, '.', '_' or '-'")
        return "Postfix"
    return value


def _queue(check: _Checker, value: Any) -> Queue:
    path = "mailfleet:queue"
    obj = check.mapping(path, value, {"maximalQueueLifetime", "maximalBackoffTime",
                                      "destinationConcurrencyLimit", "bounceSizeLimit"}) or {}
    times = {}
    for key in ("maximalQueueLifetime", "maximalBackoffTime"):
        raw = obj.get(key)
        if raw is None:
            times[key] = None
        elif isinstance(raw, (str, int)) and not isinstance(raw, bool) and _POSTFIX_TIME.match(str(raw)):
            times[key] = str(raw)
        else:
            check.problem(f"{path}.{key}", f"{raw!r} is not a positive Postfix time (a number with an optional s, m, h, d or w)")
            times[key] = None
    return Queue(
        maximal_queue_lifetime=times["maximalQueueLifetime"],
        maximal_backoff_time=times["maximalBackoffTime"],
        destination_concurrency_limit=check.integer(path, obj, "destinationConcurrencyLimit", None, 1, 1000),
        bounce_size_limit=check.integer(path, obj, "bounceSizeLimit", None, 1, 1 << 31),
    )


def _tls(check: _Checker, value: Any) -> Tls:
    path = "mailfleet:tls"
    obj = check.mapping(path, value, {"mode", "certPem", "keyPem", "chainPem"}) or {}
    mode = obj.get("mode", "selfSigned")
    if mode not in ("selfSigned", "provided"):
        check.problem(f"{path}.mode", f"{mode!r} must be selfSigned or provided")
        return Tls()
    if mode == "selfSigned":
        for key in ("certPem", "keyPem", "chainPem"):
            if key in obj:
                check.problem(f"{path}.{key}", "applies only with mode: provided")
        return Tls()
    cert = check.text(path, obj, "certPem")
    key = check.text(path, obj, "keyPem")
    chain = check.text(path, obj, "chainPem", default=None)
    for name, pem, marker in (("certPem", cert, "CERTIFICATE-----"), ("keyPem", key, "PRIVATE KEY-----"),
                              ("chainPem", chain, "CERTIFICATE-----")):
        if pem is not None and marker not in pem:
            check.problem(f"{path}.{name}", f"is not PEM text (no '-----BEGIN ...{marker}' block)")
    return Tls(mode="provided", cert_pem=cert, key_pem=key, chain_pem=chain)


def _dmarc(check: _Checker, value: Any) -> Dmarc:
    path = "mailfleet:dmarc"
    obj = check.mapping(path, value, {"policy", "rua"}) or {}
    policy = obj.get("policy", "none")
    if policy not in ("none", "quarantine", "reject"):
        check.problem(f"{path}.policy", f"{policy!r} must be none, quarantine or reject")
        policy = "none"
    rua = obj.get("rua")
    if rua is not None:
        address = rua[len("mailto:"):] if isinstance(rua, str) and rua.startswith("mailto:") else rua
        if isinstance(address, str) and _EMAIL.match(address.lower()):
            rua = f"mailto:{address}"
        else:
            check.problem(f"{path}.rua", f"{rua!r} is not a mail address (mailto:reports@example.com)")
            rua = None
    return Dmarc(policy=policy, rua=rua)


def _check_fleet_uniqueness(check: _Checker, fleet: Fleet) -> None:
    """Names, IPs and hostnames must be unique across the whole fleet: they key outputs and DNS."""
    seen: dict[tuple[str, str], str] = {}
    for h, host in enumerate(fleet.hosts):
        first = seen.setdefault(("host", host.name), f"mailfleet:hosts[{h}]")
        if first != f"mailfleet:hosts[{h}]":
            check.problem(f"mailfleet:hosts[{h}].name", f"duplicate host name {host.name!r} (also {first})")
        for i, instance in enumerate(host.instances):
            path = f"mailfleet:hosts[{h}].instances[{i}]"
            for kind, value in (("name", instance.name), ("ip", instance.ip), ("hostname", instance.hostname)):
                first = seen.setdefault((kind, value), path)
                if first != path:
                    check.problem(f"{path}.{kind}", f"duplicate instance {kind} {value!r} (also {first})")
