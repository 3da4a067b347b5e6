//! The rtnetlink shell for the VR's interface: bring it up, set its MAC and addresses, turn off its
//! own RA processing, report its state (up, MAC, usable link-local) and wake us on every change.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;

use futures::StreamExt;
use futures::TryStreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use ipnet::Ipv6Net;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::{Handle, LinkUnspec, MulticastGroup};

use crate::model::Mac;

/// Errors of the link shell, each naming the interface and the step.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The netlink socket could not be opened.
    #[error("open netlink socket: {0}")]
    Open(#[source] std::io::Error),
    /// The interface does not exist.
    #[error("interface {0} not found")]
    NotFound(String),
    /// A netlink request failed.
    #[error("{step} on {ifname}: {source}")]
    Request {
        /// What was being done.
        step: String,
        /// The interface.
        ifname: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// A sysctl under /proc/sys could not be written.
    #[error("write {path}: {source}")]
    Sysctl {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What we know about the interface at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkState {
    /// Administratively up and with carrier (IFF_UP and IFF_LOWER_UP).
    pub up: bool,
    /// The interface's MAC.
    pub mac: Option<Mac>,
    /// A link-local address that has finished DAD (not tentative, not DAD-failed), the RA source.
    pub link_local: Option<Ipv6Addr>,
}

impl LinkState {
    /// True when RAs may be sent: up, and with a usable link-local source (RFC 4861 §6.2.2 / §4.2).
    pub fn can_advertise(&self) -> bool {
        self.up && self.link_local.is_some()
    }
}

/// The VR's interface, driven through rtnetlink.
pub struct Link {
    handle: Handle,
    name: String,
    index: u32,
}

fn is_link_local(addr: &Ipv6Addr) -> bool {
    (addr.segments()[0] & 0xffc0) == 0xfe80
}

impl Link {
    /// Find `name` and spawn the netlink connection on the current tokio runtime.
    pub async fn open(name: &str) -> Result<Self, LinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Open)?;
        tokio::spawn(connection);
        let mut links = handle.link().get().match_name(name.to_string()).execute();
        let index = match links.try_next().await {
            Ok(Some(msg)) => msg.header.index,
            Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {
                return Err(LinkError::NotFound(name.to_string()));
            }
            Err(source) => {
                return Err(LinkError::Request {
                    step: "look up".into(),
                    ifname: name.to_string(),
                    source,
                });
            }
        };
        Ok(Self {
            handle,
            name: name.to_string(),
            index,
        })
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn request(&self, step: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError + '_ {
        let step = step.into();
        move |source| LinkError::Request {
            step,
            ifname: self.name.clone(),
            source,
        }
    }

    /// Prepare the interface for advertising: our own RA processing and SLAAC off (we are the
    /// router), addresses kept across a link flap, the MAC set if configured, link up, static
    /// addresses added (an address already present is fine).
    pub async fn prepare(&self, mac: Option<Mac>, addresses: &[Ipv6Net]) -> Result<(), LinkError> {
        // router_solicitation_delay is also the random delay (0..1 s) before Duplicate Address
        // Detection starts on a (re)initialised interface (RFC 4862 §5.4.2); a router sends no
        // solicitations, and with it at 0 the link-local is usable one DAD round after link up.
        for (key, value) in [
            ("accept_ra", "0"),
            ("autoconf", "0"),
            ("keep_addr_on_down", "1"),
            ("router_solicitation_delay", "0"),
        ] {
            self.sysctl(key, value)?;
        }
        if let Some(mac) = mac {
            let current = self.state().await?.mac;
            if current != Some(mac) {
                // Most drivers refuse a new MAC while the link is up.
                let down = LinkUnspec::new_with_index(self.index).down().build();
                self.handle
                    .link()
                    .set(down)
                    .execute()
                    .await
                    .map_err(self.request("set link down"))?;
                let msg = LinkUnspec::new_with_index(self.index)
                    .address(mac.octets().to_vec())
                    .build();
                self.handle
                    .link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(self.request(format!("set MAC {mac}")))?;
                tracing::info!(interface = %self.name, %mac, "set interface MAC");
            }
        }
        let up = LinkUnspec::new_with_index(self.index).up().build();
        self.handle
            .link()
            .set(up)
            .execute()
            .await
            .map_err(self.request("set link up"))?;
        self.add_addresses(addresses).await
    }

    /// Add the configured addresses; one that is already there is left alone.
    pub async fn add_addresses(&self, addresses: &[Ipv6Net]) -> Result<(), LinkError> {
        let present = self.addresses().await?;
        for net in addresses {
            if present
                .iter()
                .any(|(a, len, _)| *a == net.addr() && *len == net.prefix_len())
            {
                continue;
            }
            self.handle
                .address()
                .add(self.index, IpAddr::V6(net.addr()), net.prefix_len())
                .execute()
                .await
                .map_err(self.request(format!("add address {net}")))?;
            tracing::info!(interface = %self.name, address = %net, "added address");
        }
        Ok(())
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<(), LinkError> {
        let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{}/{key}", self.name));
        std::fs::write(&path, value).map_err(|source| LinkError::Sysctl { path, source })
    }

    /// Every IPv6 address on the interface with its prefix length and flags.
    async fn addresses(&self) -> Result<Vec<(Ipv6Addr, u8, AddressFlags)>, LinkError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(self.index)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(self.request("list addresses"))?
        {
            if msg.header.family != AddressFamily::Inet6 {
                continue;
            }
            let mut addr = None;
            // The 32-bit IFA_FLAGS attribute supersedes the 8-bit header field when present.
            let mut flags = AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits()));
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Address(IpAddr::V6(a)) => addr = Some(*a),
                    AddressAttribute::Flags(f) => flags = *f,
                    _ => {}
                }
            }
            if let Some(a) = addr {
                out.push((a, msg.header.prefix_len, flags));
            }
        }
        Ok(out)
    }

    /// Read the current state.
    pub async fn state(&self) -> Result<LinkState, LinkError> {
        let mut links = self.handle.link().get().match_index(self.index).execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {
                return Err(LinkError::NotFound(self.name.clone()));
            }
            Err(source) => {
                return Err(LinkError::Request {
                    step: "read link".into(),
                    ifname: self.name.clone(),
                    source,
                });
            }
        };
        let flags = msg.header.flags;
        let up = flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp);
        let mac = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(Mac),
            _ => None,
        });
        let link_local = self
            .addresses()
            .await?
            .into_iter()
            .filter(|(a, _, f)| {
                is_link_local(a)
                    && !f.contains(AddressFlags::Tentative)
                    && !f.contains(AddressFlags::Dadfailed)
            })
            .map(|(a, _, _)| a)
            .min();
        Ok(LinkState {
            up,
            mac,
            link_local,
        })
    }

    /// Subscribe to link and IPv6 address events; each item means "something changed, look again".
    pub fn watch() -> Result<UnboundedReceiver<()>, LinkError> {
        let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Link,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .map_err(LinkError::Open)?;
        tokio::spawn(connection);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tokio::spawn(async move {
            while messages.next().await.is_some() {
                if tx.unbounded_send(()).is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_detection() {
        assert!(is_link_local(&"fe80::1".parse().expect("a")));
        assert!(is_link_local(&"febf::1".parse().expect("a")));
        assert!(!is_link_local(&"fec0::1".parse().expect("a")));
        assert!(!is_link_local(&"2001:db8::1".parse().expect("a")));
    }

    #[test]
    fn advertising_needs_up_and_a_link_local() {
        let mut s = LinkState {
            up: true,
            mac: None,
            link_local: None,
        };
        assert!(!s.can_advertise());
        s.link_local = Some("fe80::1".parse().expect("a"));
        assert!(s.can_advertise());
        s.up = false;
        assert!(!s.can_advertise());
    }
}
