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
pub fn parse_datagram(packet: &[u8]) -> Result<Datagram<'_>, DatagramError> {
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
    let udp = &packet[IPV6_HEADER..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HEADER || udp_len > udp.len() {
        return Err(DatagramError::BadUdpLength {
            udp_len,
            available: udp.len(),
        });
    }
    Ok(Datagram {
        source: addr(8),
        destination: addr(24),
        source_port: u16::from_be_bytes([udp[0], udp[1]]),
        destination_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: &udp[UDP_HEADER..udp_len],
    })
}

/// One captured DHCPv6 packet: the sender's MAC and the IPv6 packet bytes in the caller's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Captured {
    /// Ethernet source of the frame.
    pub mac: Option<Mac>,
    /// Length of the IPv6 packet in the buffer.
    pub len: usize,
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
    // SAFETY: all-zero is a valid sockaddr_ll; recvfrom writes at most `len` bytes into `from` and
    // at most `buf.len()` bytes into `buf`.
    unsafe {
        let mut from: libc::sockaddr_ll = zeroed();
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let n = libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&mut from as *mut libc::sockaddr_ll).cast(),
            &mut len,
        );
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mac = (from.sll_halen == 6).then(|| {
            let mut octets = [0u8; 6];
            octets.copy_from_slice(&from.sll_addr[..6]);
            Mac(octets)
        });
        Ok(Captured {
            mac,
            len: n as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(next_header: u8, udp_len: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&((UDP_HEADER + payload.len()) as u16).to_be_bytes());
        p.push(next_header);
        p.push(255);
        p.extend_from_slice(&"fe80::1".parse::<Ipv6Addr>().expect("a").octets());
        p.extend_from_slice(&ALL_DHCP_SERVERS.octets());
        p.extend_from_slice(&CLIENT_PORT.to_be_bytes());
        p.extend_from_slice(&SERVER_PORT.to_be_bytes());
        p.extend_from_slice(&udp_len.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn reads_addresses_ports_and_payload() {
        let p = packet(17, 12, &[1, 2, 3, 4]);
        let d = parse_datagram(&p).expect("datagram");
        assert_eq!(d.source, "fe80::1".parse::<Ipv6Addr>().expect("a"));
        assert_eq!(d.destination, ALL_DHCP_SERVERS);
        assert_eq!((d.source_port, d.destination_port), (546, 547));
        assert_eq!(d.payload, &[1, 2, 3, 4]);
    }

    #[test]
    fn trailing_bytes_beyond_the_udp_length_are_not_payload() {
        let mut p = packet(17, 10, &[1, 2]);
        p.extend_from_slice(&[9, 9]);
        assert_eq!(parse_datagram(&p).expect("datagram").payload, &[1, 2]);
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert_eq!(
            parse_datagram(&[0x60; 10]),
            Err(DatagramError::Truncated { len: 10, need: 48 })
        );
        assert!(matches!(
            parse_datagram(&packet(6, 12, &[0; 4])),
            Err(DatagramError::NotUdp6 { next_header: 6, .. })
        ));
        assert!(matches!(
            parse_datagram(&packet(17, 100, &[0; 4])),
            Err(DatagramError::BadUdpLength { udp_len: 100, .. })
        ));
        assert!(matches!(
            parse_datagram(&packet(17, 3, &[0; 4])),
            Err(DatagramError::BadUdpLength { udp_len: 3, .. })
        ));
    }
}
