"""The stack config as a tree of pydantic models: one class per object, camelCase keys.

Each field's type is a rule of values.py; a model's own validators hold the rules inside one
object (a vSphere host needs `network`, a tenant one kind of password). Rules across objects are
in rules.py.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, model_validator
from pydantic.alias_generators import to_camel

from mailfleet.config.values import (DEFAULT_BLOCKLISTS, DEFAULT_INTERFACE, DKIM_MAX_BITS, DKIM_MIN_BITS, Budget,
                                     CertificatePem, DnsLabel, DnsName, GroupName, HostAddress, InstanceIp,
                                     InstanceName, InterfaceName, IsoDate, Limit,
                                     MailName, MailTo, MetricsNetwork, PasswordHash, PostfixTime, PrivateKeyPem,
                                     PublicIPv4, Regex,
                                     RelayHost, RelayNetwork, Selector, SingleLine, SpfTerm, SshPrivateKeyPem,
                                     SshPublicKey, TenantName, TenantPassword, TxtName, UnicastIPv4, UnixUser,
                                     WebhookSecret, WebhookUrl,
                                     growing, int_range, json_schema, key_matches_certificate, non_empty, problem)

class _Model(BaseModel):
    """Frozen (hashable: a DkimKey keys dicts), camelCase keys, unknown keys refused. Code may
    build one with snake_case names too; the stack config may not (parse_config: by_name=False)."""
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel,
                              validate_by_name=True, validate_by_alias=True)


class ShapingLimits(_Model):
    """Per-IP limits for one receiver group; None keeps the value from the level above."""

    connections: Limit | None = Field(None, description="simultaneous SMTP connections from one IP to the group")
    messages_per_connection: Limit | None = Field(None, description="messages sent over one connection before it is closed")
    messages_per_minute: Limit | None = Field(None, description="messages per minute from one IP to the group")


class Backoff(_Model):
    patterns: Annotated[tuple[Regex, ...], non_empty("pattern"), json_schema(minItems=1)] = Field(
        description="regular expressions searched in the receiver's reply")
    minutes: int_range(1, 10080) = 90
    connections: Limit = 1
    messages_per_minute: Limit = 1


class Suspend(_Model):
    patterns: Annotated[tuple[Regex, ...], non_empty("pattern"), json_schema(minItems=1)] = Field(
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


# The common doubling plan (50, 100, ... 25,600 a day over ten days) for the big mailbox providers.
DOUBLING_PLAN = tuple(50 * 2 ** day for day in range(10))
DEFAULT_WARMUP_PLAN: dict[str, tuple[int, ...]] = {"google": DOUBLING_PLAN, "microsoft": DOUBLING_PLAN,
                                                   "yahoo": DOUBLING_PLAN, "apple": DOUBLING_PLAN}
WarmupDays = Annotated[tuple[Budget, ...], non_empty("day's budget"), AfterValidator(growing), json_schema(minItems=1)]


class Warmup(_Model):
    """A new IP's daily budget per receiver group (the host enforces it: mailfleet/warmup.py)."""

    start: IsoDate = Field(description="day 1 of the plan, a UTC date (YYYY-MM-DD)")
    plan: Annotated[dict[GroupName, WarmupDays], non_empty("group"), json_schema(minProperties=1)] = Field(
        default_factory=lambda: dict(DEFAULT_WARMUP_PLAN),
        description="per receiver group, the recipients a day from this IP: day 1, day 2, ... (growing); "
                    "default: google, microsoft, yahoo and apple 50, 100, 200, ... 25,600")


class Instance(_Model):
    name: InstanceName = Field(description="the postmulti instance name, postfix-...")
    ip: InstanceIp = Field(description="the IPv4 address the instance listens on and sends from")
    hostname: DnsName = Field(description="the FQDN that is this IP's PTR and HELO")
    public_ip: PublicIPv4 | None = Field(None, description="the address receivers see, when ip is behind one-to-one NAT")
    shaping: dict[GroupName, ShapingLimits] | None = Field(
        None, description="per receiver group (mailfleet:shaping): limits for this IP over the fleet's")
    warmup: Warmup | None = Field(None, description="a warm-up plan: a daily budget per receiver group from a start date")

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
    nameservers: Annotated[tuple[UnicastIPv4, ...], non_empty("nameserver"), json_schema(minItems=1)]

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.gateway}/{self.prefix_length}", strict=False)


