"""Keys made when the tests run, so that no key material is ever committed."""

from functools import cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

_PEM, _NONE = serialization.Encoding.PEM, serialization.NoEncryption()


@cache
def openssh_private_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(_PEM, serialization.PrivateFormat.OpenSSH, _NONE).decode()


@cache
def pkcs8_private_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, _NONE).decode()


@cache
def rsa_private_key() -> str:
    """PKCS#1 ("RSA PRIVATE KEY"), as pulumi-tls writes RSA keys."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(_PEM, serialization.PrivateFormat.TraditionalOpenSSL, _NONE).decode()


def pem_label(text: str) -> str:
    """The label of the first PEM block: "RSA PRIVATE KEY", "CERTIFICATE", ..."""
    first = text.lstrip().split("\n", 1)[0]
    assert first.startswith("-----BEGIN ") and first.endswith("-----"), first
    return first[len("-----BEGIN "):-len("-----")]
