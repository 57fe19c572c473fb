"""RealMocks against a throwaway sshd on 127.0.0.1: the mocks must really deploy.

Needs root and /usr/sbin/sshd (installed with apt-get when missing): the tests that use the sshd
are marked `integration`; without root or sshd they skip, and under CI (skips.py) they fail.
"""

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

import pulumi
import pulumi_command as command
import pulumi_tls as tls
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from pulumi.runtime.sync_await import _ensure_event_loop
from keys import pem_label
from skips import skip_or_fail

sys.path.insert(0, os.path.dirname(__file__))
from real_mocks import RealMocks  # noqa: E402

SSHD = "/usr/sbin/sshd"


def _ensure_sshd():
    if os.path.exists(SSHD):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "openssh-server"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)  # only when needed
        subprocess.run(install, env=env, capture_output=True)
    if not os.path.exists(SSHD):
        skip_or_fail("openssh-server could not be installed")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _openssh(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def sshd():
    """A private sshd on 127.0.0.1:<free port>; yields (connection dict, client keys by format)."""
    if os.geteuid() != 0:
        skip_or_fail("not root: sshd needs root to switch users")
    _ensure_sshd()
    tmp = tempfile.mkdtemp(prefix="realmocks-sshd-")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    _write(f"{tmp}/host_key", _openssh(ed25519.Ed25519PrivateKey.generate()))
    # Client keys in the formats a program may hand to `connection.privateKey`.
    none = serialization.NoEncryption()
    pem = serialization.Encoding.PEM
    rsa_key, ec_key = rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    keys = {
        "ed25519-openssh": (ed_key, _openssh(ed_key)),
        "ed25519-pkcs8": (ed_key, ed_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, none).decode()),
        "rsa-pkcs1": (rsa_key, rsa_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                     none).decode()),
        "ecdsa-sec1": (ec_key, ec_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL,
                                                    none).decode()),
    }
    authorized = {k.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH).decode()
                  for k, _ in keys.values()}
    _write(f"{tmp}/authorized_keys", "\n".join(sorted(authorized)) + "\n")
    port = _free_port()
    _write(f"{tmp}/sshd_config", f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {tmp}/host_key
AuthorizedKeysFile {tmp}/authorized_keys
PidFile {tmp}/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AcceptEnv LANG LC_*
UsePAM no
# The key files live under /tmp, which is world-writable: skip the path ownership check.
StrictModes no
Subsystem sftp internal-sftp
""")
    log = open(f"{tmp}/sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", f"{tmp}/sshd_config"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    skip_or_fail("sshd did not start: " + open(f"{tmp}/sshd.log").read()[-2000:])
                time.sleep(0.1)
        connection = {"host": "127.0.0.1", "port": port, "user": "root",
                      "privateKey": keys["ed25519-openssh"][1]}
        yield connection, {name: text for name, (_, text) in keys.items()}, tmp
    finally:
        proc.terminate()  # by PID: only the sshd this fixture started
        proc.wait(timeout=10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


_reported = []  # failures run() has re-raised


def _drop_reported(loop, context):
    # Every output future of a failed resource holds the same exception, and asyncio logs each
    # as "Future exception was never retrieved" when collected: noise once run() has raised it.
    if context.get("exception") not in _reported:
        loop.default_exception_handler(context)


def run(mocks, program):
    """Run `program` as a Pulumi program under `mocks`; returns what its returned Output resolves to."""
    # set_mocks makes a new root Stack only when there is none: drop the last run's, or its
    # exports would pile up into this one.
    pulumi.runtime.settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, preview=False)
    _ensure_event_loop().set_exception_handler(_drop_reported)  # the loop the SDK runs programs on
    result = []

    @pulumi.runtime.test
    def body():
        return pulumi.Output.from_input(program()).apply(result.append)

    try:
        body()
    except Exception as e:
        _reported.append(e)
        raise
    return result[0]


def conn(connection, **overrides):
    c = {**connection, **overrides}
    return command.remote.ConnectionArgs(host=c["host"], port=c["port"], user=c["user"],
                                         private_key=c["privateKey"])


@pytest.mark.integration
def test_command_stdin_stdout_and_delete_script(sshd):
    connection, _, tmp = sshd
    mocks = RealMocks()

    def program():
        cmd = command.remote.Command(
            "echo", connection=conn(connection), create=f"cat > {tmp}/stdin-copy; echo stored; echo note >&2",
            delete=f"rm {tmp}/stdin-copy", stdin=pulumi.Output.secret("s3cret line\n"))
        return pulumi.Output.all(cmd.stdout, cmd.stderr)

    assert run(mocks, program) == ["stored", "note"]  # trailing newline trimmed, as pulumi-command
    with open(f"{tmp}/stdin-copy") as f:
        assert f.read() == "s3cret line\n"  # stdin delivered whole, then EOF (or `cat` would hang)
    assert mocks.log == [{"type": "command:remote:Command", "name": "echo", "stdout": "stored",
                          "seconds": mocks.log[0]["seconds"]}]  # nothing secret in the log
    # A test can later run the delete script of a resource the program dropped.
    inputs = mocks.commands["echo"]
    assert mocks.run_remote(inputs["connection"], inputs["delete"]) == (0, "", "")
    assert not os.path.exists(f"{tmp}/stdin-copy")


@pytest.mark.integration
def test_failing_command_raises_with_status_and_stderr(sshd):
    connection, _, _ = sshd

    def program():
        return command.remote.Command("fails", connection=conn(connection),
                                      create="echo 'it broke' >&2; exit 3").stdout

    with pytest.raises(Exception, match=r"(?s)Process exited with status 3.*it broke"):
        run(RealMocks(), program)


@pytest.mark.integration
def test_environment_accepted_and_refused(sshd):
    connection, _, _ = sshd

    def program(env):
        return command.remote.Command("env", connection=conn(connection), environment=env,
                                      create='echo "$LANG"').stdout

    assert run(RealMocks(), lambda: program({"LANG": "C.UTF-8"})) == "C.UTF-8"
    with pytest.raises(Exception, match='could not set environment variable "MAILFLEET_X": ssh: setenv failed'):
        run(RealMocks(), lambda: program({"LANG": "C.UTF-8", "MAILFLEET_X": "1"}))


@pytest.mark.integration
@pytest.mark.parametrize("key_format", ["ed25519-openssh", "ed25519-pkcs8", "rsa-pkcs1", "ecdsa-sec1"])
def test_private_key_formats_authenticate(sshd, key_format):
    connection, keys, _ = sshd
    dialed = []

    def connect(host, port):  # the socket factory is how the mocks reach a host (e.g. in a netns)
        dialed.append((host, port))
        return socket.create_connection((host, port))

    rc, out, _ = RealMocks(connect).run_remote({**connection, "privateKey": keys[key_format]}, "id -un")
    assert (rc, out, dialed) == (0, "root\n", [(connection["host"], connection["port"])])


@pytest.mark.integration
def test_depends_on_orders_commands(sshd):
    connection, _, tmp = sshd
    mocks = RealMocks()

    def program():
        # No data flows between the two: only depends_on keeps the reader after the slow writer.
        writer = command.remote.Command("writer", connection=conn(connection),
                                        create=f"sleep 1; echo written > {tmp}/order")
        reader = command.remote.Command("reader", connection=conn(connection), create=f"cat {tmp}/order",
                                        opts=pulumi.ResourceOptions(depends_on=[writer]))
        return reader.stdout

    assert run(mocks, program) == "written"
    assert [e["name"] for e in mocks.log] == ["writer", "reader"]


@pytest.mark.integration
def test_copy_to_remote(sshd):
    connection, _, tmp = sshd

    def program():
        copy = command.remote.CopyToRemote("copy", connection=conn(connection),
                                           source=pulumi.StringAsset("copied\n"),
                                           remote_path=f"{tmp}/new/dir/file.txt")
        return command.remote.Command("check", connection=conn(connection), create=f"cat {tmp}/new/dir/file.txt",
                                      opts=pulumi.ResourceOptions(depends_on=[copy])).stdout

    assert run(RealMocks(), program) == "copied"


def test_private_keys_like_the_provider():
    def program():
        keys = {"rsa": tls.PrivateKey("rsa", algorithm="RSA", rsa_bits=3072),
                "ec": tls.PrivateKey("ec", algorithm="ECDSA", ecdsa_curve="P384"),
                "ec224": tls.PrivateKey("ec224", algorithm="ECDSA"),
                "ed": tls.PrivateKey("ed", algorithm="ED25519")}
        return {n: pulumi.Output.all(k.private_key_pem, k.public_key_openssh, k.public_key_fingerprint_sha256,
                                     k.ecdsa_curve) for n, k in keys.items()}

    mocks = RealMocks()
    out = run(mocks, program)
    rsa_pem, rsa_ssh, rsa_fp, _ = out["rsa"]
    assert pem_label(rsa_pem) == "RSA PRIVATE KEY"  # PKCS#1, as the provider writes it
    assert serialization.load_pem_private_key(rsa_pem.encode(), None).key_size == 3072
    assert rsa_ssh.startswith("ssh-rsa ") and rsa_ssh.endswith("\n") and rsa_fp.startswith("SHA256:")
    assert pem_label(out["ec"][0]) == "EC PRIVATE KEY"  # SEC1
    assert out["ec"][1].startswith("ecdsa-sha2-nistp384 ")
    assert out["ec224"][1:] == ["", "", "P224"]  # P224 has no SSH form; it is the default curve
    assert pem_label(out["ed"][0]) == "PRIVATE KEY"  # PKCS#8
    assert "PRIVATE KEY" not in repr(mocks.log)


def test_ca_and_locally_signed_cert_verify_with_python_ssl():
    def program():
        ca_key = tls.PrivateKey("ca-key", algorithm="ECDSA", ecdsa_curve="P256")
        ca = tls.SelfSignedCert("ca", private_key_pem=ca_key.private_key_pem, is_ca_certificate=True,
                                subject=tls.SelfSignedCertSubjectArgs(common_name="mailfleet test CA",
                                                                      organization="mailfleet"),
                                validity_period_hours=24, allowed_uses=["cert_signing", "crl_signing"])
        key = tls.PrivateKey("mx-key", algorithm="RSA")
        csr = tls.CertRequest("mx-csr", private_key_pem=key.private_key_pem,
                              subject=tls.CertRequestSubjectArgs(common_name="mx.example.test"),
                              dns_names=["mx.example.test"], ip_addresses=["127.0.0.1"])
        cert = tls.LocallySignedCert("mx", cert_request_pem=csr.cert_request_pem,
                                     ca_private_key_pem=ca_key.private_key_pem, ca_cert_pem=ca.cert_pem,
                                     validity_period_hours=24, early_renewal_hours=1,
                                     allowed_uses=["digital_signature", "key_encipherment", "server_auth"])
        return pulumi.Output.all(ca.cert_pem, cert.cert_pem, key.private_key_pem)

    ca_pem, cert_pem, key_pem = run(RealMocks(), program)
    leaf = x509.load_pem_x509_certificate(cert_pem.encode())
    assert leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    with tempfile.TemporaryDirectory() as d:
        _write(f"{d}/cert.pem", cert_pem)
        _write(f"{d}/key.pem", key_pem)
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(f"{d}/cert.pem", f"{d}/key.pem")
    client_ctx = ssl.create_default_context(cadata=ca_pem)  # CERT_REQUIRED and check_hostname
    assert _handshake(server_ctx, client_ctx, "mx.example.test")["subject"] == ((("commonName", "mx.example.test"),),)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):  # the name is really checked
        _handshake(server_ctx, client_ctx, "other.example.test")


def _handshake(server_ctx, client_ctx, hostname):
    """TLS handshake over a socketpair; returns the server certificate the client verified."""
    a, b = socket.socketpair()

    def serve():
        try:
            server_ctx.wrap_socket(a, server_side=True).close()
        except (ssl.SSLError, OSError):
            a.close()  # the client side reports what went wrong

    server = threading.Thread(target=serve)
    server.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=hostname) as tls_sock:
            return tls_sock.getpeercert()
    finally:
        b.close()
        server.join()
