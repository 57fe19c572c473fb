"""Build mailfleet-signer (signer/) for the hosts, where `pulumi up` or `pulumi preview` runs.

linux/amd64 without cgo (OpenSSL is loaded on the host at run time), with no paths, VCS stamps
or build IDs in the binary: the same source and Go version give the same bytes on any machine,
so a preview in CI and an `up` on a laptop agree on its checksum, which the state records.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
SOURCE = PROJECT / "signer"
# Relative to the project, as Pulumi runs the program there: the state then names no checkout path.
OUTPUT = Path("build/mailfleet-signer-linux-amd64")
# The Go version and the amd64 level are pinned too: a newer local Go or a GOAMD64 setting on the
# operator's machine would change the bytes. GOTOOLCHAIN fetches go1.26.8 when the local Go differs.
BUILD_ENV = {"CGO_ENABLED": "0", "GOOS": "linux", "GOARCH": "amd64", "GOAMD64": "v1", "GOTOOLCHAIN": "go1.26.8",
             "GOFLAGS": "-mod=readonly"}
BUILD_ARGS = ["build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid="]


class SignerBuildError(Exception):
    pass


@dataclass(frozen=True)
class SignerBinary:
    path: Path  # relative to the project
    sha256: str


def build_signer(output: Path = OUTPUT) -> SignerBinary:
    go = shutil.which("go")
    if go is None:
        raise SignerBuildError("building the DKIM signer (signer/) needs Go 1.26 on PATH "
                               "(README, \"Setup\"); `go` was not found")
    target = output if output.is_absolute() else PROJECT / output
    target.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([go, *BUILD_ARGS, "-o", str(target), "."], cwd=SOURCE, capture_output=True,
                            text=True, env={**os.environ, **BUILD_ENV})
    if result.returncode != 0:
        raise SignerBuildError(f"building the DKIM signer (signer/) failed: {result.stderr.strip()}")
    return SignerBinary(output, hashlib.sha256(target.read_bytes()).hexdigest())
