"""tools/publish_dns.py: the output formats, and `check` against a real authoritative DNS server
that these tests run on 127.0.0.153 (nothing else is ever queried: every check passes
--nameserver)."""

from __future__ import annotations

import base64
import contextlib
import copy
import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "publish_dns.py"
REPO = TOOL.parent.parent
sys.path.insert(0, str(TOOL.parent))
import publish_dns  # noqa: E402
from integration.dnsserver import serving  # noqa: E402

SERVER_ADDRESS = "127.0.0.153"  # 127.0.0.53 is systemd-resolved's on many machines

# An RSA-2048 public key is 294 bytes of DER, so its DKIM value is about 410 characters: more
# than one 255-byte TXT string. The bytes need not be a real key for DNS.
DKIM_VALUE = "v=DKIM1; k=rsa; p=" + base64.b64encode(bytes(range(256)) + bytes(range(38))).decode()


def record(name, type_, value, purpose, ttl=3600):
    return {"name": name, "type": type_, "value": value, "ttl": ttl, "purpose": purpose}


def sample_outputs() -> dict:
    """What `pulumi stack output --json` gives for 2 instances and 2 signing domains."""
    instances = {
        "postfix-43": {"host": "mx1", "ip": "127.0.0.43", "hostname": "s43.mail.example.com"},
        "postfix-45": {"host": "mx1", "ip": "127.0.0.45", "hostname": "s45.mail.example.com"},
    }
    records = []
    for item in instances.values():
        last_octet = item["ip"].rsplit(".", 1)[1]
        records += [
            record(item["hostname"], "A", item["ip"], "instance address"),
            record(f"{last_octet}.0.0.127.in-addr.arpa", "PTR", item["hostname"], "reverse DNS"),
            record(item["hostname"], "TXT", "v=spf1 a -all", "HELO SPF"),
        ]
    for domain, selector in (("example.com", "sel1"), ("example.org", "sel2")):
        records += [
            record(domain, "TXT", "v=spf1 ip4:127.0.0.43 ip4:127.0.0.45 -all", "SPF"),
            record(f"{selector}._domainkey.{domain}", "TXT", DKIM_VALUE, "DKIM"),
            record(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=none", "DMARC"),
        ]
    return {"dnsRecords": records, "instances": instances, "zoneFile": "unused here"}


def find(records, name, type_="TXT"):
    return next(r for r in records if r["name"] == name and r["type"] == type_)


@pytest.fixture
def outputs_file(tmp_path):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(sample_outputs()))
    return path


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = publish_dns.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---- pure parts ----------------------------------------------------------------------------

def test_split_txt_keeps_short_values_whole():
    assert publish_dns.split_txt("v=spf1 -all") == ["v=spf1 -all"]
    assert publish_dns.split_txt("") == [""]
    assert publish_dns.split_txt("a" * 255) == ["a" * 255]


def test_split_txt_cuts_at_255_bytes():
    chunks = publish_dns.split_txt(DKIM_VALUE)
    assert len(DKIM_VALUE) > 400
    assert [len(chunk) for chunk in chunks] == [255, len(DKIM_VALUE) - 255]
    assert "".join(chunks) == DKIM_VALUE
    assert publish_dns.split_txt("a" * 256) == ["a" * 255, "a"]


def test_split_txt_counts_bytes_and_never_cuts_a_character():
    value = "é" * 200  # 400 bytes in UTF-8
    chunks = publish_dns.split_txt(value)
    assert "".join(chunks) == value
    assert all(len(chunk.encode()) <= 255 for chunk in chunks)
    assert len(chunks[0].encode()) == 254  # 127 two-byte characters; the 128th would not fit


def test_quote_txt_chunk_escapes_quotes_backslashes_and_non_ascii():
    assert publish_dns.quote_txt_chunk('say "hi" \\ bye') == '"say \\"hi\\" \\\\ bye"'
    assert publish_dns.quote_txt_chunk("é") == '"\\195\\169"'


