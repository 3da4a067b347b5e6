//! IPv6 prefixes (network address plus length), strict about host bits.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use ipnet::Ipv6Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv6 prefix such as `2001:db8:1::/48`: the address has no bits set beyond the length.
///
/// `2001:db8::1/64` is rejected (it is an interface address, not a prefix) so that a typo in a pod
/// or route definition is caught instead of silently widened.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix(Ipv6Net);

/// Why a text is not an IPv6 prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Not `address/length` with an IPv6 address and a length 0..=128.
    #[error("{0:?} is not an IPv6 prefix")]
    Syntax(String),
    /// Bits beyond the length are set.
    #[error("{text:?} has bits set beyond /{len}; the prefix is {network}")]
    HostBits {
        /// What was written.
        text: String,
        /// Its prefix length.
        len: u8,
        /// The prefix it probably meant.
        network: Ipv6Net,
    },
}

impl Prefix {
    /// Build from an address and length, failing on host bits or a length over 128.
    pub fn new(addr: Ipv6Addr, len: u8) -> Result<Self, PrefixError> {
        format!("{addr}/{len}").parse()
    }

    /// The network address.
    pub fn addr(&self) -> Ipv6Addr {
        self.0.network()
    }

    /// The prefix length.
    #[allow(clippy::len_without_is_empty)] // a prefix length, not a container size
    pub fn len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// True for `::/0`, which covers everything; a prefix is never "empty".
    pub fn is_default(&self) -> bool {
        self.0.prefix_len() == 0
    }

    /// The underlying `ipnet` value.
    pub fn net(&self) -> Ipv6Net {
        self.0
    }

    /// Whether `addr` lies inside this prefix.
    pub fn contains(&self, addr: &Ipv6Addr) -> bool {
        self.0.contains(addr)
    }

    /// Whether two prefixes share any address.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.0.contains(&other.0) || other.0.contains(&self.0)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let net: Ipv6Net = text
            .parse()
            .map_err(|_| PrefixError::Syntax(text.to_string()))?;
        if net.addr() != net.network() {
            return Err(PrefixError::HostBits {
                text: text.to_string(),
                len: net.prefix_len(),
                network: net.trunc(),
            });
        }
        Ok(Prefix(net))
    }
}

/// Parse an interface address with its prefix length, `2001:db8:1::2/48` (host bits expected).
pub fn parse_interface_address(text: &str) -> Result<Ipv6Net, PrefixError> {
    text.parse()
        .map_err(|_| PrefixError::Syntax(text.to_string()))
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({})", self.0)
    }
}

impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_network_prefixes() {
        let p: Prefix = "2001:db8:1::/48".parse().expect("prefix");
        assert_eq!(p.len(), 48);
        assert_eq!(p.to_string(), "2001:db8:1::/48");
        assert!(p.contains(&"2001:db8:1:4a2b::9c1".parse().expect("addr")));
        assert!(!p.contains(&"2001:db8:2::1".parse().expect("addr")));
        assert!("::/0".parse::<Prefix>().is_ok_and(|p| p.is_default()));
    }

    #[test]
    fn rejects_bad_lengths_and_syntax() {
        for text in [
            "2001:db8::/129",
            "2001:db8::",
            "10.0.0.0/8",
            "2001:db8::/x",
            "",
        ] {
            let err = text.parse::<Prefix>().expect_err(text);
            assert_eq!(err.to_string(), format!("{text:?} is not an IPv6 prefix"));
        }
    }

    #[test]
    fn rejects_host_bits_and_suggests_the_prefix() {
        let err = "2001:db8::1/64".parse::<Prefix>().expect_err("host bits");
        assert_eq!(
            err.to_string(),
            "\"2001:db8::1/64\" has bits set beyond /64; the prefix is 2001:db8::/64"
        );
    }

    #[test]
    fn overlap() {
        let a: Prefix = "2001:db8:1::/48".parse().expect("a");
        let b: Prefix = "2001:db8:1:2::/64".parse().expect("b");
        let c: Prefix = "2001:db8:2::/48".parse().expect("c");
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }

    #[test]
    fn interface_addresses_keep_host_bits() {
        let net = parse_interface_address("2001:db8:1::2/48").expect("addr");
        assert_eq!(net.addr().to_string(), "2001:db8:1::2");
        assert!(parse_interface_address("2001:db8::2/200").is_err());
    }
}
