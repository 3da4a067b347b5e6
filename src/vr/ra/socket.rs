//! The raw ICMPv6 socket shell: receive RS/RA with their hop limit, send RAs with hop limit 255.
//!
//! Only I/O lives here; what to do with a message is decided by the pure modules.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use super::packet::{ICMPV6_ROUTER_ADVERT, ICMPV6_ROUTER_SOLICIT};

/// ff02::1, all nodes (RFC 4291 §2.7.1): where multicast RAs go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ff02::2, all routers: where RSs are sent; we join it ourselves since forwarding is off.
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// `ICMP6_FILTER` socket option (linux/icmpv6.h).
const ICMP6_FILTER: libc::c_int = 1;

/// Errors of the raw socket, each naming the step and interface.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Opening or configuring the socket failed.
    #[error("raw ICMPv6 socket on {ifname}: {step}: {source}")]
    Setup {
        /// The interface.
        ifname: String,
        /// What was being done.
        step: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A receive failed.
    #[error("receive on {ifname}: {source}")]
    Recv {
        /// The interface.
        ifname: String,
        /// The OS error.
        source: io::Error,
    },
    /// A send failed.
    #[error("send RA on {ifname} to {dest}: {source}")]
    Send {
        /// The interface.
        ifname: String,
        /// Destination address.
        dest: Ipv6Addr,
        /// The OS error.
        source: io::Error,
    },
}

/// One received ICMPv6 message and what the kernel told us about it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Bytes of the ICMPv6 message in the caller's buffer.
    pub len: usize,
    /// IPv6 source address.
    pub source: Ipv6Addr,
    /// IPv6 hop limit as received (RFC 4861 §6.1 requires 255), if the kernel reported it.
    pub hop_limit: Option<u8>,
}

/// A raw ICMPv6 socket bound to one interface.
pub struct RaSocket {
    fd: AsyncFd<Socket>,
    ifname: String,
    ifindex: u32,
}

fn setsockopt<T>(
    sock: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size we pass; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl RaSocket {
    /// Open the socket on `ifname`: ICMPv6 type filter (RS and RA only), hop limit 255 for sending,
    /// hop-limit and packet-info reporting on receive, ff02::2 joined, no multicast loopback.
    pub fn open(ifname: &str, ifindex: u32) -> Result<Self, SocketError> {
        let setup = |step: &'static str| {
            move |source: io::Error| SocketError::Setup {
                ifname: ifname.to_string(),
                step,
                source,
            }
        };
        let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .map_err(setup("socket(AF_INET6, SOCK_RAW, IPPROTO_ICMPV6)"))?;
        sock.bind_device(Some(ifname.as_bytes()))
            .map_err(setup("SO_BINDTODEVICE"))?;
        // RFC 3542 §3.2: a set bit blocks the type.
        let mut filter = [u32::MAX; 8];
        for t in [ICMPV6_ROUTER_SOLICIT, ICMPV6_ROUTER_ADVERT] {
            filter[usize::from(t >> 5)] &= !(1u32 << (t & 31));
        }
        setsockopt(&sock, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)
            .map_err(setup("ICMP6_FILTER"))?;
        let on: libc::c_int = 1;
        setsockopt(&sock, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, &on)
            .map_err(setup("IPV6_RECVHOPLIMIT"))?;
        sock.set_multicast_hops_v6(255)
            .map_err(setup("IPV6_MULTICAST_HOPS"))?;
        sock.set_unicast_hops_v6(255)
            .map_err(setup("IPV6_UNICAST_HOPS"))?;
        sock.set_multicast_loop_v6(false)
            .map_err(setup("IPV6_MULTICAST_LOOP"))?;
        sock.set_multicast_if_v6(ifindex)
            .map_err(setup("IPV6_MULTICAST_IF"))?;
        sock.join_multicast_v6(&ALL_ROUTERS, ifindex)
            .map_err(setup("join ff02::2"))?;
        sock.set_nonblocking(true).map_err(setup("O_NONBLOCK"))?;
        // SAFETY: `sock` owns its descriptor, and nothing closes or replaces it while the AsyncFd
        // owns the socket.
        let fd = unsafe { AsyncFd::register(sock) }
            .map_err(|e| setup("register with tokio")(e.into_parts().1))?;
        Ok(Self {
            fd,
            ifname: ifname.to_string(),
            ifindex,
        })
    }

    /// Wait for and read one message into `buf`.
    pub async fn recv(&self, buf: &mut [u8]) -> Result<Received, SocketError> {
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|source| SocketError::Recv {
                    ifname: self.ifname.clone(),
                    source,
                })?;
            match guard.try_io(|inner| recv_with_hop_limit(inner.get_ref(), buf)) {
                Ok(result) => {
                    return result.map_err(|source| SocketError::Recv {
                        ifname: self.ifname.clone(),
                        source,
                    });
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Send `bytes` (an ICMPv6 message; the kernel fills in the checksum) to `dest` from `source`,
    /// which must be our current link-local address (RFC 4861 §4.2).
    pub async fn send(
        &self,
        bytes: &[u8],
        dest: Ipv6Addr,
        source: Ipv6Addr,
    ) -> Result<(), SocketError> {
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|source| SocketError::Send {
                    ifname: self.ifname.clone(),
                    dest,
                    source,
                })?;
            match guard
                .try_io(|inner| send_from(inner.get_ref(), bytes, dest, source, self.ifindex))
            {
                Ok(result) => {
                    return result.map(|_| ()).map_err(|source| SocketError::Send {
                        ifname: self.ifname.clone(),
                        dest,
                        source,
                    });
                }
                Err(_would_block) => continue,
            }
        }
    }
}

