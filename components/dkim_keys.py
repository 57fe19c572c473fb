"""DkimKeys: one signing key (RSA or Ed25519) per `mailfleet:dkim` entry, shared by every host of the fleet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pulumi
import pulumi_tls as tls

from mailfleet.config import DkimKey


@dataclass(frozen=True)
class DkimKeysArgs:
    keys: Sequence[DkimKey]
    """The `mailfleet:dkim` entries: a key each, named by its record (selector._domainkey.domain)."""


class DkimKeys(pulumi.ComponentResource):
    private_keys: dict[str, pulumi.Output[str]]
    """Record name (selector._domainkey.domain) -> private key PEM (secret)."""
    public_keys: dict[str, pulumi.Output[str]]
    """Record name -> public key PEM (SubjectPublicKeyInfo), the source of the DKIM TXT record."""

    def __init__(self, name: str, args: DkimKeysArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailfleet:index:DkimKeys", name, None, opts)
        self.private_keys, self.public_keys = {}, {}
        for key in args.keys:
            # Changing `bits` or `algorithm` replaces the key, and so the published record: rotate
            # with a new selector instead (docs/day2.md, "Rotate a DKIM key"). pulumi-tls writes an
            # Ed25519 key as PKCS#8 PEM, which OpenDKIM reads.
            if key.algorithm == "ed25519":
                algorithm = {"algorithm": "ED25519"}
            else:
                algorithm = {"algorithm": "RSA", "rsa_bits": key.bits}
            private_key = tls.PrivateKey(
                f"{name}-{key.record_name}",
                **algorithm,
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.private_keys[key.record_name] = private_key.private_key_pem
            self.public_keys[key.record_name] = private_key.public_key_pem
        self.register_outputs({"publicKeys": self.public_keys})
