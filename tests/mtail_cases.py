"""Lines for mailfleet's mtail programs and the counters they must give (tests/test_metrics.py runs
them with this machine's mtail, tests/integration/test_metrics.py with each Debian release's)."""

from __future__ import annotations

import json
import re


def delivery(instance: str, ip: str, recipient: str, group: str | None, status: str, dsn: str | None,
             category: str | None = None, kind: str | None = None, reply: str = "250 2.0.0 ok",
             delay: float | None = 0.5, attempt: int | None = 1, tenant: str | None = None) -> str:
    """One record of the delivery log, keys in its order, compact."""
    return json.dumps({
        "time": "2026-12-04T19:00:00.123Z", "host": "mailtest", "instance": instance, "ip": ip,
        "queue_id": "4Xy1Zq0abcz9", "message_id": "<m1@example.com>", "sender": "news@example.com",
        "recipient": recipient, "domain": recipient.split("@")[1], "group": group, "tenant": tenant,
        "status": status, "dsn": dsn, "category": category, "kind": kind, "reply": reply,
        "relay": "mx.example[192.0.2.25]:25", "delay": delay, "attempt": attempt}, separators=(",", ":"))


DELIVERY_LINES = [
    delivery("postfix-43", "127.0.0.43", "a@gmail.com", "google", "sent", "2.0.0", attempt=None),
    # A reply that holds the keys' text, quoted: it must not shift the fields.
    delivery("postfix-43", "127.0.0.43", "b@gmail.com", "google", "sent", "2.0.0",
             reply='250 2.0.0 ok ,"group":"x","status":"bounced","dsn":"5.0.0"'),
    delivery("postfix-43", "127.0.0.43", "c@gmail.com", "google", "deferred", "4.7.28",
             reply="421-4.7.28 rate limited", delay=1.5),
    delivery("postfix-43", "127.0.0.43", "d@outlook.com", "microsoft", "bounced", "5.1.1", "bad-mailbox", "hard",
             reply="550 5.1.1 no such user", delay=2.0),
    delivery("postfix-43", "127.0.0.43", "e@plain.example", None, "deferred", None,
             reply="connect to mx.plain.example[192.0.2.25]:25: Connection refused", delay=None),
    delivery("postfix-45", "127.0.0.45", "f@outlook.com", "microsoft", "bounced", "5.2.2", "quota", "soft",
             reply="552 5.2.2 mailbox full"),
    delivery("postfix-45", "127.0.0.45", "g@outlook.com", "microsoft", "expired", "4.4.7", reply="expired"),
    # Mail a tenant submitted: counted again by tenant (a reply that names a tenant must not shift it).
    delivery("postfix-45", "127.0.0.45", "h@gmail.com", "google", "sent", "2.0.0", tenant="shop",
             reply='250 2.0.0 ok ,"tenant":"news","status":"bounced"'),
    delivery("postfix-45", "127.0.0.45", "i@outlook.com", "microsoft", "bounced", "5.1.1", "bad-mailbox", "hard",
             reply="550 5.1.1 no such user", tenant="shop"),
    delivery("postfix-43", "127.0.0.43", "j@plain.example", None, "deferred", "4.2.0", tenant="news",
             reply="451 4.2.0 try later", delay=None),
    "not a record at all",
]

