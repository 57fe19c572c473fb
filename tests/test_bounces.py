"""Bounce classification against replies that real receivers (and Postfix itself) give."""

import pytest

from mailfleet.bounces import CATEGORIES, category, classify

# (status, dsn as Postfix logs it, reply as the delivery log keeps it, category, kind)
REPLIES = [
    # Gmail
    ("bounced", "5.1.1", "550-5.1.1 The email account that you tried to reach does not exist. Please try "
     "double-checking the recipient's email address for typos or unnecessary spaces. For more information, "
     "go to https://support.google.com/mail/?p=NoSuchUser", "bad-mailbox", "hard"),
    ("bounced", "5.2.1", "550-5.2.1 The email account that you tried to reach is disabled.", "inactive-mailbox", "hard"),
    ("deferred", "4.2.2", "452-4.2.2 The recipient's inbox is out of storage space and inactive. Please direct "
     "the recipient to https://support.google.com/mail/?p=OverQuotaTemp", "quota-issues", "soft"),
    ("bounced", "5.2.2", "552-5.2.2 The email account that you tried to reach is over quota.", "quota-issues", "soft"),
    ("deferred", "4.7.28", "421-4.7.28 [192.0.2.43 15] Our system has detected an unusual rate of unsolicited "
     "mail originating from your IP address. To protect our users from spam, mail sent from your IP address "
     "has been temporarily rate limited.", "policy-related", "soft"),
    ("bounced", "5.7.1", "550-5.7.1 [192.0.2.43] Our system has detected that this message is likely "
     "unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked.",
     "spam-related", "soft"),
    ("bounced", "5.7.26", "550-5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail "
     "requires all senders to authenticate with either SPF or DKIM.", "policy-related", "soft"),
    ("bounced", "5.7.0", "552-5.7.0 This message was blocked because its content presents a potential security "
     "issue. Please visit https://support.google.com/mail/?p=BlockedMessage to review our message content and "
     "attachment content guidelines.", "content-related", "soft"),
    # Microsoft (Outlook.com, Microsoft 365)
    ("bounced", "5.5.0", "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302) "
     "[DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]", "bad-mailbox", "hard"),
    ("bounced", "5.4.1", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) "
     "[BN8NAM12FT045.eop-nam12.prod.protection.outlook.com]", "bad-mailbox", "hard"),
    ("bounced", "5.7.515", "550 5.7.515 Access denied, sending domain example.com doesn't meet the required "
     "authentication level.", "policy-related", "soft"),
    ("deferred", "4.7.650", "451 4.7.650 The mail server [192.0.2.43] has been temporarily rate limited due to "
     "IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
     "policy-related", "soft"),
    ("bounced", "5.7.606", "550 5.7.606 Access denied, banned sending IP [192.0.2.43]. To request removal from "
     "this list please visit https://sender.office.com/ and follow the directions.", "spam-related", "soft"),
    ("bounced", "5.7.1", "550 5.7.1 Service unavailable, Client host [192.0.2.43] blocked using Spamhaus. To "
     "request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.43 (AS3130).",
     "spam-related", "soft"),
    # Yahoo
    ("deferred", "4.7.0", "421 4.7.0 [TS01] Messages from 192.0.2.43 temporarily deferred due to unexpected "
     "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
     "policy-related", "soft"),
    ("deferred", "4.7.0", "421 4.7.0 [TS04] Messages from 192.0.2.43 permanently deferred; Retrying will NOT "
     "succeed. See https://postmaster.yahooinc.com/error-codes", "policy-related", "soft"),
    ("bounced", "5.7.1", "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.43, because the ip is "
     "in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes", "spam-related", "soft"),
    ("bounced", "5.0.0", "554 delivery error: dd This user doesn't have a yahoo.com account (nobody@yahoo.com) "
     "[0] - mta1234.mail.bf1.yahoo.com", "bad-mailbox", "hard"),
    ("bounced", "5.0.0", "554 delivery error: dd Sorry your message to someone@yahoo.com cannot be delivered. "
     "This mailbox is disabled (554.30). - mta1234.mail.ne1.yahoo.com", "inactive-mailbox", "hard"),
    # Apple iCloud
    ("bounced", "5.1.1", "550 5.1.1 <nobody@icloud.com>: user does not exist", "bad-mailbox", "hard"),
    ("bounced", "5.7.1", "554 5.7.1 [CS01] Message rejected due to local policy. Please visit "
     "https://support.apple.com/en-us/HT204137", "policy-related", "soft"),
    # Common servers (Postfix, Exim, Exchange on premises)
    ("bounced", "5.1.1", "550 5.1.1 <nobody@plain.example>: Recipient address rejected: User unknown in virtual "
     "mailbox table", "bad-mailbox", "hard"),
    ("bounced", "5.7.1", "554 5.7.1 <someone@elsewhere.example>: Relay access denied", "relaying-issues", "soft"),
    ("bounced", "5.1.8", "553 5.1.8 <news@example.com>: Sender address rejected: Domain not found",
     "invalid-sender", "soft"),
    ("bounced", "5.7.1", "554 5.7.1 Virus found: Eicar-Test-Signature", "virus-related", "soft"),
    ("bounced", "5.3.4", "552 5.3.4 Message size exceeds fixed limit", "content-related", "soft"),
    ("deferred", "4.7.1", "450 4.7.1 <someone@plain.example>: Recipient address rejected: Greylisted, see "
     "https://postgrey.schweikert.ch/help/plain.example.html", "policy-related", "soft"),
    ("bounced", "5.5.2", "500 5.5.2 Error: bad syntax", "protocol-errors", "soft"),
    ("bounced", "5.0.0", "550 Administrative prohibition", "other", "soft"),
    # Postfix's own reasons (no remote reply)
    ("bounced", "5.4.4", "Host or domain name not found. Name service error for name=nosuch.example type=AAAA: "
     "Host not found", "bad-domain", "hard"),
    ("bounced", "5.1.10", "Domain example.org does not accept mail (nullMX)", "bad-domain", "hard"),
    ("deferred", "4.4.1", "connect to mx.plain.example[127.0.0.63]:25: Connection refused", "bad-connection", "soft"),
    ("deferred", "4.4.1", "connect to mx.plain.example[127.0.0.63]:25: Connection timed out",
     "no-answer-from-host", "soft"),
    ("deferred", "4.4.2", "conversation with mx.plain.example[127.0.0.63] timed out while receiving the initial "
     "server greeting", "no-answer-from-host", "soft"),
    ("deferred", "4.4.2", "lost connection with mx.plain.example[127.0.0.63] while receiving the initial server "
     "greeting", "bad-connection", "soft"),
    ("bounced", "5.4.6", "mail for plain.example loops back to myself", "routing-errors", "soft"),
    ("deferred", "4.4.3", "Host or domain name not found. Name service error for name=plain.example type=MX: "
     "Host not found, try again", "bad-domain", "soft"),
    ("expired", "5.4.7", "message expired after 5 days; last attempt: 421 4.7.0 Try again later",
     "message-expired", "soft"),
]


@pytest.mark.parametrize("status,dsn,reply,expected,kind", REPLIES,
                         ids=[f"{n:02d}-{r[3]}-{r[1]}" for n, r in enumerate(REPLIES)])
def test_real_replies_are_classified(status, dsn, reply, expected, kind):
    assert classify(status, dsn, reply) == (expected, kind)


def test_a_sent_attempt_has_no_category():
    assert classify("sent", "2.0.0", "250 2.0.0 OK 1700000000 a1-20020a") == (None, None)


def test_every_category_named_by_the_tables_is_known_and_the_reply_alone_may_be_empty():
    from mailfleet import bounces
    named = {rule[0] for table in (bounces.RECEIVER_RULES, bounces.TEXT_RULES, bounces.CODE_RULES) for rule in table}
    assert named <= set(CATEGORIES)
    assert category("bounced", "5.1.1", "") == "bad-mailbox"
    assert category("deferred", "", None) == "other"


def test_a_hard_bounce_needs_a_bounce():
    # The same unknown user, deferred (soft_bounce, or a receiver's 4xx), condemns nothing yet.
    assert classify("deferred", "4.1.1", "450 4.1.1 <x@plain.example>: Recipient address rejected: User unknown") \
        == ("bad-mailbox", "soft")