def test_zone_lines_are_absolute_and_parse_back_to_the_same_records():
    records = sample_outputs()["dnsRecords"]
    lines = publish_dns.zone_lines(records)
    assert lines[0] == "s43.mail.example.com. 3600 IN A 127.0.0.43"
    assert lines[1] == "43.0.0.127.in-addr.arpa. 3600 IN PTR s43.mail.example.com."
    dkim_line = lines[records.index(find(records, "sel1._domainkey.example.com"))]
    assert dkim_line.startswith('sel1._domainkey.example.com. 3600 IN TXT "v=DKIM1; k=rsa; p=')
    assert dkim_line.count('" "') == 1  # two strings

    # A real zone parser reads every line back to what the stack asked for.
    zone = dns.zone.from_text("\n".join(lines), origin=dns.name.root, relativize=False, check_origin=False)
    for expected in records:
        rdataset = zone.find_rdataset(expected["name"] + ".", expected["type"])
        assert rdataset.ttl == expected["ttl"]
        values = [rdata_text(rdata) for rdata in rdataset]
        assert expected["value"] in values


def rdata_text(rdata) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        assert all(len(s) <= 255 for s in rdata.strings)
        return b"".join(rdata.strings).decode()
    if rdata.rdtype == dns.rdatatype.PTR:
        return rdata.target.to_text(omit_final_dot=True)
    return rdata.to_text()


def test_nsupdate_deletes_each_set_once_before_adding_and_sends_per_name():
    records = sample_outputs()["dnsRecords"]
    lines = [line for line in publish_dns.nsupdate_lines(records) if not line.startswith(";")]
    assert lines[:3] == [
        "update delete s43.mail.example.com. A",
        "update delete s43.mail.example.com. TXT",
        "update add s43.mail.example.com. 3600 A 127.0.0.43",
    ]
    assert lines[-1] == "send"
    # Each name is its own message, so each may live in a different zone.
    assert lines.count("send") == len({r["name"] for r in records})
    deletes = [line for line in lines if line.startswith("update delete")]
    assert len(deletes) == len(set(deletes)) == len({(r["name"], r["type"]) for r in records})
    adds = [line.split(" ", 5) for line in lines if line.startswith("update add")]
    assert len(adds) == len(records)
    for _, _, name, ttl, type_, value in adds:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, type_, value)
        assert find(records, name.rstrip("."), type_)["value"] == rdata_text(rdata)


def test_nsupdate_with_server_and_zone_sends_only_that_zone_in_one_message():
    records = sample_outputs()["dnsRecords"]
    lines = publish_dns.nsupdate_lines(records, server="127.0.0.153 5353", zone="example.org")
    body = [line for line in lines if not line.startswith(";")]
    assert body[:2] == ["server 127.0.0.153 5353", "zone example.org."]
    assert body.count("send") == 1 and body[-1] == "send"
    added = {line.split()[2] for line in body if line.startswith("update add")}
    assert added == {"example.org.", "sel2._domainkey.example.org.", "_dmarc.example.org."}
    assert any("left out" in line for line in lines)


def test_zone_and_nsupdate_commands(capsys, outputs_file):
    code, out, _ = run_main(capsys, "zone", outputs_file)
    assert code == 0
    assert out.splitlines() == publish_dns.zone_lines(sample_outputs()["dnsRecords"])

    code, out, _ = run_main(capsys, "nsupdate", outputs_file, "--server", "ns1.example.com", "--zone", "example.com")
    assert code == 0
    assert "server ns1.example.com" in out.splitlines()
    assert out.splitlines()[-1] == "send"


def test_json_and_csv_are_flat_name_type_ttl_value(capsys, outputs_file):
    records = sample_outputs()["dnsRecords"]
    expected = [{"name": r["name"], "type": r["type"], "ttl": r["ttl"], "value": r["value"]} for r in records]

    code, out, _ = run_main(capsys, "json", outputs_file)
    assert code == 0
    assert json.loads(out) == expected

    code, out, _ = run_main(capsys, "csv", outputs_file)
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [{**row, "ttl": int(row["ttl"])} for row in rows] == expected
    assert find(rows, "sel1._domainkey.example.com")["value"] == DKIM_VALUE  # whole, unsplit


def test_reads_outputs_from_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(sample_outputs())))
    code, out, _ = run_main(capsys, "json", "-")
    assert code == 0
    assert len(json.loads(out)) == len(sample_outputs()["dnsRecords"])


