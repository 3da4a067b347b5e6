//! The DHCPv6 socket shell.
//!
//! Receiving uses a packet socket (`AF_PACKET`, `SOCK_DGRAM`, IPv6 only, BPF-filtered to UDP port
//! 547) because the client's MAC — the Ethernet source the hypervisor enforces — is what picks its
//! reservation, whatever DUID or link-local address the client uses. Sending uses an ordinary UDP
//! socket on port 547 bound to the interface, from our link-local to the client's, port 546. That UDP
//! socket also joins ff02::1:2 and carries a drop-everything filter, so the kernel neither answers
//! port-unreachable nor queues a second copy of each request.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::model::Mac;

/// ff02::1:2, All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).
pub const ALL_DHCP_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
/// Server port (RFC 8415 §7.2).
pub const SERVER_PORT: u16 = 547;
/// Client port.
pub const CLIENT_PORT: u16 = 546;

const ETH_P_IPV6: u16 = 0x86dd;
const IPV6_HEADER: usize = 40;
const UDP_HEADER: usize = 8;
const NEXT_HEADER_UDP: u8 = 17;

/// Errors of the DHCPv6 sockets, naming the interface and the step.
#[derive(Debug, thiserror::Error)]
pub enum DhcpSocketError {
    /// Opening or configuring a socket failed.
    #[error("DHCPv6 socket on {ifname}: {step}: {source}")]
    Setup {
        /// The interface.
        ifname: String,
        /// What was being done.
        step: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Receiving failed.
    #[error("receive DHCPv6 on {ifname}: {source}")]
    Recv {
        /// The interface.
        ifname: String,
        /// The OS error.
        source: io::Error,
    },
    /// Sending failed.
    #[error("send DHCPv6 reply on {ifname} to {dest}: {source}")]
    Send {
        /// The interface.
        ifname: String,
        /// Destination.
        dest: Ipv6Addr,
        /// The OS error.
        source: io::Error,
    },
}

/// Why a captured frame is not a DHCPv6 message we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// Shorter than the IPv6 and UDP headers.
    #[error("truncated: {len} bytes, need {need}")]
    Truncated {
        /// What we have.
        len: usize,
        /// What the headers need.
        need: usize,
    },
    /// Not IPv6 version 6 with UDP as the next header (extension headers are not followed).
    #[error("not a plain IPv6/UDP packet (version {version}, next header {next_header})")]
    NotUdp6 {
        /// IP version nibble.
        version: u8,
        /// Next header.
        next_header: u8,
    },
    /// The UDP length field disagrees with the packet.
    #[error("UDP length {udp_len} does not fit the {available} bytes after the IPv6 header")]
    BadUdpLength {
        /// The UDP header's length.
        udp_len: usize,
        /// Bytes present.
        available: usize,
    },
    /// The IPv6 payload length disagrees with the packet or the UDP length.
    #[error(
        "IPv6 payload length {payload_len} does not match UDP length {udp_len} / {captured} bytes captured"
    )]
    BadPayloadLength {
        /// IPv6 payload length field.
        payload_len: usize,
        /// UDP length field.
        udp_len: usize,
        /// Bytes after the IPv6 header.
        captured: usize,
    },
    /// The UDP checksum is zero (forbidden over IPv6, RFC 8200 §8.1) or wrong.
    #[error("bad UDP checksum {0:#06x}")]
    BadChecksum(u16),
    /// Sent to a multicast group other than All_DHCP_Relay_Agents_and_Servers.
    #[error("sent to {0}, not ff02::1:2 or a unicast address")]
    WrongDestination(Ipv6Addr),
}

