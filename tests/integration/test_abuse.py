"""Abuse, on the real host: what an outsider or a careless relay client tries is refused at the
SMTP dialogue, with a 5xx that says why, and nothing is queued, bounced or delivered.

Its own test host, deployed like test_receiver.py (one instance is enough here).
"""

from __future__ import annotations

import email
import smtplib
import ssl
import time

import pytest

from integration.test_receiver import INSTANCES, RELAY_CLIENT, config_for, deploy, one_instance_host, wait_for
from integration.testhost import OUTSIDE_CLIENT_IP, TestHost

pytestmark = pytest.mark.integration

INSTANCE = INSTANCES[0]
figures: dict[str, str] = {}


host = pytest.fixture(scope="module", name="host")(one_instance_host)


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


def test_a_message_cannot_smuggle_a_second_one_behind_a_bare_newline(host, deployed):
    """SMTP smuggling: a bare <LF>.<LF> that one server takes for the end of DATA hides a second
    message, with its own MAIL FROM, inside the first. smtpd_forbid_bare_newline (where the host's
    Postfix knows it; Debian 12 and 13 both do), with no exemption for the relay networks, requires
    <CR><LF>.<CR><LF>: the second message stays text in the first."""
    assert host.run("postconf -c /etc/postfix-43 -h smtpd_forbid_bare_newline")[1].strip() == "yes"
    host.clear_sink()
    with host.smtp(INSTANCE["ip"], source=RELAY_CLIENT) as client:
        client.ehlo("app7.corp.internal")
        assert client.mail("news@example.com")[0] == 250
        assert client.rcpt("someone@example.org")[0] == 250
        assert client.docmd("DATA")[0] == 354
        # smtplib's data() would turn every bare LF into CRLF: send the bytes as they are.
        client.send(b"From: news@example.com\r\nTo: someone@example.org\r\nSubject: carrier\r\n\r\n"
                    b"body\n.\nMAIL FROM:<news@example.com>\r\nRCPT TO:<victim@example.org>\r\n"
                    b"DATA\r\nFrom: news@example.com\r\nSubject: smuggled\r\n\r\nhidden\r\n.\r\n")
        code, reply = client.getreply()
        assert code == 250, (code, reply)
    carrier = wait_for(host, "carrier")
    assert "hidden" in carrier["data"]
    time.sleep(3)  # a smuggled message would have been queued at once and delivered by now
    delivered = host.sink_messages()
    assert [email.message_from_string(m["data"])["Subject"] for m in delivered] == ["carrier"]
    assert [m["rcpt_tos"] for m in delivered] == [["someone@example.org"]]


def test_an_instance_never_sends_from_another_address(host, deployed):
    """smtp_bind_address_enforce (where the host's Postfix knows it): if the instance's address
    were gone, Postfix would defer rather than send from whatever address the kernel picks under
    this instance's HELO. Shown as the effective setting: Postfix's own tools refuse to run once
    an inet_interfaces address is missing, so the situation cannot be staged on the host."""
    for name in ("smtp_bind_address_enforce", "smtp_bind_address"):
        value = host.run(f"postconf -c /etc/postfix-43 -h {name}")[1].strip()
        assert value == {"smtp_bind_address_enforce": "yes", "smtp_bind_address": INSTANCE["ip"]}[name], name


def test_print_figures(deployed):
    print("\nabuse: " + ", ".join(f"{k}: {v}" for k, v in figures.items()))
