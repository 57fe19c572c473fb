"""Abuse, on the real host: what an outsider or a careless relay client tries is refused at the
SMTP dialogue, with a 5xx that says why, and nothing is queued, bounced or delivered.

Its own test host, deployed like test_receiver.py (one instance is enough here).
"""

from __future__ import annotations

import smtplib
import ssl
import time

import pytest

from integration.test_receiver import RELAY_CLIENT, config_for, deploy
from integration.testhost import OUTSIDE_CLIENT_IP, TestHost, booted

pytestmark = pytest.mark.integration

INSTANCE = {"name": "postfix-43", "ip": "127.0.0.43", "hostname": "s43.mail.example.com"}
figures: dict[str, str] = {}


@pytest.fixture(scope="module")
def host(suite):
    with booted(ips=[INSTANCE["ip"], RELAY_CLIENT], suite=suite) as test_host:
        yield test_host


@pytest.fixture(scope="module")
def deployed(host):
    return deploy(host, config_for(host, **{"mailfleet:hosts": [
        {"name": "mailtest", "address": "127.0.0.1", "instances": [INSTANCE]}]}))


def queued(host: TestHost) -> str:
    return host.run("postqueue -p; postqueue -c /etc/postfix-43 -p")[1]


def mail_log(host: TestHost, since: str) -> str:
    return host.run(f"journalctl --no-pager --since '{since}' | grep postfix || true")[1]


def host_time(host: TestHost) -> str:
    return host.run("date '+%Y-%m-%d %H:%M:%S'")[1].strip()


def test_mail_for_an_address_literal_is_refused_and_never_bounced(host, deployed):
    host.clear_sink()
    since = host_time(host)
    for forged_sender in ("victim@example.com", "victim@example.org"):
        with host.smtp(INSTANCE["ip"], source=OUTSIDE_CLIENT_IP) as client:
            client.ehlo("outside.example")
            code, reply = client.mail(forged_sender)
            if code == 250:  # a sender in a signing domain gets as far as RCPT
                code, reply = client.rcpt(f"nosuchuser@[{INSTANCE['ip']}]")
                assert code == 550 and b"address literals" in reply, (code, reply)
                # Another host's literal is a relay attempt (554) for an outsider; refused either way.
                assert client.rcpt("postmaster@[127.0.0.1]")[0] in (550, 554)
            else:
                assert 500 <= code < 600, (code, reply)
    time.sleep(3)
    assert "Mail queue is empty" in queued(host) and queued(host).count("Mail queue is empty") == 2
    log = mail_log(host, since)
    assert "NOQUEUE: reject: RCPT from" in log, log  # the log is read, and shows the refusal
    assert "sender non-delivery notification" not in log and "/local[" not in log, log
    assert host.sink_messages() == []


def test_a_relay_client_cannot_send_as_a_domain_that_is_not_signed(host, deployed):
    host.clear_sink()
    with host.smtp(INSTANCE["ip"], source=RELAY_CLIENT) as client:
        client.ehlo("app7.corp.internal")
        code, reply = client.mail("news@unsigned.example")
        assert code == 550 and b"5.7.1" in reply and b"not signed by this host" in reply, (code, reply)
        client.rset()
        assert client.mail("")[0] == 550  # the null sender is not signable either
        client.rset()
        # A subdomain of a signing domain is signed (OpenDKIM's *@*.domain), so it may send.
        assert client.mail("news@mail.example.com")[0] == 250
    time.sleep(2)
    assert host.sink_messages() == []


def test_vrfy_is_off_and_helo_comes_first(host, deployed):
    with host.smtp(INSTANCE["ip"], source=RELAY_CLIENT) as client:
        assert client.docmd("MAIL FROM:<news@example.com>")[0] == 503  # no HELO yet
        client.ehlo("app7.corp.internal")
        assert client.docmd("VRFY root")[0] == 502


def tls_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # this client would speak TLS 1.1: the server decides
    return context


def handshake(host: TestHost, port: int, version: ssl.TLSVersion) -> str | None:
    """The negotiated version, or None when the handshake fails."""
    try:
        if port == 465:
            with host.smtp(INSTANCE["ip"], port=465, source=RELAY_CLIENT, implicit_tls=True,
                           ssl_context=tls_context(version)) as client:
                return client.sock.version()
        with host.smtp(INSTANCE["ip"], port=port, source=RELAY_CLIENT) as client:
            client.starttls(context=tls_context(version))
            return client.sock.version()
    except (OSError, smtplib.SMTPException):  # ssl.SSLError and resets are OSErrors
        return None


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_submission_ports_refuse_tls_below_1_2(host, deployed):
    for port in (587, 465):
        assert handshake(host, port, ssl.TLSVersion.TLSv1_1) is None, port
        assert handshake(host, port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2", port
        assert handshake(host, port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3", port
    # Port 25 keeps Postfix's defaults (measured on Debian 12: TLS 1.1 gets through there), which
    # shows that the refusal on 587/465 is the configuration's, not the client's or OpenSSL's.
    # Shown, not asserted: another host's OpenSSL may refuse TLS 1.1 everywhere.
    figures["TLS 1.1 on port 25"] = handshake(host, 25, ssl.TLSVersion.TLSv1_1) or "refused"


def test_print_figures(deployed):
    print("\nabuse: " + ", ".join(f"{k}: {v}" for k, v in figures.items()))
