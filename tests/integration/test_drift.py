"""Drift on the test host: a hand edit, a deleted file and a changed mode are named by a refresh and
put back by the next apply, and the apply after that changes nothing.

The program runs under StatefulMocks with commands as the engine runs them (a step runs only when
its script changed), so nothing but the ManagedFiles resource (components/managed_files.py), its
own provider run for real against the host, can see the drift or put the files back.
"""

from __future__ import annotations

import time

import pytest

from harness import run_program
from integration.test_apply import (INSTANCES, RELAY_CLIENT, StatefulMocks, config_for, figures, file_states,
                                    message, service_pids, submit, verify_dkim, wait_for, without_mtimes)
from integration.testhost import SUITES, booted

pytestmark = pytest.mark.integration

MAIN_CF = "/etc/postfix-43/main.cf"          # a hand edit
HEADER_CHECKS = "/etc/postfix-45/header_checks"  # deleted
TLS_FILE = "/etc/mailfleet/tls/postfix-47.pem"   # key and certificate: its mode opened up
RESOURCE = "mailtest-managed-files"
STATE: dict[str, dict] = {}  # per suite: the engine's state of this module's stack


def apply(host):
    mocks = StatefulMocks(host.connect, STATE.setdefault(host.suite, {}), commands_like_the_engine=True)
    started = time.monotonic()
    run = run_program(config_for(host), mocks, secret_keys=["mailfleet:sshPrivateKey"], stack="drift")
    return run, mocks, time.monotonic() - started


def refresh(host) -> dict[str, str]:
    """`pulumi refresh`: the drift the host's ManagedFiles reads now."""
    return StatefulMocks(host.connect, STATE[host.suite]).refresh()[RESOURCE]["drift"]


def commands_run(mocks) -> list[str]:
    return [e["name"] for e in mocks.log if e["type"] == "command:remote:Command"]


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT], suite=suite) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def deployed(host):
    run, mocks, _ = apply(host)
    return {"run": run, "files": file_states(host)}


def test_a_freshly_applied_host_shows_no_drift(host, deployed):
    assert refresh(host) == {}


def test_refresh_names_a_hand_edit_a_deleted_file_and_a_changed_mode(host, deployed, capfd):
    host.run(f"echo 'milter_default_action = accept' >> {MAIN_CF}")
    host.run(f"rm {HEADER_CHECKS}")
    host.run(f"chmod 644 {TLS_FILE}")
    started = time.monotonic()
    drift = refresh(host)
    figures[f"{SUITES[host.suite]} drift refresh s"] = round(time.monotonic() - started, 2)
    assert drift == {
        MAIN_CF: "content differs from what step postfix-43-config installed",
        HEADER_CHECKS: "deleted; step postfix-45-config installed it",
        TLS_FILE: "mode 0644, step postfix-47-tls installed it as 0600",
    }
    # What `pulumi refresh` shows among its diagnostics: each file, by name.
    printed = capfd.readouterr().err
    for path in drift:
        assert f"mailtest: {path}: " in printed, printed
    # Nothing but the refresh: the host is as the hand left it.
    assert "milter_default_action = accept" in host.run(f"cat {MAIN_CF}")[1]


def test_the_next_apply_puts_each_file_back(host, deployed, capfd):
    run, mocks, seconds = apply(host)
    figures[f"{SUITES[host.suite]} drift repairing apply s"] = round(seconds, 1)
    assert commands_run(mocks) == []  # no step's script changed: the engine would run none
    assert [e["name"] for e in mocks.log if e.get("updated")] == [RESOURCE]
    printed = capfd.readouterr().err
    for step, path in (("postfix-43-config", MAIN_CF), ("postfix-45-config", HEADER_CHECKS),
                       ("postfix-47-tls", TLS_FILE)):
        assert f"mailtest: ran step {step} again to put back {path}" in printed, printed
    # Content, mode and owner as the first apply left them (mtimes aside: the files are new).
    assert without_mtimes(file_states(host)) == without_mtimes(deployed["files"])
    assert host.run("postconf -c /etc/postfix-43 -h milter_default_action")[1].strip() == "tempfail"
    # The instances run with their files again: mail through the edited one leaves signed.
    host.clear_sink()
    submit(host, INSTANCES[0]["ip"], message("news@example.com", "after the repair"))
    assert verify_dkim(wait_for(host, "after the repair")["data"], run.outputs["dkimRecords"])


def test_after_the_repair_refresh_shows_nothing_and_an_apply_changes_nothing(host, deployed):
    assert refresh(host) == {}
    files, pids = file_states(host), service_pids(host)
    _, mocks, _ = apply(host)
    assert commands_run(mocks) == [] and not any(e.get("updated") for e in mocks.log)
    assert file_states(host) == files
    assert service_pids(host) == pids
