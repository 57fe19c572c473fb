"""Receiver view: mail from a mailfleet host judged as the large mailbox providers judge it.

The real __main__.py deploys onto a test host (as in test_apply.py); an authoritative DNS server
started inside the test namespace serves exactly the stack's `zoneFile` (its `dnsRecords`), and
each message that reaches the sink is judged only through that server: SPF of the envelope
sender and of the HELO name from the peer address (pyspf), forward-confirmed reverse DNS of the
peer naming the HELO, DKIM for every algorithm the domain has (dkimpy, Ed25519 through PyNaCl),
and DMARC with the published policy (the small evaluation below: alignment plus pass).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dkim
import dkim.util
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import spf

from harness import run_program
from integration.real_mocks import RealMocks
from integration.test_apply import StatefulMocks, wait_for
from integration.testhost import TestHost, booted

pytestmark = pytest.mark.integration

INSTANCES = [
    {"name": "postfix-43", "ip": "127.0.0.43", "hostname": "s43.mail.example.com"},
    {"name": "postfix-45", "ip": "127.0.0.45", "hostname": "s45.mail.example.com"},
]
DKIM_KEYS = [
    {"domain": "example.com", "selector": "r1"},
    {"domain": "example.com", "selector": "e1", "algorithm": "ed25519"},
    {"domain": "example.net", "selector": "r2"},
]
ALGORITHMS = {"example.com": {"rsa-sha256", "ed25519-sha256"}, "example.net": {"rsa-sha256"}}
DMARC_POLICY = "reject"
RELAY_CLIENT = "198.51.100.7"  # in relayNetworks, on the namespace's lo
RELAY_HELO = "app7.corp.internal"
INTERNAL_HOP = ("app9.corp.internal", "198.51.100.9")  # a Received line the client brings along
DNS_IP = "127.0.0.153"
SINK = "[127.0.0.1]:2525"
DNS_SERVER = Path(__file__).with_name("dnsserver.py")


def config_for(host: TestHost, **overrides) -> dict[str, str]:
    config = {
        "mailfleet:hosts": [{"name": "mailtest", "address": "127.0.0.1", "instances": INSTANCES}],
        "mailfleet:sshPrivateKey": host.ssh_private_key,
        "mailfleet:dkim": DKIM_KEYS,
        "mailfleet:relayNetworks": ["198.51.100.0/24"],
        "mailfleet:relayhost": SINK,
        "mailfleet:dmarc": {"policy": DMARC_POLICY},
        **overrides,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


# This module's stacks, per suite: keys and certificates are kept between its applies, as the
# engine keeps them in its state (test_apply.py's StatefulMocks).
STATE: dict[str, dict] = {}


def stateful_mocks(host: TestHost) -> StatefulMocks:
    return StatefulMocks(host.connect, STATE.setdefault(host.suite, {}))


def deploy(host: TestHost, config: dict[str, str], mocks: RealMocks | None = None):
    mocks = mocks or stateful_mocks(host)
    return run_program(config, mocks, secret_keys=["mailfleet:sshPrivateKey"], stack="receiver")


# ---- the receiver: DNS only through the test's own server -----------------------------------

class Receiver:
    """Lookups go over TCP to the test's DNS server, from a socket made inside the namespace."""

    def __init__(self, host: TestHost):
        self.host = host

    def query(self, name: str, rdtype: str) -> list:
        query = dns.message.make_query(name, rdtype)
        with self.host.connect(DNS_IP, 53, timeout=5) as sock:
            response = dns.query.tcp(query, DNS_IP, port=53, sock=sock, timeout=5)
        if response.rcode() != dns.rcode.NOERROR:
            return []
        return [rdata for rrset in response.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype)
                for rdata in rrset]

    def txt(self, name: str) -> list[str]:
        return [b"".join(rdata.strings).decode() for rdata in self.query(name, "TXT")]

    def spf_lookup(self, name, qtype, strict=True, timeout=30):
        """pyspf's DNSLookup, answered by the test server (the shape of its dnspython variant)."""
        if qtype not in ("A", "AAAA", "MX", "PTR", "TXT"):
            return []
        answers = []
        for rdata in self.query(name, qtype):
            value = {"A": lambda r: r.address, "AAAA": lambda r: r.address,
                     "MX": lambda r: (r.preference, r.exchange),
                     "PTR": lambda r: r.target.to_text(True), "TXT": lambda r: r.strings}[qtype](rdata)
            answers.append(((name, qtype), value))
        return answers

    def spf(self, ip: str, sender: str, helo: str) -> str:
        original = spf.DNSLookup
        spf.DNSLookup = self.spf_lookup
        try:
            return spf.check2(i=ip, s=sender, h=helo)[0]
        finally:
            spf.DNSLookup = original

    def fcrdns(self, ip: str) -> list[str]:
        """Names of the PTR of `ip` whose A records lead back to `ip`."""
        reverse = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
        names = [rdata.target.to_text(omit_final_dot=True) for rdata in self.query(reverse, "PTR")]
        return [name for name in names if ip in {rdata.address for rdata in self.query(name, "A")}]

    def dkim_dnsfunc(self, name: bytes, timeout: int = 5) -> bytes:
        return "".join(self.txt(name.decode().rstrip("."))).encode()

    def dkim(self, data: bytes) -> list[dict]:
        """Every DKIM-Signature: its d=, a=, signed header names and whether it verifies."""
        headers, _ = dkim.rfc822_parse(data)
        results = []
        signatures = [value for name, value in headers if name.lower() == b"dkim-signature"]
        for index, value in enumerate(signatures):
            tags = dkim.util.parse_tag_value(re.sub(rb"\s+", b"", value))
            verified = dkim.DKIM(data).verify(idx=index, dnsfunc=self.dkim_dnsfunc)
            results.append({"d": tags[b"d"].decode(), "a": tags[b"a"].decode(), "pass": verified,
                            "h": [h.decode().lower() for h in tags[b"h"].split(b":")]})
        return results

    def dmarc(self, header_from: str, spf_result: str, mail_from: str, dkim_results: list[dict]) -> tuple[str, str]:
        """(result, published policy), RFC 7489 in small: the record at the From domain or its
        organizational domain (here: the last two labels, true of the test's domains), relaxed
        or strict alignment as published, pass when an aligned DKIM or SPF identifier passes."""
        domain = header_from.rsplit("@", 1)[1].lower()
        organizational = ".".join(domain.split(".")[-2:])
        records = [r for r in self.txt(f"_dmarc.{domain}") or self.txt(f"_dmarc.{organizational}")
                   if r.startswith("v=DMARC1")]
        if len(records) != 1:
            return "none", ""
        tags = dict(part.strip().split("=", 1) for part in records[0].split(";") if "=" in part)

        def aligned(identifier: str, mode: str) -> bool:
            identifier = identifier.lower()
            if mode == "s":
                return identifier == domain
            return ".".join(identifier.split(".")[-2:]) == organizational
        dkim_ok = any(r["pass"] and aligned(r["d"], tags.get("adkim", "r")) for r in dkim_results)
        spf_ok = spf_result == "pass" and aligned(mail_from.rsplit("@", 1)[1], tags.get("aspf", "r"))
        return ("pass" if dkim_ok or spf_ok else "fail"), tags.get("p", "")


