"""The remote shell library, run for real by bash on this machine against a temp directory."""

import os
import subprocess

from mailfleet.remote_scripts import LIBRARY


def bash(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", LIBRARY + script], capture_output=True, text=True, timeout=30)


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