/// RFC 1071 ones-complement sum of `bytes` (odd length padded with zero) added to `sum`.
fn ones_complement_sum(bytes: &[u8], mut sum: u32) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Whether the UDP checksum over the IPv6 pseudo-header (RFC 8200 §8.1) verifies.
fn udp_checksum_ok(source: &Ipv6Addr, destination: &Ipv6Addr, udp: &[u8]) -> bool {
    let mut sum = ones_complement_sum(&source.octets(), 0);
    sum = ones_complement_sum(&destination.octets(), sum);
    sum = ones_complement_sum(&(udp.len() as u32).to_be_bytes(), sum);
    sum = ones_complement_sum(&[0, 0, 0, NEXT_HEADER_UDP], sum);
    ones_complement_sum(udp, sum) == 0xffff
}

/// A UDP datagram to port 547 as captured, borrowed from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// IPv6 source.
    pub source: Ipv6Addr,
    /// IPv6 destination.
    pub destination: Ipv6Addr,
    /// UDP source port.
    pub source_port: u16,
    /// UDP destination port.
    pub destination_port: u16,
    /// The DHCPv6 message bytes.
    pub payload: &'a [u8],
}

/// Read the IPv6 and UDP headers of a captured packet (pure; RFC 8200 §3, RFC 768).
///
/// `checksum_ready` is false for a packet whose UDP checksum the kernel has not filled in yet
/// (sent from this host with checksum offload: the packet socket sees it before the "hardware"
/// would compute it); its checksum field holds only the pseudo-header sum and is not checked.
pub fn parse_datagram(packet: &[u8], checksum_ready: bool) -> Result<Datagram<'_>, DatagramError> {
    let need = IPV6_HEADER + UDP_HEADER;
    if packet.len() < need {
        return Err(DatagramError::Truncated {
            len: packet.len(),
            need,
        });
    }
    let version = packet[0] >> 4;
    let next_header = packet[6];
    if version != 6 || next_header != NEXT_HEADER_UDP {
        return Err(DatagramError::NotUdp6 {
            version,
            next_header,
        });
    }
    let addr = |at: usize| {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&packet[at..at + 16]);
        Ipv6Addr::from(octets)
    };
    let after = &packet[IPV6_HEADER..];
    let udp_len = usize::from(u16::from_be_bytes([after[4], after[5]]));
    if udp_len < UDP_HEADER || udp_len > after.len() {
        return Err(DatagramError::BadUdpLength {
            udp_len,
            available: after.len(),
        });
    }
    let payload_len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    if payload_len != udp_len {
        return Err(DatagramError::BadPayloadLength {
            payload_len,
            udp_len,
            captured: after.len(),
        });
    }
    let udp = &after[..udp_len];
    let (source, destination) = (addr(8), addr(24));
    if destination.is_multicast() && destination != ALL_DHCP_SERVERS {
        return Err(DatagramError::WrongDestination(destination));
    }
    let checksum = u16::from_be_bytes([udp[6], udp[7]]);
    if checksum_ready && (checksum == 0 || !udp_checksum_ok(&source, &destination, udp)) {
        return Err(DatagramError::BadChecksum(checksum));
    }
    Ok(Datagram {
        source,
        destination,
        source_port: u16::from_be_bytes([udp[0], udp[1]]),
        destination_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: &udp[UDP_HEADER..],
    })
}

/// One captured DHCPv6 packet: the sender's MAC and the IPv6 packet bytes in the caller's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Captured {
    /// Ethernet source of the frame.
    pub mac: Option<Mac>,
    /// Length of the IPv6 packet in the buffer.
    pub len: usize,
    /// False when the kernel says the UDP checksum is not filled in yet (see [`parse_datagram`]).
    pub checksum_ready: bool,
}

/// `SOL_PACKET` option asking for a `tpacket_auxdata` control message (linux/if_packet.h).
const PACKET_AUXDATA: libc::c_int = 8;
/// `tp_status` bit: the checksum will be computed later (checksum offload).
const TP_STATUS_CSUMNOTREADY: u32 = 1 << 3;

/// linux/if_packet.h `struct tpacket_auxdata`.
#[repr(C)]
#[derive(Clone, Copy)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

