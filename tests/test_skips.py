"""Environment skips: one helper, strict under any non-empty CI, and nothing else skips."""

import re
from pathlib import Path

import pytest

from skips import skip_or_fail

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("value", ["true", "1", "yes", "True"])
def test_any_non_empty_ci_turns_a_skip_into_a_failure(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(BaseException, match="no sshd here") as raised:  # a skip must not get through
        skip_or_fail("no sshd here")
    assert raised.type is pytest.fail.Exception


@pytest.mark.parametrize("value", [None, ""])
def test_without_ci_it_is_a_skip(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(BaseException, match="no sshd here") as raised:
        skip_or_fail("no sshd here")
    assert raised.type is pytest.skip.Exception


def test_every_environment_skip_goes_through_the_helper():
    """A plain skipif or pytest.skip would turn green under CI; only skips.py may skip."""
    pattern = re.compile(r"pytest\.skip\(|mark\.skip|importorskip|skipif|xfail")
    offenders = [f"{path.relative_to(TESTS)}:{number}"
                 for path in TESTS.rglob("*.py") if path.name not in ("skips.py", "test_skips.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    from integration import testhost
    assert testhost.skip_or_fail is skip_or_fail


def test_ci_run_sets_ci_itself():
    """CI must be strict even where the runner does not set CI."""
    assert re.search(r"^export CI=true$", (TESTS.parent / ".ci/run").read_text(), re.M)
