"""The MX lookup service of the shaping groups (mailfleet/shaping_map.py), against a real DNS
server (tests/integration/dnsserver.py's answers, on a loopback port) and over its socket."""

import io
import json
import socket
import socketserver
import threading

import pytest

from integration.dnsserver import ZoneAnswers
from mailfleet import shaping_map
from mailfleet.shaping_map import GroupMap, lookup_mx, netstring, read_netstring

GROUPS = {
    "google": {"transport": "smtp-google", "domains": ["gmail.com"], "mxSuffixes": ["google.com"]},
    "microsoft": {"transport": "smtp-microsoft", "domains": ["outlook.com"], "mxSuffixes": ["protection.outlook.com"]},
}
# A long MX list makes the UDP answer too big, so the client has to go on over TCP.
LONG = "".join(f"big.example. 60 IN MX {n} mx{n}.a-rather-long-name-for-a-mail-host.example.\n" for n in range(40))
ZONE = f"""\
corp.example. 600 IN MX 1 aspmx.l.google.com.
corp.example. 600 IN MX 5 alt1.aspmx.l.google.com.
contoso.example. 300 IN MX 0 contoso-example.mail.protection.outlook.com.
mixed.example. 300 IN MX 20 aspmx.l.google.com.
mixed.example. 300 IN MX 10 mx.mixed.example.
notgoogle.example. 300 IN MX 10 mx.evilgoogle.com.
nomx.example. 300 IN A 192.0.2.1
{LONG}"""


@pytest.fixture(scope="module")
def dns_port():
    answers = ZoneAnswers(ZONE)

    class Udp(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(answers.respond(data, 512), self.client_address)

    class Tcp(socketserver.StreamRequestHandler):
        def handle(self):
            while header := self.rfile.read(2):
                reply = answers.respond(self.rfile.read(int.from_bytes(header, "big")), None)
                self.wfile.write(len(reply).to_bytes(2, "big") + reply)

    udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Udp)
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", udp.server_address[1]), Tcp)
    for server in (udp, tcp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield udp.server_address[1]
    for server in (udp, tcp):
        server.shutdown()


def group_map(dns_port, **kwargs):
    return GroupMap(GROUPS, resolver=lambda domain, servers: lookup_mx(domain, servers, timeout=2, port=dns_port),
                    servers=["127.0.0.1"], **kwargs)


def test_mx_records_are_read_over_udp_and_over_tcp_when_truncated(dns_port):
    records, ttl = lookup_mx("corp.example", ["127.0.0.1"], port=dns_port)
    assert records == [(1, "aspmx.l.google.com"), (5, "alt1.aspmx.l.google.com")] and ttl == 600
    records, ttl = lookup_mx("big.example", ["127.0.0.1"], port=dns_port)
    assert len(records) == 40 and ttl == 60
    assert lookup_mx("nowhere.example", ["127.0.0.1"], port=dns_port) is None
    assert lookup_mx("nomx.example", ["127.0.0.1"], port=dns_port) == ([], 3600)


def test_a_domain_belongs_to_the_group_of_its_best_mx(dns_port):
    groups = group_map(dns_port)
    assert groups.reply("transport gmail.com") == "OK smtp-google:"  # by the list: no DNS
    assert groups.reply("transport corp.example") == "OK smtp-google:"
    assert groups.reply("transport Contoso.Example") == "OK smtp-microsoft:"
    assert groups.reply("transport mixed.example") == "NOTFOUND "  # its best MX is its own
    assert groups.reply("transport notgoogle.example") == "NOTFOUND "  # a suffix is whole labels
    assert groups.reply("transport nowhere.example") == "NOTFOUND "
    # Postfix asks with the whole address; the domain decides.
    assert groups.reply("transport someone+tag@corp.example") == "OK smtp-google:"
    assert groups.reply("transport someone@gmail.com") == "OK smtp-google:"
    # Parent-domain keys, address literals and the catch-all are never looked up.
    for key in (".corp.example", "user@[192.0.2.1]", "*"):
        assert groups.reply(f"transport {key}") == "NOTFOUND "


def test_answers_are_cached_for_their_ttl_and_dns_failure_falls_back_to_the_lists():
    now, asked = [0.0], []

    def resolver(domain, servers):
        asked.append(domain)
        if domain == "down.example":
            raise shaping_map.DnsError("timed out")
        return [(1, "aspmx.l.google.com")], 300
    groups = GroupMap(GROUPS, resolver=resolver, servers=["127.0.0.1"], clock=lambda: now[0])
    assert groups.transport("corp.example") == "smtp-google"
    assert groups.transport("corp.example") == "smtp-google" and asked == ["corp.example"]
    now[0] = 301
    assert groups.transport("corp.example") == "smtp-google" and asked == ["corp.example"] * 2
    assert groups.transport("down.example") is None and groups.transport("gmail.com") == "smtp-google"
    now[0] += shaping_map.FAILURE_TTL + 1
    assert groups.transport("down.example") is None and asked.count("down.example") == 2


def test_the_socketmap_protocol(tmp_path, dns_port):
    path = str(tmp_path / "map.sock")
    thread = threading.Thread(target=shaping_map.serve, args=(group_map(dns_port), path), daemon=True)
    thread.start()
    with socket.socket(socket.AF_UNIX) as client:
        # The socket file appears at bind(), a moment before listen(): retry until it accepts.
        for _ in range(100):
            try:
                client.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                threading.Event().wait(0.05)
        stream = client.makefile("rwb")
        for key, answer in (("corp.example", "OK smtp-google:"), ("example.org", "NOTFOUND ")):
            stream.write(netstring(f"transport {key}"))
            stream.flush()
            assert read_netstring(stream) == answer.encode()
    assert read_netstring(io.BytesIO(b"5:hello,")) == b"hello"
    with pytest.raises(ValueError):
        read_netstring(io.BytesIO(b"5:hello;"))


def test_the_service_reads_the_groups_file_the_program_writes(tmp_path, capsys, monkeypatch):
    from harness import REPO, stack_config
    from keys import openssh_private_key
    from mailfleet import shaping
    from mailfleet.config import parse_config
    fleet = parse_config(stack_config(REPO / "Pulumi.prod.yaml", {"mailfleet:sshPrivateKey": openssh_private_key()})[0])
    (tmp_path / "groups.json").write_text(json.dumps({"groups": shaping.mx_groups(fleet)}))
    monkeypatch.setattr("sys.argv", ["mailfleet-shaping-map", "--groups", str(tmp_path / "groups.json"),
                                     "--query", "aol.com"])
    shaping_map.main()
    assert capsys.readouterr().out == "OK smtp-yahoo:\n"
