"""Drift: how a host's managed files differ from what mailfleet installed there.

Every step records the files it installs in /var/lib/mailfleet/checksums (remote_lib.sh: the
step, sha256, owner, mode and path, never the content). `report_checksums` prints each recorded
line with the file as it is now; `drift` compares the two. Pure: no Pulumi, no SSH.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class ReportError(ValueError):
    pass


@dataclass(frozen=True)
class Installed:
    step: str
    path: str
    sha256: str
    owner: str
    mode: int


@dataclass(frozen=True)
class Found:
    """A file as it is now; None fields when it is gone."""
    path: str
    sha256: str | None
    owner: str | None
    mode: int | None


@dataclass(frozen=True)
class Drift:
    path: str
    step: str
    what: str
    """What differs, e.g. "content differs from what step x installed"."""


def parse_report(text: str) -> list[tuple[Installed, Found]]:
    """The output of `report_checksums`: a "recorded" line, then a "found" line, for each file."""
    lines = [line for line in text.splitlines() if line.strip()]
    pairs = []
    for i in range(0, len(lines) - 1, 2):
        recorded, found = lines[i].split(" ", 5), lines[i + 1].split(" ", 4)
        if recorded[0] != "recorded" or len(recorded) != 6 or found[0] != "found" or len(found) != 5:
            raise ReportError(f"unexpected checksum report lines: {lines[i]!r}, {lines[i + 1]!r}")
        _, step, sha256, owner, mode, path = recorded
        _, now_sha256, now_owner, now_mode, now_path = found
        if now_path != path:
            raise ReportError(f"checksum report: {path} followed by {now_path}")
        gone = now_sha256 == "-"
        pairs.append((Installed(step, path, sha256, owner, int(mode, 8)),
                      Found(path, None if gone else now_sha256, None if gone else now_owner,
                            None if gone else int(now_mode, 8))))
    if len(lines) % 2:
        raise ReportError(f"checksum report ends in the middle of a file: {lines[-1]!r}")
    return pairs


def compare(installed: Installed, found: Found) -> str | None:
    """What differs between the two, in words; None when nothing does."""
    by = f"step {installed.step}"
    if found.sha256 is None:
        return f"deleted; {by} installed it"
    differences = []
    if found.sha256 != installed.sha256:
        differences.append(f"content differs from what {by} installed")
    if found.owner != installed.owner:
        differences.append(f"owner {found.owner}, {by} installed it as {installed.owner}")
    if found.mode != installed.mode:
        differences.append(f"mode {found.mode:04o}, {by} installed it as {installed.mode:04o}")
    return "; ".join(differences) or None


def drift(report: str, steps: Iterable[str]) -> list[Drift]:
    """The files that differ from what one of `steps` (the steps the program has now) installed.
    Lines of other steps (gone from the program, or "-" for scripts run outside a step) are left
    out: nothing would put their files back."""
    current = set(steps)
    found = []
    for installed, now in parse_report(report):
        if installed.step in current and (what := compare(installed, now)):
            found.append(Drift(installed.path, installed.step, what))
    return sorted(found, key=lambda d: d.path)
