"""Pulumi SDK mocks that do the providers' real work.

No Pulumi CLI or provider plugin can run here, so the program runs in-process under
`pulumi.runtime.set_mocks`. These mocks make that run a real deployment: `tls:*`
resources make real keys and certificates (with `cryptography`, shaped like
terraform-provider-tls output) and `command:remote:*` resources run over real SSH
(with paramiko, behaving like pulumi-command 1.2). Inputs and outputs use the
camelCase wire names.

Secrets (private keys, Command stdin, connection, environment) are never logged.
"""

import datetime
import hashlib
import io
import ipaddress
import json
import os
import posixpath
import socket
import stat
import sys
import threading
import time
from base64 import b64decode, b64encode
from pathlib import Path

import paramiko
import pulumi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from pulumi.runtime import rpc

# What the stand-in providers do the same way: unwrap secrets, read any private key for paramiko,
# and an SSH setenv that waits for sshd's answer.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "toolchain" / "standins"))
from command import paramiko_key, setenv  # noqa: E402
from standin import plain  # noqa: E402

PEM = serialization.Encoding.PEM
CURVES = {"P224": ec.SECP224R1, "P256": ec.SECP256R1, "P384": ec.SECP384R1, "P521": ec.SECP521R1}
# terraform-provider-tls `allowed_uses` -> x509.KeyUsage argument or extended key usage OID.
KEY_USAGES = {**{u: u for u in ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                                 "key_agreement", "encipher_only", "decipher_only")},
              "cert_signing": "key_cert_sign", "crl_signing": "crl_sign"}
EXT_USAGES = {use: ObjectIdentifier(oid) for use, oid in {
    "any_extended": "2.5.29.37.0", "server_auth": "1.3.6.1.5.5.7.3.1", "client_auth": "1.3.6.1.5.5.7.3.2",
    "code_signing": "1.3.6.1.5.5.7.3.3", "email_protection": "1.3.6.1.5.5.7.3.4",
    "ipsec_end_system": "1.3.6.1.5.5.7.3.5", "ipsec_tunnel": "1.3.6.1.5.5.7.3.6", "ipsec_user": "1.3.6.1.5.5.7.3.7",
    "timestamping": "1.3.6.1.5.5.7.3.8", "ocsp_signing": "1.3.6.1.5.5.7.3.9",
    "microsoft_server_gated_crypto": "1.3.6.1.4.1.311.10.3.3", "netscape_server_gated_crypto": "2.16.840.1.113730.4.1",
    "microsoft_commercial_code_signing": "1.3.6.1.4.1.311.2.1.22",
    "microsoft_kernel_code_signing": "1.3.6.1.4.1.311.61.1.1"}.items()}
# Go's pkix.Name order, which the real provider uses.
SUBJECT_FIELDS = [("country", NameOID.COUNTRY_NAME), ("province", NameOID.STATE_OR_PROVINCE_NAME),
                  ("locality", NameOID.LOCALITY_NAME), ("streetAddress", NameOID.STREET_ADDRESS),
                  ("postalCode", NameOID.POSTAL_CODE), ("organization", NameOID.ORGANIZATION_NAME),
                  ("organizationalUnit", NameOID.ORGANIZATIONAL_UNIT_NAME),
                  ("commonName", NameOID.COMMON_NAME), ("serialNumber", NameOID.SERIAL_NUMBER)]
PRIVATE_OUTPUTS = ("privateKeyPem", "privateKeyPemPkcs8", "privateKeyOpenssh")


def _pem(key, fmt):
    return key.private_bytes(PEM, fmt, serialization.NoEncryption()).decode()


def _sign_hash(key):
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _algorithm(key):
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    return "ECDSA" if isinstance(key, ec.EllipticCurvePrivateKey) else "ED25519"


def _name(subject):
    attrs = []
    for field, oid in SUBJECT_FIELDS:
        values = (subject or {}).get(field) or []
        for v in [values] if isinstance(values, str) else values:
            attrs.append(x509.NameAttribute(oid, v))
    return x509.Name(attrs)


