"""TlsCertificates: the certificate each instance presents on 25, 587 and 465.

selfSigned: a fleet CA (exported as `tlsCaCertPem` for submitting clients) signs one certificate
per instance hostname. provided: the user's certificate (a wildcard, say) serves every instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_tls as tls

from mailfleet.config import Instance, Tls

CA_VALIDITY_HOURS = 10 * 365 * 24
CERT_VALIDITY_HOURS = 397 * 24  # what public CAs may issue today; renewed by `pulumi up` in the last 30 days
RENEW_HOURS = 30 * 24


def _pem_bundle(*parts: pulumi.Input[str | None]) -> pulumi.Output[str]:
    """Key, certificate and chain in one secret text, in the order smtpd_tls_chain_files wants."""
    def join(values: list[str | None]) -> str:
        return "".join(v if v.endswith("\n") else v + "\n" for v in values if v)
    return pulumi.Output.secret(pulumi.Output.all(*parts).apply(join))


@dataclass(frozen=True)
class TlsCertificatesArgs:
    settings: Tls
    """`mailfleet:tls`: selfSigned, or the provided key, certificate and chain."""
    instances: Sequence[Instance]
    """Every instance of the fleet: a certificate each for its hostname and IP (selfSigned mode)."""


class TlsCertificates(pulumi.ComponentResource):
    ca_cert_pem: pulumi.Output[str] | None
    bundles: dict[str, pulumi.Output[str]]
    """Instance name -> private key + certificate + chain, PEM (secret)."""

    def __init__(self, name: str, args: TlsCertificatesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:TlsCertificates", name, None, opts)
        settings, instances = args.settings, args.instances
        child = pulumi.ResourceOptions(parent=self)
        if settings.mode == "provided":
            self.ca_cert_pem = None
            bundle = _pem_bundle(settings.key_pem, settings.cert_pem, settings.chain_pem)
            self.bundles = {instance.name: bundle for instance in instances}
            self.register_outputs({})
            return

        ca_key = tls.PrivateKey(f"{name}-ca-key", algorithm="RSA", rsa_bits=3072, opts=child)
        ca = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(common_name="mailfleet fleet CA", organization="mailfleet"),
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
            opts=child,
        )
        self.ca_cert_pem = ca.cert_pem
        self.bundles = {}
        for instance in instances:
            key = tls.PrivateKey(f"{name}-{instance.name}-key", algorithm="RSA", rsa_bits=2048, opts=child)
            request = tls.CertRequest(
                f"{name}-{instance.name}-csr",
                private_key_pem=key.private_key_pem,
                subject=tls.CertRequestSubjectArgs(common_name=instance.hostname),
                dns_names=[instance.hostname],
                ip_addresses=[instance.ip],
                opts=child,
            )
            cert = tls.LocallySignedCert(
                f"{name}-{instance.name}-cert",
                cert_request_pem=request.cert_request_pem,
                ca_private_key_pem=ca_key.private_key_pem,
                ca_cert_pem=ca.cert_pem,
                validity_period_hours=CERT_VALIDITY_HOURS,
                early_renewal_hours=RENEW_HOURS,
                allowed_uses=["digital_signature", "key_encipherment", "server_auth"],
                opts=child,
            )
            self.bundles[instance.name] = _pem_bundle(key.private_key_pem, cert.cert_pem, ca.cert_pem)
        self.register_outputs({"caCertPem": self.ca_cert_pem})