def test_stack_option_runs_pulumi_stack_output(capsys, monkeypatch, tmp_path):
    # A stand-in `pulumi` on PATH that records its arguments and prints the outputs.
    (tmp_path / "outputs.json").write_text(json.dumps(sample_outputs()))
    fake = tmp_path / "pulumi"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/args\ncat {tmp_path}/outputs.json\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    code, out, _ = run_main(capsys, "json", "--stack", "prod")
    assert code == 0
    assert len(json.loads(out)) == len(sample_outputs()["dnsRecords"])
    assert (tmp_path / "args").read_text().split() == ["stack", "output", "--json", "--stack", "prod"]


def test_bad_input_exits_2_with_a_reason(capsys, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"dnsRecords": "[secret]", "instances": {}}))
    code, _, err = run_main(capsys, "zone", secret)
    assert code == 2 and "--show-secrets" in err

    unknown_type = tmp_path / "mx.json"
    unknown_type.write_text(json.dumps({"dnsRecords": [record("example.com", "MX", "10 mx.example.com", "mx")]}))
    code, _, err = run_main(capsys, "zone", unknown_type)
    assert code == 2 and "unsupported type 'MX'" in err

    code, _, err = run_main(capsys, "zone", tmp_path / "absent.json")
    assert code == 2 and "cannot read" in err


# ---- comparing answers (no network) --------------------------------------------------------

Answer = publish_dns.Answer
SPF = record("example.com", "TXT", "v=spf1 ip4:127.0.0.43 -all", "SPF")


def test_compare_txt_matches_only_the_exact_spf_among_other_txt():
    verification = "google-site-verification=abc"
    assert publish_dns.compare_record(SPF, Answer([verification, SPF["value"]])).status == "present"

    wrong = publish_dns.compare_record(SPF, Answer([verification, "v=spf1 ip4:127.0.0.43 ~all"]))
    assert wrong.status == "different"
    assert wrong.found == ["v=spf1 ip4:127.0.0.43 ~all"]  # the unrelated TXT is not blamed

    assert publish_dns.compare_record(SPF, Answer([verification])).status == "missing"
    assert publish_dns.compare_record(SPF, Answer()).status == "missing"


def test_compare_flags_two_spf_records_even_when_one_is_right():
    result = publish_dns.compare_record(SPF, Answer([SPF["value"], "v=spf1 -all"]))
    assert result.status == "different"
    assert "2 SPF records" in result.note


def test_compare_dkim_ignores_whitespace_in_the_key():
    dkim = record("sel1._domainkey.example.com", "TXT", DKIM_VALUE, "DKIM")
    compact = DKIM_VALUE.replace("; ", ";").replace("p=", "p= ")
    spaced = compact[:200] + " " + compact[200:]
    assert publish_dns.compare_record(dkim, Answer([spaced])).status == "present"
    other_key = DKIM_VALUE[:-4] + "AAAA"
    assert publish_dns.compare_record(dkim, Answer([other_key])).status == "different"


def test_compare_ptr_and_a():
    ptr = record("43.0.0.127.in-addr.arpa", "PTR", "s43.mail.example.com", "reverse DNS")
    assert publish_dns.compare_record(ptr, Answer(["S43.Mail.Example.com."])).status == "present"
    assert publish_dns.compare_record(ptr, Answer(["other.example.com."])).status == "different"
    a = record("s43.mail.example.com", "A", "127.0.0.43", "address")
    assert publish_dns.compare_record(a, Answer(["127.0.0.9", "127.0.0.43"])).status == "present"
    failed = publish_dns.compare_record(a, Answer(error="timed out"))
    assert failed.status == "missing" and "timed out" in failed.note


def test_confirm_reverse_needs_both_directions():
    def lookup_from(table):
        return lambda name, type_: Answer(table.get((name, type_), []))

    ptr_name = "43.0.0.127.in-addr.arpa"
    good = {(ptr_name, "PTR"): ["s43.mail.example.com."], ("s43.mail.example.com", "A"): ["127.0.0.43"]}
    assert publish_dns.confirm_reverse("postfix-43", "127.0.0.43", "s43.mail.example.com", lookup_from(good)).ok

    wrong_ptr = {**good, (ptr_name, "PTR"): ["other.example.com."]}
    result = publish_dns.confirm_reverse("postfix-43", "127.0.0.43", "s43.mail.example.com", lookup_from(wrong_ptr))
    assert not result.ok and "other.example.com" in result.note

    no_a = {(ptr_name, "PTR"): ["s43.mail.example.com."]}
    result = publish_dns.confirm_reverse("postfix-43", "127.0.0.43", "s43.mail.example.com", lookup_from(no_a))
    assert not result.ok and "no A record" in result.note


