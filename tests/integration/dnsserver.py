"""An authoritative DNS server for the receiver-view tests: serves one zone text, nothing else.

Run inside the test namespace (like mailsink.py):
    ip netns exec NS python dnsserver.py --zone FILE [--address 127.0.0.153] [--port 53]

FILE holds BIND lines with absolute names (the stack's `zoneFile` output). Names it does not
hold get NXDOMAIN; it recurses for no one. UDP answers too big for 512 bytes (or the client's
EDNS size) are truncated, so clients retry over TCP, which it serves too.

The tests of tools/publish_dns.py run the same server in their own process (`serving`).
"""

import argparse
import contextlib
import signal
import socketserver
import struct
import threading

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import dns.zone


class ZoneAnswers:
    def __init__(self, zone_text: str):
        self.zone = dns.zone.from_text(zone_text, origin=dns.name.root, relativize=False, check_origin=False)

    def respond(self, wire: bytes, max_size: int | None) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        node = self.zone.get_node(question.name)
        if node is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            rdataset = node.get_rdataset(question.rdclass, question.rdtype)
            if rdataset is not None:
                response.answer.append(dns.rrset.from_rdata_list(question.name, rdataset.ttl, list(rdataset)))
        if max_size is None:
            return response.to_wire()
        if query.edns >= 0:
            max_size = max(max_size, query.payload)
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            response.answer = []
            response.flags |= dns.flags.TC
            return response.to_wire()


@contextlib.contextmanager
def serving(zone_text: str, address: str, port: int = 0, *, edns: bool = True,
            asked_over_tcp: list[str] | None = None):
    """Serve the zone over UDP and TCP on address:port (0: a free port, the same for both); yields
    the port. edns=False plays a server that knows no EDNS: over UDP an answer is cut at 512 bytes
    whatever size the client offers. asked_over_tcp, when given, collects the names asked over TCP."""
    answers = ZoneAnswers(zone_text)

    class UdpHandler(socketserver.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            if not edns:
                query = dns.message.from_wire(data)
                query.use_edns(False)
                data = query.to_wire()
            sock.sendto(answers.respond(data, 512), self.client_address)

    class TcpHandler(socketserver.StreamRequestHandler):
        def handle(self):
            while header := self.rfile.read(2):
                query = self.rfile.read(struct.unpack("!H", header)[0])
                if asked_over_tcp is not None:
                    asked_over_tcp.append(dns.message.from_wire(query).question[0].name.to_text())
                reply = answers.respond(query, None)
                self.wfile.write(struct.pack("!H", len(reply)) + reply)

    class Udp(socketserver.ThreadingMixIn, socketserver.UDPServer):
        daemon_threads = True

    class Tcp(socketserver.ThreadingMixIn, socketserver.TCPServer):
        daemon_threads = True
        allow_reuse_address = True

    udp = Udp((address, port), UdpHandler)
    tcp = Tcp((address, udp.server_address[1]), TcpHandler)
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in (udp, tcp)]
    for thread in threads:
        thread.start()
    try:
        yield udp.server_address[1]
    finally:
        for server in (udp, tcp):
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--zone", required=True)
    parser.add_argument("--address", default="127.0.0.153")
    parser.add_argument("--port", type=int, default=53)
    args = parser.parse_args()
    with open(args.zone) as f:
        zone_text = f.read()
    # Blocked before the server threads start, so that they inherit the mask and only sigwait sees these.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with serving(zone_text, args.address, args.port):
        print("ready", flush=True)
        signal.sigwait(stop_signals)


if __name__ == "__main__":
    main()
