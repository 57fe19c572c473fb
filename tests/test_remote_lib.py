"""The remote shell library, run for real by bash on this machine against a temp directory."""

import grp
import hashlib
import os
import pwd
import subprocess
import tempfile
from pathlib import Path

from mailfleet import drift, remote_scripts
from mailfleet.remote_scripts import LIBRARY
from skips import skip_or_fail


# The records of installed files go to a temp directory, not this machine's /var/lib.
RECORDS = Path(tempfile.mkdtemp(prefix="mailfleet-lib-"))
MANAGED_LIST = RECORDS / "managed-files"
CHECKSUMS = RECORDS / "checksums"


def bash(script: str, step: str | None = None, checksums: Path = CHECKSUMS) -> subprocess.CompletedProcess:
    """Run script after the library, as step `step` runs (remote_scripts.for_step) when given."""
    library = remote_scripts.for_step(step, LIBRARY) if step else LIBRARY
    return subprocess.run(["bash", "-c", f"checksum_list={checksums}\n{library}\nmanaged_list={MANAGED_LIST}\n{script}"],
                          capture_output=True, text=True, timeout=30)


def put(path, content, mode="0640", then=""):
    owner = f"{os.getuid()}:{os.getgid()}"
    return bash(f"put_file {path} {owner} {mode} <<'EOF'\n{content}\nEOF\n{then}")


def test_put_file_installs_once_and_then_changes_nothing(tmp_path):
    target = tmp_path / "etc/app.conf"
    first = put(target, "a = 1", then="any_changed && echo CHANGED; keep_changes")
    assert first.returncode == 0 and "CHANGED" in first.stdout
    assert target.read_text() == "a = 1\n" and oct(target.stat().st_mode & 0o777) == "0o640"
    mtime = target.stat().st_mtime_ns
    again = put(target, "a = 1", then="any_changed && echo CHANGED; keep_changes")
    assert again.returncode == 0 and again.stdout == ""
    assert target.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in target.parent.iterdir()) == ["app.conf"]  # no temp or backup left


def test_put_file_notices_a_mode_change(tmp_path):
    target = tmp_path / "key"
    put(target, "secret", mode="0644", then="keep_changes")
    assert "changed" in put(target, "secret", mode="0600", then="keep_changes").stdout
    assert oct(target.stat().st_mode & 0o777) == "0o600"


def test_failed_validation_restores_the_previous_file(tmp_path):
    target = tmp_path / "app.conf"
    put(target, "good", then="keep_changes")
    result = put(target, "bad", then='validate "app check" grep -q good ' + str(target))
    assert result.returncode == 1 and "app check failed; the previous files are restored" in result.stderr
    assert target.read_text() == "good\n"
    new = tmp_path / "new.conf"
    put(new, "bad", then=f'validate "app check" grep -q good {new}')
    assert not new.exists()  # a file that did not exist before is removed again


def test_a_failed_probe_restores_a_unit_file_and_reloads_systemd_before_the_restart(tmp_path):
    """apply_to_service's rollback, with systemctl recorded instead of run."""
    unit = tmp_path / "etc/systemd/system/app.service"
    put(unit, "old", then="keep_changes")
    calls = tmp_path / "calls"
    stubs = (f"systemctl() {{ echo \"systemctl $*\" >>{calls}; case $1 in is-active|is-enabled) return 0;; esac; }}\n"
             "journalctl() { :; }\nprobe() { echo 'the app did not answer'; return 1; }\n")
    result = put(unit, "new", then=stubs + 'apply_to_service "the app" app restart probe')
    assert result.returncode == 1 and "the app failed after the change (the app did not answer)" in result.stderr
    assert unit.read_text() == "old\n"
    made = calls.read_text().splitlines()
    restarts = [i for i, call in enumerate(made) if call == "systemctl restart app"]
    assert len(restarts) == 2 and made.index("systemctl daemon-reload") in range(restarts[0], restarts[1]), made


# The lines that tell the packagings apart, as the packages ship them.
BOOKWORM_TEMPLATE_UNIT = """[Service]
Type=forking
GuessMainPID=no
ExecStartPre=/usr/lib/postfix/configure-instance.sh %i
ExecStart=/usr/sbin/postmulti -i %i -p start
ExecStop=/usr/sbin/postmulti -i %i -p stop
"""
TRIXIE_TEMPLATE_UNIT = """[Unit]
AssertPathExists=/etc/postfix-%I/main.cf
[Service]
Type=forking
Environment=MAIL_CONFIG=/etc/postfix-%I
ExecStartPre=+postfix check
ExecStart=postfix debian-systemd-start
"""


