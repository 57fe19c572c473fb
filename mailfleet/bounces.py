"""Bounce classification: why a delivery attempt failed, in the categories PowerMTA and KumoMTA use.

classify(status, dsn, reply) -> (category, kind), from the attempt's final status, its enhanced
status code (RFC 3463, "5.1.1") and the reply text (the receiver's, or Postfix's own reason).
Pure and table-driven: the tables below are the whole policy, checked in order, first match wins:
1. RECEIVER_RULES: what the big receivers mean by their own codes and texts (a Gmail 421-4.7.28
   speaks of "unsolicited mail", yet it is a rate limit, not a spam verdict on the message);
2. TEXT_RULES: words in the reply, which say more than the code (5.7.1 is used for relaying
   denied, spam, viruses and policy alike);
3. CODE_RULES: the enhanced code's subject and detail (X.1.1 bad mailbox, X.2.2 quota, ...).
Nothing matched: "other".

kind is what the failure says about the recipient address: "hard" when the attempt bounced and the
address itself is undeliverable (bad-mailbox, bad-domain, inactive-mailbox: suppress it), "soft"
for every other failure (deferrals, expiry, and 5xx refusals of this message or this sender, such
as spam, policy or a full mailbox, which say nothing final about the address). A sent attempt has
neither (None, None).

The host's delivery log service (mailfleet/deliveries.py) uses this module as is.
"""

from __future__ import annotations

import re

CATEGORIES = (
    "bad-mailbox", "bad-domain", "inactive-mailbox", "quota-issues", "policy-related", "spam-related",
    "virus-related", "content-related", "routing-errors", "relaying-issues", "invalid-sender",
    "protocol-errors", "no-answer-from-host", "bad-connection", "message-expired", "other",
)
# The categories that condemn the address itself (kind "hard" when the attempt bounced).
ADDRESS_CATEGORIES = frozenset({"bad-mailbox", "bad-domain", "inactive-mailbox"})

# (category, enhanced code pattern or None, reply text pattern or None): both given must match.
# Codes are matched whole ("4.7.28"), texts case-insensitively anywhere in the reply.
RECEIVER_RULES = (
    # Gmail: rate limits for a sender's IP or domain, and authentication requirements.
    ("policy-related", r"4\.7\.28|4\.7\.32|5\.7\.2[5-9]|5\.7\.30|4\.7\.2[4-7]", None),
    ("policy-related", None, r"unusual rate of unsolicited mail|has been temporarily rate limited"),
    # Yahoo: [TS01]-[TS03] deferrals for volume or complaints, [TS04] for good; [BL21] and the like
    # are blocklist listings of the IP.
    ("policy-related", None, r"\[TS0\d\]"),
    ("spam-related", None, r"\[BL\d\d\]"),
    # Microsoft: 5.7.515 authentication level (enforced since 2025), 4.7.650/4.7.651 reputation
    # rate limits, 4.7.500 "server busy"; 5.7.606-5.7.649 "banned sending IP" (a blocklist).
    ("policy-related", r"5\.7\.515|4\.7\.65\d|4\.7\.500", None),
    ("spam-related", r"5\.7\.6[0-4]\d", None),
    # Microsoft's directory-based edge blocking: an unknown recipient as "Access denied" under 5.4.1.
    ("bad-mailbox", r"5\.4\.1", r"recipient address rejected: access denied"),
    # Yahoo: "dd This user doesn't have a yahoo.com account", "This mailbox is disabled (554.30)".
    ("inactive-mailbox", None, r"\bdd\b.*mailbox is disabled"),
    ("bad-mailbox", None, r"\bdd\b.*(doesn't|does not) have a .* account"),
)

