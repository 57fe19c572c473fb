"""Refuse a stack file that holds a key or password in plaintext.

    python policy/check_stack_file.py Pulumi.prod.yaml [...]

A policy pack cannot see whether stack configuration is secret (see mailfleet_policy.py), so
this checks the file itself, where a plaintext key would end up in git. `pulumi config set
--secret` stores a value as `{secure: v1:...}`; so does `--secret --path 'mailfleet:tls.keyPem'`
for one field of an object. Configuration from a Pulumi ESC environment is not in the file and
needs no check here (so do not pass a stack file that does not exist: that is an error, as a
typo in the name would otherwise check nothing). Exit status 1 names each offending key or file.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Iterator

import yaml

MUST_BE_SECRET = ("mailfleet:sshPrivateKey", "mailfleet:tls.keyPem", "mailfleet:deliveryWebhook.secret",
                  "vsphere:password")
# Paths with an index: each tenant's password (`--secret --path 'mailfleet:tenants[0].password'`).
MUST_BE_SECRET_PATTERNS = (re.compile(r"mailfleet:tenants\[[0-9]+\]\.password"),)
PRIVATE_KEY_MARKER = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")


def _is_secure(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"secure"}


def _plain_values(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of every value that is not under a {secure: ...}."""
    if _is_secure(value):
        return
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _plain_values(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _plain_values(item, f"{path}[{index}]")


def plaintext_secrets(stack_file: dict) -> list[str]:
    """Problems, one per key: the listed secrets, and any private key anywhere, in plaintext."""
    problems = []
    for key, value in (stack_file.get("config") or {}).items():
        for path, plain in _plain_values(value, key):
            must = path in MUST_BE_SECRET or any(p.fullmatch(path) for p in MUST_BE_SECRET_PATTERNS)
            if must and plain not in (None, ""):
                problems.append(f"{path} is in plaintext: set it with `pulumi config set --secret`")
            elif isinstance(plain, str) and PRIVATE_KEY_MARKER.search(plain):
                problems.append(f"{path} holds a private key in plaintext: set it with `pulumi config set --secret`")
    return problems


def main(paths: list[str]) -> int:
    if paths and paths[0] in ("-h", "--help"):
        print("usage: check_stack_file.py Pulumi.<stack>.yaml [...]\n\n" + __doc__.split("\n\n", 2)[2])
        return 0
    if not paths:
        print("usage: check_stack_file.py Pulumi.<stack>.yaml [...]", file=sys.stderr)
        return 2
    problems = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as file:
                stack_file = yaml.safe_load(file) or {}
        except FileNotFoundError:
            problems.append(f"{path}: no such file, so nothing was checked (a stack configured only in "
                            "Pulumi ESC has no file: leave it out of the list)")
            continue
        problems += [f"{path}: {problem}" for problem in plaintext_secrets(stack_file)]
    print("\n".join(problems) or f"no plaintext secrets in {', '.join(paths)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
