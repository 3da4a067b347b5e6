#!/usr/bin/python3
"""Flood a DHCPv6 server's link with malformed and hostile client traffic until told to stop.

Run inside an instance namespace, e.g. from tests/vr_dhcp_scapy.rs:

    /usr/bin/python3 tests/scapy/dhcp6_storm.py --iface eth0 --mac 02:f6:.. --src fe80::.. \
        --stop-file /tmp/x/storm.stop [--rate 2000] [--spoof 0.5] [--min-frames 6000] \
        [--max-seconds 50] [--seed N] [--pcap /tmp/x/storm-pool.pcap]

Every frame goes to ff02::1:2 port 547 (Ethernet 33:33:00:01:00:02) from --src, the instance's own
link-local, so anything the server answers comes back here. A fraction --spoof of the frames carry
a source MAC from a pool of random locally administered MACs (02:5a:...) instead of --mac, so the
server's per-MAC rate limit does not keep them from its parser. The kinds of frames, built with
scapy and cycled in random order:

  random_payload   random bytes as the UDP payload
  truncated        a valid Solicit or Confirm cut short inside its options
  huge_length      an option declaring 65535 octets followed by four
  unknown_type     message types no RFC defines (0, 14..255) with plausible options
  relay_nested     Relay-forward / Relay-reply nested 30 deep (Relay Message option 9 in each),
                   and a client message carrying such a chain in an option 9
  zero_length      empty UDP payloads and payloads shorter than the 4-octet header
  long_garbage     ~1400-octet client messages made of random, well-delimited options
  deep_ia          IA_NA / IA_PD / IAADDR nested 60 deep, a Status Code of 0 or 1 octets innermost
  short_fields     fixed-size options with the wrong size (Preference, Elapsed Time, Status
                   Code, Server Unicast, Authentication, Vendor Class/Options, DNS, IAPREFIX...)
  bad_names        domain lists (24, 39, 56/3) full of bad labels and DNS compression pointers
  bad_udp          bad UDP lengths, IPv6 payload length lies, truncated IPv6 headers,
                   a Hop-by-Hop header before UDP

Interleaved with those, about 20 "canaries" a second: well-formed Information-requests, each
from a fresh random MAC (so never rate-limited) with its own transaction id. The server must keep
answering them during the storm; their Replies are counted on a UDP socket bound to port 546.

The script prints "storm: seed N" at once, "storm: sending" once every kind has been sent,
"storm: canary answered" at the first canary Reply, and when it ends (the stop file exists and
at least --min-frames frames went out, or --max-seconds passed) one JSON line of statistics:

    {"seed": N, "stopped_by": "file", "seconds": 3.2, "sent": 6400, "by_kind": {...},
     "spoofed": 3200, "own_mac": 3200, "canaries": 64, "canary_replies": 60,
     "other_replies": 0, "send_errors": 0, "pool": 660}
"""

import argparse
import json
import logging
import os
import random
import select
import socket
import struct
import sys
import time

# scapy warns on stderr about interfaces without addresses when it loads; not our business.
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.config import conf  # noqa: E402 (after the logging setup)
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Confirm,
    DHCP6_InfoRequest,
    DHCP6_RelayForward,
    DHCP6_RelayReply,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptOptReq,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapWriter

ALL_DHCP_SERVERS = "ff02::1:2"
ALL_DHCP_MAC = "33:33:00:01:00:02"
CLIENT_PORT = 546
SERVER_PORT = 547
ETH_P_ALL = 0x0003
DLT_EN10MB = 1
VARIANTS_PER_KIND = 60
MAC_POOL = 256
CANARY_RATE = 20.0
# Client message types (RFC 8415 §7.3) a server decodes; relay types 12/13 are separate kinds.
CLIENT_TYPES = [1, 3, 4, 5, 6, 8, 9, 11]
OPTION_RELAY_MSG = 9


def opt(code, body, length=None):
    """One option (RFC 8415 §21.1); `length` lies about the body when given."""
    return struct.pack("!HH", code, len(body) if length is None else length) + body


def header(rng, msg_type=None):
    if msg_type is None:
        msg_type = rng.choice(CLIENT_TYPES)
    return bytes([msg_type]) + rng.getrandbits(24).to_bytes(3, "big")


def rand_bytes(rng, n):
    return bytes(rng.getrandbits(8) for _ in range(n))


def rand_mac(rng):
    return "02:5a:" + ":".join(f"{rng.getrandbits(8):02x}" for _ in range(4))


def client_id(mac):
    return bytes(DHCP6OptClientId(duid=DUID_LL(lladdr=mac)))


