"""Every remote step's script, rendered for the example stacks and a test config, passes shellcheck."""

import json
import shutil
import subprocess

import pytest

from harness import REPO, stack_config
from keys import openssh_private_key
from mailfleet import remote_scripts
from mailfleet.config import parse_config
from rendered_steps import rendered_steps
from skips import skip_or_fail

KEY = openssh_private_key()
# A config with what the example stacks lack: an existing host with a non-root user, several
# DKIM domains, an Ed25519 key (a second OpenDKIM), queue times.
TEST_CONFIG = {
    "mailfleet:hosts": json.dumps([{"name": "mailtest", "address": "127.0.0.1", "sshUser": "deploy",
                                    "instances": [
                                        {"name": "postfix-43", "ip": "127.0.0.43", "hostname": "s43.mail.example.com"},
                                        {"name": "postfix-45", "ip": "127.0.0.45", "hostname": "s45.mail.example.com"}]}]),
    "mailfleet:sshPrivateKey": KEY,
    "mailfleet:dkim": json.dumps([{"domain": "example.com", "selector": "s1"},
                                  {"domain": "example.com", "selector": "e1", "algorithm": "ed25519"},
                                  {"domain": "example.net", "selector": "s2"}]),
    "mailfleet:relayNetworks": json.dumps(["198.51.100.0/24"]),
    "mailfleet:relayhost": "[127.0.0.1]:2525",
    "mailfleet:tenants": json.dumps([{"name": "app", "password": "a-long-enough-test-password",
                                      "domains": ["example.com"], "instances": ["postfix-45"]}]),
}


def fleets():
    yield "test", parse_config(TEST_CONFIG, ["mailfleet:tenants"])
    for stack in ("dev", "prod"):
        yield stack, parse_config(stack_config(REPO / f"Pulumi.{stack}.yaml", {"mailfleet:sshPrivateKey": KEY})[0])


STEPS = [(f"{stack}:{name}", script) for stack, fleet in fleets() for name, script in rendered_steps(fleet).items()]


def shellcheck(script: str) -> subprocess.CompletedProcess:
    if not shutil.which("shellcheck"):
        skip_or_fail("shellcheck is not installed (scripts/test installs Debian's package)")
    return subprocess.run(["shellcheck", "--shell=bash", "--severity=style", "-"], input=script,
                          capture_output=True, text=True, timeout=60)


def test_every_step_template_is_rendered():
    rendered = {name.split(":", 1)[0] for name, _ in STEPS}
    assert rendered == {"test", "dev", "prod"}
    assert len(remote_scripts.step_names()) == 20  # one template a step; a new one belongs in rendered_steps


@pytest.mark.parametrize("name,script", STEPS, ids=[name for name, _ in STEPS])
def test_step_passes_shellcheck(name, script):
    result = shellcheck(script)
    assert result.returncode == 0, result.stdout


def test_shellcheck_catches_a_bad_step():
    """The check itself can fail: an unquoted expansion and a useless cat are findings."""
    result = shellcheck(remote_scripts.LIBRARY + 'file=$1\ncat $file | grep x\n')
    assert result.returncode != 0 and "SC2086" in result.stdout
