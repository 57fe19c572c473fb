"""The rules of the mailfleet policy pack, as plain validator functions.

Each validator takes the `args` pulumi_policy passes (`resource_type`, `name`, `props` with
camelCase input names, `opts`) and a `report_violation` callback; `__main__.py` wires them into
the pack. Inputs that are unknown during preview raise pulumi_policy's UnknownValueError, which
the pack reports as "can't run during preview"; the rule then runs at `pulumi up`, when they are
known.

What a Python policy pack can and cannot see (pulumi-policy 1.21, read in its source):

* Secret resource inputs arrive as plain values. The engine sends them marked as secrets, but
  `Analyze` and `AnalyzeStack` deserialize with `proxy_secrets=False`, which drops the mark (only
  `Remediate` keeps it). So "a private key is fine if it is a secret" cannot be checked from
  `props`. What a validator does see is `opts.additional_secret_outputs`: the generated SDKs put
  every schema-secret input there (pulumi-command adds `connection`, pulumi-tls adds
  `privateKeyPem`), and a program that sends a key in `stdin` adds `stdin` itself, which also
  keeps the echoed output encrypted in the state. `no-plain-private-keys` therefore allows a key
  only in an input named there. A key wrapped in `Output.secret` but not named there is reported
  (the safe direction); a key encoded in base64 or gzip (cloud-init guestinfo) is not seen.

* Stack configuration is out of reach as configuration secrets. `args.get_config()` is the
  policy's own configuration (`--policy-pack-config`), not the stack's. The engine passes the
  stack's configuration to the pack's process only as `PULUMI_CONFIG`, decrypted and without
  marking which keys were secret, and the Python library ignores the config sent to
  `ConfigureStack`. So "mailfleet:sshPrivateKey and mailfleet:tls keyPem must be secret" is not a
  policy here: `check_stack_file.py` checks it in `Pulumi.<stack>.yaml`, which is where a
  plaintext key would leak (into git), and the CI workflows run it before every preview and up.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Iterator

from pulumi_policy.proxy import UnknownValueError

ReportViolation = Callable[..., None]

# PEM ("RSA PRIVATE KEY", "EC PRIVATE KEY", "PRIVATE KEY", "ENCRYPTED PRIVATE KEY") and OpenSSH.
PRIVATE_KEY_MARKER = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")

MIN_DKIM_RSA_BITS = 2048
TLS_DEFAULT_RSA_BITS = 2048  # pulumi-tls's default when rsaBits is not set


# ---- reading Postfix main.cf out of a command's stdin ---------------------------------------

_HEREDOC_START = re.compile(r"<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")


def heredoc_bodies(script: str) -> list[str]:
    """The bodies of the shell here-documents in a script (`cat > f <<'EOF' ... EOF`)."""
    bodies = []
    lines = script.splitlines()
    index = 0
    while index < len(lines):
        start = _HEREDOC_START.search(lines[index])
        index += 1
        if not start:
            continue
        strip_tabs, word = start.group(1) == "-", start.group(3)
        body = []
        while index < len(lines) and (lines[index].lstrip("\t") if strip_tabs else lines[index]) != word:
            body.append(lines[index])
            index += 1
        index += 1  # the terminator
        bodies.append("\n".join(body))
    return bodies


def parse_main_cf(text: str) -> dict[str, str]:
    """`key = value` settings as Postfix reads them: # comments, indented continuation lines,
    and the last assignment wins."""
    settings: dict[str, str] = {}
    last_key = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and last_key:
            settings[last_key] += " " + line.strip()
            continue
        key, equals, value = line.partition("=")
        if equals and key.strip():
            last_key = key.strip()
            settings[last_key] = value.strip()
    return settings


def instance_main_cfs(stdin: str) -> list[dict[str, str]]:
    """The settings of each Postfix instance main.cf (one with multi_instance_name) in stdin,
    whether stdin is a script of here-documents or the file itself."""
    texts = heredoc_bodies(stdin) or [stdin]
    found = [parse_main_cf(text) for text in texts]
    return [settings for settings in found if "multi_instance_name" in settings]


def _expand(value: str, settings: Mapping[str, str]) -> str:
    # One level of $name / ${name}, enough for `smtp_bind_address = $inet_interfaces`.
    return re.sub(r"\$\{?(\w+)\}?", lambda m: settings.get(m.group(1), m.group(0)), value)


# ---- validators -----------------------------------------------------------------------------

def dkim_key_strength(args: Any, report_violation: ReportViolation) -> None:
    """A DKIM signing key is RSA of at least 2048 bits (receivers reject weaker RSA keys,
    RFC 8301) or Ed25519 (RFC 8463); DKIM knows no other algorithm."""
    if args.resource_type != "tls:index/privateKey:PrivateKey" or "dkim" not in args.name.lower():
        return
    algorithm = args.props.get("algorithm")
    if algorithm == "ED25519":
        return
    if algorithm != "RSA":
        report_violation(f"DKIM key {args.name} uses algorithm {algorithm!r}; it must be 'RSA' or 'ED25519'")
        return
    bits = args.props.get("rsaBits") or TLS_DEFAULT_RSA_BITS
    if bits < MIN_DKIM_RSA_BITS:
        report_violation(f"DKIM key {args.name} has rsaBits {int(bits)}; it must be at least {MIN_DKIM_RSA_BITS}")


def instance_source_address(args: Any, report_violation: ReportViolation) -> None:
    """A Postfix instance sends from the IP it listens on. Without smtp_bind_address, mail leaves
    from the host's primary address, and the separate senders (and their PTR, SPF and reputation)
    are separate in name only."""
    if args.resource_type != "command:remote:Command" or not args.name.endswith("-config"):
        return
    stdin = args.props.get("stdin")
    if not isinstance(stdin, str):
        return
    for settings in instance_main_cfs(stdin):
        instance = settings["multi_instance_name"]
        listen = _expand(settings.get("inet_interfaces", ""), settings)
        bind = _expand(settings.get("smtp_bind_address", ""), settings)
        if not bind:
            report_violation(f"{instance}: main.cf sets no smtp_bind_address, so its mail leaves from the "
                             f"host's primary address instead of {listen or 'its own IP'}")
        elif bind != listen:
            report_violation(f"{instance}: smtp_bind_address {bind!r} differs from inet_interfaces {listen!r}")


WIDEST_RELAY_PREFIX = 8  # the same limit as the program's config validation


def relay_networks_not_open(args: Any, report_violation: ReportViolation) -> None:
    """No instance relays for a network wider than /8 (0.0.0.0/0 is an open relay that DKIM-signs
    for the world). Reads `mynetworks` of each instance main.cf in a -config command's stdin,
    which is what the hosts get; the config validation refuses the same, this catches a program
    or template change that would bypass it."""
    if args.resource_type != "command:remote:Command" or not args.name.endswith("-config"):
        return
    stdin = _known(args.props, "stdin")
    if not isinstance(stdin, str):
        return
    for settings in instance_main_cfs(stdin):
        instance = settings["multi_instance_name"]
        if "mynetworks" not in settings:
            report_violation(f"{instance}: main.cf sets no mynetworks, so Postfix derives it from "
                             "mynetworks_style; mailfleet always lists its relay networks")
            continue
        for entry in re.split(r"[\s,]+", _expand(settings["mynetworks"], settings).strip()):
            try:
                network = ipaddress.ip_network(entry.strip("[]").replace("]/", "/"), strict=False)
            except ValueError:
                continue  # a lookup table or a name; the program writes neither
            if network.prefixlen < (WIDEST_RELAY_PREFIX if network.version == 4 else 16):
                report_violation(f"{instance}: mynetworks holds {entry}, wider than /{WIDEST_RELAY_PREFIX}: "
                                 "that lets a large part of the internet relay mail, DKIM-signed, through it")


_MILTER_ACCEPT = re.compile(r"\bmilter_default_action\s*=\s*accept\b")


def milter_never_accept(args: Any, report_violation: ReportViolation) -> None:
    """When the DKIM signer is down, `accept` sends mail unsigned (it then fails DMARC); the default,
    `tempfail`, keeps it queued until the milter is back. Looks at main.cf lines, `postconf -e`
    and master.cf `-o` overrides alike."""
    for field in ("stdin", "create", "update"):
        text = _known(args.props, field)
        if isinstance(text, str) and _MILTER_ACCEPT.search(text):
            report_violation(f"{field} sets milter_default_action = accept; use tempfail so that mail is "
                             "never sent unsigned when the DKIM signer is down")


def _known(container: Any, key: Any) -> Any:
    """container[key], or None when it is absent or not known yet (during preview; the rule runs
    again at `pulumi up`, when it is)."""
    try:
        return container[key]
    except (KeyError, UnknownValueError):
        return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key in value:
            yield from _strings(_known(value, key))
    elif isinstance(value, Sequence):
        for index in range(len(value)):
            yield from _strings(_known(value, index))
    elif isinstance(getattr(value, "text", None), str):  # a StringAsset is stored in the state
        yield value.text


def no_plain_private_keys(args: Any, report_violation: ReportViolation) -> None:
    """No private key in an input that the state would keep in plaintext. See the module
    docstring for why "secret" means "named in additionalSecretOutputs" here."""
    secret_inputs = set(getattr(args.opts, "additional_secret_outputs", None) or [])
    for name in args.props:
        if name in secret_inputs:
            continue
        if any(PRIVATE_KEY_MARKER.search(text) for text in _strings(_known(args.props, name))):
            report_violation(f"input {name!r} of {args.name} holds a private key but is not secret: pass it "
                             f"as a secret and list {name!r} in additional_secret_outputs")


VALIDATORS = {
    "dkim-key-strength": dkim_key_strength,
    "instance-source-address": instance_source_address,
    "milter-never-accept": milter_never_accept,
    "no-plain-private-keys": no_plain_private_keys,
    "relay-networks-not-open": relay_networks_not_open,
}
