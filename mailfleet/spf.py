"""SPF terms (RFC 7208 5 and 6): what a user may add to the fleet's record, and what each costs.

Pure functions: mailfleet.config checks `spfExtra` with them, dns_records.py composes the records.
"""

from __future__ import annotations

import ipaddress
import re

LOOKUP_LIMIT = 10  # RFC 7208 4.6.4: more DNS-querying terms make the whole record a permerror
LOOKUP_MECHANISMS = ("include", "a", "mx", "ptr", "exists", "redirect")

_MACRO = r"%\{[slodiphcrtv][0-9]*r?[.\-+,/_=]*\}|%[%_-]"
_DOMAIN_SPEC = re.compile(rf"(?:{_MACRO}|[A-Za-z0-9_.-])+", re.IGNORECASE)
_A_MX_ARGUMENT = re.compile(r"(?::(?P<domain>[^/]+))?(?:/(?P<v4>[0-9]{1,2}))?(?://(?P<v6>[0-9]{1,3}))?")


def _domain_spec(text: str) -> bool:
    return bool(_DOMAIN_SPEC.fullmatch(text)) and "." in text and not text.startswith(".") \
        and ".." not in text


def check_term(value: str) -> str:
    """`value` if it is one mechanism or modifier that may stand before the fleet's -all;
    ValueError saying why not otherwise."""
    if " " in value:
        raise ValueError(f"{value!r} is more than one SPF term: list each on its own")
    term = value.lower()
    qualified = term[:1] in "+-~?"
    name, rest = re.fullmatch(r"([a-z][a-z0-9_.-]*)?(.*)", term[1:] if qualified else term).groups()
    if name == "all":
        raise ValueError(f"{value!r}: the record already ends with -all; another 'all' would change or cut it")
    if name == "redirect":
        raise ValueError(f"{value!r}: a redirect is ignored in a record that has an 'all' (RFC 7208 6.1)")
    if name == "v":
        raise ValueError(f"{value!r}: the version tag is the program's")
    if name in ("include", "exists"):
        ok = rest.startswith(":") and _domain_spec(rest[1:])
    elif name in ("a", "mx"):
        match = _A_MX_ARGUMENT.fullmatch(rest)
        ok = bool(match) and (match["domain"] is None or _domain_spec(match["domain"])) \
            and int(match["v4"] or 0) <= 32 and int(match["v6"] or 0) <= 128
    elif name == "ptr":
        ok = rest == "" or rest.startswith(":") and _domain_spec(rest[1:])
    elif name in ("ip4", "ip6") and rest.startswith(":"):
        try:
            (ipaddress.IPv4Network if name == "ip4" else ipaddress.IPv6Network)(rest[1:], strict=False)
            ok = True
        except ValueError:
            ok = False
    else:  # a modifier: exp=, or one that receivers ignore (RFC 7208 6)
        ok = bool(name) and not qualified and rest.startswith("=") and (name != "exp" or _domain_spec(rest[1:]))
    if not ok:
        raise ValueError(f"{value!r} is not an SPF mechanism or modifier (RFC 7208: e.g. include:_spf.example.com, "
                         "ip4:192.0.2.0/24, a, mx)")
    return value


def lookups(term: str) -> int:
    """DNS lookups a term costs the receiver by itself (an include also costs what it includes)."""
    name = re.match(r"[a-z0-9_.-]*", term.lower().lstrip("+-~?")).group(0)
    return 1 if name in LOOKUP_MECHANISMS else 0


def record(addresses: list[str], extra: tuple[str, ...] = ()) -> str:
    """The fleet's SPF record: its addresses, then the extra terms, then -all."""
    return " ".join(["v=spf1", *(f"ip4:{address}" for address in addresses), *extra, "-all"])
