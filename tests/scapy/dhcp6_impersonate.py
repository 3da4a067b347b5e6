#!/usr/bin/python3
"""DHCPv6 client messages whose Client Identifier names another client's MAC, for the "the frame
decides" tests (tests/vr_dhcp_scapy.rs). Run inside an instance namespace:

    /usr/bin/python3 tests/scapy/dhcp6_impersonate.py --iface eth0 --mac 02:f6:.. --src fe80::.. \
        solicit --duid-mac 02:f6:..        one Solicit with DUID-LL(--duid-mac) from --mac's frame
    ... decline --duid-mac M --address A --server-duid 00:01:..
                                           one Decline of A with DUID-LL(M), to that server
    ... burst --count 300 --seconds 3      --count Solicits spread over --seconds, each with a
                                           DUID-LL of a fresh random MAC, all from --mac's frame

Every message goes from --src port 546 to ff02::1:2 port 547 in an Ethernet frame from --mac.
The capture socket is opened before the first transmission. Output, one JSON line:

    solicit: {"answered": true, "type": 2, "addresses": ["2001:db8:..."], "status": 0}
    decline: {"answered": true, "type": 7, "status": 0}
    burst:   {"sent": 300, "answered": 21, "seconds": 3.0}

"addresses" are the IAADDRs of every IA_NA of the answer; "status" the top-level Status Code
(0 when absent). A solicit or decline without an answer within --timeout prints answered false.
"""

import argparse
import json
import logging
import random
import sys
import time

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.config import conf  # noqa: E402 (after the logging setup)
from scapy.layers.dhcp6 import (  # noqa: E402
    DUID_LL,
    DHCP6_Decline,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
)
from scapy.layers.inet import UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from dhcp6_confirm import top_level_options as options  # noqa: E402 (this directory)

SERVERS = "ff02::1:2"
SERVERS_MAC = "33:33:00:01:00:02"
CLIENT_PORT = 546
SERVER_PORT = 547


def answer_of(frame, trid):
    """The (type, payload bytes) of a server message to us with transaction id trid, or None."""
    if Ether not in frame or IPv6 not in frame or UDP not in frame:
        return None
    udp = frame[UDP]
    payload = bytes(udp.payload)
    if udp.dport != CLIENT_PORT or len(payload) < 4:
        return None
    if int.from_bytes(payload[1:4], "big") != trid:
        return None
    return payload[0], payload


def summarize(kind, payload):
    from scapy.layers.dhcp6 import DHCP6_Advertise, DHCP6_Reply

    message = (DHCP6_Advertise if kind == 2 else DHCP6_Reply)(payload)
    addresses, status = [], 0
    for option in options(message):
        if isinstance(option, DHCP6OptIA_NA):
            for inner in option.ianaopts:
                if isinstance(inner, DHCP6OptIAAddress):
                    addresses.append(str(inner.addr))
        elif isinstance(option, DHCP6OptStatusCode):
            status = int(option.statuscode)
    return {"answered": True, "type": kind, "addresses": addresses, "status": status}


def random_mac():
    return "02:5b:" + ":".join(f"{random.randrange(256):02x}" for _ in range(4))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--mac", required=True, help="the frame's source MAC")
    parser.add_argument("--src", required=True, help="the interface's link-local address")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--tries", type=int, default=3)
    sub = parser.add_subparsers(dest="what", required=True)
    solicit = sub.add_parser("solicit")
    solicit.add_argument("--duid-mac", required=True)
    decline = sub.add_parser("decline")
    decline.add_argument("--duid-mac", required=True)
    decline.add_argument("--address", required=True)
    decline.add_argument("--server-duid", required=True, help="colon hex")
    burst = sub.add_parser("burst")
    burst.add_argument("--count", type=int, default=300)
    burst.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    conf.iface = args.iface
    conf.verb = 0
    head = (
        Ether(src=args.mac, dst=SERVERS_MAC)
        / IPv6(src=args.src, dst=SERVERS, hlim=1)
        / UDP(sport=CLIENT_PORT, dport=SERVER_PORT)
    )

    def solicit_for(mac, trid):
        return (
            head
            / DHCP6_Solicit(trid=trid)
            / DHCP6OptClientId(duid=DUID_LL(lladdr=mac))
            / DHCP6OptElapsedTime(elapsedtime=0)
            / DHCP6OptIA_NA(iaid=1, T1=0, T2=0)
        )

    listen = conf.L2listen(iface=args.iface)
    send = conf.L2socket(iface=args.iface)
    try:
        if args.what == "burst":
            trids = set()
            start = time.monotonic()
            answered = 0
            for i in range(args.count):
                trid = random.randrange(1, 1 << 24)
                trids.add(trid)
                send.send(solicit_for(random_mac(), trid))
                due = start + args.seconds * (i + 1) / args.count
                while True:
                    left = due - time.monotonic()
                    if left <= 0:
                        break
                    if listen.select([listen], left):
                        frame = listen.recv()
                        if frame is not None and UDP in frame and frame[UDP].dport == CLIENT_PORT:
                            payload = bytes(frame[UDP].payload)
                            if len(payload) >= 4 and int.from_bytes(payload[1:4], "big") in trids:
                                answered += 1
            # Answers still on their way.
            settle = time.monotonic() + 1.0
            while time.monotonic() < settle:
                if listen.select([listen], settle - time.monotonic()):
                    frame = listen.recv()
                    if frame is not None and UDP in frame and frame[UDP].dport == CLIENT_PORT:
                        payload = bytes(frame[UDP].payload)
                        if len(payload) >= 4 and int.from_bytes(payload[1:4], "big") in trids:
                            answered += 1
            print(json.dumps({"sent": args.count, "answered": answered,
                              "seconds": round(time.monotonic() - start, 2)}), flush=True)
            return 0

        trid = random.randrange(1, 1 << 24)
        if args.what == "solicit":
            frame = solicit_for(args.duid_mac, trid)
        else:
            frame = (
                head
                / DHCP6_Decline(trid=trid)
                / DHCP6OptClientId(duid=DUID_LL(lladdr=args.duid_mac))
                / DHCP6OptServerId(duid=bytes.fromhex(args.server_duid.replace(":", "")))
                / DHCP6OptElapsedTime(elapsedtime=0)
                / DHCP6OptIA_NA(
                    iaid=1, T1=0, T2=0,
                    ianaopts=[DHCP6OptIAAddress(addr=args.address, preflft=0, validlft=0)],
                )
            )
        for _ in range(args.tries):
            send.send(frame)
            deadline = time.monotonic() + args.timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not listen.select([listen], left):
                    continue
                received = listen.recv()
                got = received is not None and answer_of(received, trid)
                if got:
                    print(json.dumps(summarize(*got)), flush=True)
                    return 0
        print(json.dumps({"answered": False}), flush=True)
        return 0
    finally:
        listen.close()
        send.close()


if __name__ == "__main__":
    sys.exit(main())