# ---- check against a real DNS server -------------------------------------------------------



def dns_server(zone_lines: list[str]):
    """Serve the zone lines over UDP and TCP on SERVER_ADDRESS; yields the port."""
    return serving("\n".join(zone_lines), SERVER_ADDRESS)


def check(capsys, outputs_file, port) -> tuple[int, str]:
    code, out, _ = run_main(capsys, "check", outputs_file, "--nameserver", SERVER_ADDRESS,
                            "--port", port, "--timeout", "3")
    return code, out


def served(change) -> list[str]:
    """Zone lines of the sample records after `change(records)` edits them."""
    records = copy.deepcopy(sample_outputs()["dnsRecords"])
    change(records)
    return publish_dns.zone_lines(records)


def test_server_answers_the_long_dkim_record_over_tcp_too():
    with dns_server(served(lambda records: None)) as port:
        query = dns.message.make_query("sel1._domainkey.example.com.", "TXT")
        response = dns.query.tcp(query, SERVER_ADDRESS, port=port, timeout=3)
    assert b"".join(response.answer[0][0].strings).decode() == DKIM_VALUE


def test_check_all_present_exits_0(capsys, outputs_file):
    with dns_server(served(lambda records: None)) as port:
        code, out = check(capsys, outputs_file, port)
    assert code == 0, out
    assert "12 records: 12 present, 0 missing, 0 different; FCrDNS: 2 of 2 instances confirmed" in out
    assert "fcrdns ok  postfix-45  127.0.0.45 -> s45.mail.example.com -> 127.0.0.45" in out


def test_check_reports_a_missing_dmarc_record(capsys, outputs_file):
    def drop_dmarc(records):
        records.remove(find(records, "_dmarc.example.org"))

    with dns_server(served(drop_dmarc)) as port:
        code, out = check(capsys, outputs_file, port)
    assert code == 1
    assert "missing   TXT _dmarc.example.org  v=DMARC1; p=none" in out
    assert "1 missing" in out


def test_check_shows_expected_and_found_for_a_wrong_spf(capsys, outputs_file):
    def soften_spf(records):
        find(records, "example.com")["value"] = "v=spf1 ip4:127.0.0.43 ~all"

    with dns_server(served(soften_spf)) as port:
        code, out = check(capsys, outputs_file, port)
    assert code == 1
    lines = out.splitlines()
    at = lines.index("different TXT example.com  v=spf1 ip4:127.0.0.43 ip4:127.0.0.45 -all")
    assert lines[at + 1] == "    expected: v=spf1 ip4:127.0.0.43 ip4:127.0.0.45 -all"
    assert lines[at + 2] == "    found:    v=spf1 ip4:127.0.0.43 ~all"


def test_check_fails_fcrdns_when_the_ptr_names_another_host(capsys, outputs_file):
    def repoint_ptr(records):
        find(records, "45.0.0.127.in-addr.arpa", "PTR")["value"] = "unrelated.example.net"

    with dns_server(served(repoint_ptr)) as port:
        code, out = check(capsys, outputs_file, port)
    assert code == 1
    assert "different PTR 45.0.0.127.in-addr.arpa" in out
    assert ("fcrdns FAILED  postfix-45  PTR of 127.0.0.45: unrelated.example.net; "
            "expected s45.mail.example.com") in out
    assert "fcrdns ok  postfix-43" in out
    assert "FCrDNS: 1 of 2 instances confirmed" in out