def valid_message(rng, mac):
    """A well-formed Solicit or Confirm, as bytes."""
    ia = DHCP6OptIA_NA(
        iaid=rng.getrandbits(32),
        ianaopts=[DHCP6OptIAAddress(addr=f"2001:db8:1:{rng.getrandbits(16):x}::{i + 1:x}") for i in range(3)],
    )
    cls = rng.choice([DHCP6_Solicit, DHCP6_Confirm])
    message = (
        cls(trid=rng.getrandbits(24))
        / DHCP6OptClientId(duid=DUID_LL(lladdr=mac))
        / DHCP6OptElapsedTime()
        / ia
        / DHCP6OptOptReq(reqopts=[23, 24, 31, 56])
    )
    return bytes(message)


def kind_random_payload(rng, mac):
    return rand_bytes(rng, rng.randrange(1, 1200))


def kind_truncated(rng, mac):
    whole = valid_message(rng, mac)
    return whole[: rng.randrange(5, len(whole) - 1)]


def kind_huge_length(rng, mac):
    code = rng.choice([1, 2, 3, 5, 6, 8, 13, 16, 17, 23, 24, 25, 39, 56, 0xFFFF])
    prefix = client_id(mac) if rng.random() < 0.5 else b""
    return header(rng) + prefix + opt(code, rand_bytes(rng, 4), length=65535)


def kind_unknown_type(rng, mac):
    msg_type = rng.choice([0, 14, 15, 35, 36, 99, 200, 255])
    return header(rng, msg_type) + client_id(mac) + opt(8, b"\x00\x00") + opt(6, b"\x00\x17\x00\x18")


def kind_relay_nested(rng, mac):
    chain = bytes(DHCP6_Solicit(trid=rng.getrandbits(24)) / DHCP6OptClientId(duid=DUID_LL(lladdr=mac)))
    relay = rng.choice([DHCP6_RelayForward, DHCP6_RelayReply])
    for hop in range(30):
        # Each level as bytes: scapy re-dissects nested Relay Message options at every level,
        # which takes exponential time at this depth.
        chain = bytes(relay(hopcount=hop, linkaddr="::", peeraddr="fe80::1")) + opt(OPTION_RELAY_MSG, chain)
    if rng.random() < 0.3:
        # The chain inside a client message (option 9 has no place there, RFC 8415 §21.10).
        return header(rng) + client_id(mac) + opt(OPTION_RELAY_MSG, chain)
    return chain


def kind_zero_length(rng, mac):
    return rand_bytes(rng, rng.choice([0, 0, 0, 1, 2, 3]))


def kind_long_garbage(rng, mac):
    body = header(rng)
    if rng.random() < 0.5:
        body += client_id(mac)
    codes = [1, 2, 3, 5, 6, 7, 8, 11, 12, 13, 14, 15, 16, 17, 20, 23, 24, 25, 26, 39, 56, 99, 0xFFFF]
    while len(body) < 1400:
        code = rng.choice(codes) if rng.random() < 0.7 else rng.getrandbits(16)
        if code == OPTION_RELAY_MSG:
            continue
        size = min(rng.randrange(0, 80), 1400 - len(body))
        body += opt(code, rand_bytes(rng, size))
    return body


def kind_deep_ia(rng, mac):
    innermost = opt(13, rand_bytes(rng, rng.choice([0, 1])))
    node = innermost
    for _ in range(60):
        wrapper = rng.choice(["ia_na", "ia_pd", "iaaddr", "ia_ta", "vendor"])
        if wrapper == "ia_na":
            node = opt(3, rand_bytes(rng, 12) + node)
        elif wrapper == "ia_pd":
            node = opt(25, rand_bytes(rng, 12) + node)
        elif wrapper == "ia_ta":
            node = opt(4, rand_bytes(rng, 4) + node)
        elif wrapper == "vendor":
            node = opt(17, rand_bytes(rng, 4) + node)
        else:
            node = opt(5, rand_bytes(rng, 24) + node)
    return header(rng) + client_id(mac) + node