/// The server's sockets on one interface.
pub struct DhcpSocket {
    capture: AsyncFd<OwnedFd>,
    send: Socket,
    ifname: String,
    ifindex: u32,
}

fn attach_filter(fd: libc::c_int, program: &[libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `program`, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Classic BPF over the IPv6 header (SOCK_DGRAM packet sockets start at the network header):
/// accept UDP (next header 17) to port 547, drop everything else.
const CAPTURE_FILTER: [libc::sock_filter; 6] = [
    bpf((libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16, 0, 0, 6),
    bpf(
        (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        0,
        3,
        NEXT_HEADER_UDP as u32,
    ),
    bpf(
        (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16,
        0,
        0,
        (IPV6_HEADER + 2) as u32,
    ),
    bpf(
        (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        0,
        1,
        SERVER_PORT as u32,
    ),
    bpf((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, 0xffff),
    bpf((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, 0),
];

/// Receive buffer of the capture socket: about 30,000 DHCPv6 frames, so that a burst that arrives
/// while the server is not scheduled (tens of ms on a busy host) is queued rather than dropped.
/// The default (`net.core.rmem_default`, often 212,992 bytes) holds a few hundred.
const CAPTURE_BUFFER: libc::c_int = 8 << 20;

/// Ask for a `bytes` receive buffer: `SO_RCVBUFFORCE` (needs CAP_NET_ADMIN, which the VR has for
/// its packet socket) and else `SO_RCVBUF` (capped by `net.core.rmem_max`). Not fatal: the socket
/// works with a smaller buffer, it just drops sooner under load.
fn set_receive_buffer(fd: libc::c_int, bytes: libc::c_int) {
    for (option, name) in [
        (libc::SO_RCVBUFFORCE, "SO_RCVBUFFORCE"),
        (libc::SO_RCVBUF, "SO_RCVBUF"),
    ] {
        // SAFETY: `bytes` is a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&bytes as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            tracing::debug!(option = name, bytes, "capture socket receive buffer set");
            return;
        }
        tracing::debug!(option = name, error = %io::Error::last_os_error(), "receive buffer not set");
    }
    tracing::warn!(
        bytes,
        "could not enlarge the capture socket's receive buffer; bursts may be dropped"
    );
}

const DROP_ALL: [libc::sock_filter; 1] = [bpf((libc::BPF_RET | libc::BPF_K) as u16, 0, 0, 0)];

impl DhcpSocket {
    /// Open the capture and send sockets on `ifname`.
    pub fn open(ifname: &str, ifindex: u32) -> Result<Self, DhcpSocketError> {
        let setup = |step: &'static str| {
            move |source: io::Error| DhcpSocketError::Setup {
                ifname: ifname.to_string(),
                step,
                source,
            }
        };
        // SAFETY: plain socket(2) call; the result is checked before use and owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_IPV6.to_be()),
            )
        };
        if raw < 0 {
            return Err(setup("socket(AF_PACKET)")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let capture = unsafe { OwnedFd::from_raw_fd(raw) };
        attach_filter(capture.as_raw_fd(), &CAPTURE_FILTER)
            .map_err(setup("attach capture filter"))?;
        let on: libc::c_int = 1;
        // SAFETY: `on` is a live c_int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                capture.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_AUXDATA,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(setup("PACKET_AUXDATA")(io::Error::last_os_error()));
        }
        set_receive_buffer(capture.as_raw_fd(), CAPTURE_BUFFER);
        // SAFETY: all-zero is a valid sockaddr_ll; we fill family, protocol and interface.
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = ETH_P_IPV6.to_be();
        addr.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                capture.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(setup("bind packet socket")(io::Error::last_os_error()));
        }
        // SAFETY: the descriptor is owned by `capture` and stays open while the AsyncFd owns it.
        let capture = unsafe { AsyncFd::register(capture) }
            .map_err(|e| setup("register with tokio")(e.into_parts().1))?;

        let send = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))
            .map_err(setup("socket(AF_INET6, SOCK_DGRAM)"))?;
        send.set_only_v6(true).map_err(setup("IPV6_V6ONLY"))?;
        send.set_reuse_address(true)
            .map_err(setup("SO_REUSEADDR"))?;
        send.bind_device(Some(ifname.as_bytes()))
            .map_err(setup("SO_BINDTODEVICE"))?;
        attach_filter(send.as_raw_fd(), &DROP_ALL).map_err(setup("attach drop filter"))?;
        let any = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, SERVER_PORT, 0, 0);
        send.bind(&SockAddr::from(any))
            .map_err(setup("bind [::]:547"))?;
        send.join_multicast_v6(&ALL_DHCP_SERVERS, ifindex)
            .map_err(setup("join ff02::1:2"))?;
        send.set_nonblocking(true).map_err(setup("O_NONBLOCK"))?;
        Ok(Self {
            capture,
            send,
            ifname: ifname.to_string(),
            ifindex,
        })
    }

    /// Wait for one captured packet; the IPv6 packet goes into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> Result<Captured, DhcpSocketError> {
        loop {
            let mut guard =
                self.capture
                    .readable()
                    .await
                    .map_err(|source| DhcpSocketError::Recv {
                        ifname: self.ifname.clone(),
                        source,
                    })?;
            match guard.try_io(|fd| recv_from_mac(fd.get_ref().as_raw_fd(), buf)) {
                Ok(result) => {
                    return result.map_err(|source| DhcpSocketError::Recv {
                        ifname: self.ifname.clone(),
                        source,
                    });
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Send a reply to `dest` (the client's link-local address), port 546. The socket is
    /// non-blocking; a full send buffer drops the reply, which the client retransmits.
    pub fn send(&self, bytes: &[u8], dest: Ipv6Addr) -> Result<(), DhcpSocketError> {
        let to = SocketAddrV6::new(dest, CLIENT_PORT, 0, self.ifindex);
        self.send
            .send_to(bytes, &SockAddr::from(to))
            .map(|_| ())
            .map_err(|source| DhcpSocketError::Send {
                ifname: self.ifname.clone(),
                dest,
                source,
            })
    }
}

fn recv_from_mac(fd: libc::c_int, buf: &mut [u8]) -> io::Result<Captured> {
    // SAFETY: all-zero is a valid sockaddr_ll and msghdr; every pointer in `msg` refers to a local
    // that outlives the recvmsg call, with that local's size.
    unsafe {
        let mut from: libc::sockaddr_ll = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>() as _;
        let n = libc::recvmsg(fd, &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut checksum_ready = true;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let hdr = &*cmsg;
            if hdr.cmsg_level == libc::SOL_PACKET && hdr.cmsg_type == PACKET_AUXDATA {
                let aux: TpacketAuxdata =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<TpacketAuxdata>());
                checksum_ready = aux.tp_status & TP_STATUS_CSUMNOTREADY == 0;
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let mac = (from.sll_halen == 6).then(|| {
            let mut octets = [0u8; 6];
            octets.copy_from_slice(&from.sll_addr[..6]);
            Mac(octets)
        });
        Ok(Captured {
            mac,
            len: n as usize,
            checksum_ready,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

    /// An IPv6/UDP packet to ff02::1:2 with a correct checksum and the given UDP length field.
    fn packet(next_header: u8, udp_len: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&udp_len.to_be_bytes());
        p.push(next_header);
        p.push(255);
        p.extend_from_slice(&CLIENT_LL.octets());
        p.extend_from_slice(&ALL_DHCP_SERVERS.octets());
        p.extend_from_slice(&CLIENT_PORT.to_be_bytes());
        p.extend_from_slice(&SERVER_PORT.to_be_bytes());
        p.extend_from_slice(&udp_len.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        let end = (IPV6_HEADER + usize::from(udp_len)).min(p.len());
        if end >= IPV6_HEADER + UDP_HEADER {
            let sum = !(ones_complement_sum(&CLIENT_LL.octets(), 0)
                .pipe(|s| ones_complement_sum(&ALL_DHCP_SERVERS.octets(), s))
                .pipe(|s| ones_complement_sum(&(end as u32 - IPV6_HEADER as u32).to_be_bytes(), s))
                .pipe(|s| ones_complement_sum(&[0, 0, 0, NEXT_HEADER_UDP], s))
                .pipe(|s| ones_complement_sum(&p[IPV6_HEADER..end], s)))
                as u16;
            let sum = if sum == 0 { 0xffff } else { sum };
            p[IPV6_HEADER + 6..IPV6_HEADER + 8].copy_from_slice(&sum.to_be_bytes());
        }
        p
    }

    trait Pipe: Sized {
        fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
            f(self)
        }
    }
    impl Pipe for u32 {}

    #[test]
    fn reads_addresses_ports_and_payload() {
        let p = packet(17, 12, &[1, 2, 3, 4]);
        let d = parse_datagram(&p, true).expect("datagram");
        assert_eq!(d.source, "fe80::1".parse::<Ipv6Addr>().expect("a"));
        assert_eq!(d.destination, ALL_DHCP_SERVERS);
        assert_eq!((d.source_port, d.destination_port), (546, 547));
        assert_eq!(d.payload, &[1, 2, 3, 4]);
    }

    #[test]
    fn trailing_bytes_beyond_the_udp_length_are_not_payload() {
        // Ethernet padding after the IPv6 payload is not part of the datagram.
        let mut p = packet(17, 10, &[1, 2]);
        p.extend_from_slice(&[9, 9]);
        assert_eq!(parse_datagram(&p, true).expect("datagram").payload, &[1, 2]);
    }

    #[test]
    fn checksum_zero_or_wrong_is_rejected() {
        let mut p = packet(17, 12, &[1, 2, 3, 4]);
        assert!(parse_datagram(&p, true).is_ok());
        p[IPV6_HEADER + 6] ^= 0x10;
        assert!(matches!(
            parse_datagram(&p, true),
            Err(DatagramError::BadChecksum(_))
        ));
        p[IPV6_HEADER + 6..IPV6_HEADER + 8].copy_from_slice(&[0, 0]);
        assert_eq!(parse_datagram(&p, true), Err(DatagramError::BadChecksum(0)));
    }

    #[test]
    fn payload_length_must_match_and_destination_must_be_ours() {
        let mut p = packet(17, 12, &[1, 2, 3, 4]);
        p[5] = 20;
        assert!(matches!(
            parse_datagram(&p, true),
            Err(DatagramError::BadPayloadLength {
                payload_len: 20,
                ..
            })
        ));
        let mut p = packet(17, 12, &[1, 2, 3, 4]);
        p[24..40].copy_from_slice(&"ff02::1".parse::<Ipv6Addr>().expect("a").octets());
        assert!(matches!(
            parse_datagram(&p, true),
            Err(DatagramError::WrongDestination(_))
        ));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert_eq!(
            parse_datagram(&[0x60; 10], true),
            Err(DatagramError::Truncated { len: 10, need: 48 })
        );
        assert!(matches!(
            parse_datagram(&packet(6, 12, &[0; 4]), true),
            Err(DatagramError::NotUdp6 { next_header: 6, .. })
        ));
        assert!(matches!(
            parse_datagram(&packet(17, 100, &[0; 4]), true),
            Err(DatagramError::BadUdpLength { udp_len: 100, .. })
        ));
        assert!(matches!(
            parse_datagram(&packet(17, 3, &[0; 4]), true),
            Err(DatagramError::BadUdpLength { udp_len: 3, .. })
        ));
    }
}
