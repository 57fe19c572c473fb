"""The README's quick start and Day 2 runbooks, as a user runs them, against `scripts/run local`.

One local host for the module, in a copy of the project (so Pulumi.local.yaml, the state and the
host's files are the test's own): `scripts/run local`, a test message, then Add an IP, Rotate a
DKIM key and Retire an IP through the documented `scripts/run local -- pulumi ...`, then
`scripts/run local` again, which must keep every change, and `scripts/run local --destroy`.
A clean up and a clean destroy print no warning at all. The tests run in file order.
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

from integration.test_apply import verify_dkim
from skips import skip_or_fail

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
WARNING = re.compile(r"warning", re.I)
figures: dict[str, float] = {}


class Project:
    """A copy of the repository where `scripts/run` runs as a user would run it."""

    def __init__(self, root: Path):
        self.dir = root / "mailfleet"
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        for name in tracked.decode().split("\0"):
            if name and (REPO / name).is_file():
                (self.dir / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, self.dir / name)
        (self.dir / "venv").symlink_to(REPO / "venv")
        path = [p for p in os.environ["PATH"].split(":") if not (Path(p) / "pulumi").exists()]
        self.env = {
            **os.environ,
            "PATH": ":".join(path),  # no pulumi of this machine: scripts/run takes the toolchain's
            "PULUMI_BACKEND_URL": f"file://{root / 'state'}",
            "MAILFLEET_LOCAL_DIR": str(root / "local"),
            "MAILFLEET_PULUMI_HOME": str(root / "pulumi-home"),
            # What a person answers at `pulumi up`'s "Do you want to perform this update?"
            "PULUMI_SKIP_CONFIRMATIONS": "true",
            "NO_COLOR": "1",
        }
        (root / "state").mkdir()
        self.log = root / "commands.log"

    def run(self, *command: str, check: bool = True, timeout: int = 1200, env: dict | None = None
            ) -> subprocess.CompletedProcess:
        started = time.monotonic()
        result = subprocess.run(command, cwd=self.dir, env={**self.env, **(env or {})}, capture_output=True, text=True,
                                timeout=timeout, stdin=subprocess.DEVNULL)
        took = round(time.monotonic() - started, 1)
        key = " ".join(command[:4])
        figures[key] = round(figures.get(key, 0) + took, 1)
        with open(self.log, "a") as log:
            log.write(f"$ {' '.join(command)}  ({took} s, exit {result.returncode})\n{result.stdout}{result.stderr}\n")
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n"
                                 f"{result.stdout[-6000:]}{result.stderr[-6000:]}")
        return result

    def __call__(self, *command: str, check: bool = True) -> str:
        """stdout and stderr, as a person sees them."""
        result = self.run(*command, check=check)
        return result.stdout + result.stderr

    @property
    def stack_file(self) -> Path:
        return self.dir / "Pulumi.local.yaml"

    def outputs(self) -> dict:
        return json.loads(self.run("scripts/run", "local", "--", "pulumi", "stack", "output", "--json").stdout)

    def send(self, ip: str) -> str:
        """Send through one instance; the message as the sink received it."""
        output = self("scripts/run", "local", "--send", ip)
        saved = re.search(r"saved as (\S+\.json):", output)
        assert saved, output
        return json.loads(Path(saved.group(1)).read_text())["data"]


def warnings_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if WARNING.search(line)]


def selector_of(data: str) -> str:
    signature = data.split("DKIM-Signature:", 1)[1].split("\n\n")[0]
    return re.search(r"\bs=([\w-]+);", signature).group(1)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("systemd-nspawn"):
        skip_or_fail("scripts/run local needs root and systemd-nspawn (scripts/test installs it)")
    project = Project(tmp_path_factory.mktemp("local-runbooks"))
    yield project
    if (project.dir.parent / "local" / "pid").exists():  # a test failed before the destroy: clean up
        project("scripts/run", "local", "--destroy", check=False)
    print(f"\nlocal runbooks: {', '.join(f'{k} {v:g} s' for k, v in figures.items())}")


@pytest.fixture(scope="module")
def state():
    return {}


# ---- the quick start ----

def test_quick_start_deploys_three_instances_without_a_warning_and_mail_arrives_signed(project, state):
    output = project("scripts/run", "local")
    assert warnings_in(output) == []
    assert re.search(r"\+ \d+ created", output), output
    assert project.stack_file.exists()
    state["outputs"] = outputs = project.outputs()
    assert sorted(i["ip"] for i in outputs["instances"].values()) == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    data = project.send("127.0.0.11")
    assert selector_of(data) == "local1" and verify_dkim(data, outputs["dkimRecords"])


def test_a_refused_test_message_is_one_line_with_the_smtp_reply(project):
    refused = project.run("scripts/run", "local", "--send", "127.0.0.11", "news@example.org", check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert re.fullmatch(r"not sent: 127\.0\.0\.11 answered 550 5\.7\.1 .*\n", refused.stderr), refused.stderr
    nobody = project.run("scripts/run", "local", "--send", "127.0.0.19", check=False)
    assert nobody.returncode == 1
    assert nobody.stderr.startswith("not sent: nothing listens on 127.0.0.19:25") and nobody.stderr.count("\n") == 1


# ---- Day 2: add an IP ----

def edit_stack_file(project: Project, old: str, new: str):
    """An edit a person makes in their editor: one line replaced, comments and the rest kept."""
    text = project.stack_file.read_text()
    assert text.count(old) == 1, (old, text)
    project.stack_file.write_text(text.replace(old, new))


POSTFIX_13 = "        - {name: postfix-13, ip: 127.0.0.13, hostname: s13.local.example.com}\n"
POSTFIX_14 = "        - {name: postfix-14, ip: 127.0.0.14, hostname: s14.local.example.com}   # new\n"


def test_add_an_ip_as_the_runbook_says(project, state):
    # 1. The address goes on the host first (the preflight step checks it).
    project("scripts/run", "local", "--ssh", "ip", "addr", "add", "127.0.0.14/32", "dev", "lo")
    # 2. A new instance in the stack file; 3. pulumi up.
    edit_stack_file(project, POSTFIX_13, POSTFIX_13 + POSTFIX_14)
    output = project("scripts/run", "local", "--", "pulumi", "up")
    assert warnings_in(output) == []
    assert "postfix-14-config created" in output, output
    # 4. DNS to publish: the new A record and the domain's SPF with the new IP.
    (project.dir / "outputs.json").write_text(json.dumps(project.outputs()))
    zone = project("venv/bin/python", "tools/publish_dns.py", "zone", "outputs.json")
    assert "s14.local.example.com. 3600 IN A 127.0.0.14" in zone
    assert re.search(r'example\.com\. 3600 IN TXT "v=spf1 [^"]*ip4:127\.0\.0\.14 -all"', zone), zone
    data = project.send("127.0.0.14")
    assert verify_dkim(data, project.outputs()["dkimRecords"])


# ---- Day 2: rotate a DKIM key ----

LOCAL1 = "    - {domain: example.com, selector: local1}\n"
LOCAL2 = "    - {domain: example.com, selector: local2}\n"


def test_rotate_a_dkim_key_as_the_runbook_says(project, state):
    # 1. The new selector as a second entry; 2. pulumi up: generated and published, not used yet.
    edit_stack_file(project, LOCAL1, LOCAL1 + LOCAL2)
    output = project("scripts/run", "local", "--", "pulumi", "up")
    assert warnings_in(output) == []
    records = project.outputs()["dkimRecords"]
    assert {"local1._domainkey.example.com", "local2._domainkey.example.com"} <= set(records)
    assert selector_of(project.send("127.0.0.12")) == "local1"
    # 4. The new entry first: mail is signed with it.
    edit_stack_file(project, LOCAL1 + LOCAL2, LOCAL2 + LOCAL1)
    project("scripts/run", "local", "--", "pulumi", "up")
    data = project.send("127.0.0.12")
    assert selector_of(data) == "local2" and verify_dkim(data, records)
    # 5. Later the old entry goes.
    edit_stack_file(project, LOCAL2 + LOCAL1, LOCAL2)
    project("scripts/run", "local", "--", "pulumi", "up")
    state["records"] = project.outputs()["dkimRecords"]
    assert set(state["records"]) == {"local2._domainkey.example.com"}
    assert state["records"]["local2._domainkey.example.com"] == records["local2._domainkey.example.com"]


# ---- Day 2: retire an IP ----

def test_retire_an_ip_as_the_runbook_says(project, state):
    # 1. Its queue is empty (nothing was sent through it since).
    queue = project("scripts/run", "local", "--ssh", "postqueue", "-c", "/etc/postfix-14", "-p")
    assert "Mail queue is empty" in queue, queue
    # 2. The entry goes from the stack file; pulumi up destroys the instance.
    edit_stack_file(project, POSTFIX_14, "")
    output = project("scripts/run", "local", "--", "pulumi", "up")
    assert warnings_in(output) == []
    assert "destroyed instance postfix-14" in output, output
    instances = project("scripts/run", "local", "--ssh", "postmulti", "-l")
    assert "postfix-14" not in instances and "postfix-13" in instances
    state["stack_file"] = project.stack_file.read_text()


# ---- the day after: scripts/run local again keeps all of it ----

def test_scripts_run_local_again_keeps_every_change(project, state):
    output = project("scripts/run", "local")
    assert "using Pulumi.local.yaml as it is" in output
    assert warnings_in(output) == []
    assert not re.search(r"\b\d+ (created|updated|deleted|replaced)\b", output), output
    assert project.stack_file.read_text() == state["stack_file"]
    outputs = project.outputs()
    assert outputs["dkimRecords"] == state["records"]
    assert sorted(i["ip"] for i in outputs["instances"].values()) == ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    data = project.send("127.0.0.13")
    assert selector_of(data) == "local2" and verify_dkim(data, state["records"])


def test_a_new_host_after_a_reboot_gets_the_stack_again_with_its_keys(project, state):
    # What a reboot of this machine does to the local host: gone, with everything on it.
    project("venv/bin/python", "tools/local_host.py", "stop")
    output = project("scripts/run", "local")
    assert "the local host is new" in output, output
    assert warnings_in(output) == []
    assert project.outputs()["dkimRecords"] == state["records"]
    data = project.send("127.0.0.11")
    assert selector_of(data) == "local2" and verify_dkim(data, state["records"])


def test_reset_puts_the_demo_stack_back(project):
    output = project("scripts/run", "local", "--reset")
    assert "putting Pulumi.local.yaml back" in output
    assert warnings_in(output) == []
    config = yaml.safe_load(project.stack_file.read_text())["config"]
    assert "secure" in config.pop("mailfleet:sshPrivateKey")  # the host's key, set again
    assert config == yaml.safe_load(project("venv/bin/python", "tools/local_host.py", "stack-file"))["config"]
    records = project.outputs()["dkimRecords"]
    assert set(records) == {"local1._domainkey.example.com"}
    data = project.send("127.0.0.11")
    assert selector_of(data) == "local1" and verify_dkim(data, records)


# ---- a first preview before the secrets are set ----

def test_an_unset_secret_is_named_with_the_command_that_sets_it(project):
    result = project.run("scripts/run", "dev", check=False, env={"PULUMI_CONFIG_PASSPHRASE": "test"})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "mailfleet:sshPrivateKey: is not set" in output, output
    assert "pulumi config set --secret mailfleet:sshPrivateKey < KEYFILE" in output
    assert "bad value" not in output


# ---- and the end ----

def test_destroy_is_clean_and_says_nothing_to_act_on(project):
    output = project("scripts/run", "local", "--destroy")
    assert warnings_in(output) == []
    assert "rmdir" not in output and "remove by hand" not in output
    assert not project.stack_file.exists()
    assert "no local host is running" in project("scripts/run", "local", "--send", "127.0.0.11", check=False)
