"""The rules across objects: unique names and addresses, an IP inside its host's network, tenants'
domains and instances, shaping groups, SPF terms and lookups; and the warnings.

They read the raw values, each value re-checked alone by its own rule (`_valid`), so that an invalid
entry elsewhere neither hides a duplicate nor shifts its index; the models report that entry.
Each rule yields (key path, message).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from pydantic import TypeAdapter, ValidationError

from mailfleet import spf
from mailfleet.config.models import BUILTIN_GROUPS, DEFAULT_GROUP, Fleet, HostNetwork
from mailfleet.config.values import (NAMESPACE, DnsLabel, DnsName, InstanceIp, InstanceName, PublicIPv4, Selector,
                                     SpfTerm, TenantName, TxtName, certificate_covers, certificate_names, is_private)

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


def relations(values: dict[str, Any]) -> Iterator[tuple[str, str]]:
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
            warmup = instance.get("warmup")
            plan = warmup.get("plan") if isinstance(warmup, dict) else None
            for group in (plan if isinstance(plan, dict) else {}):
                if group not in groups:
                    yield f"{path}.warmup.plan.{group}", (f"unknown group {group!r} (groups: {', '.join(sorted(groups))}; "
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


def plain_passwords(values: dict[str, Any], secret_keys: set[str]) -> Iterator[tuple[str, str]]:
    """A tenant password must come from a Pulumi secret: in plain config it sits in clear in
    Pulumi.<stack>.yaml (and in git), and the program would not know to keep it secret."""
    if f"{NAMESPACE}:tenants" in secret_keys:
        return
    for t, tenant in _items(values.get("tenants")):
        if tenant.get("password") is not None:
            yield f"{NAMESPACE}:tenants[{t}].password", (
                f"is not a secret: set it with `pulumi config set --secret --path '{NAMESPACE}:tenants[{t}].password'` "
                "(or give passwordHash instead)")


def plain_webhook_secret(values: dict[str, Any], secret_keys: set[str]) -> Iterator[tuple[str, str]]:
    """The webhook's signing secret must come from a Pulumi secret, like a tenant password: in
    plain config it sits in clear in Pulumi.<stack>.yaml, and anyone who reads it can sign records."""
    webhook = values.get("deliveryWebhook")
    if f"{NAMESPACE}:deliveryWebhook" in secret_keys or not isinstance(webhook, dict):
        return
    if webhook.get("secret") is not None:
        yield f"{NAMESPACE}:deliveryWebhook.secret", (
            f"is not a secret: set it with `pulumi config set --secret --path '{NAMESPACE}:deliveryWebhook.secret'`")


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
    shaped = "shaping" in fleet.model_fields_set or any(i.shaping or i.warmup for _, i in fleet.instances)
    if shaped and fleet.relayhost is not None:
        warnings.append(f"{NAMESPACE}:shaping: applies to mail the instances deliver to the receivers themselves; "
                        f"with {NAMESPACE}:relayhost every message goes to the relay, so it is not used "
                        "(nor any instance's warmup plan)")
    if fleet.tls.mode == "provided":
        from cryptography import x509

        certificate = x509.load_pem_x509_certificates(fleet.tls.cert_pem.encode())[0]
        names = certificate_names(certificate)
        for host, instance in fleet.instances:
            if not certificate_covers(names, instance.hostname):
                warnings.append(
                    f"{NAMESPACE}:tls.certPem: the certificate ({', '.join(names) or 'no DNS names'}) does not cover "
                    f"{instance.hostname}, the hostname of instance {instance.name}: clients of 587/465 that check "
                    "the name will refuse it")
    return warnings
