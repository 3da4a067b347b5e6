//! How values are written into columns and read back (pure, no I/O).
//!
//! Addresses and instance prefixes are stored as 32 lower-case hex digits of the 128-bit value
//! (`20010db8000000000000000000000005`): one text per address, so a unique index on it is an exact
//! duplicate check, and text order is numeric order, so "the addresses inside this prefix" is an
//! index range scan on every backend. (Binary columns would do the same, but the sqlx `Any` driver
//! reads MySQL's VARBINARY as text.) MACs are stored as `Mac`'s canonical lower-case text.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::StoreError;
use crate::model::Mac;

/// The stored form of an address: 32 lower-case hex digits.
pub(super) fn address_key(address: Ipv6Addr) -> String {
    format!("{:032x}", u128::from(address))
}

/// Read back what [`address_key`] wrote.
pub(super) fn address_from_key(key: &str) -> Result<Ipv6Addr, StoreError> {
    let bad = || StoreError::Other(format!("stored address {key:?} is not 32 hex digits"));
    if key.len() != 32 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    u128::from_str_radix(key, 16)
        .map(Ipv6Addr::from)
        .map_err(|_| bad())
}

/// An instance prefix from its stored network key and length.
pub(super) fn prefix_from_columns(
    key: Option<String>,
    len: Option<i64>,
) -> Result<Option<Ipv6Net>, StoreError> {
    let (Some(key), Some(len)) = (key, len) else {
        return Ok(None);
    };
    let address = address_from_key(&key)?;
    u8::try_from(len)
        .ok()
        .and_then(|len| Ipv6Net::new(address, len).ok())
        .map(Some)
        .ok_or_else(|| StoreError::Other(format!("stored prefix length {len} is not 0..=128")))
}

/// The prefixes of rows whose columns 0 and 1 are an instance's prefix key and length (rows
/// without a prefix are left out).
pub(super) fn prefixes_of(rows: &[AnyRow]) -> Result<Vec<Ipv6Net>, StoreError> {
    rows.iter()
        .filter_map(|r| {
            opt_text(r, 0)
                .and_then(|key| prefix_from_columns(key, opt_int(r, 1)?))
                .transpose()
        })
        .collect()
}

pub(super) fn mac_from_text(text: &str) -> Result<Mac, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Other(format!("stored MAC: {e}")))
}

/// Revisions are BIGINT columns (signed on every backend); they only ever count up from 0.
pub(super) fn revision(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Other(format!("stored revision {value} < 0")))
}

/// A text column. MySQL reports TEXT columns as BLOBs, which the `Any` driver hands over as bytes.
pub(super) fn text(row: &AnyRow, index: usize) -> Result<String, StoreError> {
    opt_text(row, index)?
        .ok_or_else(|| StoreError::Other(format!("column {index} is unexpectedly NULL")))
}

/// A nullable text column.
pub(super) fn opt_text(row: &AnyRow, index: usize) -> Result<Option<String>, StoreError> {
    match row.try_get::<Option<String>, _>(index) {
        Ok(value) => Ok(value),
        Err(_) => match row.try_get::<Option<Vec<u8>>, _>(index) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| StoreError::Other(format!("column {index} is not UTF-8"))),
            Err(e) => Err(StoreError::Other(format!("read column {index}: {e}"))),
        },
    }
}

/// An integer column.
pub(super) fn int(row: &AnyRow, index: usize) -> Result<i64, StoreError> {
    opt_int(row, index)?
        .ok_or_else(|| StoreError::Other(format!("column {index} is unexpectedly NULL")))
}

/// A nullable integer column.
pub(super) fn opt_int(row: &AnyRow, index: usize) -> Result<Option<i64>, StoreError> {
    row.try_get::<Option<i64>, _>(index)
        .map_err(|e| StoreError::Other(format!("read column {index}: {e}")))
}

/// Names are VARCHAR(64) on every backend; MySQL would refuse longer ones, SQLite would not.
pub(super) fn check_name(kind: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.chars().count() > 64 {
        return Err(StoreError::Other(format!(
            "{kind} name {name:?} must be 1 to 64 characters"
        )));
    }
    Ok(())
}

/// `?, ?, ?` for an IN list of `n` values (n ≥ 1).
pub(super) fn placeholders(n: usize) -> String {
    vec!["?"; n.max(1)].join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_keys_round_trip_and_sort_numerically() {
        let addrs: Vec<Ipv6Addr> = ["::", "::1", "2001:db8::5", "2001:db8::a", "ffff::"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        let keys: Vec<String> = addrs.iter().map(|a| address_key(*a)).collect();
        assert_eq!(keys[2], "20010db8000000000000000000000005");
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        for (a, k) in addrs.iter().zip(&keys) {
            assert_eq!(address_from_key(k), Ok(*a));
        }
    }

    #[test]
    fn bad_keys_are_errors() {
        for key in ["", "1", "+0010db8000000000000000000000005", &"g".repeat(32)] {
            assert!(address_from_key(key).is_err(), "{key}");
        }
    }

    #[test]
    fn prefixes_from_columns() {
        let key = address_key("2001:db8:1:2::".parse().expect("addr"));
        assert_eq!(
            prefix_from_columns(Some(key.clone()), Some(64)),
            Ok(Some("2001:db8:1:2::/64".parse().expect("net")))
        );
        assert_eq!(prefix_from_columns(None, None), Ok(None));
        assert!(prefix_from_columns(Some(key), Some(129)).is_err());
    }

    #[test]
    fn names_and_placeholders() {
        assert!(check_name("pod", "p1").is_ok());
        assert!(check_name("pod", "").is_err());
        assert!(check_name("pod", &"x".repeat(65)).is_err());
        assert_eq!(placeholders(3), "?, ?, ?");
        assert!(revision(-1).is_err());
    }
}
