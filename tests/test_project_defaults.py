"""Pulumi.yaml declares defaults for the simple keys (the CLI hands them to the program when a stack
sets nothing); the pydantic models in mailfleet/config/models.py hold defaults of their own. They must be
the same, or a stack run by the CLI would differ from one the tests and the schema describe."""

import json

import pytest
import yaml
from pydantic.alias_generators import to_camel

from harness import REPO, stack_config
from keys import openssh_private_key
from mailfleet.config import Fleet, parse_config

PROJECT_CONFIG = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["config"]
FIELDS = {to_camel(name): field for name, field in Fleet.model_fields.items()}
JSON_TYPES = {"string": str, "array": tuple, "boolean": bool, "integer": int}


def test_pulumi_yaml_declares_defaults():
    assert {"mailName", "relayNetworks"} <= {key for key, spec in PROJECT_CONFIG.items() if "default" in spec}


@pytest.mark.parametrize("key", sorted(PROJECT_CONFIG))
def test_each_project_key_is_a_fleet_key_with_the_same_default_and_type(key):
    spec = PROJECT_CONFIG[key]
    assert key in FIELDS, f"Pulumi.yaml declares {key}, which mailfleet.config.Fleet does not have"
    field = FIELDS[key]
    default = field.get_default()
    assert json.loads(json.dumps(default)) == spec["default"], (key, default, spec["default"])
    assert isinstance(default, JSON_TYPES[spec["type"]]), (key, spec["type"], default)


def test_the_program_reads_the_same_fleet_with_or_without_the_project_defaults():
    """What the CLI hands over when a stack leaves these keys out changes nothing."""
    config, _ = stack_config(REPO / "Pulumi.dev.yaml", {"mailfleet:sshPrivateKey": openssh_private_key()})
    config = {key: value for key, value in config.items()
              if key.removeprefix("mailfleet:") not in PROJECT_CONFIG}
    defaults = {f"mailfleet:{key}": spec["default"] if isinstance(spec["default"], str) else json.dumps(spec["default"])
                for key, spec in PROJECT_CONFIG.items()}
    assert parse_config({**config, **defaults}) == parse_config(config)
