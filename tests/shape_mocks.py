"""Mocks for checking the program's shape: quick stand-ins for providers, real keys for DKIM.

A DKIM key is really generated (cryptography), so the exported record can be checked against it;
certificates and vSphere answers are recognisable placeholders.
"""

from __future__ import annotations

import pulumi
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

TEMPLATE = {
    "id": "4217a9c6-template-uuid", "guestId": "ubuntu64Guest", "scsiType": "pvscsi", "firmware": "efi",
    "networkInterfaceTypes": ["vmxnet3"], "disks": [{"size": 16, "thinProvisioned": True, "eagerlyScrub": False}],
}


def _key_outputs(inputs: dict) -> dict:
    if inputs.get("algorithm") == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(inputs.get("rsaBits", 2048)))
        private_format = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        private_format = serialization.PrivateFormat.PKCS8
    public = key.public_key()
    return {
        "privateKeyPem": key.private_bytes(serialization.Encoding.PEM, private_format,
                                           serialization.NoEncryption()).decode(),
        "privateKeyOpenssh": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()).decode(),
        "publicKeyPem": public.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "publicKeyOpenssh": public.public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH).decode() + "\n",
    }


class ShapeMocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        outputs = dict(args.inputs)
        if args.typ == "tls:index/privateKey:PrivateKey":
            outputs.update(_key_outputs(args.inputs))
        elif args.typ in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            outputs["certPem"] = f"-----BEGIN CERTIFICATE-----\nfake-{args.name}\n-----END CERTIFICATE-----\n"
        elif args.typ == "tls:index/certRequest:CertRequest":
            outputs["certRequestPem"] = f"-----BEGIN CERTIFICATE REQUEST-----\nfake-{args.name}\n-----END CERTIFICATE REQUEST-----\n"
        elif args.typ == "vsphere:index/virtualMachine:VirtualMachine":
            outputs["defaultIpAddress"] = "203.0.113.1"  # never dialled: mocks make no connection
        elif args.typ == "command:remote:Command":
            outputs.update(stdout="", stderr="")
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs):
        name = args.args.get("name", "x")
        if args.token == "vsphere:index/getVirtualMachine:getVirtualMachine":
            return dict(TEMPLATE, name=name), []
        if args.token == "vsphere:index/getComputeCluster:getComputeCluster":
            return {"id": f"cluster-{name}", "name": name, "resourcePoolId": f"pool-of-{name}"}, []
        return {"id": f"{args.token.rsplit(':', 1)[-1]}-{name}", "name": name}, []
