"""The JSON Schema of a whole Pulumi.<stack>.yaml, from the models (schema/mailfleet-stack.schema.json)."""

from __future__ import annotations

from typing import Any

from mailfleet.config.models import Fleet
from mailfleet.config.values import NAMESPACE


def stack_file_schema() -> dict[str, Any]:
    """JSON Schema of a whole Pulumi.<stack>.yaml, with the `mailfleet:` keys from the models."""
    fleet = Fleet.model_json_schema(by_alias=True, mode="validation")
    definitions = fleet.pop("$defs", {})
    secure = {"type": "object", "properties": {"secure": {"type": "string"}}, "required": ["secure"],
              "additionalProperties": False, "description": "a secret set with `pulumi config set --secret`"}
    properties = {}
    for key, schema in fleet["properties"].items():
        if key in ("sshPrivateKey", "tls", "tenants", "deliveryWebhook"):
            schema = {"anyOf": [schema, {"$ref": "#/$defs/secure"}]}
        properties[f"{NAMESPACE}:{key}"] = schema
    tls = definitions["Tls"]["properties"]
    tls["keyPem"] = {"anyOf": [tls["keyPem"], {"$ref": "#/$defs/secure"}]}
    # In the file a tenant password is only ever a secret (`pulumi config set --secret --path`).
    tenant = definitions["Tenant"]["properties"]
    tenant["password"] = {"$ref": "#/$defs/secure", "description": tenant["password"]["description"]}
    # ... and so is the webhook's signing secret.
    webhook = definitions["DeliveryWebhook"]["properties"]
    webhook["secret"] = {"$ref": "#/$defs/secure", "description": webhook["secret"]["description"]}
    config = {
        "type": "object",
        "description": "Stack configuration: mailfleet's keys, and other namespaces (vsphere:, ...) left alone.",
        "properties": properties,
        "patternProperties": {rf"^(?!{NAMESPACE}:)[^:]+:.+$": {}},
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:mailfleet:pulumi-stack-file",
        "title": "Pulumi.<stack>.yaml of mailfleet",
        "type": "object",
        "properties": {
            "config": config,
            "environment": {"type": "array", "items": {"type": "string"}},
            "secretsprovider": {"type": "string"},
            "encryptedkey": {"type": "string"},
            "encryptionsalt": {"type": "string"},
        },
        # Required keys may come from a Pulumi ESC environment instead of the file.
        "if": {"not": {"required": ["environment"]}},
        "then": {"properties": {"config": {"required": [f"{NAMESPACE}:{key}" for key in fleet.get("required", [])]}},
                 "required": ["config"]},
        "$defs": {**definitions, "secure": secure},
    }