def header_section(data: str) -> str:
    return data.split("\r\n\r\n", 1)[0]


def header_values(data: str, name: str) -> list[str]:
    unfolded = re.sub(r"\r\n[ \t]+", " ", header_section(data))
    return [line.split(":", 1)[1].strip() for line in unfolded.split("\r\n")
            if line.lower().startswith(name.lower() + ":")]


@contextmanager
def dns_receiver(host: TestHost, zone: str) -> Iterator[Receiver]:
    """A Receiver whose DNS server runs in the host's namespace and serves `zone` (a zone file) alone."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "zone"
        path.write_text(zone)
        server = subprocess.Popen(["ip", "netns", "exec", host.netns, sys.executable, str(DNS_SERVER),
                                   "--zone", str(path), "--address", DNS_IP],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True)
        try:
            line = server.stdout.readline()
            assert line.strip() == "ready", line + server.stdout.read()
            yield Receiver(host)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(30)


def one_instance_host(suite: str) -> Iterator[TestHost]:
    """A test host for the first instance alone and the relay client (test_abuse.py and
    test_signing_corpus.py make it their module's `host` fixture)."""
    with booted(ips=[INSTANCES[0]["ip"], RELAY_CLIENT], suite=suite) as test_host:
        yield test_host


# ---- fixtures --------------------------------------------------------------------------------

figures: dict[str, float] = {}


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[i["ip"] for i in INSTANCES] + [RELAY_CLIENT, INTERNAL_HOP[1]], suite=suite) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def deployed(host):
    started = time.monotonic()
    run = deploy(host, config_for(host))
    figures["apply s"] = round(time.monotonic() - started, 1)
    return run


