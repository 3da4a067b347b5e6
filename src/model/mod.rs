//! Plain shared types: MAC addresses, DUIDs and IPv6 prefixes, each with `FromStr` and serde.
//!
//! These are the vocabulary of every config file and watch document; parsing them is strict and the
//! error says what was wrong with the text, so a caller only has to add the field path.

pub mod doc;
mod duid;
mod mac;
mod prefix;
pub mod rule;

pub use duid::{Duid, DuidError, DuidKind};
pub use mac::{Mac, MacError};
pub use prefix::{Prefix, PrefixError, parse_interface_address};
