"""mailfleet: independent multi-IP Postfix senders as code.

Read and validate the stack config, build the fleet's keys and hosts, export what DNS needs.
"""

import pulumi
import pulumi_tls as tls

from components.dkim_keys import DkimKeys
from components.mail_host import MailHost
from components.tls_certificates import TlsCertificates
from mailfleet import dns_records
from mailfleet.config import ConfigError, fleet_warnings, parse_config


def stack_config() -> dict:
    # Every key, not only those the program asks for, so that a typo is reported, not ignored.
    return {**pulumi.runtime.config.get_config_env(), **pulumi.runtime.config.CONFIG.get()}


try:
    fleet = parse_config(stack_config())
except ConfigError as error:
    raise pulumi.RunError(str(error)) from None  # before any resource is registered
for warning in fleet_warnings(fleet):
    pulumi.log.warn(warning)

dkim = DkimKeys("dkim", fleet.dkim)
certificates = TlsCertificates("tls", fleet.tls, [instance for _, instance in fleet.instances])

vm_key = None
if any(not host.existing for host in fleet.hosts):
    vm_key = tls.PrivateKey("vm-ssh-key", algorithm="ED25519")
    vm_authorized_keys = vm_key.public_key_openssh.apply(lambda key: [key.strip(), *fleet.ssh_authorized_keys])
existing_key = pulumi.Output.secret(fleet.ssh_private_key) if fleet.ssh_private_key else None

for host in fleet.hosts:
    MailHost(
        host, fleet,
        ssh_private_key=existing_key if host.existing else vm_key.private_key_openssh,
        vm_authorized_keys=None if host.existing else vm_authorized_keys,
        dkim_private_keys=dkim.private_keys,
        tls_bundles=certificates.bundles,
    )

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
