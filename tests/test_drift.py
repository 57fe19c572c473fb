"""The drift comparison: a report from the host's record -> the files that differ, in words."""

import pytest

from mailfleet.drift import Drift, ReportError, drift, parse_report

A, B = "a" * 64, "b" * 64


def report(*files: tuple[str, str]) -> str:
    return "".join(f"recorded {recorded}\nfound {found}\n" for recorded, found in files)


def test_a_file_as_installed_is_no_drift():
    text = report((f"postfix-43-config {A} root:root 644 /etc/postfix-43/main.cf", f"{A} root:root 644 /etc/postfix-43/main.cf"))
    assert drift(text, ["postfix-43-config"]) == []


def test_content_owner_mode_and_deletion_are_named_with_the_step_that_installed_the_file():
    text = report(
        (f"cfg {A} root:root 644 /etc/postfix-43/main.cf", f"{B} root:root 644 /etc/postfix-43/main.cf"),
        (f"keys {A} opendkim:opendkim 600 /etc/opendkim/keys/example.com/s1.private",
         f"{A} root:root 644 /etc/opendkim/keys/example.com/s1.private"),
        (f"cfg {A} root:root 644 /etc/postfix-43/header_checks", "- - - /etc/postfix-43/header_checks"),
    )
    assert drift(text, ["cfg", "keys"]) == [
        Drift("/etc/opendkim/keys/example.com/s1.private", "keys",
              "owner root:root, step keys installed it as opendkim:opendkim; mode 0644, step keys installed it as 0600"),
        Drift("/etc/postfix-43/header_checks", "cfg", "deleted; step cfg installed it"),
        Drift("/etc/postfix-43/main.cf", "cfg", "content differs from what step cfg installed"),
    ]


def test_files_of_steps_the_program_no_longer_has_are_left_out():
    text = report((f"postfix-47-config {A} root:root 644 /etc/postfix-47/main.cf", "- - - /etc/postfix-47/main.cf"),
                  (f"- {A} root:root 644 /tmp/by-hand", f"{B} root:root 644 /tmp/by-hand"))
    assert drift(text, ["postfix-43-config"]) == []


def test_a_path_with_spaces_is_read_whole():
    text = report((f"s {A} root:root 644 /etc/odd dir/file", f"{B} root:root 644 /etc/odd dir/file"))
    assert [d.path for d in drift(text, ["s"])] == ["/etc/odd dir/file"]


def test_an_empty_report_is_no_drift():
    assert drift("", ["s"]) == []


@pytest.mark.parametrize("text", [
    "recorded s aaa root:root 644 /x\n",                                   # no found line
    "recorded s aaa root:root 644 /x\nfound aaa root:root 644 /y\n",       # another file
    "hello\nworld\n",
])
def test_a_report_it_cannot_read_is_an_error_not_an_empty_drift(text):
    with pytest.raises(ReportError):
        parse_report(text)
