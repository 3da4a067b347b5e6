//! DHCP Unique Identifiers (RFC 8415 §11).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Mac;

/// RFC 8415 §11.1: a DUID is at most 128 octets of identifier after the 2-octet type.
const MAX_DUID_LEN: usize = 130;

/// A DUID as opaque bytes, written as colon-separated hex (`00:03:00:01:02:00:00:00:00:01`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Duid(Vec<u8>);

/// The DUID types of RFC 8415 §11.1 and RFC 6355.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuidKind {
    /// Type 1, link-layer address plus time (§11.2).
    LinkLayerTime,
    /// Type 2, enterprise number (§11.3).
    Enterprise,
    /// Type 3, link-layer address (§11.4).
    LinkLayer,
    /// Type 4, UUID (RFC 6355).
    Uuid,
    /// Any other type value.
    Other(u16),
}

/// Why a text or byte string is not a DUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a DUID ({reason}); expected colon-separated hex like 00:03:00:01:02:00:00:00:00:01"
)]
pub struct DuidError {
    text: String,
    reason: &'static str,
}

/// ARP hardware type for Ethernet (RFC 826 / IANA), used inside DUID-LL and DUID-LLT.
const HW_ETHERNET: u16 = 1;

impl Duid {
    /// Wrap raw bytes, checking the RFC 8415 length bounds (a type and 1..=128 octets).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DuidError> {
        let err = |reason| DuidError {
            text: hex(bytes),
            reason,
        };
        if bytes.len() < 3 {
            return Err(err("shorter than a 2-octet type and one octet"));
        }
        if bytes.len() > MAX_DUID_LEN {
            return Err(err("longer than 130 octets"));
        }
        Ok(Duid(bytes.to_vec()))
    }

    /// DUID-LLT (§11.2) for an Ethernet interface, `time` in seconds since 2000-01-01 UTC.
    pub fn link_layer_time(mac: Mac, time: u32) -> Self {
        let mut bytes = vec![0, 1, 0, HW_ETHERNET as u8];
        bytes.extend_from_slice(&time.to_be_bytes());
        bytes.extend_from_slice(&mac.octets());
        Duid(bytes)
    }

    /// DUID-LL (§11.4) for an Ethernet interface.
    pub fn link_layer(mac: Mac) -> Self {
        let mut bytes = vec![0, 3, 0, HW_ETHERNET as u8];
        bytes.extend_from_slice(&mac.octets());
        Duid(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The DUID type.
    pub fn kind(&self) -> DuidKind {
        match u16::from_be_bytes([self.0[0], self.0[1]]) {
            1 => DuidKind::LinkLayerTime,
            2 => DuidKind::Enterprise,
            3 => DuidKind::LinkLayer,
            4 => DuidKind::Uuid,
            other => DuidKind::Other(other),
        }
    }

    /// The Ethernet MAC inside a DUID-LL or DUID-LLT, if this is one with hardware type 1.
    pub fn mac(&self) -> Option<Mac> {
        Duid::mac_in(&self.0)
    }

    /// [`Duid::mac`] of raw DUID bytes, without copying them (for a look at a packet before it
    /// is decoded). `None` for anything else, including bytes too short to be a DUID.
    pub fn mac_in(bytes: &[u8]) -> Option<Mac> {
        let kind = bytes.get(0..2)?;
        let mac_offset = match u16::from_be_bytes([kind[0], kind[1]]) {
            1 => 8, // DUID-LLT: type, hardware type, time, address
            3 => 4, // DUID-LL: type, hardware type, address
            _ => return None,
        };
        let hw = bytes.get(2..4)?;
        if u16::from_be_bytes([hw[0], hw[1]]) != HW_ETHERNET {
            return None;
        }
        let octets: [u8; 6] = bytes.get(mac_offset..mac_offset + 6)?.try_into().ok()?;
        Some(Mac(octets))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl FromStr for Duid {
    type Err = DuidError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| DuidError {
            text: text.to_string(),
            reason,
        };
        let mut bytes = Vec::new();
        for group in text.split(':') {
            if group.len() != 2 {
                return Err(err("each group is two hex digits"));
            }
            // from_str_radix alone would take "+1".
            if !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err("a group is not hex"));
            }
            bytes.push(u8::from_str_radix(group, 16).map_err(|_| err("a group is not hex"))?);
        }
        Duid::from_bytes(&bytes).map_err(|e| DuidError {
            text: text.to_string(),
            reason: e.reason,
        })
    }
}

impl fmt::Display for Duid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for Duid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duid({self})")
    }
}

impl Serialize for Duid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);

    #[test]
    fn link_layer_forms_carry_the_mac() {
        let ll = Duid::link_layer(MAC);
        assert_eq!(ll.to_string(), "00:03:00:01:02:00:00:00:00:01");
        assert_eq!(ll.kind(), DuidKind::LinkLayer);
        assert_eq!(ll.mac(), Some(MAC));

        let llt = Duid::link_layer_time(MAC, 0x2a2b_2c2d);
        assert_eq!(llt.to_string(), "00:01:00:01:2a:2b:2c:2d:02:00:00:00:00:01");
        assert_eq!(llt.mac(), Some(MAC));
        assert_eq!(llt.to_string().parse::<Duid>(), Ok(llt));
    }

    #[test]
    fn mac_in_reads_raw_bytes_of_any_length() {
        assert_eq!(
            Duid::mac_in(Duid::link_layer_time(MAC, 7).as_bytes()),
            Some(MAC)
        );
        assert_eq!(Duid::mac_in(Duid::link_layer(MAC).as_bytes()), Some(MAC));
        for short in [
            &[][..],
            &[0][..],
            &[0, 3, 0][..],
            &[0, 3, 0, 1, 2, 0, 0][..],
        ] {
            assert_eq!(Duid::mac_in(short), None, "{short:?}");
        }
    }

    #[test]
    fn other_types_have_no_mac() {
        let uuid: Duid = "00:04:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00"
            .parse()
            .expect("uuid duid");
        assert_eq!(uuid.kind(), DuidKind::Uuid);
        assert_eq!(uuid.mac(), None);
        let en: Duid = "00:02:00:00:00:09:01:02".parse().expect("en duid");
        assert_eq!(en.kind(), DuidKind::Enterprise);
        assert_eq!(en.mac(), None);
        // DUID-LL with a non-Ethernet hardware type, and one cut short.
        assert_eq!(
            "00:03:00:06:02:00:00:00:00:01"
                .parse::<Duid>()
                .expect("ll")
                .mac(),
            None
        );
        assert_eq!(
            "00:03:00:01:02:00".parse::<Duid>().expect("short").mac(),
            None
        );
    }

    #[test]
    fn rejects_bad_text() {
        for (text, why) in [
            ("", "two hex digits"),
            ("00:01", "shorter"),
            ("00:1:02", "two hex digits"),
            ("00:01:zz", "not hex"),
        ] {
            let err = text.parse::<Duid>().expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
        let long = vec!["ab"; 131].join(":");
        assert!(long.parse::<Duid>().is_err());
    }
}
