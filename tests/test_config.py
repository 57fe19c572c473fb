"""Validation of the stack configuration: every bad input gets one message naming its key path."""

import copy
import json

import pytest

from harness import REPO, stack_config
from mailfleet.config import ConfigError, parse_config
from keys import openssh_private_key

KEY = openssh_private_key()

VSPHERE_HOST = {
    "name": "mx1",
    "network": {"interface": "ens160", "prefixLength": 24, "gateway": "10.1.11.254", "nameservers": ["10.1.0.72"]},
    "instances": [
        {"name": "postfix-43", "ip": "10.1.11.43", "hostname": "s43.example.com"},
        {"name": "postfix-45", "ip": "10.1.11.45", "hostname": "s45.example.com"},
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
    return {f"mailfleet:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


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


DELETE = object()

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
    ("sshPrivateKey", DELETE, "mailfleet:sshPrivateKey: is required to reach existing host(s) mx2"),
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
