#!/usr/bin/python3
"""Report the IPv6 frames an instance receives, one JSON line each, until SIGTERM.

Run inside a victim instance's namespace by tests/guard_scapy.rs (started with `Netns::spawn`):

    /usr/bin/python3 tests/scapy/guard_sniff.py --iface eth0

The capture socket is opened first; then the script prints `ready` (flushed), so a test that waits
for that line cannot send anything the sniffer misses. Frames this host sends itself (Ethernet
source = the interface's own MAC) are skipped. Every received frame of a kind the guard tests care
about becomes one line, with the fields that carry the tests' markers:

    {"kind": "udp", "eth_src": .., "ip_src": .., "ip_dst": .., "sport": 4000, "dport": 4000,
     "payload": "valid"}
    {"kind": "dhcp6", ..., "msgtype": 2, "trid": 14593470}       (UDP 546/547, RFC 8415 §7.3)
    {"kind": "echo", ..., "id": 48879}                            (Echo Request, RFC 4443 §4.1)
    {"kind": "ra", ..., "prefixes": ["2001:db8:dead::/64"]}       (RFC 4861 §4.2, §4.6.2)
    {"kind": "na", ..., "target": "2001:db8:1:a::1", "tlla": "02:..", "override": true}
                                                                   (RFC 4861 §4.4, §4.6.1)

Everything else (NS, MLD, ...) is not reported.
"""

import argparse
import json
import logging
import signal
import sys
import threading

# scapy warns on stderr about interfaces without addresses when it loads; not our business.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.arch import get_if_hwaddr  # noqa: E402 (after the logging setup)
from scapy.config import conf  # noqa: E402
from scapy.layers.dhcp6 import DHCP6  # noqa: E402
from scapy.layers.inet import UDP  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptPrefixInfo,
    IPv6,
)
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.sendrecv import AsyncSniffer  # noqa: E402

DHCPV6_PORTS = (546, 547)


def describe(pkt):
    """The JSON-able summary of one received frame, or None when it is not of interest."""
    ip = pkt[IPv6]
    base = {"eth_src": pkt[Ether].src.lower(), "ip_src": ip.src, "ip_dst": ip.dst}
    if UDP in pkt:
        udp = pkt[UDP]
        if udp.sport in DHCPV6_PORTS or udp.dport in DHCPV6_PORTS:
            raw = bytes(udp.payload)
            if len(raw) >= 4:
                return dict(
                    base,
                    kind="dhcp6",
                    sport=udp.sport,
                    dport=udp.dport,
                    msgtype=raw[0],
                    trid=int.from_bytes(raw[1:4], "big"),
                )
            return None
        return dict(
            base,
            kind="udp",
            sport=udp.sport,
            dport=udp.dport,
            payload=bytes(udp.payload).decode("utf-8", "replace"),
        )
    if ICMPv6EchoRequest in pkt:
        return dict(base, kind="echo", id=pkt[ICMPv6EchoRequest].id)
    if ICMPv6ND_RA in pkt:
        prefixes = []
        opt = pkt[ICMPv6ND_RA].payload
        while opt is not None and ICMPv6NDOptPrefixInfo in opt:
            info = opt[ICMPv6NDOptPrefixInfo]
            prefixes.append(f"{info.prefix}/{info.prefixlen}")
            opt = info.payload
        return dict(base, kind="ra", prefixes=prefixes)
    if ICMPv6ND_NA in pkt:
        na = pkt[ICMPv6ND_NA]
        tlla = pkt[ICMPv6NDOptDstLLAddr].lladdr.lower() if ICMPv6NDOptDstLLAddr in pkt else None
        return dict(base, kind="na", target=na.tgt, tlla=tlla, override=bool(na.O))
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iface", required=True)
    args = parser.parse_args()

    own_mac = get_if_hwaddr(args.iface).lower()
    out_lock = threading.Lock()

    def report(pkt):
        if Ether not in pkt or IPv6 not in pkt or pkt[Ether].src.lower() == own_mac:
            return
        try:
            summary = describe(pkt)
        except Exception as err:  # a malformed frame must not stop the capture
            summary = {"kind": "error", "error": repr(err), "summary": pkt.summary()}
        if summary is not None:
            with out_lock:
                print(json.dumps(summary), flush=True)

    # Open the socket before saying "ready": from then on nothing sent to us can be missed.
    sock = conf.L2listen(iface=args.iface)
    sniffer = AsyncSniffer(opened_socket=sock, prn=report, store=False)
    sniffer.start()
    print("ready", flush=True)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    sniffer.stop(join=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