@pytest.fixture(scope="module")
def receiver(host, deployed):
    with dns_receiver(host, deployed.outputs["zoneFile"]) as judge_:  # exactly what the stack asks to publish
        yield judge_


def relay_message(domain: str, subject: str) -> bytes:
    """What an application in relayNetworks sends: no Message-ID, no Date, one-click
    unsubscribe, and a Received line from the network behind it."""
    hop_name, hop_ip = INTERNAL_HOP
    return (f"Received: from {hop_name} ({hop_name} [{hop_ip}]) by {RELAY_HELO} with SMTP;"
            f" Wed, 25 Nov 2026 10:00:00 +0000\r\n"
            f"From: News <news@{domain}>\r\n"
            f"To: someone@example.org\r\n"
            f"Subject: {subject}\r\n"
            f"List-Unsubscribe: <https://{domain}/u/1>, <mailto:unsubscribe@{domain}?subject=1>\r\n"
            f"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n"
            f"\r\n"
            f"{subject}: sent through mailfleet's test host.\r\n").encode()


@pytest.fixture(scope="module")
def delivered(host, deployed):
    """One message for each instance and signing domain, from the relay client, as delivered."""
    host.clear_sink()
    messages = {}
    for instance in INSTANCES:
        for domain in ALGORITHMS:
            subject = f"receiver {instance['name']} {domain}"
            with host.smtp(instance["ip"], source=RELAY_CLIENT) as client:
                client.ehlo(RELAY_HELO)
                client.sendmail(f"news@{domain}", ["someone@example.org"], relay_message(domain, subject))
            messages[(instance["name"], domain)] = wait_for(host, subject)
    return messages


def judge(receiver: Receiver, received: dict) -> dict:
    data = received["data"].encode("utf-8", "surrogateescape")
    (header_from,) = header_values(received["data"], "From")
    header_from = re.search(r"[^<\s]+@[^>\s]+", header_from)[0]
    spf_mail_from = receiver.spf(received["peer"], received["mail_from"], received["helo"])
    dkim_results = receiver.dkim(data)
    return {
        "spf": spf_mail_from,
        "spf_helo": receiver.spf(received["peer"], f"postmaster@{received['helo']}", received["helo"]),
        "fcrdns": receiver.fcrdns(received["peer"]),
        "dkim": dkim_results,
        "dmarc": receiver.dmarc(header_from, spf_mail_from, received["mail_from"], dkim_results),
    }


# ---- the tests -------------------------------------------------------------------------------

def test_the_dns_server_serves_the_stack_records_and_nothing_else(receiver, deployed):
    records = deployed.outputs["dnsRecords"]
    spf_record = next(r["value"] for r in records if r["name"] == "example.com" and r["type"] == "TXT")
    assert receiver.txt("example.com") == [spf_record]
    assert receiver.txt("e1._domainkey.example.com") == [deployed.outputs["dkimRecords"]["e1._domainkey.example.com"]]
    assert receiver.txt("e1._domainkey.example.com")[0].startswith("v=DKIM1; k=ed25519; p=")
    assert receiver.txt("example.org") == [] and receiver.query("s43.mail.example.com", "MX") == []


def test_every_instance_and_domain_passes_spf_fcrdns_dkim_and_dmarc(receiver, delivered):
    for (name, domain), received in delivered.items():
        instance = next(i for i in INSTANCES if i["name"] == name)
        assert (received["peer"], received["helo"]) == (instance["ip"], instance["hostname"])
        verdict = judge(receiver, received)
        assert verdict["spf"] == "pass", (name, domain, verdict)
        assert verdict["spf_helo"] == "pass", (name, domain, verdict)
        assert verdict["fcrdns"] == [instance["hostname"]], (name, domain, verdict)
        signatures = [s for s in verdict["dkim"] if s["d"] == domain]
        assert {s["a"] for s in signatures} == ALGORITHMS[domain], (name, domain, verdict)
        assert all(s["pass"] for s in signatures), (name, domain, verdict)
        assert verdict["dmarc"] == ("pass", DMARC_POLICY), (name, domain, verdict)
    # The judge is not blind: an address the records do not name fails, and so does DMARC
    # when neither identifier passes.
    stranger = "127.0.0.99"
    assert receiver.spf(stranger, received["mail_from"], received["helo"]) == "fail"
    assert receiver.fcrdns(stranger) == []
    failed = [dict(s, **{"pass": False}) for s in verdict["dkim"]]
    assert receiver.dmarc(f"news@{domain}", "fail", received["mail_from"], failed) == ("fail", DMARC_POLICY)


