"""Tenants' credentials as Dovecot stores them, and who may send as which domain. Pure functions.

A password from the stack config is hashed here, with Argon2id (argon2-cffi, the reference
implementation), into Dovecot's `{ARGON2ID}` form, which Dovecot verifies with libsodium. The salt
is derived from the password and the tenant's name, so the same password gives the same hash on
every run: a re-apply changes no file, and the hash moves only when the password does. It is a
salt all the same: two tenants (or two stacks' tenants of other names) with one password get
different hashes, and a precomputed table would have to be built per tenant name.
"""

from __future__ import annotations

import hashlib
import hmac

from argon2.low_level import Type, hash_secret

from mailfleet.config import Fleet, Instance, Tenant

# RFC 9106's second recommended setting (64 MiB, 3 passes), with one lane: libsodium, which
# verifies the hash in Dovecot, computes one lane only. ~0.3 s here, per tenant and per AUTH.
ARGON2_MEMORY_KIB = 65536
ARGON2_TIME_COST = 3
ARGON2_PARALLELISM = 1
SALT_BYTES = 16
HASH_BYTES = 32


def password_hash(tenant: Tenant) -> str:
    """The tenant's Dovecot password field: its passwordHash as given, or its password hashed."""
    if tenant.password_hash is not None:
        return tenant.password_hash
    password = tenant.password.encode()
    salt = hmac.new(password, f"mailfleet tenant {tenant.name}".encode(), hashlib.sha256).digest()[:SALT_BYTES]
    encoded = hash_secret(password, salt, time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB,
                          parallelism=ARGON2_PARALLELISM, hash_len=HASH_BYTES, type=Type.ID)
    return "{ARGON2ID}" + encoded.decode()


def passwd_file(tenants: dict[str, str]) -> str:
    """A Dovecot passwd-file: `name:hash` a line, from tenant name -> password hash."""
    return "".join(f"{name}:{hashed}\n" for name, hashed in sorted(tenants.items()))


def allowed(fleet: Fleet, instance: Instance) -> list[Tenant]:
    """The tenants that may authenticate on this instance."""
    return [tenant for tenant in fleet.tenants if tenant.allowed_on(instance)]


def sender_owners(fleet: Fleet) -> dict[str, list[str]]:
    """Postfix's smtpd_sender_login_maps: `@domain` -> the tenants that may send as it."""
    owners: dict[str, list[str]] = {}
    for tenant in fleet.tenants:
        for domain in tenant.domains:
            owners.setdefault(f"@{domain}", []).append(tenant.name)
    return dict(sorted(owners.items()))
