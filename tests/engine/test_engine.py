"""The real engine: the Pulumi CLI built by scripts/toolchain runs the program against the test host.

`pulumi preview`, `up`, a second `up`, a change, a removal, drift (`refresh` names it, `up` puts it
back), `stack export`, `destroy`, the policy pack and the typed config, with a file backend in a temp dir, passphrase secrets and no network.
The CLI runs inside the test host's network namespace (`ip netns exec`), where the host's sshd
answers on 127.0.0.1:22, so pulumi-command really reaches it. The tests run in file order and
share one host and one stack.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from integration.test_apply import (DOMAINS, INSTANCE_LISTS, INSTANCES, RELAY_CLIENT, SINK,
                                     assert_each_instance_listens_alone, assert_each_instance_sends_signed_mail,
                                     file_states, instance_listed, listeners, message, service_pids, submit,
                                     verify_dkim, wait_for, without_mtimes)
from integration.testhost import TestHost, booted, skip_or_fail

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
STACK = "engine"
PROJECT_FILES = ["Pulumi.yaml", "__main__.py", "components", "mailfleet", "templates", "policy"]
PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")

figures: dict[str, float] = {}


class Pulumi:
    """The real CLI in a temp copy of the project, run inside the test host's namespace."""

    def __init__(self, bin_dir: str, project: Path, netns: str | None):
        self.project, self.netns = project, netns
        home = project.parent / "pulumi-home"
        state = project.parent / "state"
        home.mkdir(exist_ok=True)
        state.mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PULUMI_HOME": str(home),  # no plugin or credential of this machine's user
            # The toolchain's language host (sdk v3.79.0) ignores Pulumi.yaml's `virtualenv`: it
            # runs the program and the policy pack with this python (docs/toolchain.md).
            "PULUMI_PYTHON_CMD": str(REPO / "venv/bin/python"),
            "PULUMI_BACKEND_URL": f"file://{state}",
            "PULUMI_CONFIG_PASSPHRASE": "engine-test-passphrase",
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_SKIP_CONFIRMATIONS": "true",
            "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            "NO_COLOR": "1",
        }

    def __call__(self, *args: str, stack: str = STACK, check: bool = True, stdin: str | None = None,
                 timeout: int = 900) -> subprocess.CompletedProcess:
        command = ["pulumi", *args, "--non-interactive", "--color", "never"]
        if args[0] not in ("login", "plugin", "version") and args[:2] != ("stack", "init"):
            command += ["--stack", stack]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        started = time.monotonic()
        result = subprocess.run(command, cwd=self.project, env=self.env, text=True, input=stdin,
                                capture_output=True, timeout=timeout)
        with open(self.project.parent / "pulumi.log", "a") as log:  # for a person reading a failure
            log.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
        figures.setdefault(f"pulumi {args[0]} s", 0)
        figures[f"pulumi {args[0]} s"] += round(time.monotonic() - started, 1)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n"
                                 f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
        return result

    def write_config(self, config: dict, stack: str = STACK, secrets: dict[str, str] | None = None):
        """Plain keys go in Pulumi.<stack>.yaml as YAML; secrets through `pulumi config set --secret`."""
        path = self.project / f"Pulumi.{stack}.yaml"
        old = yaml.safe_load(path.read_text()) if path.exists() else {}
        kept = {k: v for k, v in (old or {}).get("config", {}).items()
                if isinstance(v, dict) and "secure" in v}
        encryption = {k: v for k, v in (old or {}).items() if k != "config"}
        path.write_text(yaml.safe_dump({**encryption, "config": {**config, **kept}}, sort_keys=False))
        for key, value in (secrets or {}).items():
            self("config", "set", "--secret", key, stack=stack, stdin=value)

    def outputs(self) -> dict:
        return json.loads(self("stack", "output", "--json", "--show-secrets").stdout)


def fleet_config(instances=INSTANCES) -> dict:
    return {
        "mailfleet:hosts": [{"name": "mailtest", "address": "127.0.0.1", "instances": instances}],
        "mailfleet:dkim": [{"domain": d, "selector": s} for d, s in DOMAINS.items()],
        "mailfleet:relayNetworks": ["198.51.100.0/24"],
        "mailfleet:relayhost": SINK,
        "mailfleet:mailName": "WebMAX",
    }


