"""The real engine and tenant passwords: what `pulumi config set --secret --path` gives the program,
and what `pulumi preview --diff` shows. A preview runs no command, so no test host is needed."""

from __future__ import annotations

import re

import pytest
import yaml

from keys import openssh_private_key
from engine.test_engine import Pulumi, build_toolchain, copy_project, fleet_config

pytestmark = pytest.mark.engine

PASSWORD = "alice-engine-password-0001"
SSH_KEY = openssh_private_key()  # generated here, never used: a preview runs no command


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> Pulumi:
    cli = Pulumi(build_toolchain(), copy_project(tmp_path_factory.mktemp("engine-tenants")), None)
    cli("login", f"file://{cli.project.parent / 'state'}")
    for stack in ("secret", "plain"):
        cli("stack", "init", stack, "--secrets-provider", "passphrase")
        config = fleet_config()
        config["mailfleet:tenants"] = [{"name": "alice", "domains": ["example.com"], "instances": ["postfix-43"]}]
        cli.write_config(config, stack=stack, secrets={"mailfleet:sshPrivateKey": SSH_KEY})
    return cli


def test_a_password_set_with_secret_path_is_accepted_and_never_shown(cli):
    cli("config", "set", "--secret", "--path", "mailfleet:tenants[0].password", PASSWORD, stack="secret")
    stack_file = yaml.safe_load((cli.project / "Pulumi.secret.yaml").read_text())
    assert set(stack_file["config"]["mailfleet:tenants"][0]["password"]) == {"secure"}
    result = cli("preview", "--diff", stack="secret")
    shown = result.stdout + result.stderr
    assert PASSWORD not in shown
    step = shown[shown.index("::mailtest-tenants]"):]
    step = step[:step.index("+ command:remote:Command") if "+ command:remote:Command" in step else len(step)]
    assert re.search(r"\bstdin +: \[secret\]", step), step[:2000]


def test_a_password_set_without_secret_stops_the_program_naming_the_key(cli):
    cli("config", "set", "--path", "mailfleet:tenants[0].password", PASSWORD, stack="plain")
    result = cli("preview", "--diff", stack="plain", check=False)
    shown = result.stdout + result.stderr
    assert result.returncode != 0
    assert "mailfleet:tenants[0].password: is not a secret: set it with `pulumi config set --secret --path" in shown
    assert "+ command:remote:Command" not in shown  # before any resource
    assert shown.count(PASSWORD) == 0