def _sans(inp):
    return ([x509.DNSName(d) for d in inp.get("dnsNames") or []]
            + [x509.IPAddress(ipaddress.ip_address(a)) for a in inp.get("ipAddresses") or []]
            + [x509.UniformResourceIdentifier(u) for u in inp.get("uris") or []])


def _ssh_fields(key):
    """OpenSSH encodings and fingerprints; empty for P224, which SSH cannot express (as the provider)."""
    try:
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        priv = _pem(key, serialization.PrivateFormat.OpenSSH)
    except ValueError:
        return {"privateKeyOpenssh": "", "publicKeyOpenssh": "",
                "publicKeyFingerprintMd5": "", "publicKeyFingerprintSha256": ""}
    blob = b64decode(pub.split()[1])
    return {"privateKeyOpenssh": priv, "publicKeyOpenssh": pub.decode() + "\n",
            "publicKeyFingerprintMd5": ":".join(f"{b:02x}" for b in hashlib.md5(blob).digest()),
            "publicKeyFingerprintSha256": "SHA256:" + b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")}


def _certificate(inp, subject, public_key, issuer, issuer_key, issuer_ski, sans):
    """Build a certificate the way Go's x509.CreateCertificate does for the provider."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    end = now + datetime.timedelta(hours=int(inp["validityPeriodHours"]))
    is_ca = bool(inp.get("isCaCertificate"))
    uses = inp.get("allowedUses") or []
    unknown = [u for u in uses if u not in KEY_USAGES and u not in EXT_USAGES]
    if unknown:
        raise ValueError(f"unknown allowedUses: {unknown}")
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
         .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(end)
         .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True))
    ku = {KEY_USAGES[u] for u in uses if u in KEY_USAGES}
    if ku:
        b = b.add_extension(x509.KeyUsage(**{k: k in ku for k in KEY_USAGES.values()}), critical=True)
    eku = [EXT_USAGES[u] for u in uses if u in EXT_USAGES]
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    # Go derives a subject key id for every CA, and the authority key id from the issuer's.
    if is_ca or inp.get("setSubjectKeyId"):
        b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    if issuer_ski is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier(issuer_ski, None, None), critical=False)
    cert = b.sign(issuer_key, _sign_hash(issuer_key))
    return {"certPem": cert.public_bytes(PEM).decode(), "readyForRenewal": False,
            "validityStartTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "validityEndTime": end.strftime("%Y-%m-%dT%H:%M:%SZ")}, str(cert.serial_number)


def _load_key(pem):
    return serialization.load_pem_private_key(pem.encode(), None)


def _extension(obj, cls):
    try:
        return obj.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _tcp(host, port):
    return socket.create_connection((host, port), timeout=15)


class RealMocks(pulumi.runtime.Mocks):
    def __init__(self, connect=_tcp):
        self.connect = connect  # (host, port) -> connected socket, e.g. one opened inside a netns
        self.log = []        # [{type, name, seconds, stdout?}], in completion order
        self.commands = {}   # Command name -> its (plain) inputs, to run a `delete` later
        self._lock = threading.Lock()  # the SDK calls new_resource from an executor's threads

    def call(self, args):
        return {}

    def new_resource(self, args):
        handler = {"tls:index/privateKey:PrivateKey": self._private_key,
                   "tls:index/selfSignedCert:SelfSignedCert": self._self_signed_cert,
                   "tls:index/certRequest:CertRequest": self._cert_request,
                   "tls:index/locallySignedCert:LocallySignedCert": self._locally_signed_cert,
                   "command:remote:Command": self._command,
                   "command:remote:CopyToRemote": self._copy_to_remote}.get(args.typ)
        # Reads (`.get`), imports and, as with the real provider, commands in a preview just echo.
        if handler is None or args.resource_id or (args.typ.startswith("command:") and pulumi.runtime.is_dry_run()):
            return args.resource_id or args.name + "_id", args.inputs
        start, entry = time.monotonic(), {"type": args.typ, "name": args.name}
        try:
            id_, new = handler(args.name, plain(args.inputs))
            if "stdout" in new:
                entry["stdout"] = new["stdout"]
        except Exception as e:
            entry["error"] = str(e)
            raise
        finally:
            entry["seconds"] = round(time.monotonic() - start, 3)
            with self._lock:
                self.log.append(entry)
        # Keep the caller's inputs (and their secret markers); secret outputs go back wrapped,
        # as the engine marks the providers' additionalSecretOutputs.
        return id_, {**args.inputs, **{k: rpc.wrap_rpc_secret(v) if k in PRIVATE_OUTPUTS else v
                                       for k, v in new.items()}}

    # --- tls ---------------------------------------------------------------------------
    def _private_key(self, name, inp):
        algorithm = inp.get("algorithm", "RSA")
        if algorithm == "RSA":
            bits = int(inp.get("rsaBits") or 2048)
            key, fmt, extra = rsa.generate_private_key(65537, bits), "TraditionalOpenSSL", {"rsaBits": bits}
        elif algorithm == "ECDSA":
            curve = inp.get("ecdsaCurve") or "P224"
            key, fmt, extra = ec.generate_private_key(CURVES[curve]()), "TraditionalOpenSSL", {"ecdsaCurve": curve}
        elif algorithm == "ED25519":
            key, fmt, extra = ed25519.Ed25519PrivateKey.generate(), "PKCS8", {}
        else:
            raise ValueError(f"unsupported algorithm {algorithm!r}")
        public_pem = key.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        out = {"algorithm": algorithm, **extra, "publicKeyPem": public_pem,
               "privateKeyPem": _pem(key, getattr(serialization.PrivateFormat, fmt)),
               "privateKeyPemPkcs8": _pem(key, serialization.PrivateFormat.PKCS8), **_ssh_fields(key)}
        return hashlib.sha1(public_pem.encode()).hexdigest(), out

    def _self_signed_cert(self, name, inp):
        key = _load_key(inp["privateKeyPem"])
        subject = _name(inp.get("subject"))
        out, id_ = _certificate(inp, subject, key.public_key(), subject, key, None, _sans(inp))
        return id_, {**out, "keyAlgorithm": _algorithm(key)}

    def _cert_request(self, name, inp):
        key = _load_key(inp["privateKeyPem"])
        b = x509.CertificateSigningRequestBuilder().subject_name(_name(inp.get("subject")))
        if _sans(inp):
            b = b.add_extension(x509.SubjectAlternativeName(_sans(inp)), critical=False)
        pem = b.sign(key, _sign_hash(key)).public_bytes(PEM).decode()
        return hashlib.sha1(pem.encode()).hexdigest(), {"certRequestPem": pem, "keyAlgorithm": _algorithm(key)}

    def _locally_signed_cert(self, name, inp):
        csr = x509.load_pem_x509_csr(inp["certRequestPem"].encode())
        ca_cert = x509.load_pem_x509_certificate(inp["caCertPem"].encode())
        ca_key = _load_key(inp["caPrivateKeyPem"])
        sans = list(_extension(csr, x509.SubjectAlternativeName) or [])
        ski = (_extension(ca_cert, x509.SubjectKeyIdentifier)
               or x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())).digest
        out, id_ = _certificate(inp, csr.subject, csr.public_key(), ca_cert.subject, ca_key, ski, sans)
        return id_, {**out, "caKeyAlgorithm": _algorithm(ca_key)}

    # --- command ------------------------------------------------------------------------
    def _command(self, name, inp):
        with self._lock:
            self.commands[name] = inp
        out = err = ""
        script = inp.get("create")
        if script:  # like pulumi-command: no `create`, nothing runs
            rc, out, err = self.run_remote(inp["connection"], script, inp.get("stdin"), inp.get("environment"))
            if rc != 0:  # the message pulumi-command gives the engine for a failed create
                raise RuntimeError(f"Process exited with status {rc}: running {json.dumps(script)}:\n{out}{err}")
        return f"{name}_id", {"stdout": out.removesuffix("\n"), "stderr": err.removesuffix("\n")}

    def _copy_to_remote(self, name, inp):
        source, remote = inp["source"], inp["remotePath"]
        # The SDK rehydrates assets into FileAsset/StringAsset/FileArchive; accept the wire dict too.
        field = (lambda k: source.get(k)) if isinstance(source, dict) else (lambda k: getattr(source, k, None))
        path, text = field("path"), field("text")
        with self._ssh(inp["connection"]) as client, client.open_sftp() as sftp:
            _sftp_makedirs(sftp, posixpath.dirname(remote))
            try:  # an existing remote directory receives the source inside it
                if stat.S_ISDIR(sftp.stat(remote).st_mode) and path:
                    remote = posixpath.join(remote, os.path.basename(path.rstrip("/")))
            except FileNotFoundError:
                pass
            if text is not None:
                sftp.putfo(io.BytesIO(text.encode()), remote)
            elif path and os.path.isdir(path):  # FileArchive of a directory: copied recursively
                for root, _dirs, files in os.walk(path):
                    rel = os.path.relpath(root, path)
                    target = remote if rel == "." else posixpath.join(remote, rel)
                    _sftp_makedirs(sftp, target)
                    for f in files:
                        sftp.put(os.path.join(root, f), posixpath.join(target, f))
            elif path:
                sftp.put(path, remote)
            else:
                raise ValueError(f"{name}: source must be a FileAsset, StringAsset or FileArchive")
        return f"{name}_id", {}

    # --- ssh ----------------------------------------------------------------------------
    def _ssh(self, connection):
        """Dial like pulumi-command: bounded retries (dialErrorLimit, default 10) with backoff."""
        c = plain(connection)
        host, port = c["host"], int(c.get("port") or 22)
        limit = int(c.get("dialErrorLimit", 10))
        attempts = limit + 1 if limit >= 0 else 30  # "unlimited" is still bounded here
        timeout = int(c.get("perDialTimeout") or 15)
        pkey = paramiko_key(c["privateKey"], c.get("privateKeyPassword")) if c.get("privateKey") else None
        for attempt in range(1, attempts + 1):
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                client.connect(host, port, username=c.get("user") or "root", pkey=pkey,
                               password=c.get("password"), sock=self.connect(host, port),
                               timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                               look_for_keys=False, allow_agent=False)
                return client
            except (OSError, paramiko.SSHException) as e:
                client.close()
                if attempt == attempts:
                    raise RuntimeError(f"after {attempt - 1} failed attempts: {e!r}") from None
                time.sleep(min(0.25 * 2 ** (attempt - 1), 3))

    def run_remote(self, connection, script, stdin=None, environment=None):
        """Run `script` over SSH; returns (exit status, stdout, stderr). -1 if no status came."""
        with self._ssh(connection) as client:
            chan = client.get_transport().open_session()
            for k, v in (environment or {}).items():
                setenv(chan, k, v)
            chan.exec_command(script)
            err = []
            # Drain stderr in parallel so neither stream can fill the window and stall the other.
            reader = threading.Thread(target=lambda: err.append(chan.makefile_stderr("rb").read()))
            reader.start()
            try:
                if stdin:
                    chan.sendall(stdin.encode())
                chan.shutdown_write()  # EOF, so `cat` and friends finish
            except OSError:
                pass  # the command exited without reading its stdin; its status tells
            out = chan.makefile("rb").read()
            reader.join()
            rc = chan.recv_exit_status()
        return rc, out.decode(errors="replace"), err[0].decode(errors="replace")


def _sftp_makedirs(sftp, path):
    if path in ("", "/"):
        return
    try:
        sftp.stat(path)
    except FileNotFoundError:
        _sftp_makedirs(sftp, posixpath.dirname(path))
        sftp.mkdir(path)
