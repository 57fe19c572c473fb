"""Read and validate the stack configuration (the `mailfleet:` keys of docs/configuration.md).

`parse_config(raw)` takes the raw config map that Pulumi hands the program (full keys such as
`mailfleet:hosts`; structured values arrive as JSON text) and returns a `Fleet`, or raises
`ConfigError` listing every problem at once, each naming the key path. `fleet_warnings(fleet)`
lists what is allowed but probably wrong. Nothing here knows Pulumi, so the program can stop
before any resource is registered and the rules are tested as a table.

The stack config is a tree of pydantic models (camelCase aliases are the config keys). Checking
takes two passes, so that every problem is reported at once and at its own index:
1. the models (models.py): types, the rules of each value (values.py: `DnsName`, `SenderIPv4`,
   `SingleLine`, ...) and the rules inside one object (a vSphere host needs `network`);
2. the rules across objects (rules.py: unique names and IPs, an IP inside its host's network,
   tenants, shaping groups, SPF terms and lookups), read from the raw values.
schema.py turns the models into the stack file's JSON Schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from mailfleet.config.models import (BUILTIN_GROUPS, DEFAULT_GROUP, Backoff, DeliveryWebhook, DkimKey, Dmarc, Fleet, Host, HostNetwork,
                                     Instance, Queue, Shaping, ShapingGroup, ShapingLimits, Suspend, Tenant, Tls,
                                     VmSize, Vsphere, Warmup)
from mailfleet.config.rules import fleet_warnings, plain_passwords, plain_webhook_secret, relations
from mailfleet.config.schema import stack_file_schema
from mailfleet.config.values import (CGNAT, DEFAULT_INSTANCE_ADDRESS, DEFAULT_INTERFACE, DKIM_MAX_BITS, DKIM_MIN_BITS,
                                     NAMESPACE, PASSWORD_SCHEMES, TENANT_PASSWORD_MIN_LENGTH, WIDEST_RELAY_PREFIX,
                                     certificate_covers, is_private, kind_of)

__all__ = ["BUILTIN_GROUPS", "CGNAT", "DEFAULT_GROUP", "DEFAULT_INSTANCE_ADDRESS", "DEFAULT_INTERFACE", "DKIM_MAX_BITS",
           "DKIM_MIN_BITS", "NAMESPACE", "PASSWORD_SCHEMES", "TENANT_PASSWORD_MIN_LENGTH", "WIDEST_RELAY_PREFIX",
           "Backoff", "ConfigError", "DeliveryWebhook", "DkimKey", "Dmarc", "Fleet", "Host", "HostNetwork", "Instance", "Queue", "Shaping",
           "ShapingGroup", "ShapingLimits", "Suspend", "Tenant", "Tls", "VmSize", "Vsphere", "Warmup", "certificate_covers",
           "fleet_warnings", "is_private", "parse_config", "stack_file_schema"]


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def _is_text(field_schema: dict[str, Any]) -> bool:
    return all(option.get("type") in ("string", "null") for option in field_schema.get("anyOf", [field_schema]))


# Everything but plain strings arrives from Pulumi as JSON text: the keys whose JSON type is not a string.
_STRUCTURED = {key for key, field_schema in Fleet.model_json_schema(by_alias=True)["properties"].items()
               if not _is_text(field_schema)}


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def parse_config(raw: dict[str, Any], secret_keys: Iterable[str] = ()) -> Fleet:
    """Validate the raw `mailfleet:*` config map; other namespaces (vsphere:, ...) are ignored,
    unless one is a typo of `mailfleet`. `secret_keys` are the full keys Pulumi holds as secrets:
    a tenant password or the webhook's secret in any other key is refused."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    unreadable: set[str] = set()
    for full_key, value in raw.items():
        namespace, _, key = full_key.partition(":")
        if namespace != NAMESPACE:
            if _edit_distance(namespace.lower(), NAMESPACE) <= 2:
                problems.append(f"{full_key}: namespace {namespace!r} is not {NAMESPACE!r}: did you mean "
                                f"{NAMESPACE}:{key}? (this key would be ignored)")
            continue
        if key in _STRUCTURED and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                problems.append(f"{full_key}: must be structured YAML (a list or an object), got a plain string")
                unreadable.add(key)
        values[key] = value

    fleet = None
    try:
        fleet = Fleet.model_validate(values, by_alias=True, by_name=False)
    except ValidationError as error:
        problems += [problem for key, problem in _problems(error) if key not in unreadable]
    problems += [f"{path}: {message}" for path, message in relations(values)]
    problems += [f"{path}: {message}" for path, message in plain_passwords(values, set(secret_keys))]
    problems += [f"{path}: {message}" for path, message in plain_webhook_secret(values, set(secret_keys))]
    if problems:
        raise ConfigError(problems)
    return fleet


def _path(loc: tuple) -> str:
    path = NAMESPACE
    for i, part in enumerate(loc):
        if part == "[key]":
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += (":" if i == 0 else ".") + (part if str(part).isprintable() else repr(part))
    return path


def _problems(error: ValidationError) -> Iterator[tuple[Any, str]]:
    """(top-level key, "path: message") for each error pydantic found, in the project's words."""
    for item in error.errors(include_url=False):
        loc, kind, value, context = item["loc"], item["type"], item.get("input"), item.get("ctx") or {}
        path = _path(loc)
        if kind == "mailfleet":
            path += context.get("at", "")
            message = context["message"]
        elif kind == "missing":
            field = _field_at(loc)
            message = "is required" + (f": {field.description}" if field and field.description else "")
        elif kind == "extra_forbidden":
            parent = _field_at(loc[:-1])
            model = _model_in(parent.annotation) if parent else Fleet
            known = sorted(f.alias for f in model.model_fields.values()) if model else []
            message = f"unknown key (expected one of: {', '.join(known)})"
        elif kind == "string_type":
            message = f"must be a string, got {kind_of(value)}"
        elif kind in ("list_type", "tuple_type"):
            message = f"must be a list, got {kind_of(value)}"
        elif kind in ("dict_type", "model_type", "model_attributes_type"):
            message = f"must be an object, got {kind_of(value)}"
        elif kind == "bool_type":
            message = f"must be true or false, got {kind_of(value)}"
        elif kind == "literal_error":
            message = f"{value!r} must be {context['expected'].replace(chr(39), '')}"
        else:
            message = item["msg"]
        yield loc[0] if loc else None, f"{path}: {message}"


def _field_at(loc: tuple) -> Any:
    """The pydantic FieldInfo at `loc` in the Fleet tree, or None (for hints in messages)."""
    model, field = Fleet, None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return None
        field = next((f for f in model.model_fields.values() if f.alias == part), None)
        if field is None:
            return None
        model = _model_in(field.annotation)
    return field


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _model_in(argument)
        if found:
            return found
    return None
