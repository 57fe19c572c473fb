"""The rendered files pass the real tools: Debian's Postfix and OpenDKIM read them without a warning."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import REPO, stack_config
from mailfleet import render, signing
from mailfleet.config import parse_config
from rendered import rendered_files
from keys import openssh_private_key
from skips import skip_or_fail

KEY = openssh_private_key()


@pytest.fixture(autouse=True)
def real_tools():
    if not shutil.which("postconf"):
        skip_or_fail("Debian's postfix is not installed (scripts/test installs it)")


IF_SUPPORTED = re.compile(r"^# mailfleet:if-supported (\S+) = (.*)$", re.M)


def if_supported(main_cf: str) -> str:
    """What the remote step makes of `# mailfleet:if-supported NAME = VALUE` lines (common
    contract): the setting where this Postfix knows NAME, nothing where it does not."""
    def keep(match):
        known = run("postconf", "-d", match[1]).returncode == 0 and not run("postconf", "-d", match[1]).stderr
        return f"{match[1]} = {match[2]}" if known else ""
    return IF_SUPPORTED.sub(keep, main_cf)


def write_stack(stack: str, root: Path, **overrides):
    config, _ = stack_config(REPO / f"Pulumi.{stack}.yaml", {"mailfleet:sshPrivateKey": KEY})
    fleet = parse_config({**config, **overrides})
    for path, content in rendered_files(fleet).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(if_supported(content) if path.endswith("main.cf") else content)
    return fleet


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("stack", ["prod", "dev"])
def test_postconf_reads_every_instance_without_warnings(stack, tmp_path):
    fleet = write_stack(stack, tmp_path)
    directories = [tmp_path / "etc/postfix", *(tmp_path / render.instance_dir(i).lstrip("/") for _, i in fleet.instances)]
    for directory in directories:
        if not (directory / "master.cf").exists():  # the default instance keeps Debian's master.cf
            shutil.copy("/usr/share/postfix/master.cf.dist", directory / "master.cf")
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


def test_the_if_supported_settings_reach_this_postfix(tmp_path):
    """Debian 12's Postfix 3.7.11 has both: the filtered main.cf sets them (and postconf reads
    it without a warning, above)."""
    fleet = write_stack("prod", tmp_path)
    directory = tmp_path / render.instance_dir(fleet.instances[0][1]).lstrip("/")
    result = run("postconf", "-c", str(directory), "-n", "smtpd_forbid_bare_newline", "smtp_bind_address_enforce")
    assert sorted(result.stdout.splitlines()) == ["smtp_bind_address_enforce = yes", "smtpd_forbid_bare_newline = yes"]


def test_postfix_reads_the_instance_tables(tmp_path):
    fleet = write_stack("prod", tmp_path)
    instance = fleet.instances[0][1]
    directory = tmp_path / render.instance_dir(instance).lstrip("/")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/main.cf").write_text("")  # the instance's names addresses this machine lacks

    def lookup(table, key):
        return run("postmap", "-c", str(tmp_path / "empty"), "-q", key, f"regexp:{directory}/{table}").stdout.strip()
    assert lookup("recipient_access", f"x@[{instance.ip}]").startswith("550 5.1.2 ")
    assert lookup("recipient_access", "x@example.org") == ""
    assert lookup("header_checks", "Received: from app1.internal (app1.internal [10.0.0.7])") == "IGNORE"
    assert lookup("header_checks", "Received: by s43.example.com (Postfix, from userid 0)") == ""


@pytest.mark.parametrize("dkim", [None, '[{"domain": "example.com", "selector": "r"},'
                                        ' {"domain": "example.com", "selector": "e", "algorithm": "ed25519"}]'])
def test_opendkim_reads_the_rendered_configuration(tmp_path, dkim):
    """`opendkim -n`, the step's validation, reads each rendered configuration and its tables."""
    if not shutil.which("opendkim"):
        skip_or_fail("Debian's opendkim is not installed (scripts/test installs it)")
    fleet = write_stack("prod", tmp_path, **({"mailfleet:dkim": dkim} if dkim else {}))
    confs = [tmp_path / signer.conf.lstrip("/") for signer in signing.signers(fleet.dkim)]
    assert len(confs) == (2 if dkim else 1)
    for conf in confs:
        conf.write_text(conf.read_text().replace("/etc/opendkim", f"{tmp_path}/etc/opendkim"))
        result = run("opendkim", "-n", "-x", str(conf))
        assert result.returncode == 0 and result.stderr == "", result.stderr
    confs[0].write_text(confs[0].read_text() + "Canonicalization relaxed/sloppy\n")
    result = run("opendkim", "-n", "-x", str(confs[0]))
    assert result.returncode != 0 and "sloppy" in result.stderr, result
