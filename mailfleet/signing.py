"""DKIM signing on a host: OpenDKIM (Debian's package) as the milter of every Postfix instance.

Everything about signing is here: the installed paths, the tables, the signatures the deploy probe
expects, the files and the step scripts, rendered from templates/etc/opendkim*,
templates/etc/systemd/system/opendkim* and templates/steps/dkim_*.sh.j2 and migrate_signer.sh.j2.
Pure text: no Pulumi, no I/O besides reading the templates.

Debian's OpenDKIM 2.11 signs every message of a process with its one SignatureAlgorithm (an Ed25519
key under rsa-sha256 fails and the message is tempfailed), so each algorithm in use has its own
process, configuration, tables and socket: Debian's opendkim.service for RSA, always; mailfleet's
opendkim-ed25519.service where an Ed25519 key exists. Postfix calls them in turn, so a domain with
both kinds of key carries both signatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mailfleet import render, remote_scripts
from mailfleet.config import DkimKey

USER = "opendkim"  # the package's account; the keys are readable by it alone
TABLES = "/etc/opendkim"
KEY_DIR = f"{TABLES}/keys"
TRUSTED_HOSTS = f"{TABLES}/TrustedHosts"
# opendkim:postfix, mode 2750: the sockets inherit group postfix (setgid), so Postfix reaches them
# and no other account does (Postfix daemons drop supplementary groups, so "postfix in group
# opendkim" would not do). Unix sockets: over loopback TCP every message stalled ~87 ms on delayed
# ACKs. The instances' smtpd and cleanup run unchrooted to reach them (master.cf).
SOCKET_DIR = "/var/spool/opendkim"
# Every signed header field: what mailfleet signed before (the fields readers see, MIME-Version,
# Content-Type, both List-Unsubscribe fields), Content-Transfer-Encoding (so a relay cannot
# re-encode the body under a valid signature), Sender, the threading and list fields, and
# Feedback-ID (Gmail's feedback loop). OpenDKIM signs only those a message has.
SIGN_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "Sender", "MIME-Version",
                "Content-Type", "Content-Transfer-Encoding", "In-Reply-To", "References", "List-Id",
                "List-Unsubscribe", "List-Unsubscribe-Post", "Feedback-ID")
# Signed once more than they occur: a copy prepended later (a second From, Subject or
# unsubscribe link above the signed one, which many readers show) breaks the signature.
OVERSIGN_HEADERS = ("From", "To", "Cc", "Subject", "Reply-To", "List-Unsubscribe", "List-Unsubscribe-Post")
# With tenants, the milter macro OpenDKIM takes the signing address from (SenderMacro): the envelope
# sender, which Postfix binds to the tenant's domains, instead of the From: field the client writes.
SENDER_MACRO = "{mail_addr}"
# The mailfleet-signer that signed before OpenDKIM came back (migrate_signer.sh.j2 removes it).
OLD_SIGNER_UNIT = "mailfleet-signer"


@dataclass(frozen=True)
class Signer:
    """One OpenDKIM process: its algorithm ("rsa" or "ed25519", as in mailfleet:dkim), unit,
    configuration file and the directory of its KeyTable and SigningTable."""

    algorithm: str
    unit: str
    conf: str
    tables: str

    @property
    def socket(self) -> str:
        return f"{SOCKET_DIR}/{self.unit}.sock"

    @property
    def milter(self) -> str:
        return f"unix:{self.socket}"

    @property
    def dropin(self) -> str:
        """How mailfleet runs it: unprivileged, in the foreground, hardened (one drop-in for both)."""
        return f"/etc/systemd/system/{self.unit}.service.d/mailfleet.conf"


RSA = Signer("rsa", "opendkim", "/etc/opendkim.conf", TABLES)  # Debian's own unit
ED25519 = Signer("ed25519", "opendkim-ed25519", "/etc/opendkim-ed25519.conf", f"{TABLES}/ed25519")
ED25519_UNIT_FILE = f"/etc/systemd/system/{ED25519.unit}.service"


def signers(keys: Sequence[DkimKey]) -> list[Signer]:
    """The RSA signer always runs (Debian's opendkim.service); the Ed25519 one when a key needs it."""
    return [RSA] + ([ED25519] if any(key.algorithm == "ed25519" for key in keys) else [])


def milters(keys: Sequence[DkimKey]) -> list[str]:
    """What every instance's smtpd_milters names: each signer's socket."""
    return [signer.milter for signer in signers(keys)]


def key_file(key: DkimKey) -> str:
    return f"{KEY_DIR}/{key.domain}/{key.selector}.private"


def signing_keys(keys: Sequence[DkimKey], algorithm: str = "rsa") -> list[DkimKey]:
    """The keys of one algorithm that sign: per domain, the first configured key of that algorithm
    (later ones are only published, for rotation). Deeper domains first, so that a separately keyed
    `sub.example.com` is listed before `*@*.example.com`; every SigningTable match signs
    (MultipleSignatures), so such mail also carries the parent domain's signature, which is
    harmless and aligned for DMARC."""
    first: dict[str, DkimKey] = {}
    for key in keys:
        if key.algorithm == algorithm:
            first.setdefault(key.domain, key)
    return sorted(first.values(), key=lambda k: -k.domain.count("."))


def expected_signatures(keys: Sequence[DkimKey], signer: Signer, domain: str) -> list[str]:
    """The signatures `signer` adds to mail from `domain`, as the probe reads them ("d= s= a="),
    as the SigningTable's `*@domain` and `*@*.domain` rules select them."""
    return sorted(f"d={key.domain} s={key.selector} a={key.algorithm}-sha256"
                  for key in signing_keys(keys, signer.algorithm)
                  if domain == key.domain or domain.endswith(f".{key.domain}"))


def files(keys: Sequence[DkimKey], networks: Sequence[str], by_envelope: bool = False) -> dict[str, str]:
    """Every OpenDKIM file, by installed path: per signer its configuration, KeyTable,
    SigningTable and unit drop-in; one TrustedHosts (the clients whose mail is signed); the unit of
    the Ed25519 signer when it runs. `by_envelope` (with tenants): the key is chosen by the envelope
    sender's domain, not the From: field's."""
    out = {}
    for signer in signers(keys):
        out[signer.conf] = render.render("etc/opendkim.conf.j2", signer=signer, trusted_hosts=TRUSTED_HOSTS,
                                         sign_headers=SIGN_HEADERS, oversign_headers=OVERSIGN_HEADERS,
                                         sender_macro=SENDER_MACRO if by_envelope else None)
        out[f"{signer.tables}/KeyTable"] = render.render(
            "etc/opendkim/KeyTable.j2", keys=[k for k in keys if k.algorithm == signer.algorithm], key_dir=KEY_DIR)
        out[f"{signer.tables}/SigningTable"] = render.render(
            "etc/opendkim/SigningTable.j2", signing_keys=signing_keys(keys, signer.algorithm))
        out[signer.dropin] = render.render("etc/systemd/system/opendkim.service.d/mailfleet.conf.j2",
                                           signer=signer, user=USER, socket_dir=SOCKET_DIR)
    out[TRUSTED_HOSTS] = render.render("etc/opendkim/TrustedHosts.j2", networks=networks)
    if ED25519 in signers(keys):
        out[ED25519_UNIT_FILE] = render.render("etc/systemd/system/opendkim-ed25519.service.j2", signer=ED25519)
    return out


# ---- the steps ----

_COMMON = dict(user=USER, tables=TABLES, key_dir=KEY_DIR, socket_dir=SOCKET_DIR)


def keys_step(private_keys: dict[DkimKey, str]) -> str:
    """The DKIM private keys, readable by opendkim only; the signers that run re-read them."""
    keys = {key_file(key): pem for key, pem in private_keys.items()}
    domains = list(dict.fromkeys(key.domain for key in private_keys))
    return remote_scripts.script("dkim_keys", keys=keys, domains=domains, all_signers=(RSA, ED25519), **_COMMON)


def keys_delete_step() -> str:
    """On destroy (after every instance is gone): no private key stays behind, nothing signs."""
    return remote_scripts.script("dkim_keys_delete", all_signers=(RSA, ED25519), ed_unit_file=ED25519_UNIT_FILE,
                                 trusted_hosts=TRUSTED_HOSTS, **_COMMON)


def config_step(keys: Sequence[DkimKey], networks: Sequence[str], by_envelope: bool = False) -> str:
    """OpenDKIM's files, the units (re)started or reloaded, and every signer probed: for each signing
    domain the signatures it must add, each verified against the installed key's public half."""
    probes = [(signer, [(f"postmaster@{domain}", ";".join(expected_signatures(keys, signer, domain)))
                        for domain in dict.fromkeys(key.domain for key in keys)])
              for signer in signers(keys)]
    return remote_scripts.script("dkim_config", files=files(keys, networks, by_envelope), signers=signers(keys), ed=ED25519,
                                 ed_unit_file=ED25519_UNIT_FILE, probes=probes,
                                 key_files=[key_file(key) for key in keys], **_COMMON)


def migrate_signer_step(ssh_user: str) -> str:
    """Once every instance names OpenDKIM's sockets: mailfleet-signer (which signed before) goes."""
    return remote_scripts.script("migrate_signer", unit=OLD_SIGNER_UNIT, ssh_user=ssh_user)