def build_toolchain() -> str:
    """The toolchain's bin dir: built now if it is not cached (that takes minutes the first time)."""
    result = subprocess.run([str(REPO / "scripts/toolchain")], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        skip_or_fail(f"scripts/toolchain failed:\n{result.stderr[-4000:]}")
    return result.stdout.strip().splitlines()[-1]


def copy_project(directory: Path) -> Path:
    project = directory / "project"
    project.mkdir(parents=True)
    for name in PROJECT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("venv", "__pycache__"))
        else:
            shutil.copy2(source, project / name)
    # Pulumi.yaml and PulumiPolicy.yaml name `virtualenv: venv`: the repo's, which has both SDKs.
    (project / "venv").symlink_to(REPO / "venv")
    (project / "policy" / "venv").symlink_to(REPO / "venv")
    return project


@pytest.fixture(scope="module")
def toolchain() -> str:
    return build_toolchain()


@pytest.fixture(scope="module")
def host():
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT]) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def pulumi(toolchain, host, tmp_path_factory) -> Pulumi:
    cli = Pulumi(toolchain, copy_project(tmp_path_factory.mktemp("engine")), host.netns)
    cli("login", f"file://{cli.project.parent / 'state'}")
    cli("stack", "init", STACK, "--secrets-provider", "passphrase")
    cli.write_config(fleet_config(), secrets={"mailfleet:sshPrivateKey": host.ssh_private_key})
    return cli


@pytest.fixture(scope="module")
def deployed(pulumi):
    pulumi("up", "--yes", "--skip-preview")
    return pulumi.outputs()


def preview_steps(pulumi: Pulumi, *args: str, stack: str = STACK) -> list[dict]:
    return json.loads(pulumi("preview", "--json", *args, stack=stack).stdout).get("steps", [])


def name_of(urn: str) -> str:
    return urn.rsplit("::", 1)[1]


# ---- 1. preview on a new stack ----

def test_preview_on_a_new_stack_lists_every_resource_the_program_declares(pulumi):
    steps = preview_steps(pulumi)
    creates = {name_of(s["urn"]) for s in steps if s["op"] == "create"}
    expected = {"mailtest-preflight", "mailtest-packages", "mailtest-postfix-default",
                "mailtest-opendkim-keys", "mailtest-opendkim-config", "mailtest-retire-mailfleet-signer", "tls-ca-key", "tls-ca"}
    for instance in INSTANCES:
        name = instance["name"]
        expected |= {f"{name}-tls", f"{name}-config", f"tls-{name}-key", f"tls-{name}-csr", f"tls-{name}-cert"}
    expected |= {f"dkim-{s}._domainkey.{d}" for d, s in DOMAINS.items()}
    assert expected <= creates, expected - creates
    assert {s["op"] for s in steps} == {"create"}


# ---- 2. up converges the host; mail goes through signed ----

def test_up_converges_the_host_and_each_instance_sends_signed_mail(host, deployed):
    assert_each_instance_listens_alone(host)
    assert_each_instance_sends_signed_mail(host, deployed["dkimRecords"], "engine")


# ---- 3. nothing to do right after ----

def test_right_after_up_preview_expects_no_changes_and_a_second_up_changes_nothing(host, pulumi, deployed):
    pulumi("preview", "--expect-no-changes")
    files, pids = file_states(host), service_pids(host)
    result = pulumi("up", "--yes", "--skip-preview", "--expect-no-changes")
    assert file_states(host) == files
    assert service_pids(host) == pids
    assert not re.search(r"\b\d+ (to )?(create|update|replace|delete)", result.stdout), result.stdout


# ---- 4. one instance changed: its steps only, the changed line, no secret ----

CHANGED = [dict(i) for i in INSTANCES]
CHANGED[2]["hostname"] = "s47b.mail.example.com"


def test_changing_one_instance_previews_only_its_steps_and_the_changed_line(host, pulumi, deployed):
    pulumi.write_config(fleet_config(CHANGED))
    result = pulumi("preview", "--diff")
    changing = {name_of(s["urn"]) for s in preview_steps(pulumi) if s["op"] not in ("same", "read")}
    assert changing and all("postfix-47" in name for name in changing), changing
    assert {"postfix-47-config", "postfix-47-tls"} <= changing
    assert re.search(r"^\s*-\s*myhostname = s47\.mail\.example\.com$", result.stdout, re.M), result.stdout
    assert re.search(r"^\s*\+\s*myhostname = s47b\.mail\.example\.com$", result.stdout, re.M), result.stdout
    assert not PRIVATE_KEY.search(result.stdout)
    assert host.ssh_private_key.splitlines()[1] not in result.stdout