DELIVERY_COUNTERS = {
    'mailfleet_deliveries_total{dsn_class="2",group="google",instance="postfix-43",ip="127.0.0.43",status="sent"}': 2,
    'mailfleet_deliveries_total{dsn_class="4",group="google",instance="postfix-43",ip="127.0.0.43",status="deferred"}': 1,
    'mailfleet_deliveries_total{dsn_class="5",group="microsoft",instance="postfix-43",ip="127.0.0.43",status="bounced"}': 1,
    'mailfleet_deliveries_total{dsn_class="none",group="default",instance="postfix-43",ip="127.0.0.43",status="deferred"}': 1,
    'mailfleet_deliveries_total{dsn_class="5",group="microsoft",instance="postfix-45",ip="127.0.0.45",status="bounced"}': 2,
    'mailfleet_deliveries_total{dsn_class="4",group="microsoft",instance="postfix-45",ip="127.0.0.45",status="expired"}': 1,
    'mailfleet_deliveries_total{dsn_class="2",group="google",instance="postfix-45",ip="127.0.0.45",status="sent"}': 1,
    'mailfleet_deliveries_total{dsn_class="4",group="default",instance="postfix-43",ip="127.0.0.43",status="deferred"}': 1,
    'mailfleet_bounces_total{category="bad-mailbox",group="microsoft",instance="postfix-43",ip="127.0.0.43",kind="hard"}': 1,
    'mailfleet_bounces_total{category="bad-mailbox",group="microsoft",instance="postfix-45",ip="127.0.0.45",kind="hard"}': 1,
    'mailfleet_bounces_total{category="quota",group="microsoft",instance="postfix-45",ip="127.0.0.45",kind="soft"}': 1,
    'mailfleet_delivery_delay_seconds_total{group="google",instance="postfix-43",ip="127.0.0.43",status="sent"}': 1,
    'mailfleet_delivery_delay_seconds_total{group="google",instance="postfix-43",ip="127.0.0.43",status="deferred"}': 1.5,
    'mailfleet_delivery_delay_seconds_total{group="microsoft",instance="postfix-43",ip="127.0.0.43",status="bounced"}': 2,
    'mailfleet_delivery_delay_seconds_total{group="microsoft",instance="postfix-45",ip="127.0.0.45",status="bounced"}': 1,
    'mailfleet_delivery_delay_seconds_total{group="google",instance="postfix-45",ip="127.0.0.45",status="sent"}': 0.5,
    'mailfleet_tenant_deliveries_total{group="google",instance="postfix-45",status="sent",tenant="shop"}': 1,
    'mailfleet_tenant_deliveries_total{group="microsoft",instance="postfix-45",status="bounced",tenant="shop"}': 1,
    'mailfleet_tenant_deliveries_total{group="default",instance="postfix-43",status="deferred",tenant="news"}': 1,
    'mailfleet_tenant_bounces_total{category="bad-mailbox",kind="hard",tenant="shop"}': 1,
    'mailfleet_delivery_delay_seconds_total{group="microsoft",instance="postfix-45",ip="127.0.0.45",status="expired"}': 0.5,
}

# As rsyslog writes them to /var/log/mail.log: RFC 3339 times (Debian 12 and 13), or traditional ones.
JOURNAL_LINES = [
    "2026-12-04T19:10:00+0000 mailtest postfix-43/smtp-google/smtp[1234]: Untrusted TLS connection established to"
    " gmail-smtp-in.l.google.com[192.0.2.61]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
    " key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256",
    "2026-12-04T19:10:00.296272+00:00 mailtest postfix-45/smtp[1235]: Verified TLS connection established to"
    " mx.plain.example[192.0.2.63]:25: TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)",
    "Dec  4 19:10:01 mailtest postfix-45/smtp[1235]: connect to mx.plain.example[192.0.2.63]:25:"
    " Connection refused",
    "2026-12-04T19:10:01+0000 mailtest postfix-43/smtp[1236]: 4Xy1Zq0abcz9: lost connection with"
    " mx.plain.example[192.0.2.63] while receiving the initial server greeting",
    "2026-12-04T19:10:01+0000 mailtest postfix-43/smtp[1237]: SSL_connect error to mx.plain.example[192.0.2.63]:25: -1",
    # Incoming TLS (smtpd) is not an outgoing connection: not counted.
    "2026-12-04T19:10:02+0000 mailtest postfix-43/smtpd[999]: Anonymous TLS connection established from"
    " unknown[198.51.100.7]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)",
    "2026-12-04T19:10:02+0000 mailtest opendkim[77]: 4Xy1Zq0abcz9: DKIM-Signature field added (s=s1, d=example.com)",
    "2026-12-04T19:10:02+0000 mailtest opendkim[77]: 4Xy1Zq0abcz8: DKIM-Signature field added (s=s1, d=example.com)",
    "2026-12-04T19:10:02+0000 mailtest opendkim[78]: 4Xy1Zq0abcz8: DKIM-Signature field added (s=ed1, d=example.com)",
    "2026-12-04T19:10:02+0000 mailtest opendkim[77]: 4Xy1Zq0abcz7: no signing table match for 'x@other.example'",
    "2026-12-04T19:10:03+0000 mailtest opendkim[77]: 4Xy1Zq0abcz6: key data is not secure:"
    " /etc/opendkim/keys/example.com/s1.private can be read or written by other users",
    "2026-12-04T19:10:03+0000 mailtest opendkim[77]: 4Xy1Zq0abcz5: error loading key 's1._domainkey.example.com'",
    "2026-12-04T19:10:03+0000 mailtest opendkim[77]: 4Xy1Zq0abcz4: dkim_eom(): resource unavailable:"
    " d2i_PrivateKey_bio() failed",
    "2026-12-04T19:10:04+0000 mailtest postfix-43/qmgr[555]: 4Xy1Zq0abcz9: removed",
    # The signer probe: its signature is not mail signed; its timings and failures per signer.
    "2026-12-04T19:10:05+0000 mailtest opendkim[77]: mailfleet-dkim-probe: DKIM-Signature field added"
    " (s=s1, d=example.com)",
    "2026-12-04T19:10:05+0000 mailtest mailfleet-dkim-probe[901]: opendkim signed in 3200 us",
    "2026-12-04T19:11:05+0000 mailtest mailfleet-dkim-probe[902]: opendkim signed in 41000 us",
    "2026-12-04T19:11:05+0000 mailtest mailfleet-dkim-probe[902]: opendkim-ed25519 failed: no connection (the"
    " signer is not running, or its socket is unreachable)",
    "2026-12-04T19:12:05+0000 mailtest mailfleet-dkim-probe[903]: opendkim-ed25519 failed:",
]