def test_check_as_a_command_sets_the_exit_status(outputs_file):
    with dns_server(served(lambda records: None)) as port:
        ok = subprocess.run([sys.executable, TOOL, "check", outputs_file, "--nameserver", SERVER_ADDRESS,
                             "--port", str(port), "--timeout", "3"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.parametrize("server", ["closed port", "silent"])
def test_check_says_once_and_quickly_that_the_server_does_not_answer(capsys, outputs_file, server):
    # A port nothing listens on, or a socket that reads queries and never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((SERVER_ADDRESS, 0))
        port = probe.getsockname()[1]
        if server == "closed port":
            probe.close()
        started = time.monotonic()
        code, out, err = run_main(capsys, "check", outputs_file, "--nameserver", SERVER_ADDRESS,
                                  "--port", str(port), "--timeout", "0.5")
    assert time.monotonic() - started < 2  # one lookup's timeout, not one per record
    assert code == 2
    assert out == ""  # no record reported "missing" for a server that never answered
    assert err.strip() == (f"publish_dns: name server {SERVER_ADDRESS} (port {port}) did not answer within 0.5 s: "
                           "check the address and port, and that DNS over UDP reaches it from here")


# ---- check as a command: every exit status; answers over 512 bytes -------------------------

def test_check_as_a_command_exits_1_when_dns_is_wrong_and_2_on_bad_input(outputs_file, tmp_path):
    def drop_dmarc(records):
        records.remove(find(records, "_dmarc.example.org"))

    with dns_server(served(drop_dmarc)) as port:
        wrong = subprocess.run([sys.executable, TOOL, "check", outputs_file, "--nameserver", SERVER_ADDRESS,
                                "--port", str(port), "--timeout", "3"], capture_output=True, text=True)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert "missing   TXT _dmarc.example.org" in wrong.stdout
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"dnsRecords": "[secret]", "instances": {}}))
    bad = subprocess.run([sys.executable, TOOL, "check", secret, "--nameserver", SERVER_ADDRESS],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--show-secrets" in bad.stderr, bad.stdout + bad.stderr


# A DKIM value of about 740 characters (an RSA-4096 key's size): its answer is over 512 bytes.
LONG_DKIM_VALUE = "v=DKIM1; k=rsa; p=" + base64.b64encode(bytes(range(256)) * 2 + bytes(range(38))).decode()


@contextlib.contextmanager
def dns_server_without_edns(zone_lines: list[str]):
    """Like dns_server, but as a server that knows no EDNS: over UDP an answer is cut at 512 bytes
    whatever size the client offers, and comes back empty with TC set. Yields the port and the
    names asked over TCP."""
    asked_over_tcp: list[str] = []
    with serving("\n".join(zone_lines), SERVER_ADDRESS, edns=False, asked_over_tcp=asked_over_tcp) as port:
        yield port, asked_over_tcp


def test_check_asks_again_over_tcp_for_an_answer_over_512_bytes(capsys, tmp_path):
    outputs = sample_outputs()
    find(outputs["dnsRecords"], "sel1._domainkey.example.com")["value"] = LONG_DKIM_VALUE
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    name = "sel1._domainkey.example.com."
    with dns_server_without_edns(publish_dns.zone_lines(outputs["dnsRecords"])) as (port, asked_over_tcp):
        # Over UDP alone the record cannot be read: the answer is truncated and empty.
        udp = dns.query.udp(dns.message.make_query(name, "TXT", use_edns=0, payload=4096),
                            SERVER_ADDRESS, port=port, timeout=3)
        assert udp.flags & dns.flags.TC and not udp.answer
        code, out = check(capsys, path, port)
    assert code == 0, out
    assert f"present   TXT {name[:-1]}  {LONG_DKIM_VALUE[:69]}..." in out
    assert name in asked_over_tcp


# ---- publicIp, empty batches, the documented commands, the program's venv -------------------------

def nat_outputs() -> dict:
    """postfix-45 sits behind one-to-one NAT: DNS names its public address, 203.0.113.45."""
    outputs = sample_outputs()
    outputs["instances"]["postfix-45"]["publicIp"] = "203.0.113.45"
    for item in outputs["dnsRecords"]:
        if item["value"] == "127.0.0.45":
            item["value"] = "203.0.113.45"
        if item["name"] == "45.0.0.127.in-addr.arpa":
            item["name"] = "45.113.0.203.in-addr.arpa"
        item["value"] = item["value"].replace("ip4:127.0.0.45", "ip4:203.0.113.45")
    return outputs


def test_check_confirms_reverse_dns_of_the_public_address(capsys, tmp_path):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(nat_outputs()))
    with dns_server(publish_dns.zone_lines(nat_outputs()["dnsRecords"])) as port:
        code, out = check(capsys, path, port)
    assert code == 0, out
    assert "fcrdns ok  postfix-45  203.0.113.45 -> s45.mail.example.com -> 203.0.113.45" in out

    # DNS that still names the private address fails, for the record and for FCrDNS.
    with dns_server(publish_dns.zone_lines(sample_outputs()["dnsRecords"])) as port:
        code, out = check(capsys, path, port)
    assert code == 1
    assert "fcrdns FAILED  postfix-45  PTR of 203.0.113.45: no PTR record" in out


