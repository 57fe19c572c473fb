"""Validation of the stack configuration: every bad input gets one message naming its key path."""

import copy
import json

import pytest

from certs import self_signed
from harness import REPO, stack_config
from mailfleet.config import ConfigError, fleet_warnings, parse_config
from keys import openssh_private_key

KEY = openssh_private_key()

VSPHERE_HOST = {
    "name": "mx1",
    "network": {"interface": "ens160", "prefixLength": 24, "gateway": "10.1.11.254", "nameservers": ["10.1.0.72"]},
    "instances": [
        {"name": "postfix-43", "ip": "10.1.11.43", "hostname": "s43.example.com"},
        {"name": "postfix-45", "ip": "10.1.11.45", "hostname": "s45.example.com", "publicIp": "203.0.113.45"},
    ],
}
EXISTING_HOST = {
    "name": "mx2", "address": "mx2.example.com",
    "instances": [{"name": "postfix-47", "ip": "10.2.0.47", "hostname": "s47.example.com"}],
}
GOOD = {
    "hosts": [VSPHERE_HOST, EXISTING_HOST],
    "vsphere": {"datacenter": "DC1", "cluster": "C1", "datastore": "ds1", "network": "VM Network", "template": "t"},
    "sshPrivateKey": KEY,
    "dkim": [{"domain": "example.com", "selector": "s1"}],
}