JOURNAL_COUNTERS = {
    'mailfleet_smtp_tls_connections_total{instance="postfix-43",level="Untrusted",protocol="TLSv1.3"}': 1,
    'mailfleet_smtp_tls_connections_total{instance="postfix-45",level="Verified",protocol="TLSv1.2"}': 1,
    'mailfleet_smtp_connection_failures_total{instance="postfix-45",reason="Connection refused"}': 1,
    'mailfleet_smtp_connection_failures_total{instance="postfix-43",reason="lost connection"}': 1,
    'mailfleet_smtp_connection_failures_total{instance="postfix-43",reason="TLS handshake"}': 1,
    'mailfleet_dkim_signatures_total{domain="example.com",selector="s1"}': 2,
    'mailfleet_dkim_signatures_total{domain="example.com",selector="ed1"}': 1,
    'mailfleet_dkim_unsigned_total': 1,
    'mailfleet_dkim_errors_total{reason="key-permissions"}': 1,
    'mailfleet_dkim_errors_total{reason="key"}': 1,
    'mailfleet_dkim_errors_total{reason="resources"}': 1,
    'mailfleet_dkim_probe_seconds_count{signer="opendkim"}': 2,
    'mailfleet_dkim_probe_seconds_sum{signer="opendkim"}': 0.0442,
    'mailfleet_dkim_probe_seconds_bucket{le="0.001",signer="opendkim"}': 0,
    'mailfleet_dkim_probe_seconds_bucket{le="0.0025",signer="opendkim"}': 0,
    'mailfleet_dkim_probe_seconds_bucket{le="0.005",signer="opendkim"}': 1,
    'mailfleet_dkim_probe_seconds_bucket{le="0.01",signer="opendkim"}': 1,
    'mailfleet_dkim_probe_seconds_bucket{le="0.025",signer="opendkim"}': 1,
    'mailfleet_dkim_probe_seconds_bucket{le="0.05",signer="opendkim"}': 2,
    'mailfleet_dkim_probe_seconds_bucket{le="0.1",signer="opendkim"}': 2,
    'mailfleet_dkim_probe_seconds_bucket{le="0.25",signer="opendkim"}': 2,
    'mailfleet_dkim_probe_seconds_bucket{le="0.5",signer="opendkim"}': 2,
    'mailfleet_dkim_probe_seconds_bucket{le="1",signer="opendkim"}': 2,
    'mailfleet_dkim_probe_seconds_bucket{le="2.5",signer="opendkim"}': 2,
    'mailfleet_dkim_probe_seconds_bucket{le="5",signer="opendkim"}': 2,
    'mailfleet_dkim_probe_seconds_bucket{le="+Inf",signer="opendkim"}': 2,
    'mailfleet_dkim_probe_failures_total{signer="opendkim-ed25519"}': 2,
}


LABEL = re.compile(r'[a-z_]+="(?:[^"\\]|\\.)*"')  # name="value", escapes included


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text format -> {series: value}, the labels of each series sorted (mtail prints a
    histogram's `le` after its own labels)."""
    series = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            if name.endswith("}"):
                name, labels = name[:-1].split("{", 1)
                name = name + "{" + ",".join(sorted(LABEL.findall(labels))) + "}"
            series[name] = float(value)
    return series


def mailfleet_series(text: str) -> dict[str, float]:
    return {name: value for name, value in parse_exposition(text).items() if name.startswith("mailfleet_")}
