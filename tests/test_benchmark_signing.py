"""What scripts/benchmark-signing builds and accepts, checked without booting a host: the no-op
milter compiles cleanly against Debian's libmilter, and an unknown signer is refused by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from skips import skip_or_fail

INTEGRATION = Path(__file__).resolve().parent / "integration"


def test_noop_milter_compiles_without_warnings(tmp_path):
    if not (shutil.which("gcc") and Path("/usr/include/libmilter/mfapi.h").exists()):
        skip_or_fail("gcc or libmilter-dev is not installed (scripts/test installs them)")
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-o", tmp_path / "noop-milter",
                    INTEGRATION / "noop_milter.c", "-lmilter"], check=True)
    usage = subprocess.run([tmp_path / "noop-milter"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: noop-milter SOCKET" in usage.stderr


def test_an_unknown_signer_is_refused_before_anything_starts():
    result = subprocess.run([sys.executable, INTEGRATION / "benchmark_signing.py", "--signers", "opendkim,rspamd"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--signers: unknown rspamd; known: opendkim, noop-milter" in result.stderr
