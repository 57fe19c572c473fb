"""signer/ (mailfleet-signer, the DKIM signer the program deploys) has its own Go tests: signatures
made through the milter protocol verify (RSA through OpenSSL, Ed25519), From is oversigned,
subdomains sign as their parent, unknown domains leave unsigned, bad tables name their file and
line, a reload takes new tables and keeps the old on error, -check and -probe say what signs, and
the signer asks for no replies. Built without cgo, as the program builds it for the hosts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from skips import skip_or_fail

SIGNER = Path(__file__).resolve().parent.parent / "signer"


def go() -> str:
    found = shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")
    if not found:
        skip_or_fail("Go is not installed (the signer is a Go module)")
    return found


def test_signer_go_tests_pass():
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"}
    result = subprocess.run([go(), "test", "-count=1", "./..."], cwd=SIGNER, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr


def test_signer_is_gofmt_clean():
    unformatted = subprocess.run([str(Path(go()).with_name("gofmt")), "-l", "."], cwd=SIGNER,
                                 capture_output=True, text=True, check=True).stdout
    assert not unformatted, f"gofmt would change: {unformatted}"
