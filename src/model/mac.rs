//! 48-bit IEEE MAC addresses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet (EUI-48) MAC address, written `02:00:00:00:00:01`.
///
/// Parsing accepts six two-digit hex groups separated by `:` or `-` (either case); display is always
/// lower case with `:`, the form every flat6 document uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

/// Why a text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a MAC address ({reason}); expected six hex pairs like 02:00:00:00:00:01")]
pub struct MacError {
    text: String,
    reason: &'static str,
}

impl Mac {
    /// The all-zeros address, never a valid source.
    pub const ZERO: Mac = Mac([0; 6]);

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Group (multicast or broadcast) addresses have the low bit of the first octet set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// A MAC an interface may legitimately use as its own: not multicast, not all zeros.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && *self != Self::ZERO
    }
}

impl FromStr for Mac {
    type Err = MacError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| MacError {
            text: text.to_string(),
            reason,
        };
        let groups: Vec<&str> = text.split([':', '-']).collect();
        if groups.len() != 6 {
            return Err(err("it needs six groups"));
        }
        let mut out = [0u8; 6];
        for (slot, group) in out.iter_mut().zip(&groups) {
            if group.len() != 2 {
                return Err(err("each group is two hex digits"));
            }
            // from_str_radix alone would take "+1".
            if !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err("a group is not hex"));
            }
            *slot = u8::from_str_radix(group, 16).map_err(|_| err("a group is not hex"))?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mac({self})")
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_colon_and_dash_forms() {
        let want = Mac([0x02, 0, 0, 0, 0xab, 0x01]);
        assert_eq!("02:00:00:00:ab:01".parse::<Mac>(), Ok(want));
        assert_eq!("02-00-00-00-AB-01".parse::<Mac>(), Ok(want));
        assert_eq!(want.to_string(), "02:00:00:00:ab:01");
    }

    #[test]
    fn rejects_malformed_text_and_says_why() {
        for (text, why) in [
            ("", "six groups"),
            ("02:00:00:00:00", "six groups"),
            ("02:00:00:00:00:01:02", "six groups"),
            ("2:00:00:00:00:01", "two hex digits"),
            ("02:00:00:00:00:zz", "not hex"),
            ("02:00:00:00:00:+1", "not hex"),
        ] {
            let err = text.parse::<Mac>().expect_err(text).to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn classifies_unicast() {
        assert!(
            "02:00:00:00:00:01"
                .parse::<Mac>()
                .is_ok_and(|m| m.is_unicast())
        );
        assert!(Mac::ZERO.is_multicast() || !Mac::ZERO.is_unicast());
        assert!(
            "33:33:00:00:00:01"
                .parse::<Mac>()
                .is_ok_and(|m| m.is_multicast())
        );
    }

    #[test]
    fn serde_round_trip() {
        let mac: Mac = serde_json::from_str("\"02:00:00:00:00:01\"").expect("parse");
        assert_eq!(
            serde_json::to_string(&mac).expect("emit"),
            "\"02:00:00:00:00:01\""
        );
        assert!(serde_json::from_str::<Mac>("\"nope\"").is_err());
    }
}
