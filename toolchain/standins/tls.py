"""Stand-in for pulumi-resource-tls: PrivateKey, SelfSignedCert, CertRequest, LocallySignedCert.

Real keys and certificates made with `cryptography`, in the formats the real provider returns
(RSA private keys as PKCS#1 PEM, Ed25519 as PKCS#8, public keys as PKIX PEM and OpenSSH lines),
private keys marked secret as the real provider's schema does. Not the real provider.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import standin

VERSION = "5.6.2"
PEM = serialization.Encoding.PEM

SUBJECT_FIELDS = {
    "commonName": NameOID.COMMON_NAME, "organization": NameOID.ORGANIZATION_NAME,
    "organizationalUnit": NameOID.ORGANIZATIONAL_UNIT_NAME, "country": NameOID.COUNTRY_NAME,
    "province": NameOID.STATE_OR_PROVINCE_NAME, "locality": NameOID.LOCALITY_NAME,
    "postalCode": NameOID.POSTAL_CODE, "serialNumber": NameOID.SERIAL_NUMBER,
}


def _algorithm(key) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ED25519"
    return "ECDSA"


def _load_key(pem: str):
    return serialization.load_pem_private_key(pem.encode(), password=None)


class PrivateKey(standin.Resource):
    defaults = {"rsaBits": 2048, "ecdsaCurve": "P224"}
    secret_outputs = ("privateKeyPem", "privateKeyPemPkcs8", "privateKeyOpenssh")
    outputs = secret_outputs + ("publicKeyPem", "publicKeyOpenssh", "publicKeyFingerprintMd5",
                                "publicKeyFingerprintSha256")

    def compute(self, inputs: dict) -> dict:
        algorithm = inputs["algorithm"]
        if algorithm == "RSA":
            key = rsa.generate_private_key(public_exponent=65537, key_size=int(inputs["rsaBits"]))
            pem = key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption())
        elif algorithm == "ED25519":
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        else:
            raise ValueError(f"stand-in tls: algorithm {algorithm!r} is not supported (RSA, ED25519)")
        public = key.public_key()
        openssh = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        blob = base64.b64decode(openssh.split()[1])
        return {
            "privateKeyPem": pem.decode(),
            "privateKeyPemPkcs8": key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()).decode(),
            "privateKeyOpenssh": key.private_bytes(PEM, serialization.PrivateFormat.OpenSSH,
                                                   serialization.NoEncryption()).decode(),
            "publicKeyPem": public.public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
            "publicKeyOpenssh": openssh.decode() + "\n",
            "publicKeyFingerprintMd5": ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest()),
            "publicKeyFingerprintSha256": "SHA256:" + base64.b64encode(
                hashlib.sha256(blob).digest()).decode().rstrip("="),
        }

    def make_id(self, inputs: dict, outputs: dict) -> str:
        return hashlib.sha1(standin.plain(outputs["publicKeyPem"]).encode()).hexdigest()


def _name(subject: dict | None) -> x509.Name:
    subject = subject or {}
    attributes = []
    for field, oid in SUBJECT_FIELDS.items():
        values = subject.get(field)
        for value in values if isinstance(values, list) else [values] if values else []:
            attributes.append(x509.NameAttribute(oid, value))
    return x509.Name(attributes)


def _san(inputs: dict) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in inputs.get("dnsNames") or []]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in inputs.get("ipAddresses") or []]
    names += [x509.UniformResourceIdentifier(u) for u in inputs.get("uris") or []]
    return names


def _sign_algorithm(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


class _Certificate(standin.Resource):
    defaults = {"earlyRenewalHours": 0, "isCaCertificate": False, "setSubjectKeyId": False}
    outputs = ("certPem", "validityStartTime", "validityEndTime", "readyForRenewal")

    def build(self, inputs: dict, subject: x509.Name, public_key, san: list, issuer: x509.Name,
              signer, issuer_public_key) -> dict:
        now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        end = now + datetime.timedelta(hours=int(inputs["validityPeriodHours"]))
        uses = set(inputs.get("allowedUses") or [])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now).not_valid_after(end))
        is_ca = bool(inputs.get("isCaCertificate"))
        builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        usage = {name: name.replace("_", "") in {u.replace("_", "") for u in uses} for name in (
            "digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")}
        usage["key_cert_sign"] = "cert_signing" in uses
        usage["crl_sign"] = "crl_signing" in uses
        usage["encipher_only"] = usage["decipher_only"] = False
        if any(usage.values()):
            builder = builder.add_extension(x509.KeyUsage(**usage), critical=True)
        extended = [oid for use, oid in (("server_auth", ExtendedKeyUsageOID.SERVER_AUTH),
                                         ("client_auth", ExtendedKeyUsageOID.CLIENT_AUTH)) if use in uses]
        if extended:
            builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        if issuer_public_key is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False)
        cert = builder.sign(signer, _sign_algorithm(signer))
        return {
            "certPem": cert.public_bytes(PEM).decode(),
            "validityStartTime": now.isoformat().replace("+00:00", "Z"),
            "validityEndTime": end.isoformat().replace("+00:00", "Z"),
            "readyForRenewal": False,
            "_serial": str(cert.serial_number),
        }

    def make_id(self, inputs: dict, outputs: dict) -> str:
        return outputs.pop("_serial")


class SelfSignedCert(_Certificate):
    def compute(self, inputs: dict) -> dict:
        key = _load_key(inputs["privateKeyPem"])
        name = _name(inputs.get("subject"))
        outputs = self.build(inputs, name, key.public_key(), _san(inputs), name, key, None)
        return {**outputs, "keyAlgorithm": _algorithm(key)}


class CertRequest(standin.Resource):
    outputs = ("certRequestPem", "keyAlgorithm")

    def compute(self, inputs: dict) -> dict:
        key = _load_key(inputs["privateKeyPem"])
        builder = x509.CertificateSigningRequestBuilder().subject_name(_name(inputs.get("subject")))
        san = _san(inputs)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        csr = builder.sign(key, _sign_algorithm(key))
        return {"certRequestPem": csr.public_bytes(PEM).decode(), "keyAlgorithm": _algorithm(key)}

    def make_id(self, inputs: dict, outputs: dict) -> str:
        return hashlib.sha1(outputs["certRequestPem"].encode()).hexdigest()


class LocallySignedCert(_Certificate):
    def compute(self, inputs: dict) -> dict:
        csr = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca_key = _load_key(inputs["caPrivateKeyPem"])
        ca_cert = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        try:
            san = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            san = []
        outputs = self.build(inputs, csr.subject, csr.public_key(), san, ca_cert.subject, ca_key,
                             ca_cert.public_key())
        return {**outputs, "caKeyAlgorithm": _algorithm(ca_key)}


class Tls(standin.Servicer):
    name = "tls"
    version = VERSION
    resources = {
        "tls:index/privateKey:PrivateKey": PrivateKey(),
        "tls:index/selfSignedCert:SelfSignedCert": SelfSignedCert(),
        "tls:index/certRequest:CertRequest": CertRequest(),
        "tls:index/locallySignedCert:LocallySignedCert": LocallySignedCert(),
    }


if __name__ == "__main__":
    standin.serve(Tls())