def units(template_unit: str, script: str) -> subprocess.CompletedProcess:
    """Run script with `systemctl cat postfix@.service` answering template_unit."""
    stub = f"systemctl() {{ [ \"$1 $2\" = 'cat postfix@.service' ] && cat <<'UNIT'\n{template_unit}UNIT\n}}\n"
    return bash(stub + script)


def test_units_follow_the_packaging_read_from_the_unit_file():
    script = 'detect_postfix_packaging; echo "$postfix_packaging $(postfix_unit -) $(postfix_unit postfix-43)"'
    assert units(BOOKWORM_TEMPLATE_UNIT, script).stdout.split() == ["postmulti", "postfix@-", "postfix@postfix-43"]
    assert units(TRIXIE_TEMPLATE_UNIT, script).stdout.split() == ["config-dir", "postfix", "postfix@43"]


def test_an_unknown_packaging_stops_with_what_was_found_and_what_is_supported():
    result = units("[Service]\nExecStart=/usr/sbin/postfix-runner %i\n", "detect_postfix_packaging; echo went-on")
    assert result.returncode == 1 and "went-on" not in result.stdout
    assert "ExecStart=/usr/sbin/postfix-runner %i" in result.stderr
    assert "Supported:" in result.stderr and "Debian 12" in result.stderr and "Debian 13" in result.stderr
    missing = units("", "detect_postfix_packaging")
    assert missing.returncode == 1 and "postfix@.service is missing" in missing.stderr


def test_if_supported_lines_follow_this_machines_postfix():
    """With the real postconf: a parameter this Postfix knows becomes a line, an unknown one goes."""
    if subprocess.run(["which", "postconf"], capture_output=True).returncode != 0:
        skip_or_fail("postconf is not installed (scripts/test installs Debian's postfix)")
    main_cf = ("# Managed by mailfleet\n"
               "smtpd_banner = $myhostname ESMTP\n"
               "# mailfleet:if-supported smtpd_tls_security_level = may\n"
               "# mailfleet:if-supported no_such_parameter_in_any_postfix = yes\n"
               "#  mailfleet:if-supported smtpd_tls_security_level = encrypt\n"
               "relayhost =\n")
    result = bash(f"postfix_if_supported <<'EOF'\n{main_cf}EOF\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("# Managed by mailfleet\n"
                             "smtpd_banner = $myhostname ESMTP\n"
                             "smtpd_tls_security_level = may\n"
                             "#  mailfleet:if-supported smtpd_tls_security_level = encrypt\n"  # not the marker: a comment
                             "relayhost =\n")


def test_a_file_that_was_there_before_is_kept_once_as_pre_mailfleet(tmp_path):
    target = tmp_path / "main.cf"
    target.write_text("# Debian's own\n")
    first = put(target, "# Managed by mailfleet\nnew = 1", then="keep_changes")
    assert "kept the previous" in first.stdout
    assert (tmp_path / "main.cf.pre-mailfleet").read_text() == "# Debian's own\n"
    put(target, "# Managed by mailfleet\nnew = 2", then="keep_changes")
    assert (tmp_path / "main.cf.pre-mailfleet").read_text() == "# Debian's own\n"  # once, for good
    key = tmp_path / "sel.private"
    put(key, "key one", then="keep_changes")
    assert "kept" not in put(key, "key two", then="keep_changes").stdout  # mailfleet's own file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["main.cf", "main.cf.pre-mailfleet", "sel.private"]


# ---- the record of what each step installed, which the drift check reads ----

def put_as(step: str, checksums: Path, path: Path, content: str, mode: str = "0640", then: str = "keep_changes"):
    owner = f"{os.getuid()}:{os.getgid()}"
    return bash(f"put_file {path} {owner} {mode} <<'EOF'\n{content}\nEOF\n{then}", step=step, checksums=checksums)


