"""Render the files mailfleet installs, from the jinja2 templates under templates/.

Each template mirrors the path it is installed to (templates/etc/opendkim.conf.j2 becomes
/etc/opendkim.conf; templates/etc/postfix-instance/ stands for /etc/postfix-NAME/). Pure functions
of the validated configuration: no Pulumi, no I/O besides reading the templates.
"""

from __future__ import annotations

import hashlib
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


def default_main_cf(host: Host) -> str:
    first = host.instances[0]
    return _render("etc/postfix/main.cf.j2", myhostname=first.hostname, relay_ip=first.ip)


def instance_main_cf(fleet: Fleet, instance: Instance) -> str:
    return _render(
        "etc/postfix-instance/main.cf.j2",
        instance=instance,
        mail_name=fleet.mail_name,
        mynetworks=mynetworks(fleet),
        relayhost=fleet.relayhost,
        queue=fleet.queue,
        tls_file=tls_file(instance),
    )


def instance_master_cf(instance: Instance) -> str:
    return _render("etc/postfix-instance/master.cf.j2", instance=instance)


def signing_keys(fleet: Fleet) -> list[DkimKey]:
    """The key that signs for each domain: its first configured selector. Deeper domains first,
    because OpenDKIM takes the first SigningTable match and `*@*.example.com` would otherwise
    catch mail from a separately keyed `sub.example.com`."""
    first_per_domain: dict[str, DkimKey] = {}
    for key in fleet.dkim:
        first_per_domain.setdefault(key.domain, key)
    return sorted(first_per_domain.values(), key=lambda k: -k.domain.count("."))


def opendkim_files(fleet: Fleet) -> dict[str, str]:
    """/etc/opendkim.conf and its tables, by installed path."""
    return {
        "/etc/opendkim.conf": _render("etc/opendkim.conf.j2"),
        "/etc/opendkim/KeyTable": _render("etc/opendkim/KeyTable.j2", keys=fleet.dkim, key_dir=DKIM_KEY_DIR),
        "/etc/opendkim/SigningTable": _render("etc/opendkim/SigningTable.j2", signing_keys=signing_keys(fleet)),
        "/etc/opendkim/TrustedHosts": _render("etc/opendkim/TrustedHosts.j2", networks=mynetworks(fleet)),
    }


def cloud_init_metadata(host: Host) -> str:
    # cloud-init re-applies the network section only when instance-id changes, so the id follows
    # the addresses: adding an IP to a VM's config reaches its netplan on the next boot.
    network = (host.network, tuple(i.ip for i in host.instances))
    instance_id = f"mailfleet-{host.name}-{hashlib.sha256(repr(network).encode()).hexdigest()[:12]}"
    return _render("guestinfo/metadata.yaml.j2", host=host, instance_id=instance_id)


def cloud_init_userdata(host: Host, authorized_keys: list[str]) -> str:
    return _render("guestinfo/userdata.yaml.j2", host=host, user=VM_USER,
                   authorized_keys=[key.strip() for key in authorized_keys])
