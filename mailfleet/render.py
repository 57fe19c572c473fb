"""Render the files mailfleet installs, from the jinja2 templates under templates/.

Each template mirrors the path it is installed to (templates/etc/opendkim.conf.j2 becomes
/etc/opendkim.conf; templates/etc/postfix-instance/ stands for /etc/postfix-NAME/). Pure functions
of the validated configuration: no Pulumi, no I/O besides reading the templates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2

from mailfleet.config import DkimKey, Fleet, Host, Instance

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DKIM_KEY_DIR = "/etc/opendkim/keys"
TLS_DIR = "/etc/mailfleet/tls"
VM_USER = "mailfleet"  # the sudo user cloud-init creates on VMs; root login stays closed

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _render(template: str, **context) -> str:
    return _env.get_template(template).render(**context)


def instance_dir(instance: Instance) -> str:
    return f"/etc/{instance.name}"


def tls_file(instance: Instance) -> str:
    """Private key, certificate and chain in one root-only file (Postfix's smtpd_tls_chain_files)."""
    return f"{TLS_DIR}/{instance.name}.pem"


def dkim_key_file(key: DkimKey) -> str:
    return f"{DKIM_KEY_DIR}/{key.domain}/{key.selector}.private"


def mynetworks(fleet: Fleet) -> list[str]:
    return ["127.0.0.0/8", *fleet.relay_networks]


def signing_domains(fleet: Fleet) -> list[str]:
    """Every domain with a DKIM key, in config order (the first one names local mail's sender)."""
    return list(dict.fromkeys(key.domain for key in fleet.dkim))


def default_main_cf(fleet: Fleet, host: Host) -> str:
    first = host.instances[0]
    return _render("etc/postfix/main.cf.j2", myhostname=f"local.{first.hostname}", relay_ip=first.ip,
                   myorigin=signing_domains(fleet)[0])


def instance_main_cf(fleet: Fleet, instance: Instance) -> str:
    return _render(
        "etc/postfix-instance/main.cf.j2",
        instance=instance,
        directory=instance_dir(instance),
        mail_name=fleet.mail_name,
        mynetworks=mynetworks(fleet),
        relayhost=fleet.relayhost,
        queue=fleet.queue,
        tls_file=tls_file(instance),
        signing_domains=[] if fleet.allow_unsigned_senders else signing_domains(fleet),
        milters=[signer.milter for signer in signers(fleet)],
    )


def instance_master_cf(instance: Instance) -> str:
    return _render("etc/postfix-instance/master.cf.j2", instance=instance)


def instance_tables(instance: Instance) -> dict[str, str]:
    """The lookup tables main.cf names, by installed path (beside main.cf)."""
    return {f"{instance_dir(instance)}/{name}": _render(f"etc/postfix-instance/{name}.j2", instance=instance)
            for name in ("recipient_access", "header_checks")}


@dataclass(frozen=True)
class Signer:
    """One OpenDKIM process. Debian's OpenDKIM 2.11 signs every message with its one
    SignatureAlgorithm (an Ed25519 key under rsa-sha256 fails, and the message is tempfailed), so
    each algorithm in use has its own process, configuration, tables and milter socket; Postfix
    calls them in turn, and a domain with both kinds of key carries both signatures."""

    algorithm: str  # "rsa" or "ed25519", as in mailfleet:dkim
    unit: str  # the systemd unit
    conf: str  # its configuration file
    tables: str  # the directory of its KeyTable and SigningTable

    @property
    def socket(self) -> str:
        """A unix socket: over loopback TCP every message stalled ~87 ms on delayed ACKs."""
        return f"{MILTER_SOCKET_DIR}/{self.unit}.sock"

    @property
    def milter(self) -> str:
        return f"unix:{self.socket}"

    @property
    def signature_algorithm(self) -> str:
        return f"{self.algorithm}-sha256"


# opendkim:postfix, mode 2750: the sockets inherit group postfix (setgid), so Postfix reaches them
# and no other account does. Postfix daemons drop supplementary groups, so "postfix in group
# opendkim" would not do.
MILTER_SOCKET_DIR = "/var/spool/opendkim"
RSA_SIGNER = Signer("rsa", "opendkim", "/etc/opendkim.conf", "/etc/opendkim")  # Debian's own unit
ED25519_SIGNER = Signer("ed25519", "opendkim-ed25519", "/etc/opendkim-ed25519.conf", "/etc/opendkim/ed25519")
ED25519_UNIT_FILE = "/etc/systemd/system/opendkim-ed25519.service"


def signers(fleet: Fleet) -> list[Signer]:
    """The RSA signer always runs (Debian's opendkim.service); the Ed25519 one when a key needs it."""
    return [RSA_SIGNER] + ([ED25519_SIGNER] if any(k.algorithm == "ed25519" for k in fleet.dkim) else [])


def signing_keys(fleet: Fleet, algorithm: str = "rsa") -> list[DkimKey]:
    """The keys of one algorithm that sign: per domain, the first configured key of that
    algorithm (later ones are only published, for rotation). Deeper domains first, so that a
    separately keyed `sub.example.com` is listed before `*@*.example.com`; every SigningTable
    match signs (MultipleSignatures), so such mail also carries the parent domain's signature,
    which is harmless and aligned for DMARC."""
    first: dict[str, DkimKey] = {}
    for key in fleet.dkim:
        if key.algorithm == algorithm:
            first.setdefault(key.domain, key)
    return sorted(first.values(), key=lambda k: -k.domain.count("."))


def opendkim_files(fleet: Fleet) -> dict[str, str]:
    """Every OpenDKIM configuration file, by installed path: per signer its opendkim.conf,
    KeyTable and SigningTable; one TrustedHosts; the unit of the Ed25519 signer when it runs."""
    files = {}
    for signer in signers(fleet):
        keys = [key for key in fleet.dkim if key.algorithm == signer.algorithm]
        files[signer.conf] = _render("etc/opendkim.conf.j2", signer=signer)
        files[f"{signer.tables}/KeyTable"] = _render("etc/opendkim/KeyTable.j2", keys=keys, key_dir=DKIM_KEY_DIR)
        files[f"{signer.tables}/SigningTable"] = _render("etc/opendkim/SigningTable.j2",
                                                         signing_keys=signing_keys(fleet, signer.algorithm))
    files["/etc/opendkim/TrustedHosts"] = _render("etc/opendkim/TrustedHosts.j2", networks=mynetworks(fleet))
    if ED25519_SIGNER in signers(fleet):
        files[ED25519_UNIT_FILE] = _render("etc/systemd/system/opendkim-ed25519.service.j2", signer=ED25519_SIGNER)
    return files


def cloud_init_metadata(host: Host) -> str:
    # cloud-init re-applies the network section only when instance-id changes, so the id follows
    # the addresses: adding an IP to a VM's config reaches its netplan on the next boot.
    network = (host.network, tuple(i.ip for i in host.instances))
    instance_id = f"mailfleet-{host.name}-{hashlib.sha256(repr(network).encode()).hexdigest()[:12]}"
    return _render("guestinfo/metadata.yaml.j2", host=host, instance_id=instance_id)


def cloud_init_userdata(host: Host, authorized_keys: list[str]) -> str:
    return _render("guestinfo/userdata.yaml.j2", host=host, user=VM_USER,
                   authorized_keys=[key.strip() for key in authorized_keys])