/// Room for one IPV6_HOPLIMIT control message (and a spare).
const CMSG_SPACE: usize = 64;

fn recv_with_hop_limit(sock: &Socket, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all-zero is a valid `sockaddr_in6` and `msghdr`; every pointer stored below refers to
    // a local that outlives the recvmsg call, with the lengths of those locals.
    unsafe {
        let mut from: libc::sockaddr_in6 = zeroed();
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; CMSG_SPACE / 8];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = CMSG_SPACE as _;
        let n = libc::recvmsg(sock.as_raw_fd(), &mut msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut hop_limit = None;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let hdr = &*cmsg;
            if hdr.cmsg_level == libc::IPPROTO_IPV6 && hdr.cmsg_type == libc::IPV6_HOPLIMIT {
                let value = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                hop_limit = u8::try_from(value).ok();
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok(Received {
            len: n as usize,
            source: Ipv6Addr::from(from.sin6_addr.s6_addr),
            hop_limit,
        })
    }
}

fn send_from(
    sock: &Socket,
    bytes: &[u8],
    dest: Ipv6Addr,
    source: Ipv6Addr,
    ifindex: u32,
) -> io::Result<usize> {
    // SAFETY: as in `recv_with_hop_limit`; the control buffer is sized by CMSG_SPACE for one
    // `in6_pktinfo`, and every pointer refers to a local alive for the sendmsg call.
    unsafe {
        let mut to: libc::sockaddr_in6 = zeroed();
        to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        to.sin6_addr.s6_addr = dest.octets();
        to.sin6_scope_id = ifindex;
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        };
        let mut control = [0u64; CMSG_SPACE / 8];
        let space = libc::CMSG_SPACE(size_of::<libc::in6_pktinfo>() as u32) as usize;
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = (&mut to as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for IPV6_PKTINFO"));
        }
        (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
        (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<libc::in6_pktinfo>() as u32) as _;
        let mut info: libc::in6_pktinfo = zeroed();
        info.ipi6_addr.s6_addr = source.octets();
        info.ipi6_ifindex = ifindex;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
        let n = libc::sendmsg(sock.as_raw_fd(), &msg, 0);
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}