def test_up_applies_the_change_and_reloads_only_that_instance(host, pulumi, deployed):
    files, pids = file_states(host), service_pids(host)
    pulumi("up", "--yes", "--skip-preview")
    after = file_states(host)
    differing = {path for path in set(files) | set(after) if files.get(path) != after.get(path)}
    assert differing == {"/etc/postfix-47/main.cf", "/etc/mailfleet/tls/postfix-47.pem"}, differing
    assert {k: v for k, v in service_pids(host).items() if k != "postfix-47"} == \
        {k: v for k, v in pids.items() if k != "postfix-47"}
    rc, out, _ = host.run("postconf -c /etc/postfix-47 -h myhostname")
    assert out.strip() == "s47b.mail.example.com"


# ---- 5. an instance removed: its delete runs, the others are untouched ----

def test_removing_an_instance_runs_its_delete_and_leaves_the_others(host, pulumi, deployed):
    files, pids = file_states(host), service_pids(host)
    pulumi.write_config(fleet_config(CHANGED[:2]))
    pulumi("up", "--yes", "--skip-preview")
    assert not instance_listed(host, "postfix-47")
    assert not any(address.startswith("127.0.0.47:") for address in listeners(host))
    assert host.run("test -e /etc/mailfleet/tls/postfix-47.pem", check=False)[0] != 0
    after = file_states(host)
    left = {p: s for p, s in files.items() if "postfix-47" not in p and p not in INSTANCE_LISTS}
    assert {p: after.get(p) for p in left} == left
    assert service_pids(host) == {k: v for k, v in pids.items() if k != "postfix-47"}
    host.clear_sink()
    submit(host, INSTANCES[0]["ip"], message("news@example.com", "after removal"))
    assert verify_dkim(wait_for(host, "after removal")["data"], deployed["dkimRecords"])


# ---- 6. drift: a hand edit, a deleted file and a changed mode, named by refresh, put back by up ----

EDITED = "/etc/postfix-43/main.cf"
DELETED = "/etc/postfix-45/header_checks"
OPENED = "/etc/mailfleet/tls/postfix-43.pem"
before_drift: dict[str, str] = {}  # the managed files as the apply left them


def test_refresh_names_each_file_that_differs_from_what_mailfleet_installed(host, pulumi, deployed):
    pulumi("preview", "--refresh", "--expect-no-changes")  # no drift after an apply
    before_drift.update(file_states(host))
    host.run(f"echo 'milter_default_action = accept' >> {EDITED}")
    host.run(f"rm {DELETED}")
    host.run(f"chmod 644 {OPENED}")
    preview = pulumi("preview", "--refresh")
    started = time.monotonic()
    refresh = pulumi("refresh", "--yes", "--skip-preview")
    figures["drift: refresh s"] = round(time.monotonic() - started, 1)
    for output in (preview.stdout, refresh.stdout):
        assert f"mailtest: {EDITED}: content differs from what step postfix-43-config installed" in output, output
        assert f"mailtest: {DELETED}: deleted; step postfix-45-config installed it" in output, output
        assert f"mailtest: {OPENED}: mode 0644, step postfix-43-tls installed it as 0600" in output, output
    assert re.search(r"~ +pulumi-python:dynamic/mailfleet:ManagedFiles +mailtest-managed-files +updated", refresh.stdout)
    assert "milter_default_action = accept" in host.run(f"cat {EDITED}")[1]  # a refresh changes no file
    # The refreshed state holds what differs, by path, and no content of any file.
    diff = pulumi("preview", "--diff").stdout
    assert "mailtest-managed-files" in diff and "(update)" in diff, diff


def test_the_next_up_puts_the_files_back_and_the_one_after_changes_nothing(host, pulumi, deployed):
    started = time.monotonic()
    result = pulumi("up", "--yes", "--skip-preview")
    figures["drift: repairing up s"] = round(time.monotonic() - started, 1)
    for step, path in (("postfix-43-config", EDITED), ("postfix-45-config", DELETED), ("postfix-43-tls", OPENED)):
        assert f"mailtest: ran step {step} again to put back {path}" in result.stdout, result.stdout
    assert without_mtimes(file_states(host)) == without_mtimes(before_drift)
    assert host.run("postconf -c /etc/postfix-43 -h milter_default_action")[1].strip() == "tempfail"
    files, pids = file_states(host), service_pids(host)
    pulumi("up", "--yes", "--skip-preview", "--expect-no-changes")
    pulumi("preview", "--refresh", "--expect-no-changes")
    assert file_states(host) == files and service_pids(host) == pids
    host.clear_sink()
    submit(host, INSTANCES[0]["ip"], message("news@example.com", "after the drift repair"))
    assert verify_dkim(wait_for(host, "after the drift repair")["data"], deployed["dkimRecords"])