class Host(_Model):
    name: DnsLabel = Field(description="a DNS label, also the VM name")
    instances: Annotated[tuple[Instance, ...], non_empty("instance"), json_schema(minItems=1)] = Field(
        description="at least one {name, ip, hostname}: one Postfix instance per IP")
    address: HostAddress | None = Field(
        None, description="existing-host mode: SSH here; without it a VM is created on vSphere")
    ssh_user: UnixUser = "root"
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
                    raise problem("applies only to vSphere hosts (without an address)", f".{field}")
        else:
            for field, key, default in (("ssh_user", "sshUser", "root"), ("ssh_port", "sshPort", 22)):
                if getattr(self, field) != default:
                    raise problem("applies only to existing hosts (with an address); created VMs are "
                                   "reached as the generated 'mailfleet' user", f".{key}")
            if self.network is None:
                raise problem("is required for a vSphere host: prefixLength, gateway and nameservers", ".network")
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
            raise problem(f"applies only to RSA keys (an {self.algorithm} key has a fixed size)", ".bits")
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
    cert_pem: CertificatePem | None = None
    key_pem: PrivateKeyPem | None = Field(None, repr=False)
    chain_pem: CertificatePem | None = None

    @model_validator(mode="after")
    def _provided(self) -> Tls:
        given = self.model_fields_set
        if self.mode == "selfSigned":
            for field, key in (("cert_pem", "certPem"), ("key_pem", "keyPem"), ("chain_pem", "chainPem")):
                if field in given:
                    raise problem("applies only with mode: provided", f".{key}")
            return self
        for field, key in (("cert_pem", "certPem"), ("key_pem", "keyPem")):
            if getattr(self, field) is None:
                raise problem("is required with mode: provided", f".{key}")
        mismatch = key_matches_certificate(self.cert_pem, self.key_pem)
        if mismatch:
            raise problem(*mismatch)
        return self


class Dmarc(_Model):
    policy: Literal["none", "quarantine", "reject"] = "none"
    rua: MailTo | None = Field(None, description="mailto: address for aggregate reports")


class Tenant(_Model):
    """A client application that submits with SASL on 587/465, bound to its domains and instances."""

    name: TenantName = Field(
        description="the SASL login name")
    password: TenantPassword | None = Field(
        None, repr=False, description="a secret (pulumi config set --secret --path 'mailfleet:tenants[N].password')")
    password_hash: PasswordHash | None = Field(
        None, repr=False, description="instead of password: a Dovecot hash, {ARGON2ID}, {SHA512-CRYPT}, ...")
    domains: Annotated[tuple[DnsName, ...], non_empty("domain"), json_schema(minItems=1)] = Field(
        description="the only envelope sender domains the tenant may use: signing domains or their subdomains")
    instances: Annotated[tuple[InstanceName, ...], non_empty("instance (leave instances out for all)"),
                         json_schema(minItems=1)] | None = Field(
        None, description="the instances where the tenant may authenticate (default: all)")

    @model_validator(mode="after")
    def _one_password(self) -> Tenant:
        if (self.password is None) == (self.password_hash is None):
            raise problem("needs exactly one of password (a secret) and passwordHash")
        return self

    def allowed_on(self, instance: Instance) -> bool:
        return self.instances is None or instance.name in self.instances


class DeliveryWebhook(_Model):
    """Where each host's mailfleet-webhook POSTs the delivery log's records (mailfleet/webhook.py)."""

    url: WebhookUrl = Field(
        description="https://..., or http:// to a loopback address only (a forwarder on the host itself)")
    secret: WebhookSecret | None = Field(
        None, repr=False, description="a secret (pulumi config set --secret --path 'mailfleet:deliveryWebhook.secret'): "
                                      "the key of each request's HMAC-SHA256 signature (X-Mailfleet-Signature)")
    batch_size: int_range(1, 10_000) = Field(100, description="records in one request at most")


class Fleet(_Model):
    """The whole `mailfleet:` configuration of a stack (each field is one `mailfleet:KEY`)."""

    hosts: Annotated[tuple[Host, ...], non_empty("host"), json_schema(minItems=1)] = Field(
        description="a list of hosts, each with its instances")
    dkim: Annotated[tuple[DkimKey, ...], non_empty("{domain, selector}"), json_schema(minItems=1)] = Field(
        description="at least one {domain, selector}: a signing key each")
    vsphere: Vsphere | None = None
    ssh_private_key: SshPrivateKeyPem | None = Field(None, repr=False)
    ssh_authorized_keys: tuple[SshPublicKey, ...] = ()
    relay_networks: tuple[RelayNetwork, ...] = ()
    metrics_networks: tuple[MetricsNetwork, ...] = Field(
        (), description="clients allowed to scrape the hosts' Prometheus metrics, besides the host itself")
    relayhost: RelayHost | None = None
    mail_name: MailName = "Postfix"
    queue: Queue = Queue()
    shaping: Shaping = Shaping()
    tls: Tls = Tls()
    dmarc: Dmarc = Dmarc()
    spf_extra: dict[DnsName, tuple[SpfTerm, ...]] = Field(
        {}, description="per signing domain: SPF terms kept before -all, for the domain's other senders")
    spf_shared: TxtName | None = Field(None, description="also publish the fleet's SPF record at this name")
    allow_unsigned_senders: StrictBool = False
    tenants: tuple[Tenant, ...] = Field((), description="client applications that submit with SASL on 587/465")
    blocklists: tuple[DnsName, ...] = Field(
        DEFAULT_BLOCKLISTS, description="DNS blocklist zones tools/status.py checks each instance's public address "
                                        "against ([] checks none)")
    delivery_webhook: DeliveryWebhook | None = Field(
        None, description="POST each host's delivery log records, in batches, to this URL (docs/host.md)")

    @property
    def instances(self) -> list[tuple[Host, Instance]]:
        return [(host, instance) for host in self.hosts for instance in host.instances]