TEXT_RULES = (
    ("virus-related", r"virus|malware|infected|trojan|\beicar\b"),
    ("invalid-sender", r"sender address rejected|sender verify failed|sender (address )?(is )?(invalid|unknown)"
                       r"|invalid sender|unknown sender|domain of sender address"),
    ("relaying-issues", r"relay(ing)? (access )?(denied|not permitted|prohibited)|unable to relay"
                        r"|not permitted to relay|we do not relay|relay not allowed"),
    ("routing-errors", r"loops back to myself|mail forwarding loop|too many hops|hop count exceeded"
                       r"|routing loop|malformed or unexpected name server reply"),
    ("spam-related", r"spam|unsolicited|blocklist|blacklist|block ?list|blocked using|listed (at|on|in|by)"
                     r"|spamhaus|spamcop|barracuda|\bsorbs\b|\bdnsbl\b|\brbl\b|junk mail|bulk mail"
                     r"|banned sending ip|poor reputation|bad reputation"),
    ("quota-issues", r"quota|mailbox (is )?full|mailbox size limit|out of storage|storage space"
                     r"|insufficient (system )?storage|mailbox has exceeded"),
    ("inactive-mailbox", r"(mailbox|account|address|user) (is |has been )?(disabled|inactive|deactivated|suspended"
                         r"|closed|expired|frozen|no longer (active|available|in use))"),
    ("bad-domain", r"host or domain name not found|domain (name )?not found|no such domain|domain does not exist"
                   r"|unrouteable domain|nxdomain|no mx (record|host)|null mx|does not accept mail"),
    ("bad-mailbox", r"user unknown|unknown user|no such (user|mailbox|recipient|person|account)|mailbox unavailable"
                    r"|mailbox not found|invalid (mailbox|recipient|address)|unknown (mailbox|recipient|address)"
                    r"|(account|address|mailbox|user|recipient) (that you tried to reach )?(does not|doesn't) exist"
                    r"|recipient (address )?rejected: user|not a valid (mailbox|recipient|address)"
                    r"|unrouteable address|no mailbox here|addressee unknown|undeliverable address"),
    ("no-answer-from-host", r"connection timed out|timed out while|conversation with .* timed out"
                            r"|no answer from host"),
    ("bad-connection", r"connection refused|lost connection|connection reset|network is unreachable"
                       r"|no route to host|tls is required|cannot start tls|tls handshake"),
    ("content-related", r"message (size|length) exceeds|message too (big|large)|size limit|exceeds .* size"
                        r"|content (rejected|policy)|attachment|message content|header (rejected|too long)"),
    ("protocol-errors", r"syntax error|command not (recognized|implemented)|bad sequence of commands"
                        r"|unrecognized command|protocol error|line too long|pipelining"),
    ("policy-related", r"policy|not authori[sz]ed|rate limit|too many (connections|messages|recipients|sessions)"
                       r"|try again later|greylist|graylist|temporarily deferred|throttl|dmarc|\bspf\b|\bdkim\b"
                       r"|authenticat|rejected by .* rules|reverse dns|\bptr\b"),
)

# (category, enhanced code pattern): the code's class is ignored, subject and detail decide.
CODE_RULES = (
    ("bad-mailbox", r"\d\.1\.[01346]"),
    ("bad-domain", r"\d\.1\.(2|10)"),
    ("invalid-sender", r"\d\.1\.[78]"),
    ("inactive-mailbox", r"\d\.2\.1"),
    ("quota-issues", r"\d\.2\.2"),
    ("content-related", r"\d\.2\.3|\d\.3\.4"),
    ("no-answer-from-host", r"\d\.4\.1"),
    ("bad-connection", r"\d\.4\.2"),
    ("routing-errors", r"\d\.4\.[36]"),
    ("bad-domain", r"\d\.4\.4"),
    ("message-expired", r"\d\.4\.7"),
    ("protocol-errors", r"\d\.5\.\d+"),
    ("content-related", r"\d\.6\.\d+"),
    ("policy-related", r"\d\.7\.\d+"),
)

_RECEIVER = [(category, code and re.compile(code), text and re.compile(text, re.I))
             for category, code, text in RECEIVER_RULES]
_TEXT = [(category, re.compile(text, re.I)) for category, text in TEXT_RULES]
_CODE = [(category, re.compile(code)) for category, code in CODE_RULES]


def category(status: str, dsn: str, reply: str) -> str | None:
    """The bounce category of a failed attempt; None for one that was sent."""
    if status == "sent":
        return None
    if status == "expired":
        return "message-expired"
    dsn, reply = dsn or "", reply or ""
    for name, code, text in _RECEIVER:
        if (code is None or code.fullmatch(dsn)) and (text is None or text.search(reply)):
            return name
    for name, text in _TEXT:
        if text.search(reply):
            return name
    for name, code in _CODE:
        if code.fullmatch(dsn):
            return name
    return "other"


def classify(status: str, dsn: str, reply: str) -> tuple[str | None, str | None]:
    """(category, kind) of an attempt: (None, None) when sent; kind "hard" when it bounced because
    the address itself is undeliverable, "soft" for every other failure."""
    name = category(status, dsn, reply)
    if name is None:
        return None, None
    return name, "hard" if status == "bounced" and name in ADDRESS_CATEGORIES else "soft"
