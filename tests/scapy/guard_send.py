#!/usr/bin/python3
"""Send hand-made Ethernet frames from an instance, as tests/guard_scapy.rs describes them.

Run inside the attacking instance's namespace:

    /usr/bin/python3 tests/scapy/guard_send.py --iface eth0 --plan plan.json

plan.json:

    {"rounds": 3, "frames": [<frame>, ...], "fence": [<frame>, ...]}

Every frame of "frames" is sent in order, and the whole list "rounds" times (so one lost frame
cannot make a dropped attack look like a passed one or the other way round); then the "fence"
frames once. A receiver that has seen the fence has seen everything sent before it on the same
path. Each frame is an object with "kind" and the Ethernet/IPv6 header fields "eth_src",
"eth_dst", "ip_src", "ip_dst" and optionally "hlim" (default 64, 255 for ND messages as RFC 4861
§7.1 requires), plus per kind:

    "udp":   "sport", "dport", "payload" (text)
    "echo":  "id"                         ICMPv6 Echo Request (RFC 4443 §4.1)
    "ra":    "prefix" ("2001:db8:dead::/64"), "slla"   Router Advertisement (RFC 4861 §4.2) with
             a Source Link-Layer Address and an on-link, autonomous Prefix Information option
    "dhcp6": "msgtype", "trid", "sport", "dport"       a DHCPv6 message (RFC 8415 §8) with a
             Server Identifier (DUID-LL of eth_src)
    "na":    "target", "tlla", "override"  Neighbor Advertisement (RFC 4861 §4.4) with a Target
             Link-Layer Address option

Prints one line per round to stdout and exits 0.
"""

import argparse
import ipaddress
import json
import logging

# scapy warns on stderr about interfaces without addresses when it loads; not our business.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.dhcp6 import DUID_LL, DHCP6, DHCP6OptServerId  # noqa: E402 (after logging)
from scapy.layers.inet import UDP  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.sendrecv import sendp  # noqa: E402

ND_KINDS = ("ra", "na")


def build(frame):
    """The scapy packet for one frame description."""
    kind = frame["kind"]
    hlim = frame.get("hlim", 255 if kind in ND_KINDS else 64)
    head = Ether(src=frame["eth_src"], dst=frame["eth_dst"]) / IPv6(
        src=frame["ip_src"], dst=frame["ip_dst"], hlim=hlim
    )
    if kind == "udp":
        return head / UDP(sport=frame["sport"], dport=frame["dport"]) / Raw(
            frame["payload"].encode()
        )
    if kind == "echo":
        return head / ICMPv6EchoRequest(id=frame["id"], seq=1, data=b"flat6 guard test")
    if kind == "ra":
        net = ipaddress.IPv6Network(frame["prefix"])
        return (
            head
            / ICMPv6ND_RA(routerlifetime=1800)
            / ICMPv6NDOptSrcLLAddr(lladdr=frame["slla"])
            / ICMPv6NDOptPrefixInfo(
                prefix=str(net.network_address),
                prefixlen=net.prefixlen,
                L=1,
                A=1,
                validlifetime=86400,
                preferredlifetime=14400,
            )
        )
    if kind == "dhcp6":
        return (
            head
            / UDP(sport=frame["sport"], dport=frame["dport"])
            / DHCP6(msgtype=frame["msgtype"], trid=frame["trid"])
            / DHCP6OptServerId(duid=DUID_LL(lladdr=frame["eth_src"]))
        )
    if kind == "na":
        return (
            head
            / ICMPv6ND_NA(tgt=frame["target"], R=0, S=0, O=int(frame["override"]))
            / ICMPv6NDOptDstLLAddr(lladdr=frame["tlla"])
        )
    raise ValueError(f"unknown frame kind {kind!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iface", required=True)
    parser.add_argument("--plan", required=True)
    args = parser.parse_args()

    with open(args.plan, encoding="utf-8") as f:
        plan = json.load(f)
    frames = [build(frame) for frame in plan["frames"]]
    fence = [build(frame) for frame in plan.get("fence", [])]
    for i in range(plan.get("rounds", 1)):
        sendp(frames, iface=args.iface, verbose=False)
        print(f"round {i + 1}: sent {len(frames)} frames", flush=True)
    if fence:
        sendp(fence, iface=args.iface, verbose=False)
        print(f"fence: sent {len(fence)} frames", flush=True)


if __name__ == "__main__":
    main()
