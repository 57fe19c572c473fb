"""The JSON Schema of Pulumi.<stack>.yaml (schema/mailfleet-stack.schema.json): generated from the
config models, kept current, and right about real stack files."""

import copy
import json

import jsonschema
import pytest
import yaml

from harness import REPO
from mailfleet.config import stack_file_schema

SCHEMA_FILE = REPO / "schema" / "mailfleet-stack.schema.json"
REGENERATE = "venv/bin/python -m mailfleet.config > schema/mailfleet-stack.schema.json"


def test_the_committed_schema_is_the_one_the_models_generate():
    generated = json.dumps(stack_file_schema(), indent=2) + "\n"
    assert SCHEMA_FILE.read_text() == generated, (
        f"{SCHEMA_FILE.relative_to(REPO)} is out of date with mailfleet/config/: regenerate it with\n"
        f"    {REGENERATE}\nand commit it")


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def readme_stacks() -> list[dict]:
    texts = [path.read_text() for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]]
    blocks = [block.split("```", 1)[0] for text in texts for block in text.split("```yaml\n")[1:]]
    # A whole stack file: its first line that is not a comment is `config:`.
    return [yaml.safe_load(block) for block in blocks
            if next((line for line in block.splitlines() if not line.startswith("#")), "") == "config:"]


def problems(validator, document) -> list[str]:
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_example_stack_files_are_valid(validator, stack):
    assert problems(validator, yaml.safe_load((REPO / f"Pulumi.{stack}.yaml").read_text())) == []


def test_the_readme_stack_examples_are_valid(validator):
    stacks = readme_stacks()
    assert len(stacks) >= 2
    for stack in stacks:
        assert problems(validator, stack) == [], stack


DEV = yaml.safe_load((REPO / "Pulumi.dev.yaml").read_text())


def dev_with(key: str, value) -> dict:
    document = copy.deepcopy(DEV)
    document["config"][key] = value
    return document


@pytest.mark.parametrize("key,value,where", [
    ("mailfleet:relayNetwork", ["10.0.0.0/16"], "config"),                   # a typo of a key
    ("mailfleet:relayNetworks", ["0.0.0.0/0"], "config.mailfleet:relayNetworks.0"),
    ("mailfleet:relayNetworks", "10.0.0.0/16", "config.mailfleet:relayNetworks"),
    ("mailfleet:dkim", [{"domain": "example.com"}], "config.mailfleet:dkim.0"),
    ("mailfleet:dkim", [{"domain": "example.com", "selector": "s1", "algorithm": "dsa"}], "config.mailfleet:dkim.0.algorithm"),
    ("mailfleet:hosts", [{"name": "mx1", "address": "192.0.2.1",
                          "instances": [{"name": "smtp-1", "ip": "192.0.2.2", "hostname": "s1.example.com"}]}],
     "config.mailfleet:hosts.0.instances.0.name"),
    ("mailfleet:hosts", [{"name": "mx1", "address": "192.0.2.1",
                          "instances": [{"name": "postfix-1", "ip": 3221225986, "hostname": "s1.example.com"}]}],
     "config.mailfleet:hosts.0.instances.0.ip"),
    ("mailfleet:hosts", [{"name": "mx1", "address": "192.0.2.1", "instances": []}], "config.mailfleet:hosts.0.instances"),
    ("mailfleet:queue", {"maximalQueueLifetime": "6 hours"}, "config.mailfleet:queue.maximalQueueLifetime"),
    ("mailfleet:mailName", "Web\nMAX", "config.mailfleet:mailName"),
    ("mailfleet:allowUnsignedSenders", "yes", "config.mailfleet:allowUnsignedSenders"),
    ("mailfleet:sshPrivateKey", {"secure": 1}, "config.mailfleet:sshPrivateKey"),
    ("mailfleet:deliveryWebhook", {"url": "https://hooks.example.com/", "secret": "0123456789abcdef-plain"},
     "config.mailfleet:deliveryWebhook"),
    ("mailfleet:deliveryWebhook", {"url": "hooks.example.com"}, "config.mailfleet:deliveryWebhook"),
])
def test_the_schema_refuses_what_the_program_refuses(validator, key, value, where):
    found = problems(validator, dev_with(key, value))
    assert found and all(p.startswith(where) for p in found), found


def test_other_namespaces_and_secrets_are_allowed(validator):
    document = dev_with("vsphere:password", {"secure": "v1:abc"})
    document["config"]["mailfleet:tls"] = {"mode": "provided", "certPem": "-----BEGIN CERTIFICATE-----\n",
                                           "keyPem": {"secure": "v1:def"}}
    document["config"]["aws:region"] = "eu-west-1"
    document["config"]["mailfleet:deliveryWebhook"] = {"url": "https://hooks.example.com/", "secret": {"secure": "v1:jkl"}}
    assert problems(validator, document) == []
    del document["config"]["mailfleet:hosts"]
    assert problems(validator, document) == ["config: 'mailfleet:hosts' is a required property"]
    # With a Pulumi ESC environment, the required keys may live there.
    assert problems(validator, {**document, "environment": ["mailfleet/prod"]}) == []
