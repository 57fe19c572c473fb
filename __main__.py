"""mailfleet: independent multi-IP Postfix senders as code.

The wiring: the stack config, validated -> the fleet's DKIM keys and TLS certificates -> one
MailHost per host (its VM, steps, signer and Postfix instances) -> the outputs DNS needs.
"""

import pulumi
import pulumi_tls as tls

from components.dkim_keys import DkimKeys, DkimKeysArgs
from components.mail_host import MailHost, MailHostArgs
from components.tls_certificates import TlsCertificates, TlsCertificatesArgs
from mailfleet import dns_records, metrics
from mailfleet.config import ConfigError, Fleet, fleet_warnings, parse_config


def stack_config() -> dict:
    # Every key, not only those the program asks for, so that a typo is reported, not ignored.
    return {**pulumi.runtime.config.get_config_env(), **pulumi.runtime.config.CONFIG.get()}


def secret_keys() -> list[str]:
    # Which keys Pulumi holds as secrets: a tenant password must be one of them.
    return [key for key in stack_config() if pulumi.runtime.config.is_config_secret(key)]


def read_fleet() -> Fleet:
    try:
        fleet = parse_config(stack_config(), secret_keys())
    except ConfigError as error:
        raise pulumi.RunError(str(error)) from None  # before any resource is registered
    for warning in fleet_warnings(fleet):
        pulumi.log.warn(warning)
    return fleet


def export_outputs(fleet: Fleet, dkim: DkimKeys, certificates: TlsCertificates) -> None:
    public_keys = pulumi.Output.all(**dkim.public_keys)
    records = public_keys.apply(lambda pems: dns_records.dns_records(fleet, pems))
    pulumi.export("dnsRecords", records)
    pulumi.export("dkimRecords", public_keys.apply(lambda pems: dns_records.dkim_records(fleet, pems)))
    pulumi.export("zoneFile", records.apply(dns_records.zone_file))
    pulumi.export("instances", {
        instance.name: {"host": host.name, "ip": instance.ip, "hostname": instance.hostname,
                        **({"publicIp": instance.public_ip} if instance.public_ip else {})}
        for host, instance in fleet.instances
    })
    pulumi.export("tlsCaCertPem", certificates.ca_cert_pem)
    pulumi.export("prometheusScrapeConfigs", metrics.scrape_configs(fleet))


fleet = read_fleet()

dkim = DkimKeys("dkim", DkimKeysArgs(keys=fleet.dkim))
certificates = TlsCertificates("tls", TlsCertificatesArgs(
    settings=fleet.tls, instances=[instance for _, instance in fleet.instances]))

# Hosts with an address are reached with the configured key; VMs the program creates get its own.
existing_key = pulumi.Output.secret(fleet.ssh_private_key) if fleet.ssh_private_key else None
vm_key = vm_authorized_keys = None
if any(not host.existing for host in fleet.hosts):
    vm_key = tls.PrivateKey("vm-ssh-key", algorithm="ED25519")
    vm_authorized_keys = vm_key.public_key_openssh.apply(lambda key: [key.strip(), *fleet.ssh_authorized_keys])

for host in fleet.hosts:
    MailHost(host.name, MailHostArgs(
        host=host, fleet=fleet,
        ssh_private_key=existing_key if host.existing else vm_key.private_key_openssh,
        vm_authorized_keys=None if host.existing else vm_authorized_keys,
        dkim_private_keys=dkim.private_keys,
        tls_bundles=certificates.bundles,
    ))

export_outputs(fleet, dkim, certificates)
