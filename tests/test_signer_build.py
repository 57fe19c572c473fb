"""The signer binary the program uploads is the same wherever it is built: the state records its
checksum, so a preview in CI and an `up` on a laptop must agree (mailfleet/signer_build.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from mailfleet import signer_build
from skips import skip_or_fail


@pytest.fixture(autouse=True)
def go():
    if not shutil.which("go"):
        skip_or_fail("Go is not installed (the program builds the signer with it)")


def test_a_checkout_elsewhere_builds_the_same_bytes(tmp_path):
    built = signer_build.build_signer()
    elsewhere = tmp_path / "another" / "checkout" / "signer"
    shutil.copytree(signer_build.SOURCE, elsewhere)
    subprocess.run(["go", *signer_build.BUILD_ARGS, "-o", str(tmp_path / "signer"), "."], cwd=elsewhere,
                   env={**os.environ, **signer_build.BUILD_ENV}, check=True)
    assert hashlib.sha256((tmp_path / "signer").read_bytes()).hexdigest() == built.sha256
    assert not built.path.is_absolute()  # the state names no checkout path
    # Without -trimpath the checkout's path would be in the binary, and the checksum would differ.
    assert str(elsewhere).encode() not in (tmp_path / "signer").read_bytes()


def test_no_go_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(signer_build.shutil, "which", lambda name: None)
    with pytest.raises(signer_build.SignerBuildError, match="needs Go .* on PATH"):
        signer_build.build_signer()
