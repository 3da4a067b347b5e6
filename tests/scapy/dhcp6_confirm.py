#!/usr/bin/python3
"""Send one DHCPv6 Confirm (RFC 8415 §18.2.3) and print the server's Reply as one JSON line.

With --information-request it sends, instead, an Information-request (§18.2.6) as WIDE
`dhcp6c -i` does: a Client Identifier and an Elapsed Time, no Option Request option.

Run inside an instance namespace, e.g. from tests/vr_dhcp_scapy.rs:

    /usr/bin/python3 tests/scapy/dhcp6_confirm.py --iface eth0 --mac 02:f6:.. \
        --src fe80::.. --address 2001:db8:1::5 [--address ...]

The Confirm carries a Client Identifier (DUID-LL of --mac), an Elapsed Time and one IA_NA listing
every --address as an IAADDR. It goes from --src port 546 to ff02::1:2 port 547 in an Ethernet frame
from --mac. The capture socket is opened before the first transmission, so no Reply can be missed;
the Confirm is retransmitted with the same transaction id (RFC 8415 §15) up to --tries times, waiting
--timeout seconds for each. Output on success (exit 0):

    {"status": 4, "status_message": "...", "server_duid": "00:01:...", "eth_src": "...",
     "ip_src": "fe80::...", "udp_sport": 547, "client_id_echoed": true, "trid": 1234, "tries": 1}

"status" is the top-level Status Code (Success when absent, RFC 8415 §21.13); "dns_servers" and
"domains" list what the Reply's DNS Recursive Name Server and Domain Search List options hold.
Without a Reply the script says so on stderr and exits 1.
"""

import argparse
import json
import logging
import random
import sys
import time

# scapy warns on stderr about interfaces without addresses when it loads; not our business.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.config import conf  # noqa: E402 (after the logging setup)
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Confirm,
    DHCP6_InfoRequest,
    DHCP6_Reply,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import NoPayload

ALL_DHCP_RELAY_AGENTS_AND_SERVERS = "ff02::1:2"
ALL_DHCP_MAC = "33:33:00:01:00:02"
CLIENT_PORT = 546
SERVER_PORT = 547
MSG_REPLY = 7


def colon_hex(data):
    return ":".join(f"{b:02x}" for b in data)


def top_level_options(message):
    """The options of a DHCPv6 message in scapy: each one is the payload of the one before."""
    option = message.payload
    while option is not None and not isinstance(option, NoPayload):
        yield option
        option = option.payload


def summarize(frame, client_id):
    reply = DHCP6_Reply(bytes(frame[UDP].payload))
    status, message, server_duid, echoed = 0, "", None, False
    dns_servers, domains = [], []
    for option in top_level_options(reply):
        if isinstance(option, DHCP6OptDNSServers):
            dns_servers = [str(a) for a in option.dnsservers]
        elif isinstance(option, DHCP6OptDNSDomains):
            domains = [d.decode() if isinstance(d, bytes) else str(d) for d in option.dnsdomains]
        if isinstance(option, DHCP6OptStatusCode):
            status, message = int(option.statuscode), option.statusmsg
            if isinstance(message, bytes):
                message = message.decode("utf-8", "replace")
        elif isinstance(option, DHCP6OptServerId):
            server_duid = colon_hex(bytes(option.duid))
        elif isinstance(option, DHCP6OptClientId):
            echoed = bytes(option.duid) == client_id
    return {
        "status": status,
        "status_message": message,
        "server_duid": server_duid,
        "eth_src": frame[Ether].src.lower(),
        "ip_src": frame[IPv6].src,
        "udp_sport": int(frame[UDP].sport),
        "client_id_echoed": echoed,
        "dns_servers": dns_servers,
        "domains": domains,
    }


def is_our_reply(frame, trid):
    if Ether not in frame or IPv6 not in frame or UDP not in frame:
        return False
    udp = frame[UDP]
    payload = bytes(udp.payload)
    return (
        udp.dport == CLIENT_PORT
        and len(payload) >= 4
        and payload[0] == MSG_REPLY
        and int.from_bytes(payload[1:4], "big") == trid
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--mac", required=True, help="Ethernet source and DUID-LL MAC")
    parser.add_argument("--src", required=True, help="the interface's link-local address")
    parser.add_argument("--address", action="append", default=[], help="an IAADDR to confirm")
    parser.add_argument(
        "--information-request",
        action="store_true",
        help="send an Information-request without an Option Request option instead",
    )
    parser.add_argument("--iaid", type=int, default=1)
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=1.0)
    args = parser.parse_args()
    if not args.address and not args.information_request:
        parser.error("a Confirm needs at least one --address")

    conf.iface = args.iface
    conf.verb = 0
    trid = random.randrange(1, 1 << 24)
    client_id = bytes(DUID_LL(lladdr=args.mac))
    ia = DHCP6OptIA_NA(
        iaid=args.iaid,
        T1=0,
        T2=0,
        ianaopts=[DHCP6OptIAAddress(addr=a, preflft=0, validlft=0) for a in args.address],
    )
    head = (
        Ether(src=args.mac, dst=ALL_DHCP_MAC)
        / IPv6(src=args.src, dst=ALL_DHCP_RELAY_AGENTS_AND_SERVERS, hlim=1)
        / UDP(sport=CLIENT_PORT, dport=SERVER_PORT)
    )
    client = DHCP6OptClientId(duid=DUID_LL(lladdr=args.mac)) / DHCP6OptElapsedTime(elapsedtime=0)
    if args.information_request:
        frame = head / DHCP6_InfoRequest(trid=trid) / client
    else:
        frame = head / DHCP6_Confirm(trid=trid) / client / ia

    listen = conf.L2listen(iface=args.iface)
    send = conf.L2socket(iface=args.iface)
    try:
        for attempt in range(1, args.tries + 1):
            send.send(frame)
            deadline = time.monotonic() + args.timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready = listen.select([listen], left)
                if not ready:
                    continue
                received = listen.recv()
                if received is not None and is_our_reply(received, trid):
                    result = summarize(received, client_id)
                    result.update({"trid": trid, "tries": attempt})
                    print(json.dumps(result), flush=True)
                    return 0
    finally:
        listen.close()
        send.close()
    print(
        f"no DHCPv6 Reply to {'Information-request' if args.information_request else 'Confirm'} "
        f"trid {trid} for {args.address} on {args.iface} "
        f"after {args.tries} tries of {args.timeout} s",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