def raw(config: dict) -> dict[str, str]:
    """As Pulumi hands config over: full keys, structured values as JSON text."""
    return {k if ":" in k else f"mailfleet:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def problems_of(config: dict) -> list[str]:
    with pytest.raises(ConfigError) as error:
        parse_config(raw(config))
    return error.value.problems


def changed(path: str, value) -> dict:
    """GOOD with the value at a dotted path (list indices as numbers) set, or removed for DELETE."""
    config = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    target = config
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is DELETE:
        del target[int(last) if last.isdigit() else last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return config


class _Delete:
    """A value that removes its key; its repr names it, so test ids are the same in every process."""

    def __repr__(self) -> str:
        return "DELETE"


DELETE = _Delete()

BAD_INPUTS = [
    # (what to change, new value, the one expected message)
    ("hosts", DELETE, "mailfleet:hosts: is required"),
    ("hosts", {}, "mailfleet:hosts: must be a list, got an object"),
    ("hosts", [], "mailfleet:hosts: must list at least one host"),
    ("dkim", DELETE, "mailfleet:dkim: is required"),
    ("hosts.0.name", "MX_1", "mailfleet:hosts[0].name: 'MX_1' is not a DNS label"),
    ("hosts.0.instances.1.ip", "10.1.11.300", "mailfleet:hosts[0].instances[1].ip: '10.1.11.300' is not an IPv4 address"),
    ("hosts.0.instances.1.ip", "10.1.12.45", "mailfleet:hosts[0].instances[1].ip: 10.1.12.45 is outside the host's network 10.1.11.0/24"),
    ("hosts.0.instances.1.ip", "10.1.11.43", "mailfleet:hosts[0].instances[1].ip: duplicate instance ip '10.1.11.43'"),
    ("hosts.0.instances.1.ip", "10.1.11.254", "mailfleet:hosts[0].instances[1].ip: 10.1.11.254 is the host's gateway"),
    ("hosts.0.instances.1.ip", "127.0.0.1", "mailfleet:hosts[0].instances[1].ip: 127.0.0.1 is reserved"),
    ("hosts.1.instances.0.ip", "10.1.11.43", "mailfleet:hosts[1].instances[0].ip: duplicate instance ip '10.1.11.43' (also mailfleet:hosts[0].instances[0])"),
    ("hosts.0.instances.1.name", "postfix-43", "mailfleet:hosts[0].instances[1].name: duplicate instance name 'postfix-43'"),
    ("hosts.0.instances.1.name", "smtp-45", "mailfleet:hosts[0].instances[1].name: 'smtp-45' must match ^postfix-[a-z0-9][a-z0-9-]*$"),
    ("hosts.0.instances.1.name", "postfix-", "mailfleet:hosts[0].instances[1].name: 'postfix-' must match"),
    ("hosts.0.instances.1.hostname", "s45", "mailfleet:hosts[0].instances[1].hostname: 's45' is not a fully qualified domain name"),
    ("hosts.0.instances.1.hostname", "s43.example.com", "mailfleet:hosts[0].instances[1].hostname: duplicate instance hostname"),
    ("hosts.0.instances.1.hostname", DELETE, "mailfleet:hosts[0].instances[1].hostname: is required"),
    ("hosts.0.instances.1.colour", "red", "mailfleet:hosts[0].instances[1].colour: unknown key"),
    ("hosts.0.instances", [], "mailfleet:hosts[0].instances: must list at least one instance"),
    ("hosts.0.instances", DELETE, "mailfleet:hosts[0].instances: is required"),
    ("hosts.0.adress", "10.1.1.1", "mailfleet:hosts[0].adress: unknown key"),
    ("hosts.0.network", DELETE, "mailfleet:hosts[0].network: is required for a vSphere host"),
    ("hosts.0.network.prefixLength", 33, "mailfleet:hosts[0].network.prefixLength: 33 is out of range (1 to 32)"),
    ("hosts.0.network.prefixLength", "24", "mailfleet:hosts[0].network.prefixLength: must be an integer, got a string"),
    ("hosts.0.network.gateway", "gw", "mailfleet:hosts[0].network.gateway: 'gw' is not an IPv4 address"),
    ("hosts.0.network.nameservers", [], "mailfleet:hosts[0].network.nameservers: must list at least one nameserver"),
    ("hosts.0.network.interface", "eth 0", "mailfleet:hosts[0].network.interface: 'eth 0' is not a network interface name"),
    ("hosts.0.vm", {"cpus": 0}, "mailfleet:hosts[0].vm.cpus: 0 is out of range"),
    ("hosts.0.vm", {"memory": 4096}, "mailfleet:hosts[0].vm.memory: unknown key"),
    ("hosts.0.sshUser", "admin", "mailfleet:hosts[0].sshUser: applies only to existing hosts"),
    ("hosts.1.vm", {"cpus": 2}, "mailfleet:hosts[1].vm: applies only to vSphere hosts"),
    ("hosts.1.sshPort", 70000, "mailfleet:hosts[1].sshPort: 70000 is out of range (1 to 65535)"),
    ("hosts.1.address", "not an address!", "mailfleet:hosts[1].address: 'not an address!' is neither an IPv4 address nor a DNS name"),
    ("hosts.1.name", "mx1", "mailfleet:hosts[1].name: duplicate host name 'mx1'"),
    ("vsphere", DELETE, "mailfleet:vsphere: is required: host(s) mx1 have no address"),
    ("vsphere", {k: v for k, v in GOOD["vsphere"].items() if k != "cluster"}, "mailfleet:vsphere.cluster: is required"),
    ("vsphere", {**GOOD["vsphere"], "pool": "p"}, "mailfleet:vsphere.pool: unknown key"),
    ("sshPrivateKey", DELETE, "mailfleet:sshPrivateKey: is not set; it is required to reach existing host(s) mx2 (set it: pulumi config set --secret mailfleet:sshPrivateKey < KEYFILE)"),
    ("sshPrivateKey", "hunter2", "mailfleet:sshPrivateKey: is not a PEM or OpenSSH private key"),
    ("sshAuthorizedKeys", ["ssh-ed25519"], "mailfleet:sshAuthorizedKeys[0]: is not an OpenSSH public key line"),
    ("dkim", [], "mailfleet:dkim: must list at least one"),
    ("dkim", [{"domain": "example.com", "selector": "s1", "bits": 1024}], "mailfleet:dkim[0].bits: 1024 is not allowed: RSA keys must be 2048 to 4096 bits"),
    ("dkim", [{"domain": "example.com", "selector": "s_1"}], "mailfleet:dkim[0].selector: 's_1' is not a DNS selector"),
    ("dkim", [{"domain": "example", "selector": "s1"}], "mailfleet:dkim[0].domain: 'example' is not a fully qualified domain name"),
    ("dkim", [{"domain": "example.com", "selector": "s1"}] * 2, "mailfleet:dkim[1]: duplicate DKIM key s1._domainkey.example.com"),
    ("dkim", [{"domain": "example.com", "selector": "s1", "bitz": 4096}], "mailfleet:dkim[0].bitz: unknown key"),
    ("relayNetworks", ["10.0.0.0/33"], "mailfleet:relayNetworks[0]: '10.0.0.0/33' is not an IPv4 CIDR"),
    ("relayNetworks", ["10.0.0.1/16"], "did you mean 10.0.0.0/16?"),
    ("relayNetworks", "10.0.0.0/16", "mailfleet:relayNetworks: must be structured YAML"),
    ("relayhost", "[smtp.example.com]:99999", "mailfleet:relayhost: port 99999 is out of range"),
    ("relayhost", "smtp example", "mailfleet:relayhost: 'smtp example' is not a relay host"),
    ("mailName", "Web\nMAX", "mailfleet:mailName: 'Web\\nMAX' must be 1 to 64 letters"),
    ("queue", {"maximalQueueLifetime": "6 hours"}, "mailfleet:queue.maximalQueueLifetime: '6 hours' is not a positive Postfix time"),
    ("queue", {"maximalQueueLifetime": "0"}, "mailfleet:queue.maximalQueueLifetime: '0' is not a positive Postfix time"),
    ("queue", {"destinationConcurrencyLimit": 0}, "mailfleet:queue.destinationConcurrencyLimit: 0 is out of range"),
    ("queue", {"maxQueueLifetime": "6h"}, "mailfleet:queue.maxQueueLifetime: unknown key"),
    ("tls", {"mode": "acme"}, "mailfleet:tls.mode: 'acme' must be selfSigned or provided"),
    ("tls", {"mode": "provided", "certPem": "-----BEGIN CERTIFICATE-----"}, "mailfleet:tls.keyPem: is required"),
    ("tls", {"mode": "provided", "certPem": "cert", "keyPem": KEY}, "mailfleet:tls.certPem: is not PEM text"),
    ("tls", {"mode": "selfSigned", "keyPem": KEY}, "mailfleet:tls.keyPem: applies only with mode: provided"),
    ("dmarc", {"policy": "block"}, "mailfleet:dmarc.policy: 'block' must be none, quarantine or reject"),
    ("dmarc", {"policy": "none", "rua": "reports"}, "mailfleet:dmarc.rua: 'reports' is not a mail address"),
    ("relayNetwork", ["10.0.0.0/16"], "mailfleet:relayNetwork: unknown key"),
    # Shaping: limits, members, patterns, and the groups instances name.
    ("shaping", {"groups": {"google": {"connections": 0}}}, "mailfleet:shaping.groups.google.connections: 0 is not a limit"),
    ("shaping", {"groups": {"yahoo": {"messagesPerMinute": -5}}}, "mailfleet:shaping.groups.yahoo.messagesPerMinute: -5 is not a limit"),
    ("shaping", {"groups": {"google": {"messagesPerConnection": "50"}}}, "mailfleet:shaping.groups.google.messagesPerConnection: must be an integer"),
    ("shaping", {"groups": {"corp": {"connections": 2}}}, "mailfleet:shaping.groups.corp: needs domains or mxSuffixes"),
    ("shaping", {"groups": {"apple": {"domains": [], "mxSuffixes": []}}}, "mailfleet:shaping.groups.apple: needs domains or mxSuffixes"),
    ("shaping", {"groups": {"default": {"domains": ["example.org"]}}}, "mailfleet:shaping.groups.default: takes no domains or mxSuffixes"),
    ("shaping", {"groups": {"corp": {"domains": ["example.org", "gmail.com"]}}}, "mailfleet:shaping.groups.corp.domains[1]: gmail.com is also in group google"),
    ("shaping", {"groups": {"Big-ISP": {"domains": ["example.org"]}}}, "mailfleet:shaping.groups.Big-ISP: 'Big-ISP' is not a group name"),
    ("shaping", {"groups": {"google": {"backoff": {"patterns": ["4.7.28 ("]}}}}, "mailfleet:shaping.groups.google.backoff.patterns[0]: '4.7.28 (' is not a valid regular expression"),
    ("shaping", {"groups": {"yahoo": {"suspend": {"patterns": ["[TS04"], "minutes": 60}}}}, "mailfleet:shaping.groups.yahoo.suspend.patterns[0]: '[TS04' is not a valid regular expression"),
    ("shaping", {"groups": {"google": {"backoff": {"patterns": []}}}}, "mailfleet:shaping.groups.google.backoff.patterns: must list at least one pattern"),
    ("shaping", {"group": {}}, "mailfleet:shaping.group: unknown key"),
    ("hosts.1.instances.0.shaping", {"hotmail": {"connections": 1}}, "mailfleet:hosts[1].instances[0].shaping.hotmail: unknown group 'hotmail'"),
    ("hosts.1.instances.0.shaping", {"google": {"connections": 0}}, "mailfleet:hosts[1].instances[0].shaping.google.connections: 0 is not a limit"),
    ("hosts.1.instances.0.shaping", {"google": {"domains": ["example.org"]}}, "mailfleet:hosts[1].instances[0].shaping.google.domains: unknown key"),
    # Warm-up plans: a date, known groups, positive budgets that grow day by day.
    ("hosts.1.instances.0.warmup", {"start": "2026-13-01"}, "mailfleet:hosts[1].instances[0].warmup.start: '2026-13-01' is not a date"),
    ("hosts.1.instances.0.warmup", {"start": "next monday"}, "mailfleet:hosts[1].instances[0].warmup.start: 'next monday' is not a date (YYYY-MM-DD)"),
    ("hosts.1.instances.0.warmup", {"plan": {"google": [50]}}, "mailfleet:hosts[1].instances[0].warmup.start: is required"),
    ("hosts.1.instances.0.warmup", {"start": "2026-12-07", "plan": {"hotmail": [50, 100]}}, "mailfleet:hosts[1].instances[0].warmup.plan.hotmail: unknown group 'hotmail'"),
    ("hosts.1.instances.0.warmup", {"start": "2026-12-07", "plan": {"google": [50, 100, 100]}}, "mailfleet:hosts[1].instances[0].warmup.plan.google[2]: day 3 (100) is not more than day 2 (100)"),
    ("hosts.1.instances.0.warmup", {"start": "2026-12-07", "plan": {"google": [50, 0]}}, "mailfleet:hosts[1].instances[0].warmup.plan.google[1]: 0 is not a budget"),
    ("hosts.1.instances.0.warmup", {"start": "2026-12-07", "plan": {"google": [-5, 10]}}, "mailfleet:hosts[1].instances[0].warmup.plan.google[0]: -5 is not a budget"),
    ("hosts.1.instances.0.warmup", {"start": "2026-12-07", "plan": {"google": []}}, "mailfleet:hosts[1].instances[0].warmup.plan.google: must list at least one day's budget"),
    ("hosts.1.instances.0.warmup", {"start": "2026-12-07", "plan": {}}, "mailfleet:hosts[1].instances[0].warmup.plan: must list at least one group"),
    ("hosts.1.instances.0.warmup", {"start": "2026-12-07", "plan": {"google": [50, "100"]}}, "mailfleet:hosts[1].instances[0].warmup.plan.google[1]: must be an integer"),
    # Relay networks that open the relay.
    ("metricsNetworks", ["203.0.113.7/24"], "mailfleet:metricsNetworks[0]: '203.0.113.7/24' is not a CIDR (203.0.113.7/24 has host bits set); did you mean 203.0.113.0/24?"),
    ("metricsNetworks", ["192.0.2.0/24", "prometheus.example"], "mailfleet:metricsNetworks[1]: 'prometheus.example' is not a CIDR"),
    ("metricsNetworks", ["::/0"], "mailfleet:metricsNetworks[0]: '::/0' would let anyone read the fleet's metrics"),
    ("metricsNetworks", "192.0.2.0/24", "mailfleet:metricsNetworks: must be structured YAML"),
    ("relayNetworks", ["0.0.0.0/0"], "mailfleet:relayNetworks[0]: '0.0.0.0/0' opens the relay to the whole internet"),
    ("relayNetworks", ["10.0.0.0/16", "10.0.0.0/7"], "mailfleet:relayNetworks[1]: '10.0.0.0/7' is wider than /8"),
    ("relayNetworks", ["128.0.0.0/1"], "mailfleet:relayNetworks[0]: '128.0.0.0/1' is wider than /8"),
    # Addresses that cannot be senders.
    ("hosts.0.instances.1.ip", "255.255.255.255", "mailfleet:hosts[0].instances[1].ip: 255.255.255.255 cannot be a sender address"),
    ("hosts.1.instances.0.ip", "240.0.0.1", "mailfleet:hosts[1].instances[0].ip: 240.0.0.1 cannot be a sender address"),
    ("hosts.1.instances.0.ip", "224.0.0.5", "mailfleet:hosts[1].instances[0].ip: 224.0.0.5 cannot be a sender address"),
    ("hosts.1.instances.0.ip", "0.0.0.0", "mailfleet:hosts[1].instances[0].ip: 0.0.0.0 cannot be a sender address"),
    ("hosts.0.instances.1.ip", "10.1.11.255", "mailfleet:hosts[0].instances[1].ip: 10.1.11.255 is the network or broadcast address of 10.1.11.0/24"),
    ("hosts.0.instances.1.ip", "10.1.11.0", "mailfleet:hosts[0].instances[1].ip: 10.1.11.0 is the network or broadcast address"),
    ("hosts.0.instances.1.ip", 167842091, "mailfleet:hosts[0].instances[1].ip: 167842091 is not an IPv4 address (write it dotted"),
    ("hosts.0.instances.1.ip", "10.1.11.045", "mailfleet:hosts[0].instances[1].ip: '10.1.11.045' is not an IPv4 address"),
    ("hosts.0.instances.1.publicIp", "10.9.9.9", "mailfleet:hosts[0].instances[1].publicIp: 10.9.9.9 is not a public address"),
    ("hosts.0.instances.1.publicIp", "100.64.0.9", "mailfleet:hosts[0].instances[1].publicIp: 100.64.0.9 is not a public address"),
    ("hosts.0.instances.1.publicIp", "127.0.0.9", "mailfleet:hosts[0].instances[1].publicIp: 127.0.0.9 is not a public address"),
    ("hosts.0.instances.1.publicIp", "255.255.255.255", "mailfleet:hosts[0].instances[1].publicIp: 255.255.255.255 cannot be a sender address"),
    # Gateway and nameservers.
    ("hosts.0.network.gateway", "10.1.11.255", "mailfleet:hosts[0].network.gateway: 10.1.11.255 is the broadcast address of 10.1.11.0/24"),
    ("hosts.0.network.gateway", "10.1.11.0", "mailfleet:hosts[0].network.gateway: 10.1.11.0 is the network address of 10.1.11.0/24"),
    ("hosts.0.network.gateway", "224.0.0.1", "mailfleet:hosts[0].network.gateway: 224.0.0.1 is not a unicast host address"),
    ("hosts.0.network.gateway", 167842302, "mailfleet:hosts[0].network.gateway: 167842302 is not an IPv4 address"),
    ("hosts.0.network.nameservers", ["10.1.0.72", "0.0.0.0"], "mailfleet:hosts[0].network.nameservers[1]: 0.0.0.0 is not a unicast host address"),
    ("hosts.0.network.nameservers", ["10.1.11.255"], "mailfleet:hosts[0].network.nameservers[0]: 10.1.11.255 is the broadcast address of 10.1.11.0/24"),
    ("hosts.0.network.nameservers", ["10.1.0.72", "10.1.0.72"], "mailfleet:hosts[0].network.nameservers[1]: duplicate nameserver 10.1.0.72"),
    # A mistyped namespace is not silently ignored.
    ("mailfeet:relayNetworks", ["10.0.0.0/16"], "mailfeet:relayNetworks: namespace 'mailfeet' is not 'mailfleet': did you mean mailfleet:relayNetworks?"),
    ("Mailfleet:mailName", "WebMAX", "Mailfleet:mailName: namespace 'Mailfleet' is not 'mailfleet'"),
    ("mailfleets:hosts", [], "mailfleets:hosts: namespace 'mailfleets' is not 'mailfleet'"),
    # This round's keys.
    ("hosts.1.instances.0.publicIp", "203.0.113.45", "mailfleet:hosts[1].instances[0].publicIp: duplicate public address '203.0.113.45' (also mailfleet:hosts[0].instances[1])"),
    ("hosts.1.instances.0.ip", "203.0.113.45", "mailfleet:hosts[1].instances[0].ip: duplicate public address '203.0.113.45' (also mailfleet:hosts[0].instances[1])"),
    ("hosts.0.instances.0.publicIp", "203.0.113.45", "mailfleet:hosts[0].instances[1].publicIp: duplicate public address '203.0.113.45' (also mailfleet:hosts[0].instances[0])"),
    ("dkim", [{"domain": "example.com", "selector": "s1", "algorithm": "dsa"}], "mailfleet:dkim[0].algorithm: 'dsa' must be rsa or ed25519"),
    ("dkim", [{"domain": "example.com", "selector": "s1", "algorithm": "ed25519", "bits": 2048}], "mailfleet:dkim[0].bits: applies only to RSA keys"),
    ("dkim", [{"domain": "example.com", "selector": "s1", "bits": "2048"}], "mailfleet:dkim[0].bits: must be an integer, got a string"),
    ("spfExtra", {"example.org": ["include:_spf.google.com"]}, "mailfleet:spfExtra.example.org: example.org is not a signing domain (mailfleet:dkim)"),
    ("spfExtra", {"example": ["mx"]}, "mailfleet:spfExtra.example: 'example' is not a fully qualified domain name"),
    ("spfExtra", {"example.com": ["mx", "~all"]}, "mailfleet:spfExtra.example.com[1]: '~all': the record already ends with -all"),
    ("spfExtra", {"example.com": ["all"]}, "mailfleet:spfExtra.example.com[0]: 'all': the record already ends with -all"),
    ("spfExtra", {"example.com": ["redirect=_spf.example.net"]}, "mailfleet:spfExtra.example.com[0]: 'redirect=_spf.example.net': a redirect is ignored"),
    ("spfExtra", {"example.com": ["include:"]}, "mailfleet:spfExtra.example.com[0]: 'include:' is not an SPF mechanism or modifier"),
    ("spfExtra", {"example.com": ["includes:_spf.google.com"]}, "mailfleet:spfExtra.example.com[0]: 'includes:_spf.google.com' is not an SPF mechanism"),
    ("spfExtra", {"example.com": ["ip4:192.0.2.300"]}, "mailfleet:spfExtra.example.com[0]: 'ip4:192.0.2.300' is not an SPF mechanism"),
    ("spfExtra", {"example.com": ["a/33"]}, "mailfleet:spfExtra.example.com[0]: 'a/33' is not an SPF mechanism"),
    ("spfExtra", {"example.com": ["mx include:x.example.net"]}, "mailfleet:spfExtra.example.com[0]: 'mx include:x.example.net' is more than one SPF term"),
    ("spfExtra", {"example.com": ["mx", "+mx"]}, "mailfleet:spfExtra.example.com[1]: duplicate SPF term '+mx'"),
    ("spfExtra", {"example.com": ["ip4:10.1.11.43"]}, "mailfleet:spfExtra.example.com[0]: 'ip4:10.1.11.43' is one of the fleet's own addresses"),
    ("spfExtra", {"example.com": "include:_spf.google.com"}, "mailfleet:spfExtra.example.com: must be a list, got a string"),
    ("spfExtra", {"example.com": [f"include:s{n}.example.net" for n in range(9)] + ["a", "mx:example.net/24"]},
     "mailfleet:spfExtra.example.com: 11 terms that cost a DNS lookup (include, a, mx, ptr, exists, redirect) exceed SPF's limit of 10"),
    ("spfShared", "spf", "mailfleet:spfShared: 'spf' is not a fully qualified domain name"),
    ("spfShared", "example.com", "mailfleet:spfShared: example.com is a signing domain"),
    ("spfShared", "s47.example.com", "mailfleet:spfShared: s47.example.com is an instance hostname"),
    ("allowUnsignedSenders", "yes", "mailfleet:allowUnsignedSenders: must be structured YAML"),
    ("allowUnsignedSenders", "\"yes\"", "mailfleet:allowUnsignedSenders: must be true or false, got a string"),
    # The delivery webhook: TLS unless it stays on the host, no credentials in the URL.
    ("deliveryWebhook", {"url": "http://hooks.example.com/mail"}, "mailfleet:deliveryWebhook.url: 'http://hooks.example.com/mail' is plain HTTP to another machine"),
    ("deliveryWebhook", {"url": "http://10.1.0.9:8080/mail"}, "mailfleet:deliveryWebhook.url: 'http://10.1.0.9:8080/mail' is plain HTTP to another machine"),
    ("deliveryWebhook", {"url": "ftp://hooks.example.com/"}, "mailfleet:deliveryWebhook.url: 'ftp://hooks.example.com/' is not an https:// URL"),
    ("deliveryWebhook", {"url": "hooks.example.com/mail"}, "mailfleet:deliveryWebhook.url: 'hooks.example.com/mail' is not an https:// URL"),
    ("deliveryWebhook", {"url": "https://hooks example.com/"}, "mailfleet:deliveryWebhook.url: 'https://hooks example.com/' is not an https:// URL"),
    ("deliveryWebhook", {"url": "https://hooks.example.com:70000/"}, "mailfleet:deliveryWebhook.url: 'https://hooks.example.com:70000/' is not a URL"),
    ("deliveryWebhook", {"url": "https://me:pw@hooks.example.com/"}, "mailfleet:deliveryWebhook.url: holds credentials (user:password@)"),
    ("deliveryWebhook", {"url": "https://hooks.example.com/\n"}, "mailfleet:deliveryWebhook.url: 'https://hooks.example.com/\\n' contains a control character"),
    ("deliveryWebhook", {}, "mailfleet:deliveryWebhook.url: is required"),
    ("deliveryWebhook", {"url": "https://hooks.example.com/", "batchSize": 0}, "mailfleet:deliveryWebhook.batchSize: 0 is out of range (1 to 10000)"),
    ("deliveryWebhook", {"url": "https://hooks.example.com/", "batchSize": "100"}, "mailfleet:deliveryWebhook.batchSize: must be an integer, got a string"),
    ("deliveryWebhook", {"url": "https://hooks.example.com/", "batch": 10}, "mailfleet:deliveryWebhook.batch: unknown key"),
    ("deliveryWebhook", "https://hooks.example.com/", "mailfleet:deliveryWebhook: must be structured YAML"),
    # A secret in plain config is refused whatever it is (GOOD holds no Pulumi secrets).
    ("deliveryWebhook", {"url": "https://hooks.example.com/", "secret": "0123456789abcdef-ok"},
     "mailfleet:deliveryWebhook.secret: is not a secret: set it with `pulumi config set --secret --path 'mailfleet:deliveryWebhook.secret'`"),
]


@pytest.mark.parametrize("path,value,message", BAD_INPUTS, ids=[f"{p}={v!r}"[:60] for p, v, _ in BAD_INPUTS])
def test_bad_input_is_reported_by_key_path(path, value, message):
    problems = problems_of(changed(path, value))
    assert [p for p in problems if message in p], f"expected {message!r} in {problems}"
    assert len(problems) == 1, problems


def test_every_problem_is_reported_at_once():
    config = changed("hosts.0.instances.1.ip", "10.1.11.300")
    config["relayNetworks"] = ["bad"]
    config["dmarc"] = {"policy": "block"}
    assert len(problems_of(config)) == 3


def test_good_config_is_typed_with_defaults():
    fleet = parse_config(raw({**GOOD, "dmarc": {"policy": "reject", "rua": "dmarc@example.com"},
                              "relayhost": "[127.0.0.1]:2525", "relayNetworks": ["10.0.0.0/16"]}))
    vm_host, existing_host = fleet.hosts
    assert not vm_host.existing and existing_host.existing
    assert (vm_host.vm.cpus, vm_host.vm.memory_mb, vm_host.vm.disk_gb) == (2, 4096, 20)
    assert existing_host.ssh_user == "root" and existing_host.ssh_port == 22
    assert fleet.dkim[0].bits == 2048 and fleet.dkim[0].record_name == "s1._domainkey.example.com"
    assert fleet.mail_name == "Postfix" and fleet.tls.mode == "selfSigned"
    assert fleet.dmarc.rua == "mailto:dmarc@example.com"
    assert [i.name for _, i in fleet.instances] == ["postfix-43", "postfix-45", "postfix-47"]


def test_other_namespaces_are_not_ours_to_check():
    parse_config({**raw(GOOD), "vsphere:user": "deploy", "aws:region": "x"})


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_example_stacks_are_valid(stack):
    config, secret_keys = stack_config(REPO / f"Pulumi.{stack}.yaml", {"mailfleet:sshPrivateKey": KEY})
    fleet = parse_config(config)
    assert fleet.hosts and fleet.dkim


def test_prod_stack_is_the_original_server():
    config, _ = stack_config(REPO / "Pulumi.prod.yaml")
    fleet = parse_config(config)
    (host,) = fleet.hosts
    assert [(i.ip, i.hostname) for i in host.instances] == [
        ("10.1.11.43", "s43.11.ecrm.com.tw"), ("10.1.11.45", "s45.11.ecrm.com.tw")]
    assert fleet.mail_name == "WebMAX" and fleet.queue.maximal_queue_lifetime == "6h"


# ---- control characters, anywhere -------------------------------------------------------------

# GOOD with every optional key set, so that every string field of the model is somewhere in it.
FULL = {
    **copy.deepcopy(GOOD),
    "vsphere": {**GOOD["vsphere"], "folder": "mail", "resourcePool": "pool1"},
    "sshAuthorizedKeys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMailfleetTestKey ops@example.com"],
    "relayNetworks": ["10.0.0.0/16", "10.0.0.0/8"],
    "relayhost": "[smtp.example.com]:2525",
    "mailName": "WebMAX",
    "queue": {"maximalQueueLifetime": "6h", "maximalBackoffTime": "900s", "destinationConcurrencyLimit": 2,
              "bounceSizeLimit": 10000000},
    "tls": {"mode": "selfSigned"},
    "dmarc": {"policy": "reject", "rua": "mailto:dmarc@example.com"},
    "dkim": [{"domain": "example.com", "selector": "s1", "algorithm": "rsa", "bits": 4096},
             {"domain": "example.com", "selector": "e1", "algorithm": "ed25519"}],
    "spfExtra": {"example.com": ["include:_spf.google.com", "ip4:192.0.2.0/24", "mx", "a:mail.example.net/28",
                                 "exists:%{i}._spf.example.com", "-ptr", "exp=explain.example.com"]},
    "spfShared": "_spf.mail.example.com",
    "allowUnsignedSenders": True,
}
FULL["hosts"][1] = {**FULL["hosts"][1], "sshUser": "deploy", "sshPort": 2222}


def string_leaves(value, path=""):
    """(dotted path, text) of every string in a config (list indices as numbers)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from string_leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from string_leaves(item, f"{path}.{index}")
    elif isinstance(value, str):
        yield path, value


def key_path(dotted: str) -> str:
    first, *rest = dotted.split(".")
    return "mailfleet:" + first + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in rest)


# sshPrivateKey is a PEM: several lines by nature (its own rule: no other control characters).
LEAVES = [(path, text) for path, text in string_leaves(FULL) if path != "sshPrivateKey" and "spfExtra." not in path]
LEAVES += [("spfExtra.example.com." + str(i), t) for i, t in enumerate(FULL["spfExtra"]["example.com"])]


def test_full_config_is_valid_and_typed():
    fleet = parse_config(raw(FULL))
    assert fleet.spf_extra == {"example.com": tuple(FULL["spfExtra"]["example.com"])}
    assert fleet.spf_shared == "_spf.mail.example.com" and fleet.allow_unsigned_senders is True
    assert [(k.algorithm, k.bits) for k in fleet.dkim] == [("rsa", 4096), ("ed25519", 2048)]
    instance = fleet.hosts[0].instances[1]
    assert (instance.ip, instance.public_ip, instance.public_address) == ("10.1.11.45", "203.0.113.45", "203.0.113.45")
    assert fleet.hosts[0].instances[0].public_address == "10.1.11.43"
    assert {fleet.dkim[0]: "usable as a dict key"}[fleet.dkim[0]]
    assert len(LEAVES) > 35


@pytest.mark.parametrize("path,text", LEAVES, ids=[p for p, _ in LEAVES])
def test_a_trailing_newline_in_any_string_is_refused_at_its_key(path, text):
    if path.startswith("spfExtra."):
        config = copy.deepcopy(FULL)
        config["spfExtra"]["example.com"][int(path.rsplit(".", 1)[1])] += "\n"
        expected = f"mailfleet:spfExtra.example.com[{path.rsplit('.', 1)[1]}]: "
    else:
        config = changed_in(FULL, path, text + "\n")
        expected = key_path(path) + ": "
    problems = problems_of(config)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def changed_in(config: dict, path: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, last = path.split(".")
    target = config
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    target[int(last) if last.isdigit() else last] = value
    return config


@pytest.mark.parametrize("bad", ["\t", "\x00", "\r", "\x7f", "\u2028", "\x1b[31m"])
def test_control_characters_inside_values_are_refused(bad):
    for path in ("hosts.0.instances.0.hostname", "dkim.0.selector", "hosts.0.name", "mailName", "vsphere.template"):
        text = dict(string_leaves(FULL))[path]
        problems = problems_of(changed_in(FULL, path, text[:2] + bad + text[2:]))
        assert len(problems) == 1 and problems[0].startswith(key_path(path) + ": "), problems


def test_a_private_key_may_hold_line_breaks_but_no_other_control_character():
    problems = problems_of({**GOOD, "sshPrivateKey": KEY.replace("\n", "\n\x00", 1)})
    assert problems == ["mailfleet:sshPrivateKey: contains a control character other than line breaks"]
    assert KEY not in problems[0]  # a secret is never echoed


# ---- duplicates keep their index after an invalid entry ------------------------------------------

def test_duplicates_after_an_invalid_entry_are_reported_at_their_own_index():
    config = copy.deepcopy(GOOD)
    config["hosts"][0]["instances"] = [
        {"name": "postfix-41", "ip": "10.1.11.300", "hostname": "s41.example.com"},  # invalid
        {"name": "postfix-43", "ip": "10.1.11.43", "hostname": "s43.example.com"},
        {"name": "postfix-43", "ip": "10.1.11.43", "hostname": "s44.example.com"},
    ]
    assert sorted(problems_of(config)) == sorted([
        "mailfleet:hosts[0].instances[0].ip: '10.1.11.300' is not an IPv4 address",
        "mailfleet:hosts[0].instances[2].name: duplicate instance name 'postfix-43' (also mailfleet:hosts[0].instances[1])",
        "mailfleet:hosts[0].instances[2].ip: duplicate instance ip '10.1.11.43' (also mailfleet:hosts[0].instances[1])",
    ])


def test_duplicate_host_after_an_invalid_host_keeps_its_index():
    config = copy.deepcopy(GOOD)
    bad_host = {**copy.deepcopy(EXISTING_HOST), "name": "BAD_HOST",
                "instances": [{"name": "postfix-50", "ip": "10.2.0.50", "hostname": "s50.example.com"}]}
    config["hosts"] = [bad_host, *config["hosts"], {**copy.deepcopy(EXISTING_HOST), "name": "mx1",
                       "instances": [{"name": "postfix-51", "ip": "10.2.0.51", "hostname": "s51.example.com"}]}]
    assert sorted(problems_of(config)) == [
        "mailfleet:hosts[0].name: 'BAD_HOST' is not a DNS label (lowercase letters, digits and '-', at most 63)",
        "mailfleet:hosts[3].name: duplicate host name 'mx1' (also mailfleet:hosts[1])",
    ]


# ---- provided TLS ------------------------------------------------------------------------------

def test_provided_key_must_belong_to_the_certificate():
    cert, key = self_signed("*.example.com")
    _, other_key = self_signed("*.example.com")
    parse_config(raw({**GOOD, "tls": {"mode": "provided", "certPem": cert, "keyPem": key}}))
    problems = problems_of({**GOOD, "tls": {"mode": "provided", "certPem": cert, "keyPem": other_key}})
    assert len(problems) == 1 and problems[0].startswith(
        "mailfleet:tls.keyPem: does not belong to the certificate in certPem"), problems
    assert other_key not in problems[0]
    problems = problems_of({**GOOD, "tls": {"mode": "provided", "certPem": cert.replace("M", "A"), "keyPem": key}})
    assert len(problems) == 1 and problems[0].startswith("mailfleet:tls.certPem: is not a PEM certificate"), problems
    problems = problems_of({**GOOD, "tls": {"mode": "provided", "certPem": cert, "keyPem": KEY}})
    assert problems == ["mailfleet:tls.keyPem: is not an unencrypted PEM private key"]


def test_a_full_chain_in_cert_pem_is_checked_against_its_first_certificate():
    cert, key = self_signed("*.example.com")
    ca, _ = self_signed("ca.example.net")
    parse_config(raw({**GOOD, "tls": {"mode": "provided", "certPem": cert + ca, "keyPem": key}}))
    assert problems_of({**GOOD, "tls": {"mode": "provided", "certPem": ca + cert, "keyPem": key}})


def test_a_certificate_that_does_not_cover_a_hostname_is_a_warning():
    cert, key = self_signed("*.example.com")
    fleet = parse_config(raw({**GOOD, "tls": {"mode": "provided", "certPem": cert, "keyPem": key}}))
    assert [w for w in fleet_warnings(fleet) if "certPem" in w] == []
    cert, key = self_signed("s43.example.com", "*.mail.example.com")
    fleet = parse_config(raw({**GOOD, "tls": {"mode": "provided", "certPem": cert, "keyPem": key}}))
    warnings = [w for w in fleet_warnings(fleet) if "certPem" in w]
    assert len(warnings) == 2, warnings
    assert "does not cover s45.example.com, the hostname of instance postfix-45" in warnings[0]
    assert "s47.example.com" in warnings[1] and "postfix-47" in warnings[1]
    # A wildcard covers one label only.
    config = changed_in(GOOD, "hosts.1.instances.0.hostname", "a.s47.example.com")
    cert, key = self_signed("*.example.com")
    fleet = parse_config(raw({**config, "tls": {"mode": "provided", "certPem": cert, "keyPem": key}}))
    assert [w for w in fleet_warnings(fleet) if "certPem" in w and "a.s47.example.com" in w]


# ---- warnings about addresses -------------------------------------------------------------------

def test_a_private_ip_without_public_ip_is_a_warning_naming_the_instance():
    fleet = parse_config(raw(GOOD))
    warnings = fleet_warnings(fleet)
    assert len(warnings) == 2, warnings  # postfix-45 has a publicIp
    assert warnings[0].startswith("mailfleet:hosts[0].instances[0]: instance postfix-43 sends from a private address 10.1.11.43")
    assert "postfix-47" in warnings[1] and "publicIp" in warnings[1]
    cgnat = parse_config(raw(changed("hosts.1.instances.0.ip", "100.64.0.47")))
    assert any("postfix-47" in w and "100.64.0.47" in w for w in fleet_warnings(cgnat))
    public = parse_config(raw(changed("hosts.1.instances.0.ip", "198.51.100.47")))
    assert not any("postfix-47" in w for w in fleet_warnings(public))
    loopback = parse_config(raw(changed("hosts.1.instances.0.ip", "127.0.0.47")))
    assert any("postfix-47" in w and "loopback" in w for w in fleet_warnings(loopback))


def test_a_loopback_only_fleet_is_a_demo_and_gets_no_address_warning():
    local = {"dkim": [{"domain": "example.com", "selector": "local1"}], "sshPrivateKey": KEY,
             "hosts": [{"name": "localmail", "address": "127.0.0.1", "instances": [
                 {"name": f"postfix-{n}", "ip": f"127.0.0.{n}", "hostname": f"s{n}.local.example.com"}
                 for n in (11, 12, 13)]}]}
    assert fleet_warnings(parse_config(raw(local))) == []


def test_spf_lookup_limit_counts_only_lookup_terms():
    ten = [f"include:s{n}.example.net" for n in range(8)] + ["a", "mx"]
    fleet = parse_config(raw({**GOOD, "spfExtra": {"example.com": ten + ["ip4:192.0.2.0/24", "ip6:2001:db8::/32"]}}))
    assert len(fleet.spf_extra["example.com"]) == 12
    problems = problems_of({**GOOD, "spfExtra": {"example.com": ten + ["exists:%{i}.example.net"]}})
    assert problems == [problems[0]] and problems[0].startswith("mailfleet:spfExtra.example.com: 11 terms")
    assert "each include also costs the lookups of the record it includes" in problems[0]


def test_snake_case_keys_are_not_config_keys():
    problems = problems_of(changed("hosts.1.ssh_user", "root"))
    assert problems == ["mailfleet:hosts[1].ssh_user: unknown key (expected one of: address, instances, name, "
                        "network, sshPort, sshUser, vm)"]


def test_blocklists_default_to_common_zones_and_take_dns_names_only():
    assert parse_config(raw(GOOD)).blocklists == ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")
    assert parse_config(raw({**GOOD, "blocklists": ["DNSBL.Example.", "bl.example.net"]})).blocklists == (
        "dnsbl.example", "bl.example.net")
    assert parse_config(raw({**GOOD, "blocklists": []})).blocklists == ()
    assert problems_of({**GOOD, "blocklists": ["zen spamhaus"]}) == [
        "mailfleet:blocklists[0]: 'zen spamhaus' is not a fully qualified domain name"]
    assert problems_of({**GOOD, "blocklists": "zen.spamhaus.org"})[0].startswith("mailfleet:blocklists")


def test_a_warmup_plan_defaults_to_the_doubling_plan_and_keeps_a_given_one_whole():
    from mailfleet.config import Warmup
    default = Warmup(start="2026-12-07")
    assert default.plan["google"] == (50, 100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600)
    assert set(default.plan) == {"google", "microsoft", "yahoo", "apple"}
    fleet = parse_config(raw(changed("hosts.1.instances.0.warmup", {"start": "2026-12-07", "plan": {"default": [500, 1000]}})))
    assert fleet.hosts[1].instances[0].warmup.plan == {"default": (500, 1000)}


WEBHOOK_SECRET = "s3cret-Webhook-Key-0123456789"


@pytest.mark.parametrize("url", ["https://hooks.example.com/mail", "http://127.0.0.1:8080/hook",
                                 "http://127.0.0.9/", "http://localhost:9000/", "http://[::1]:9000/"])
def test_a_delivery_webhook_is_https_or_stays_on_the_host(url):
    fleet = parse_config(raw({**GOOD, "deliveryWebhook": {"url": url, "secret": WEBHOOK_SECRET}}),
                         ["mailfleet:deliveryWebhook"])
    assert (fleet.delivery_webhook.url, fleet.delivery_webhook.secret, fleet.delivery_webhook.batch_size) == \
        (url, WEBHOOK_SECRET, 100)
    assert WEBHOOK_SECRET not in repr(fleet)
    assert parse_config(raw(GOOD)).delivery_webhook is None


def test_a_weak_webhook_secret_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as error:
        parse_config(raw({**GOOD, "deliveryWebhook": {"url": "https://hooks.example.com/", "secret": "hunter2hunter2"}}),
                     ["mailfleet:deliveryWebhook"])
    assert error.value.problems == ["mailfleet:deliveryWebhook.secret: is 14 characters long; a signing secret needs "
                                    "at least 16 (e.g. `openssl rand -hex 32`)"]