def kind_short_fields(rng, mac):
    bad = [
        opt(7, b""),  # Preference must be 1
        opt(8, b""),  # Elapsed Time must be 2
        opt(8, b"\x01"),
        opt(8, b"\x01\x02\x03"),
        opt(12, rand_bytes(rng, 3)),  # Server Unicast must be 16
        opt(11, rand_bytes(rng, 5)),  # Authentication needs 11
        opt(16, b"\x00\x01"),  # Vendor Class needs 4
        opt(17, b"\x00"),  # Vendor Options need 4
        opt(19, b""),  # Reconfigure Message must be 1
        opt(14, b"\x01"),  # Rapid Commit must be empty
        opt(23, rand_bytes(rng, 15)),  # DNS servers: a multiple of 16
        opt(6, b"\x00"),  # ORO of odd length
        opt(1, b""),  # empty DUID
        opt(1, b"\x00\x03"),  # a DUID type without a body
        opt(1, rand_bytes(rng, 200)),  # a DUID longer than 130
        opt(3, rand_bytes(rng, 11)),  # IA_NA shorter than 12
        opt(3, rand_bytes(rng, 12) + opt(5, rand_bytes(rng, 23))),  # IAADDR shorter than 24
        opt(3, rand_bytes(rng, 12) + opt(5, rand_bytes(rng, 24) + opt(13, b""))),  # Status Code < 2
        opt(3, rand_bytes(rng, 12) + opt(5, rand_bytes(rng, 24) + opt(13, b"\x00"))),
        opt(25, rand_bytes(rng, 12) + opt(26, rand_bytes(rng, 3))),  # IAPREFIX shorter than 25
        opt(15, b"\xff\xff" + rand_bytes(rng, 6)),  # User Class item longer than the option
        opt(16, b"\x00\x00\x00\x01" + b"\xff\xff\x00"),  # Vendor Class item likewise
    ]
    picked = rng.sample(bad, rng.randrange(1, 5))
    return header(rng) + (client_id(mac) if rng.random() < 0.7 else b"") + b"".join(picked)


def kind_bad_names(rng, mac):
    names = [
        b"\xc0\x00",  # a pointer to itself
        b"\x03abc\xc0\x00",  # a pointer back to the start: a loop
        b"\xc0\x10",  # a pointer forward, past the end
        b"\x3f" + b"a" * 10,  # a label longer than what follows
        b"\x40" + b"a" * 64,  # reserved label type
        b"\x80\x01",  # reserved label type
        (b"\x3f" + b"a" * 63) * 5 + b"\x00",  # longer than 255 octets
        b"\x01" * 300,  # one-octet labels that never end
        rand_bytes(rng, 40),
    ]
    body = header(rng, rng.choice([1, 11])) + client_id(mac)
    for name in rng.sample(names, 3):
        which = rng.choice(["search", "fqdn", "ntp"])
        if which == "search":
            body += opt(24, name)
        elif which == "fqdn":
            body += opt(39, b"\x01" + name)
        else:
            body += opt(56, opt(3, name) + opt(1, rand_bytes(rng, rng.choice([15, 16]))))
    return body


def udp_frame(mac, src, payload, udp_len=None, plen=None):
    udp = UDP(sport=CLIENT_PORT, dport=SERVER_PORT)
    if udp_len is not None:
        udp.len = udp_len
    ip = IPv6(src=src, dst=ALL_DHCP_SERVERS, hlim=1)
    if plen is not None:
        ip.plen = plen
    return bytes(Ether(src=mac, dst=ALL_DHCP_MAC) / ip / udp / Raw(payload))


def bad_udp_frame(rng, mac, src):
    payload = valid_message(rng, mac)
    variant = rng.randrange(6)
    if variant == 0:
        return udp_frame(mac, src, payload, udp_len=rng.choice([0, 1, 7]))
    if variant == 1:
        return udp_frame(mac, src, payload, udp_len=len(payload) + 8 + rng.randrange(1, 3000))
    if variant == 2:
        return udp_frame(mac, src, payload, plen=rng.choice([0, 3, 8, 65535]))
    if variant == 3:
        # Only part of the IPv6 header.
        whole = udp_frame(mac, src, payload)
        return whole[: 14 + rng.randrange(1, 48)]
    if variant == 4:
        ip = IPv6(src=src, dst=ALL_DHCP_SERVERS, hlim=1) / IPv6ExtHdrHopByHop()
        return bytes(Ether(src=mac, dst=ALL_DHCP_MAC) / ip / UDP(sport=CLIENT_PORT, dport=SERVER_PORT) / Raw(payload))
    # The UDP header cut in half.
    whole = udp_frame(mac, src, payload)
    return whole[: 14 + 40 + 4]


KINDS = {
    "random_payload": kind_random_payload,
    "truncated": kind_truncated,
    "huge_length": kind_huge_length,
    "unknown_type": kind_unknown_type,
    "relay_nested": kind_relay_nested,
    "zero_length": kind_zero_length,
    "long_garbage": kind_long_garbage,
    "deep_ia": kind_deep_ia,
    "short_fields": kind_short_fields,
    "bad_names": kind_bad_names,
    "bad_udp": None,
}


def build_pool(rng, mac, src):
    pool = []
    for kind, make in KINDS.items():
        for _ in range(VARIANTS_PER_KIND):
            if make is None:
                frame = bad_udp_frame(rng, mac, src)
            else:
                frame = udp_frame(mac, src, make(rng, mac))
            if len(frame) > 1514:
                raise SystemExit(f"{kind} built a {len(frame)}-octet frame, more than the MTU allows")
            pool.append((kind, frame))
    return pool


