"""The rendered files pass the real tools: Debian's Postfix and OpenDKIM parse them without a warning."""

import shutil
import subprocess
from pathlib import Path

import pytest

from harness import REPO, stack_config
from mailfleet import render
from mailfleet.config import parse_config
from rendered import rendered_files
from keys import openssh_private_key
from skips import skip_or_fail

KEY = openssh_private_key()


@pytest.fixture(autouse=True)
def real_tools():
    if not (shutil.which("postconf") and shutil.which("opendkim")):
        skip_or_fail("Debian's postfix and opendkim are not installed (scripts/test installs them)")


def write_stack(stack: str, root: Path):
    config, _ = stack_config(REPO / f"Pulumi.{stack}.yaml", {"mailfleet:sshPrivateKey": KEY})
    fleet = parse_config(config)
    for path, content in rendered_files(fleet).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    return fleet


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_postconf_reads_every_instance_without_warnings(stack, tmp_path):
    fleet = write_stack(stack, tmp_path)
    directories = [tmp_path / "etc/postfix", *(tmp_path / render.instance_dir(i).lstrip("/") for _, i in fleet.instances)]
    for directory in directories:
        if not (directory / "master.cf").exists():  # the default instance keeps Debian's master.cf
            shutil.copy(REPO / "templates/etc/postfix-instance/master.cf.j2", directory / "master.cf")
        for flag in ("-n", "-M"):
            result = run("postconf", "-c", str(directory), flag)
            assert result.returncode == 0 and result.stderr == "", f"{directory} {flag}: {result.stderr}"


def test_postconf_would_warn_about_a_typo(tmp_path):
    """The check above is not blind: a misspelt parameter is reported."""
    fleet = write_stack("prod", tmp_path)
    directory = tmp_path / render.instance_dir(fleet.instances[0][1]).lstrip("/")
    with open(directory / "main.cf", "a") as main_cf:
        main_cf.write("smtp_bind_adress = 10.1.11.43\n")
    assert "unused parameter: smtp_bind_adress" in run("postconf", "-c", str(directory), "-n").stderr


def test_opendkim_accepts_the_configuration(tmp_path):
    write_stack("prod", tmp_path)
    conf = (tmp_path / "etc/opendkim.conf").read_text().replace("/etc/opendkim/", f"{tmp_path}/etc/opendkim/")
    (tmp_path / "opendkim.conf").write_text(conf)
    result = run("opendkim", "-n", "-x", str(tmp_path / "opendkim.conf"))
    assert result.returncode == 0, result.stderr
    (tmp_path / "bad.conf").write_text(conf + "Canonicalization sideways\n")
    assert run("opendkim", "-n", "-x", str(tmp_path / "bad.conf")).returncode != 0