# ---- 7. the state keeps no private key in plaintext ----

def test_stack_export_holds_no_private_key_in_plaintext(host, pulumi, deployed):
    revealed = pulumi("stack", "export", "--show-secrets").stdout
    assert PRIVATE_KEY.search(revealed)  # the keys are in the state, so the check below means something
    exported = pulumi("stack", "export").stdout
    assert not PRIVATE_KEY.search(exported)
    ssh_key_body = "".join(host.ssh_private_key.splitlines()[1:-1])
    assert ssh_key_body[:60] not in exported.replace("\\n", "")
    # The first 60 characters of every private key's body (DKIM, TLS, SSH) in the revealed state.
    bodies = re.findall(PRIVATE_KEY.pattern + r"(?:\\n)?(.{60})", revealed)
    assert bodies and not any(body in exported for body in bodies)


# ---- 8. destroy ----

def test_destroy_leaves_no_instance_listening_and_no_private_key_on_the_host(host, pulumi, deployed):
    pulumi("destroy", "--yes", "--skip-preview")
    found = listeners(host)
    instance_ips = tuple(f"{i['ip']}:" for i in INSTANCES)
    assert not [a for a in found if a.startswith(instance_ips)], found
    assert host.run("postmulti -l", check=False)[1].split()[:1] in ([], ["-"])
    rc, out, _ = host.run("grep -rlE 'PRIVATE KEY' /etc/opendkim /etc/mailfleet /etc/postfix* 2>/dev/null",
                          check=False)
    assert out.strip() == "", out
    assert pulumi("stack", "--show-urns").stdout.count("::") <= 1  # only the stack itself remains


# ---- 9. the policy pack blocks a bad configuration ----

def test_policy_pack_blocks_a_milter_default_action_accept(pulumi):
    """No stack config can break a rule today (the program refuses weak DKIM keys itself), so the
    bad configuration is the instance main.cf template saying `accept`, in a copy of the project."""
    bad = Pulumi(pulumi.env["PATH"].split(":")[0], copy_project(pulumi.project.parent / "bad"), None)
    bad.env.update({k: v for k, v in pulumi.env.items() if k.startswith("PULUMI_")})
    template = bad.project / "templates/etc/postfix-instance/main.cf.j2"
    template.write_text(template.read_text().replace("milter_default_action = tempfail",
                                                     "milter_default_action = accept"))
    bad("stack", "init", "policy", "--secrets-provider", "passphrase", stack="policy")
    bad.write_config(fleet_config(), stack="policy", secrets={"mailfleet:sshPrivateKey": TestHost().ssh_private_key})
    # The toolchain's language host cannot start a policy pack for this CLI: the toolchain's
    # launcher, linked into the pack, starts it as an analyzer plugin (docs/toolchain.md).
    launcher = bad.project / "policy" / "pulumi-policy-pack-python"
    launcher.symlink_to(Path(bad.env["PATH"].split(":")[0]) / "pulumi-policy-pack-python")
    result = bad("preview", "--policy-pack", str(launcher.relative_to(bad.project)), stack="policy", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "milter-never-accept" in output and "sets milter_default_action = accept" in output, output


# ---- the vSphere path: Pulumi.prod.yaml previews (through the vSphere stand-in) ----

def test_the_production_stack_file_previews_a_vm_and_its_steps(pulumi):
    prod = yaml.safe_load((REPO / "Pulumi.prod.yaml").read_text())["config"]
    pulumi("stack", "init", "prod", "--secrets-provider", "passphrase", stack="prod")
    # The secret its header comment says to set (the vSphere stand-in does not log in).
    pulumi.write_config(prod, stack="prod", secrets={"vsphere:password": "not-a-real-password"})
    steps = preview_steps(pulumi, stack="prod")
    creates = {(s["urn"].split("::")[2].split("$")[-1], name_of(s["urn"])) for s in steps if s["op"] == "create"}
    assert ("vsphere:index/virtualMachine:VirtualMachine", "victorpostfix") in creates
    assert ("command:remote:Command", "postfix-45-config") in creates


# ---- 10. a declared config key of the wrong type ----

def test_a_declared_key_of_the_wrong_type_is_refused_naming_it(pulumi):
    pulumi("stack", "init", "types", "--secrets-provider", "passphrase", stack="types", check=False)
    pulumi.write_config({**fleet_config(), "mailfleet:relayNetworks": "198.51.100.0/24"}, stack="types")
    result = pulumi("preview", stack="types", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "configuration key 'relayNetworks' must be of type 'array<string>'" in output, output