def test_mail_without_message_id_and_date_arrives_with_both_signed(receiver, delivered):
    for received in delivered.values():
        (message_id,) = header_values(received["data"], "Message-ID")
        (date,) = header_values(received["data"], "Date")
        assert re.fullmatch(r"<[^@\s]+@s4[35]\.mail\.example\.com>", message_id), message_id
        assert re.search(r"\d{2}:\d{2}:\d{2} [+-]\d{4}", date), date
        for signature in receiver.dkim(received["data"].encode("utf-8", "surrogateescape")):
            assert {"message-id", "date"} <= set(signature["h"]), signature


def test_one_click_unsubscribe_headers_are_in_every_verified_signature(receiver, delivered):
    for received in delivered.values():
        signatures = receiver.dkim(received["data"].encode("utf-8", "surrogateescape"))
        assert signatures and all(s["pass"] for s in signatures)
        for signature in signatures:
            assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(signature["h"]), signature
            assert signature["h"].count("from") == 2  # From oversigned: no second From can be added


def test_no_delivered_header_names_the_relay_client_or_its_network(delivered):
    for received in delivered.values():
        headers = header_section(received["data"])
        for leak in (RELAY_HELO, RELAY_CLIENT, *INTERNAL_HOP):
            assert leak not in headers, (leak, headers)


def test_sendmail_on_the_host_leaves_signed_from_the_first_instance(host, receiver, deployed):
    since = host.run("date '+%Y-%m-%d %H:%M:%S'")[1].strip()
    # A cron-like message: no From, no sender, recipient root, submitted to the default instance.
    host.run("printf 'Subject: local mail from the host\\n\\nas cron sends it\\n' | /usr/sbin/sendmail root")
    received = wait_for(host, "local mail from the host")
    first = INSTANCES[0]
    assert (received["peer"], received["helo"]) == (first["ip"], first["hostname"])
    assert received["mail_from"] == "root@example.com"  # the default instance's myorigin
    assert received["rcpt_tos"] == ["root@example.com"]
    verdict = judge(receiver, received)
    assert {s["a"] for s in verdict["dkim"] if s["pass"] and s["d"] == "example.com"} == ALGORITHMS["example.com"]
    assert (verdict["spf"], verdict["dmarc"]) == ("pass", ("pass", DMARC_POLICY)), verdict
    # The first instance took it from the default instance's bind address, which every instance
    # trusts (mynetworks always holds the loopback), not from its own address.
    log = host.run(f"journalctl --no-pager -o cat --since '{since}' SYSLOG_IDENTIFIER=postfix-43/smtpd")[1]
    assert re.search(r"connect from \S+\[127\.0\.0\.1\]", log), log


def test_reapply_with_both_algorithms_changes_nothing(host, deployed):
    """Two OpenDKIM processes sign, one per algorithm; with Ed25519 keys it converges like everything else."""
    pids_of = "systemctl show -p MainPID --value opendkim opendkim-ed25519"
    found = ("find /etc/opendkim /etc/opendkim*.conf /etc/systemd/system/opendkim*"
             " /etc/postfix-4* -type f -exec sha256sum {} +")
    pids, files = host.run(pids_of)[1].split(), host.run(found)[1]
    mocks = stateful_mocks(host)
    started = time.monotonic()
    deploy(host, config_for(host), mocks)
    figures["re-apply s"] = round(time.monotonic() - started, 1)
    output = "\n".join(e.get("stdout") or "" for e in mocks.log if e["type"] == "command:remote:Command")
    assert not re.search(r"^(changed|created|installed|started|reloaded|restarted|enabled|removed) ", output, re.M), output
    assert host.run(pids_of)[1].split() == pids
    assert len(pids) == 2 and "0" not in pids
    assert host.run(found)[1] == files


def test_print_figures(deployed):
    print("\nreceiver view: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