def mac_bytes(text):
    return bytes(int(part, 16) for part in text.split(":"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--mac", required=True, help="this instance's own MAC")
    parser.add_argument("--src", required=True, help="this instance's link-local address")
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--rate", type=float, default=2000.0, help="frames per second")
    parser.add_argument("--spoof", type=float, default=0.5, help="share of frames from pool MACs")
    parser.add_argument("--min-frames", type=int, default=0, help="send at least this many before stopping")
    parser.add_argument("--max-seconds", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--pcap", default=None, help="write the frame pool here (own MAC)")
    args = parser.parse_args()

    conf.verb = 0
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"storm: seed {seed}", flush=True)
    rng = random.Random(seed)
    pool = build_pool(rng, args.mac, args.src)
    if args.pcap:
        # Raw bytes: dissecting the deep frames with scapy takes exponential time.
        pcap = PcapWriter(args.pcap, linktype=DLT_EN10MB)
        for _, frame in pool:
            pcap.write(frame)
        pcap.close()
    spoof_macs = [mac_bytes(rand_mac(rng)) for _ in range(MAC_POOL)]

    replies = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    replies.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    replies.bind(("::", CLIENT_PORT))
    replies.setblocking(False)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    out.bind((args.iface, 0))

    by_kind = {kind: 0 for kind in KINDS}
    stats = {"spoofed": 0, "own_mac": 0, "canaries": 0, "canary_replies": 0, "other_replies": 0, "send_errors": 0}
    canary_trids = set()
    announced_sending = announced_canary = False
    own_mac = mac_bytes(args.mac)
    start = time.monotonic()
    next_canary = start
    sent = 0
    stopped_by = "deadline"
    order = []

    def send(frame):
        try:
            out.send(frame)
            return True
        except OSError:
            stats["send_errors"] += 1
            return False

    def drain_replies():
        nonlocal announced_canary
        while True:
            try:
                data = replies.recv(2048)
            except BlockingIOError:
                return
            trid = int.from_bytes(data[1:4], "big") if len(data) >= 4 else -1
            if data[:1] == b"\x07" and trid in canary_trids:
                canary_trids.discard(trid)
                stats["canary_replies"] += 1
                if not announced_canary:
                    announced_canary = True
                    print("storm: canary answered", flush=True)
            else:
                stats["other_replies"] += 1

    while True:
        now = time.monotonic()
        if sent >= args.min_frames and os.path.exists(args.stop_file):
            stopped_by = "file"
            break
        if now - start >= args.max_seconds:
            break
        if not order:
            order = list(range(len(pool)))
            rng.shuffle(order)
        kind, frame = pool[order.pop()]
        if rng.random() < args.spoof:
            frame = frame[:6] + rng.choice(spoof_macs) + frame[12:]
            stats["spoofed"] += 1
        else:
            frame = frame[:6] + own_mac + frame[12:]
            stats["own_mac"] += 1
        if send(frame):
            by_kind[kind] += 1
            sent += 1
        if not announced_sending and all(by_kind.values()):
            announced_sending = True
            print("storm: sending", flush=True)
        if now >= next_canary:
            next_canary += 1.0 / CANARY_RATE
            trid = rng.getrandbits(24)
            canary_mac = rand_mac(rng)
            canary = (
                Ether(src=canary_mac, dst=ALL_DHCP_MAC)
                / IPv6(src=args.src, dst=ALL_DHCP_SERVERS, hlim=1)
                / UDP(sport=CLIENT_PORT, dport=SERVER_PORT)
                / DHCP6_InfoRequest(trid=trid)
                / DHCP6OptClientId(duid=DUID_LL(lladdr=canary_mac))
                / DHCP6OptElapsedTime()
                / DHCP6OptOptReq(reqopts=[23, 24])
            )
            canary_trids.add(trid)
            if send(bytes(canary)):
                stats["canaries"] += 1
        drain_replies()
        # Pace to --rate: sleep off whatever we are ahead of schedule.
        ahead = start + sent / args.rate - time.monotonic()
        if ahead > 0:
            select.select([replies], [], [], ahead)

    # Replies to the last canaries may still be on their way; a short grace to count them.
    grace_end = time.monotonic() + 0.5
    while time.monotonic() < grace_end:
        select.select([replies], [], [], 0.05)
        drain_replies()
    out.close()
    replies.close()
    result = {
        "seed": seed,
        "stopped_by": stopped_by,
        "seconds": round(time.monotonic() - start, 3),
        "sent": sent,
        "by_kind": by_kind,
        "pool": len(pool),
    }
    result.update(stats)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