def test_nsupdate_with_a_zone_that_holds_nothing_is_an_error(capsys, outputs_file):
    code, out, err = run_main(capsys, "nsupdate", outputs_file, "--zone", "example.net")
    assert code == 2 and out == ""
    assert "no record of the stack is inside zone example.net" in err and "example.com" in err


def readme_stack(title: str) -> str:
    """The YAML block that follows a line of docs/stacks.md starting with `title`."""
    readme = (REPO / "docs" / "stacks.md").read_text()
    after = readme[readme.index(title):]
    return after[after.index("```yaml\n") + len("```yaml\n"):after.index("\n```", after.index("```yaml"))]


def readme_command(prefix: str) -> str:
    (line,) = [line for line in (REPO / "docs" / "day2.md").read_text().splitlines() if line.startswith(prefix)]
    return line



def test_the_readme_nsupdate_example_makes_a_batch(tmp_path):
    # The documented example stack, run as the program under mocks, gives the outputs...
    import yaml

    import harness
    from keys import openssh_private_key
    from shape_mocks import ShapeMocks

    stack_file = tmp_path / "Pulumi.prod.yaml"
    stack_file.write_text(readme_stack("`Pulumi.prod.yaml`: a VM"))
    assert "ecrm.com.tw" in yaml.safe_load(stack_file.read_text())["config"]["mailfleet:dkim"][0]["domain"]
    config, secret_keys = harness.stack_config(stack_file, {"mailfleet:sshPrivateKey": openssh_private_key()})
    run = harness.run_program(config, ShapeMocks(), secret_keys=secret_keys, stack="prod")
    (tmp_path / "outputs.json").write_text(json.dumps(run.outputs))

    # ...and the documented exact command line makes a batch that adds records and sends them.
    command = readme_command("venv/bin/python tools/publish_dns.py nsupdate ")
    argv, _, target = command.partition(" > ")
    words = argv.split()
    assert words[:2] == ["venv/bin/python", "tools/publish_dns.py"]
    with open(tmp_path / target.split()[0], "w") as batch:
        result = subprocess.run([sys.executable, str(TOOL), *words[2:]], cwd=tmp_path, stdout=batch,
                                stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "update.txt").read_text().splitlines()
    adds = [line for line in lines if line.startswith("update add ")]
    assert len(adds) >= 6 and lines[-1] == "send", lines
    assert {"update add tt5.ecrm.com.tw. 3600 TXT \"v=spf1 ip4:203.0.113.43 ip4:203.0.113.45 -all\"",
            "update add s43.11.ecrm.com.tw. 3600 A 203.0.113.43"} <= set(lines)


def test_the_tool_needs_only_what_requirements_txt_installs(tmp_path):
    """Every module the tool imports (zone and check) comes from a distribution that
    requirements.txt installs, directly or as a dependency: none from requirements-dev.txt."""
    from importlib import metadata

    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(f"""
        import json, runpy, sys
        before = set(sys.modules)  # what the interpreter loaded at start (.pth hooks) is not the tool's
        sys.argv = ["publish_dns.py", "check", {str(tmp_path / 'outputs.json')!r}, "--nameserver",
                    "{SERVER_ADDRESS}", "--port", "9", "--timeout", "0.1"]
        try:
            runpy.run_path({str(TOOL)!r}, run_name="__main__")
        except SystemExit:
            pass
        print(json.dumps(sorted({{name.split(".")[0] for name in set(sys.modules) - before}})), file=sys.stderr)
    """))
    (tmp_path / "outputs.json").write_text(json.dumps(sample_outputs()))
    result = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120)
    modules = json.loads(result.stderr.strip().splitlines()[-1])
    assert "dns" in modules  # check really ran its lookups

    def name(requirement: str) -> str:
        return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")

    wanted = [name(line) for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    closure: set[str] = set()
    while wanted:
        dist = wanted.pop()
        if dist in closure:
            continue
        closure.add(dist)
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        wanted += [name(r) for r in requires if "extra ==" not in r]
    providers = metadata.packages_distributions()
    outside = {module: providers[module] for module in modules
               if module in providers and not any(name(d) in closure for d in providers[module])}
    assert outside == {}, f"imported from packages requirements.txt does not install: {outside}"

