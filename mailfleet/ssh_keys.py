"""The stack's SSH private key as paramiko wants it, for what connects to hosts outside the
command provider: the drift reader (components/managed_files.py) and the status tool."""

from __future__ import annotations

import io

import paramiko
from cryptography.hazmat.primitives import serialization


def paramiko_key(text: str) -> paramiko.PKey:
    """An OpenSSH or PEM private key (RSA, ECDSA, Ed25519), re-encoded as OpenSSH, which every
    paramiko key class reads."""
    data = text.encode()
    key = (serialization.load_ssh_private_key(data, None) if b"OPENSSH PRIVATE KEY" in data
           else serialization.load_pem_private_key(data, None))
    openssh = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(openssh))
        except (paramiko.SSHException, ValueError):
            continue
    raise ValueError("unsupported SSH private key type")
