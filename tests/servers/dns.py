"""A name server for one name: `python dns.py ADDRESS NAME IP` answers A queries for NAME with IP
on ADDRESS:53 (UDP), any other type for NAME with no records, and every other name NXDOMAIN.

The real thing for tests of what the gateway does when its name server stops answering: the
test points a gateway's /etc/resolv.conf at it and pauses it (SIGSTOP). The standard library
has no DNS server, and this needs only a question's name and type.
"""

from __future__ import annotations

import socket
import struct
import sys

A, IN, TTL = 1, 1, 5
NOERROR, NXDOMAIN = 0x8180, 0x8183  # a response, recursion desired and available


def question(packet: bytes) -> tuple[str, int, bytes]:
    """The first question's name, type, and its bytes as they stand in the packet."""
    offset, labels = 12, []
    while length := packet[offset]:
        labels.append(packet[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += length + 1
    kind = struct.unpack(">H", packet[offset + 1 : offset + 3])[0]
    return ".".join(labels).lower(), kind, packet[12 : offset + 5]


def answer(packet: bytes, name: str, address: bytes) -> bytes:
    ident = packet[:2]
    asked, kind, raw = question(packet)
    if asked != name:
        return ident + struct.pack(">HHHHH", NXDOMAIN, 1, 0, 0, 0) + raw
    if kind != A:
        return ident + struct.pack(">HHHHH", NOERROR, 1, 0, 0, 0) + raw
    record = b"\xc0\x0c" + struct.pack(">HHIH", A, IN, TTL, len(address)) + address
    return ident + struct.pack(">HHHHH", NOERROR, 1, 1, 0, 0) + raw + record


def main() -> None:
    listen, name, ip = sys.argv[1], sys.argv[2].lower(), socket.inet_aton(sys.argv[3])
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind((listen, 53))
    while True:
        packet, peer = server.recvfrom(512)
        try:
            server.sendto(answer(packet, name, ip), peer)
        except (IndexError, struct.error):
            continue  # not a query this server understands: no answer, as from a silent one


if __name__ == "__main__":
    main()