def report(checksums: Path) -> str:
    result = bash("report_checksums", checksums=checksums)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_each_installed_file_is_recorded_with_its_step_checksum_owner_and_mode(tmp_path):
    checksums = tmp_path / "checksums"
    conf, key = tmp_path / "etc/app.conf", tmp_path / "etc/app.key"
    put_as("app-config", checksums, conf, "a = 1")
    put_as("app-keys", checksums, key, "key", mode="0600")
    owner = f"{pwd.getpwuid(os.getuid()).pw_name}:{grp.getgrgid(os.getgid()).gr_name}"
    def sha256(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    assert sorted(checksums.read_text().splitlines()) == [
        f"app-config {sha256('a = 1' + chr(10))} {owner} 640 {conf}",
        f"app-keys {sha256('key' + chr(10))} {owner} 600 {key}",
    ]
    assert drift.drift(report(checksums), ["app-config", "app-keys"]) == []


def test_a_hand_edit_a_deleted_file_and_a_changed_mode_show_as_drift_of_their_step(tmp_path):
    checksums = tmp_path / "checksums"
    files = {name: tmp_path / name for name in ("main.cf", "gone.cf", "key")}
    owner = f"{os.getuid()}:{os.getgid()}"
    step = "".join(f"put_file {path} {owner} 0600 <<<'{path.name} content'\n" for path in files.values())
    assert bash(step + "keep_changes", step="instance", checksums=checksums).returncode == 0
    with files["main.cf"].open("a") as edited:
        edited.write("milter_default_action = accept\n")
    files["gone.cf"].unlink()
    files["key"].chmod(0o644)
    found = {d.path: (d.step, d.what) for d in drift.drift(report(checksums), ["instance"])}
    assert found == {
        str(files["main.cf"]): ("instance", "content differs from what step instance installed"),
        str(files["gone.cf"]): ("instance", "deleted; step instance installed it"),
        str(files["key"]): ("instance", "mode 0644, step instance installed it as 0600"),
    }
    # Running the step again puts each back and leaves nothing to report.
    assert bash(step + "keep_changes", step="instance", checksums=checksums).returncode == 0
    assert drift.drift(report(checksums), ["instance"]) == []


def test_a_step_records_afresh_so_a_file_it_no_longer_installs_is_not_drift(tmp_path):
    checksums = tmp_path / "checksums"
    old_key, new_key, other = tmp_path / "old.private", tmp_path / "new.private", tmp_path / "other.cf"
    put_as("other", checksums, other, "other")
    put_as("keys", checksums, old_key, "old")
    put_as("keys", checksums, new_key, "new")  # a later run: the old key is no longer installed
    old_key.unlink()  # as the signer step retires it
    assert [line.split()[-1] for line in checksums.read_text().splitlines()] == [str(other), str(new_key)]
    assert drift.drift(report(checksums), ["keys", "other"]) == []


def test_a_failed_change_puts_back_the_record_with_the_file(tmp_path):
    checksums = tmp_path / "checksums"
    conf, new = tmp_path / "app.conf", tmp_path / "new.conf"
    put_as("app", checksums, conf, "good")
    failed = put_as("app", checksums, conf, "bad", then=f'validate "app check" grep -q good {conf}')
    assert failed.returncode == 1 and conf.read_text() == "good\n"
    put_as("other-app", checksums, new, "bad", then=f'validate "app check" grep -q good {new}')
    assert not new.exists()
    assert [line.split()[-1] for line in checksums.read_text().splitlines()] == [str(conf)]
    assert drift.drift(report(checksums), ["app", "other-app"]) == []


def test_postmultis_own_edit_follows_the_record_but_an_earlier_hand_edit_still_shows(tmp_path):
    checksums = tmp_path / "checksums"
    main_cf = tmp_path / "main.cf"
    put_as("default", checksums, main_cf, "multi_instance_directories =")
    edit = f"follow_edit {main_cf} sed -i 's|=$|= /etc/postfix-43|' {main_cf}"
    assert bash(edit, step="postfix-43-config", checksums=checksums).returncode == 0
    assert main_cf.read_text() == "multi_instance_directories = /etc/postfix-43\n"
    assert drift.drift(report(checksums), ["default", "postfix-43-config"]) == []
    assert checksums.read_text().split()[0] == "default"  # still the default instance's file
    with main_cf.open("a") as edited:
        edited.write("by hand = yes\n")
    assert bash(edit.replace("43", "45"), step="postfix-45-config", checksums=checksums).returncode == 0
    assert [d.path for d in drift.drift(report(checksums), ["default"])] == [str(main_cf)]


def test_the_records_of_steps_running_at_once_are_all_kept(tmp_path):
    checksums = tmp_path / "checksums"
    runs = [subprocess.Popen(["bash", "-c", f"checksum_list={checksums}\n{remote_scripts.for_step(f's{i}', LIBRARY)}\n"
                              + "".join(f"put_file {tmp_path}/f{i}-{j} {os.getuid()}:{os.getgid()} 0644 <<<{j}\n"
                                        for j in range(5)) + "keep_changes\n"])
            for i in range(4)]
    assert [run.wait(timeout=60) for run in runs] == [0] * 4
    assert len(checksums.read_text().splitlines()) == 20
