//! The VR's reservation document and the lookup table built from it.
//!
//! The controller serves one document per pod (a standalone VR reads it from a file):
//!
//! ```json
//! { "revision": 7,
//!   "reservations": [
//!     { "mac": "02:00:00:00:00:01", "addresses": ["2001:db8:1:4a2b::9c1"] },
//!     { "duid": "00:03:00:01:02:00:00:00:00:02", "addresses": ["2001:db8:1:99::5"] } ] }
//! ```
//!
//! [`Reservations::parse`] validates the whole document and either returns an immutable table or every
//! problem with its field path; a bad document never half-loads. The DHCPv6 reply function
//! (RFC 8415 §18.3) queries the table per packet, so lookups are hash or binary-search cheap.
//!
//! A pod can hold a million reservations, so parsing streams: each entry is deserialized with borrowed
//! strings, checked and folded into flat arrays before the next one is read, and nothing of the input
//! text is kept.

use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::config::{Checker, Problems};
use crate::model::doc::{Reservation, ReservationChanges};
use crate::model::{Duid, Mac};

/// The most addresses one client may have reserved; more is almost certainly a generator bug, and
/// a Reply with that many IA Address options (28 octets each) would not fit the 1280-octet IPv6
/// minimum MTU anyway.
pub const MAX_ADDRESSES_PER_CLIENT: usize = 64;

/// The prefix length reported by [`Reservations::on_link_prefixes`]: flat6 links are /64s.
const ON_LINK_PREFIX_LEN: u8 = 64;

/// A validated reservation table: which addresses each client (by MAC or by DUID) gets. Built
/// whole from a document ([`Reservations::parse`]) and then changed in place, in time
/// proportional to the change, by the controller's feed ([`Reservations::apply`]).
///
/// Clients keep the document's order of their addresses (the first is the one offered first).
/// Memory is a flat address arena with a span per client, a MAC hash index, an address → client
/// index and a count per /64: about 100–150 bytes resident per reservation with one address
/// (measured by the `load_one_million` test).
#[derive(Default)]
pub struct Reservations {
    revision: u64,
    /// Every client's addresses, client after client; a changed client's new addresses go at the
    /// end, and the arena is compacted once half of it is stale.
    addresses: Vec<Ipv6Addr>,
    /// Client `i` owns `addresses[spans[i].0..spans[i].0 + spans[i].1]`; a removed client has
    /// length 0 (and its index is on `free`).
    spans: Vec<(u32, u32)>,
    /// Removed clients' indexes, for reuse.
    free: Vec<u32>,
    /// Addresses in the arena that no client owns any more.
    stale: usize,
    /// MAC (as a 48-bit number) → client index.
    by_mac: HashMap<u64, u32>,
    /// DUID → client index.
    by_duid: HashMap<Duid, u32>,
    /// Every reserved address → its client.
    reserved: HashMap<Ipv6Addr, u32>,
    /// The /64 of every reserved address, with how many reserved addresses it holds.
    prefixes: BTreeMap<Ipv6Net, u32>,
}

impl fmt::Debug for Reservations {
    // The table may hold a million entries; a summary is what a log line needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservations")
            .field("revision", &self.revision)
            .field("clients", &self.len())
            .field("addresses", &self.addresses.len())
            .field("prefixes", &self.prefixes.len())
            .finish()
    }
}

impl Reservations {
    /// Parse and validate a reservation document; on failure, every problem with its path (e.g.
    /// `reservations[3].mac: "02:00:00:00:00" is not a MAC address (...)`,
    /// `reservations[7].addresses[1]: 2001:db8::5 is also reserved for reservations[2] (02:00:00:00:00:01)`).
    ///
    /// A structurally broken document (not JSON, a value of the wrong type, an unknown key) yields
    /// one problem naming the path and the line and column; otherwise all semantic problems are
    /// collected, in document order, with shared-address problems last.
    pub fn parse(json: &[u8]) -> Result<Reservations, Problems> {
        let mut builder = Builder::default();
        let mut de = serde_json::Deserializer::from_slice(json);
        let read = DocumentSeed {
            builder: Some(&mut builder),
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        match read {
            Ok(()) => builder.finish(),
            Err(err) => Err(structural_problem(json, err)),
        }
    }

    /// The document's revision, as served by the controller (0 for an empty default table).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// How many reservations are keyed by an exact DUID (what a client sends: for trusted links
    /// only, see docs/config.md).
    pub fn duid_keyed(&self) -> usize {
        self.by_duid.len()
    }

    /// The number of reservations (clients).
    pub fn len(&self) -> usize {
        self.spans.len() - self.free.len()
    }

    /// True when no client has a reservation.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The addresses reserved for the client with this MAC, in document order.
    ///
    /// Only reservations written with `mac` match; a `duid` reservation is found with
    /// [`Reservations::for_duid`] even when it is a DUID-LL holding this MAC.
    pub fn for_mac(&self, mac: &Mac) -> Option<&[Ipv6Addr]> {
        let client = *self.by_mac.get(&mac_key(*mac))?;
        self.client(client)
    }

    /// The addresses reserved for the client with this DUID (RFC 8415 §11), in document order.
    pub fn for_duid(&self, duid: &Duid) -> Option<&[Ipv6Addr]> {
        let client = *self.by_duid.get(duid)?;
        self.client(client)
    }

    /// Whether `addr` is reserved for any client, exactly (used to answer Confirm, RFC 8415 §18.3.3).
    pub fn is_reserved(&self, addr: &Ipv6Addr) -> bool {
        self.reserved.contains_key(addr)
    }

    /// Every /64 that holds a reserved address, sorted and without duplicates: an address outside
    /// all of them is not on this link (Confirm → NotOnLink, RFC 8415 §18.3.3).
    pub fn on_link_prefixes(&self) -> Vec<Ipv6Net> {
        self.prefixes.keys().copied().collect()
    }

    /// Whether `addr` is in the /64 of a reserved address (RFC 8415 §18.3.3).
    pub fn is_on_link(&self, addr: &Ipv6Addr) -> bool {
        self.prefixes.contains_key(&slash64(*addr))
    }

    fn client(&self, client: u32) -> Option<&[Ipv6Addr]> {
        let &(start, len) = self.spans.get(usize::try_from(client).ok()?)?;
        let start = usize::try_from(start).ok()?;
        self.addresses
            .get(start..start.checked_add(usize::try_from(len).ok()?)?)
    }

    /// The reservations by MAC, as a snapshot of the feed (what the VR persists to restart from).
    /// DUID reservations (from a file) are not part of any feed and are left out.
    pub fn to_changes(&self, pod: &str, cluster: &str) -> ReservationChanges {
        let mut reservations: Vec<Reservation> = self
            .by_mac
            .iter()
            .filter_map(|(&key, &client)| {
                let [_, _, a, b, c, d, e, f] = key.to_be_bytes();
                Some(Reservation {
                    mac: Mac([a, b, c, d, e, f]),
                    addresses: self.client(client)?.to_vec(),
                })
            })
            .collect();
        reservations.sort_unstable_by_key(|r| r.mac);
        ReservationChanges {
            pod: pod.to_string(),
            cluster: cluster.to_string(),
            revision: self.revision,
            snapshot: true,
            reservations,
            removed: Vec::new(),
        }
    }

    /// Apply the controller's changes (not a snapshot: parse that with
    /// [`Reservations::parse`]) in place, in time proportional to the change. The whole change is
    /// checked first, and with any problem (paths into the change, e.g.
    /// `reservations[2].addresses[0]: 2001:db8::5 is also reserved for 02:00:00:00:00:09`) nothing
    /// is changed.
    pub fn apply(&mut self, change: &ReservationChanges) -> Result<(), Problems> {
        let mut check = Checker::default();
        if change.snapshot {
            check.problem(
                "snapshot",
                "a snapshot replaces the table; it is not applied",
            );
            return Err(check.finish());
        }
        // Clients whose old addresses this change releases.
        let mut released: HashSet<u32> = HashSet::new();
        for mac in &change.removed {
            if let Some(&client) = self.by_mac.get(&mac_key(*mac)) {
                released.insert(client);
            }
        }
        for r in &change.reservations {
            if let Some(&client) = self.by_mac.get(&mac_key(r.mac)) {
                released.insert(client);
            }
        }
        let mut claimed: HashMap<Ipv6Addr, usize> = HashMap::new();
        let mut upserted: HashMap<u64, usize> = HashMap::new();
        for (i, r) in change.reservations.iter().enumerate() {
            let at = |field: &str| format!("reservations[{i}].{field}");
            if !r.mac.is_unicast() {
                check.problem(
                    &at("mac"),
                    format!("{} is not a unicast MAC address", r.mac),
                );
            }
            if let Some(first) = upserted.insert(mac_key(r.mac), i) {
                check.problem(
                    &at("mac"),
                    format!("{} is already in reservations[{first}]", r.mac),
                );
            }
            if r.addresses.is_empty() || r.addresses.len() > MAX_ADDRESSES_PER_CLIENT {
                check.problem(
                    &at("addresses"),
                    format!(
                        "has {} addresses; a reservation needs 1 to {MAX_ADDRESSES_PER_CLIENT}",
                        r.addresses.len()
                    ),
                );
            }
            for (j, addr) in r.addresses.iter().enumerate() {
                let path = || at(&format!("addresses[{j}]"));
                if let Some(why) = unusable(*addr) {
                    check.problem(
                        &path(),
                        format!("{addr} is {why}; a reservation needs a global unicast address"),
                    );
                }
                if let Some(first) = claimed.insert(*addr, i) {
                    check.problem(&path(), format!("{addr} is also in reservations[{first}]"));
                }
                if let Some(owner) = self.reserved.get(addr)
                    && !released.contains(owner)
                {
                    check.problem(
                        &path(),
                        format!(
                            "{addr} is also reserved for {}",
                            self.describe_client(*owner)
                        ),
                    );
                }
            }
        }
        if !check.is_clean() {
            return Err(check.finish());
        }
        for mac in &change.removed {
            if let Some(client) = self.by_mac.remove(&mac_key(*mac)) {
                self.release(client);
                self.free.push(client);
            }
        }
        for r in &change.reservations {
            let client = match self.by_mac.get(&mac_key(r.mac)) {
                Some(&client) => {
                    self.release(client);
                    client
                }
                None => {
                    let client = match self.free.pop() {
                        Some(client) => client,
                        None => {
                            let Ok(client) = u32::try_from(self.spans.len()) else {
                                continue;
                            };
                            self.spans.push((0, 0));
                            client
                        }
                    };
                    self.by_mac.insert(mac_key(r.mac), client);
                    client
                }
            };
            self.place(client, &r.addresses);
        }
        self.revision = change.revision;
        if self.stale > 1024 && self.stale * 2 > self.addresses.len() {
            self.compact();
        }
        Ok(())
    }

    /// Who `client` is, for a problem.
    fn describe_client(&self, client: u32) -> String {
        if let Some((&key, _)) = self.by_mac.iter().find(|&(_, &c)| c == client) {
            let [_, _, a, b, c, d, e, f] = key.to_be_bytes();
            return Mac([a, b, c, d, e, f]).to_string();
        }
        match self.by_duid.iter().find(|&(_, &c)| c == client) {
            Some((duid, _)) => duid.to_string(),
            None => format!("client {client}"),
        }
    }

    /// Take `client`'s addresses out of the indexes (its span is left empty).
    fn release(&mut self, client: u32) {
        let Some(old) = self.client(client).map(<[Ipv6Addr]>::to_vec) else {
            return;
        };
        for addr in &old {
            self.reserved.remove(addr);
            let prefix = slash64(*addr);
            if let Some(count) = self.prefixes.get_mut(&prefix) {
                *count -= 1;
                if *count == 0 {
                    self.prefixes.remove(&prefix);
                }
            }
        }
        self.stale += old.len();
        if let Some(span) = self.spans.get_mut(client as usize) {
            *span = (0, 0);
        }
    }

    /// Give `client` (released, or new) these addresses, at the end of the arena.
    fn place(&mut self, client: u32, addresses: &[Ipv6Addr]) {
        let (Ok(start), Ok(len)) = (
            u32::try_from(self.addresses.len()),
            u32::try_from(addresses.len()),
        ) else {
            return;
        };
        self.addresses.extend_from_slice(addresses);
        for addr in addresses {
            self.reserved.insert(*addr, client);
            *self.prefixes.entry(slash64(*addr)).or_insert(0) += 1;
        }
        if let Some(span) = self.spans.get_mut(client as usize) {
            *span = (start, len);
        }
    }

    /// Rewrite the arena with only the live spans.
    fn compact(&mut self) {
        let mut arena = Vec::with_capacity(self.addresses.len() - self.stale);
        for span in &mut self.spans {
            let (start, len) = (span.0 as usize, span.1 as usize);
            let new_start = arena.len() as u32;
            if let Some(slice) = self.addresses.get(start..start + len) {
                arena.extend_from_slice(slice);
            }
            span.0 = new_start;
        }
        self.addresses = arena;
        self.stale = 0;
    }
}

/// The /64 an address is in (flat6 links are /64s).
fn slash64(addr: Ipv6Addr) -> Ipv6Net {
    Ipv6Net::new(addr, ON_LINK_PREFIX_LEN)
        .map(|net| net.trunc())
        .unwrap_or_default()
}

/// A MAC as a 48-bit number: a cheaper hash key than six separate bytes.
fn mac_key(mac: Mac) -> u64 {
    let [a, b, c, d, e, f] = mac.octets();
    u64::from_be_bytes([0, 0, a, b, c, d, e, f])
}

/// Why `addr` cannot be handed to a client, if it cannot.
fn unusable(addr: Ipv6Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address (::)")
    } else if addr.is_loopback() {
        Some("the loopback address (::1)")
    } else if addr.is_multicast() {
        Some("a multicast address (ff00::/8)")
    } else if addr.segments()[0] & 0xffc0 == 0xfe80 {
        Some("a link-local address (fe80::/10)")
    } else {
        None
    }
}

fn entry_path(entry: u32) -> String {
    format!("reservations[{entry}]")
}

// ---------------------------------------------------------------------------------------------
// Building the table
// ---------------------------------------------------------------------------------------------

/// Who an entry reserves for, kept during validation only, to name the other side of a conflict.
#[derive(Clone, Copy)]
enum Owner {
    /// The entry's key was missing or invalid.
    Unknown,
    Mac(Mac),
    /// Index into `Builder::owner_duids`.
    Duid(u32),
}

/// One valid address as written, for the duplicate check (sorting these beats a hash set in time
/// and memory, and the sorted addresses become the `is_reserved` index).
#[derive(Clone, Copy)]
struct Placed {
    addr: Ipv6Addr,
    entry: u32,
    position: u32,
}

/// The state of one parse: the table being built and the problems found so far.
#[derive(Default)]
struct Builder {
    check: Checker,
    revision: u64,
    addresses: Vec<Ipv6Addr>,
    ends: Vec<u32>,
    by_mac: HashMap<u64, u32>,
    by_duid: HashMap<Duid, u32>,
    owners: Vec<Owner>,
    owner_duids: Vec<Duid>,
    placed: Vec<Placed>,
    /// Set once the document holds more entries or addresses than a u32 index can count.
    overflow: bool,
}

impl Builder {
    fn revision(&mut self, value: &serde_json::Value) {
        match value.as_u64() {
            Some(revision) => self.revision = revision,
            None => self.check.problem(
                "revision",
                format!(
                    "expected a non-negative integer, found {}",
                    describe_value(value)
                ),
            ),
        }
    }

    fn require(&mut self, revision: bool, reservations: bool) {
        if !revision {
            self.check.problem("revision", "missing (required)");
        }
        if !reservations {
            self.check.problem("reservations", "missing (required)");
        }
    }

    fn too_large(&mut self) {
        if !self.overflow {
            self.overflow = true;
            self.check.problem(
                "reservations",
                format!("more than {} entries or addresses", u32::MAX),
            );
        }
    }

    /// Check entry `index` and add it to the table.
    fn entry(&mut self, index: usize, wire: WireEntry<'_>) {
        if self.overflow {
            return;
        }
        let Ok(entry) = u32::try_from(index) else {
            self.too_large();
            return;
        };
        let owner = match (wire.mac, wire.duid) {
            (Some(_), Some(_)) => {
                self.check.problem(
                    &entry_path(entry),
                    "has both \"mac\" and \"duid\"; give exactly one",
                );
                Owner::Unknown
            }
            (None, None) => {
                self.check.problem(
                    &entry_path(entry),
                    "has neither \"mac\" nor \"duid\"; give exactly one",
                );
                Owner::Unknown
            }
            (Some(mac), None) => self.mac(entry, &mac.0),
            (None, Some(duid)) => self.duid(entry, &duid.0),
        };
        self.owners.push(owner);
        self.addresses(entry, wire.addresses);
        match u32::try_from(self.addresses.len()) {
            Ok(end) => self.ends.push(end),
            Err(_) => self.too_large(),
        }
    }

    fn mac(&mut self, entry: u32, text: &str) -> Owner {
        let mac: Mac = match text.parse() {
            Ok(mac) => mac,
            Err(err) => {
                self.check
                    .problem(&format!("{}.mac", entry_path(entry)), err.to_string());
                return Owner::Unknown;
            }
        };
        if !mac.is_unicast() {
            let why = if mac.is_multicast() {
                "the group bit is set"
            } else {
                "all zeros"
            };
            self.check.problem(
                &format!("{}.mac", entry_path(entry)),
                format!("{mac} is not a unicast MAC address ({why})"),
            );
            return Owner::Unknown;
        }
        match self.by_mac.entry(mac_key(mac)) {
            Entry::Vacant(slot) => {
                slot.insert(entry);
            }
            Entry::Occupied(first) => {
                let first = *first.get();
                self.check.problem(
                    &format!("{}.mac", entry_path(entry)),
                    format!("{mac} is already reserved by {}", entry_path(first)),
                );
            }
        }
        Owner::Mac(mac)
    }

    fn duid(&mut self, entry: u32, text: &str) -> Owner {
        let duid: Duid = match text.parse() {
            Ok(duid) => duid,
            Err(err) => {
                self.check
                    .problem(&format!("{}.duid", entry_path(entry)), err.to_string());
                return Owner::Unknown;
            }
        };
        if let Some(&first) = self.by_duid.get(&duid) {
            self.check.problem(
                &format!("{}.duid", entry_path(entry)),
                format!("{duid} is already reserved by {}", entry_path(first)),
            );
        } else {
            self.by_duid.insert(duid.clone(), entry);
        }
        match u32::try_from(self.owner_duids.len()) {
            Ok(index) => {
                self.owner_duids.push(duid);
                Owner::Duid(index)
            }
            Err(_) => Owner::Unknown,
        }
    }

    fn addresses(&mut self, entry: u32, list: Option<Vec<Text<'_>>>) {
        let Some(list) = list else {
            self.check.problem(
                &format!("{}.addresses", entry_path(entry)),
                "missing (required); a reservation needs at least one address",
            );
            return;
        };
        if list.is_empty() {
            self.check.problem(
                &format!("{}.addresses", entry_path(entry)),
                "is empty; a reservation needs at least one address",
            );
        } else if list.len() > MAX_ADDRESSES_PER_CLIENT {
            self.check.problem(
                &format!("{}.addresses", entry_path(entry)),
                format!(
                    "has {} addresses; at most {MAX_ADDRESSES_PER_CLIENT} per client",
                    list.len()
                ),
            );
        }
        for (position, text) in list.iter().enumerate() {
            let Ok(position) = u32::try_from(position) else {
                self.too_large();
                return;
            };
            let path = || format!("{}.addresses[{position}]", entry_path(entry));
            // Parse before building the path: the path is only needed for a problem.
            let addr: Ipv6Addr = match text.0.parse() {
                Ok(addr) => addr,
                Err(_) => {
                    self.check.ipv6(&path(), &text.0);
                    continue;
                }
            };
            if let Some(why) = unusable(addr) {
                self.check.problem(
                    &path(),
                    format!("{addr} is {why}; a reservation needs a global unicast address"),
                );
                continue;
            }
            self.placed.push(Placed {
                addr,
                entry,
                position,
            });
            self.addresses.push(addr);
        }
    }

    fn owner_name(&self, entry: u32) -> String {
        let owner = usize::try_from(entry)
            .ok()
            .and_then(|index| self.owners.get(index));
        match owner {
            Some(Owner::Mac(mac)) => format!(" ({mac})"),
            Some(Owner::Duid(index)) => usize::try_from(*index)
                .ok()
                .and_then(|index| self.owner_duids.get(index))
                .map(|duid| format!(" ({duid})"))
                .unwrap_or_default(),
            Some(Owner::Unknown) | None => String::new(),
        }
    }

    /// Sort every placed address and report each one listed before, in document order.
    fn check_shared_addresses(&mut self) {
        self.placed
            .sort_unstable_by_key(|p| (u128::from(p.addr), p.entry, p.position));
        let mut shared: Vec<(u32, u32, String)> = Vec::new();
        for run in self.placed.chunk_by(|a, b| a.addr == b.addr) {
            let Some((first, later)) = run.split_first() else {
                continue;
            };
            for again in later {
                let message = if again.entry == first.entry {
                    format!(
                        "{} is listed twice (also addresses[{}])",
                        again.addr, first.position
                    )
                } else {
                    format!(
                        "{} is also reserved for {}{}",
                        again.addr,
                        entry_path(first.entry),
                        self.owner_name(first.entry)
                    )
                };
                shared.push((again.entry, again.position, message));
            }
        }
        shared.sort_unstable_by_key(|(entry, position, _)| (*entry, *position));
        for (entry, position, message) in shared {
            self.check.problem(
                &format!("{}.addresses[{position}]", entry_path(entry)),
                message,
            );
        }
    }

    fn finish(mut self) -> Result<Reservations, Problems> {
        self.check_shared_addresses();
        if !self.check.is_clean() {
            return Err(self.check.finish());
        }
        // Clean means no address is listed twice, so the placements are the exact index.
        let mut reserved: HashMap<Ipv6Addr, u32> = HashMap::with_capacity(self.placed.len());
        let mut prefixes: BTreeMap<Ipv6Net, u32> = BTreeMap::new();
        for p in &self.placed {
            reserved.insert(p.addr, p.entry);
            *prefixes.entry(slash64(p.addr)).or_insert(0) += 1;
        }
        drop(self.placed);
        let mut spans = Vec::with_capacity(self.ends.len());
        let mut start = 0u32;
        for end in &self.ends {
            spans.push((start, end - start));
            start = *end;
        }
        drop(self.ends);
        self.addresses.shrink_to_fit();
        self.by_mac.shrink_to_fit();
        self.by_duid.shrink_to_fit();
        Ok(Reservations {
            revision: self.revision,
            addresses: self.addresses,
            spans,
            free: Vec::new(),
            stale: 0,
            by_mac: self.by_mac,
            by_duid: self.by_duid,
            reserved,
            prefixes,
        })
    }
}

fn describe_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(_) => "a string".to_string(),
        serde_json::Value::Bool(_) => "a boolean".to_string(),
        serde_json::Value::Null => "null".to_string(),
        serde_json::Value::Array(_) => "a list".to_string(),
        serde_json::Value::Object(_) => "an object".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------------------------

/// The keys a document needs (a feed snapshot may also carry `pod`, `cluster`, `snapshot` and
/// an empty `removed`).
const DOCUMENT_FIELDS: &[&str] = &["revision", "reservations"];

/// A JSON string borrowed from the input when it has no escapes (serde's own `Option<Cow<str>>`
/// and `Vec<Cow<str>>` always copy).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Text(Cow::Owned(v)))
    }
}

/// One element of `reservations`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEntry<'a> {
    #[serde(borrow, default)]
    mac: Option<Text<'a>>,
    #[serde(borrow, default)]
    duid: Option<Text<'a>>,
    #[serde(borrow, default)]
    addresses: Option<Vec<Text<'a>>>,
}

/// The top-level object. Written by hand so that entries stream into the builder instead of being
/// collected first; without a builder it only checks structure (the second, path-tracking pass).
struct DocumentSeed<'b> {
    builder: Option<&'b mut Builder>,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a reservation document (an object with \"revision\" and \"reservations\")")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let mut seen_revision = false;
        let mut seen_reservations = false;
        while let Some(key) = map.next_key::<Text<'de>>()? {
            match key.0.as_ref() {
                "revision" => {
                    if seen_revision {
                        return Err(de::Error::duplicate_field("revision"));
                    }
                    seen_revision = true;
                    let value: serde_json::Value = map.next_value()?;
                    if let Some(builder) = self.builder.as_deref_mut() {
                        builder.revision(&value);
                    }
                }
                "reservations" => {
                    if seen_reservations {
                        return Err(de::Error::duplicate_field("reservations"));
                    }
                    seen_reservations = true;
                    map.next_value_seed(EntriesSeed {
                        builder: self.builder.as_deref_mut(),
                    })?;
                }
                // A feed snapshot (`model::doc::ReservationChanges` with `snapshot: true`) is a
                // document too: its pod and cluster are the follower's business.
                "pod" | "cluster" => {
                    map.next_value::<de::IgnoredAny>()?;
                }
                "snapshot" => {
                    if !map.next_value::<bool>()? {
                        return Err(de::Error::custom(
                            "snapshot: false: these are changes, not a document",
                        ));
                    }
                }
                "removed" => {
                    let removed: Vec<de::IgnoredAny> = map.next_value()?;
                    if !removed.is_empty() {
                        return Err(de::Error::custom("removed: a document removes nothing"));
                    }
                }
                other => return Err(de::Error::unknown_field(other, DOCUMENT_FIELDS)),
            }
        }
        if let Some(builder) = self.builder {
            builder.require(seen_revision, seen_reservations);
        }
        Ok(())
    }
}

/// The `reservations` list, fed to the builder one entry at a time.
struct EntriesSeed<'b> {
    builder: Option<&'b mut Builder>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of reservations")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0usize;
        while let Some(entry) = seq.next_element::<WireEntry<'de>>()? {
            if let Some(builder) = self.builder.as_deref_mut() {
                builder.entry(index, entry);
            }
            index = index.saturating_add(1);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Structural problems
// ---------------------------------------------------------------------------------------------

/// Turn a deserialization failure into one problem with its field path. The fast pass does not
/// track paths, so the document is read again with `serde_path_to_error` (failures only).
fn structural_problem(json: &[u8], first: serde_json::Error) -> Problems {
    let mut track = serde_path_to_error::Track::new();
    let mut de = serde_json::Deserializer::from_slice(json);
    let tracked = DocumentSeed { builder: None }
        .deserialize(serde_path_to_error::Deserializer::new(&mut de, &mut track))
        .and_then(|()| de.end());
    let err = match tracked {
        Err(err) => err,
        // Cannot happen (the same input fails the same way), but never trade the error away.
        Ok(()) => first,
    };
    let mut path = String::new();
    let mut last_key: Option<String> = None;
    for segment in track.path().iter() {
        last_key = None;
        match segment {
            serde_path_to_error::Segment::Map { key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                last_key = Some(key.clone());
            }
            serde_path_to_error::Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    let (line, column) = (err.line(), err.column());
    let text = err.to_string();
    let bare = text
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&text);
    let at = if line > 0 {
        format!(" (line {line}, column {column})")
    } else {
        String::new()
    };
    let message = match unknown_field(bare) {
        Some((key, expected)) => {
            // A derived struct reports an unknown key at its own path, the hand-written top level
            // at the path of the object holding it.
            if last_key.as_deref() != Some(key) {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            format!("unknown key; {expected}{at}")
        }
        None => match err.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                format!("not valid JSON: {bare}{at}")
            }
            serde_json::error::Category::Data | serde_json::error::Category::Io => {
                format!("{bare}{at}")
            }
        },
    };
    let mut check = Checker::default();
    check.problem(&path, message);
    check.finish()
}

/// The key and the "expected ..." tail of serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, tail) = rest.split_once('`')?;
    Some((key, tail.trim_start_matches(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = r#"{ "revision": 7,
  "reservations": [
    { "mac": "02:00:00:00:00:01", "addresses": ["2001:db8:1:4a2b::9c1", "2001:db8:1:4a2b::77"] },
    { "duid": "00:04:6c:9a:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee", "addresses": ["2001:db8:1:99::5"] } ] }"#;

    fn addr(text: &str) -> Ipv6Addr {
        text.parse().expect("test address")
    }

    fn mac(text: &str) -> Mac {
        text.parse().expect("test mac")
    }

    fn problems(json: &str) -> Vec<String> {
        match Reservations::parse(json.as_bytes()) {
            Ok(table) => panic!("expected problems, got {table:?}"),
            Err(problems) => problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// A document with the given entries (JSON objects) at revision 1.
    fn doc(entries: &[&str]) -> String {
        format!(
            r#"{{"revision": 1, "reservations": [{}]}}"#,
            entries.join(",")
        )
    }

    #[test]
    fn the_example_parses_and_answers_lookups() {
        let table = Reservations::parse(EXAMPLE.as_bytes()).expect("example");
        assert_eq!(table.revision(), 7);
        assert_eq!(table.len(), 2);
        assert!(!table.is_empty());
        assert_eq!(
            table.for_mac(&mac("02:00:00:00:00:01")),
            Some(&[addr("2001:db8:1:4a2b::9c1"), addr("2001:db8:1:4a2b::77")][..])
        );
        assert_eq!(table.for_mac(&mac("02:00:00:00:00:02")), None);
        let duid: Duid = "00:04:6c:9a:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee"
            .parse()
            .expect("duid");
        assert_eq!(table.for_duid(&duid), Some(&[addr("2001:db8:1:99::5")][..]));
        assert_eq!(
            table.for_duid(&Duid::link_layer(mac("02:00:00:00:00:01"))),
            None
        );
        assert!(table.is_reserved(&addr("2001:db8:1:4a2b::77")));
        assert!(table.is_reserved(&addr("2001:db8:1:99::5")));
        assert!(!table.is_reserved(&addr("2001:db8:1:99::6")));
        assert_eq!(
            table.on_link_prefixes(),
            &[
                "2001:db8:1:99::/64".parse::<Ipv6Net>().expect("net"),
                "2001:db8:1:4a2b::/64".parse::<Ipv6Net>().expect("net"),
            ]
        );
        let debug = format!("{table:?}");
        assert!(debug.contains("clients: 2"), "{debug}");
    }

    #[test]
    fn lookups_by_dash_form_and_duid_ll_keys() {
        let json = doc(&[
            r#"{"mac": "02-00-00-00-AB-01", "addresses": ["2001:db8::1"]}"#,
            r#"{"duid": "00:03:00:01:02:00:00:00:00:02", "addresses": ["2001:db8::2", "2001:db8:0:1::2"]}"#,
        ]);
        let table = Reservations::parse(json.as_bytes()).expect("valid");
        assert_eq!(
            table.for_mac(&mac("02:00:00:00:ab:01")),
            Some(&[addr("2001:db8::1")][..])
        );
        let ll = Duid::link_layer(mac("02:00:00:00:00:02"));
        assert_eq!(
            table.for_duid(&ll),
            Some(&[addr("2001:db8::2"), addr("2001:db8:0:1::2")][..])
        );
        // The MAC inside a DUID-LL is not a MAC reservation.
        assert_eq!(table.for_mac(&mac("02:00:00:00:00:02")), None);
        assert_eq!(table.on_link_prefixes().len(), 2);
    }

    #[test]
    fn escaped_strings_are_accepted() {
        let json =
            doc(&[r#"{"mac": "02:00:00:00:00:0\u0031", "addresses": ["2001:db8::\u0031"]}"#]);
        let table = Reservations::parse(json.as_bytes()).expect("valid");
        assert_eq!(
            table.for_mac(&mac("02:00:00:00:00:01")),
            Some(&[addr("2001:db8::1")][..])
        );
    }

    #[test]
    fn default_is_empty_at_revision_zero() {
        let table = Reservations::default();
        assert_eq!(table.revision(), 0);
        assert_eq!(table.len(), 0);
        assert!(table.is_empty());
        assert_eq!(table.for_mac(&mac("02:00:00:00:00:01")), None);
        assert!(!table.is_reserved(&addr("2001:db8::1")));
        assert!(table.on_link_prefixes().is_empty());
    }

    #[test]
    fn an_empty_list_is_valid_and_the_revision_is_read() {
        let table = Reservations::parse(br#"{"reservations": [], "revision": 42}"#).expect("valid");
        assert_eq!(table.revision(), 42);
        assert!(table.is_empty());
        assert!(table.on_link_prefixes().is_empty());
    }

    #[test]
    fn top_level_keys_are_required() {
        assert_eq!(
            problems("{}"),
            vec![
                "revision: missing (required)",
                "reservations: missing (required)"
            ]
        );
    }

    #[test]
    fn the_revision_is_a_non_negative_integer() {
        assert_eq!(
            problems(r#"{"revision": -1, "reservations": []}"#),
            vec!["revision: expected a non-negative integer, found -1"]
        );
        assert_eq!(
            problems(r#"{"revision": "7", "reservations": []}"#),
            vec!["revision: expected a non-negative integer, found a string"]
        );
        assert_eq!(
            problems(r#"{"revision": 1.5, "reservations": []}"#),
            vec!["revision: expected a non-negative integer, found 1.5"]
        );
    }

    #[test]
    fn an_entry_has_exactly_one_key() {
        assert_eq!(
            problems(&doc(&[
                r#"{"mac": "02:00:00:00:00:01", "duid": "00:03:00:01:02:00:00:00:00:01", "addresses": ["2001:db8::1"]}"#,
                r#"{"addresses": ["2001:db8::2"]}"#,
            ])),
            vec![
                "reservations[0]: has both \"mac\" and \"duid\"; give exactly one",
                "reservations[1]: has neither \"mac\" nor \"duid\"; give exactly one",
            ]
        );
    }

    #[test]
    fn macs_must_parse_and_be_unicast() {
        assert_eq!(
            problems(&doc(&[
                r#"{"mac": "02:00:00:00:00:01", "addresses": ["2001:db8::1"]}"#,
                r#"{"mac": "02:00:00:00:00", "addresses": ["2001:db8::2"]}"#,
                r#"{"mac": "33:33:00:00:00:01", "addresses": ["2001:db8::3"]}"#,
                r#"{"mac": "00:00:00:00:00:00", "addresses": ["2001:db8::4"]}"#,
            ])),
            vec![
                "reservations[1].mac: \"02:00:00:00:00\" is not a MAC address (it needs six groups); \
                 expected six hex pairs like 02:00:00:00:00:01",
                "reservations[2].mac: 33:33:00:00:00:01 is not a unicast MAC address (the group bit is set)",
                "reservations[3].mac: 00:00:00:00:00:00 is not a unicast MAC address (all zeros)",
            ]
        );
    }

    #[test]
    fn duids_must_parse() {
        let got = problems(&doc(&[
            r#"{"duid": "00:03", "addresses": ["2001:db8::1"]}"#,
            r#"{"duid": "zz:03:00:01", "addresses": ["2001:db8::2"]}"#,
        ]));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("reservations[0].duid: \"00:03\" is not a DUID ("),
            "{got:?}"
        );
        assert!(
            got[1].starts_with(
                "reservations[1].duid: \"zz:03:00:01\" is not a DUID (a group is not hex)"
            ),
            "{got:?}"
        );
    }

    #[test]
    fn the_address_list_is_required_non_empty_and_capped() {
        let many: Vec<String> = (1..=65).map(|i| format!("\"2001:db8::{i:x}\"")).collect();
        let too_many = format!(
            r#"{{"mac": "02:00:00:00:00:03", "addresses": [{}]}}"#,
            many.join(",")
        );
        assert_eq!(
            problems(&doc(&[
                r#"{"mac": "02:00:00:00:00:01"}"#,
                r#"{"mac": "02:00:00:00:00:02", "addresses": []}"#,
                &too_many,
            ])),
            vec![
                "reservations[0].addresses: missing (required); a reservation needs at least one address",
                "reservations[1].addresses: is empty; a reservation needs at least one address",
                "reservations[2].addresses: has 65 addresses; at most 64 per client",
            ]
        );
        let sixty_four = format!(
            r#"{{"mac": "02:00:00:00:00:03", "addresses": [{}]}}"#,
            many[..64].join(",")
        );
        let table = Reservations::parse(doc(&[&sixty_four]).as_bytes()).expect("64 is fine");
        assert_eq!(
            table.for_mac(&mac("02:00:00:00:00:03")).map(<[_]>::len),
            Some(64)
        );
    }

    #[test]
    fn addresses_must_be_global_unicast_ipv6() {
        assert_eq!(
            problems(&doc(&[r#"{"mac": "02:00:00:00:00:01", "addresses":
                ["2001:db8::1", "192.0.2.1", "::", "::1", "ff02::1:2", "fe80::1", "febf::1", "2001:db8::/64"]}"#])),
            vec![
                "reservations[0].addresses[1]: \"192.0.2.1\" is not an IPv6 address",
                "reservations[0].addresses[2]: :: is the unspecified address (::); a reservation needs a global unicast address",
                "reservations[0].addresses[3]: ::1 is the loopback address (::1); a reservation needs a global unicast address",
                "reservations[0].addresses[4]: ff02::1:2 is a multicast address (ff00::/8); a reservation needs a global unicast address",
                "reservations[0].addresses[5]: fe80::1 is a link-local address (fe80::/10); a reservation needs a global unicast address",
                "reservations[0].addresses[6]: febf::1 is a link-local address (fe80::/10); a reservation needs a global unicast address",
                "reservations[0].addresses[7]: \"2001:db8::/64\" is not an IPv6 address",
            ]
        );
        // fec0::/10 is outside fe80::/10.
        assert!(
            Reservations::parse(
                doc(&[r#"{"mac": "02:00:00:00:00:01", "addresses": ["fec0::1"]}"#]).as_bytes()
            )
            .is_ok()
        );
    }

    #[test]
    fn an_address_twice_in_one_entry() {
        assert_eq!(
            problems(&doc(&[
                r#"{"mac": "02:00:00:00:00:01", "addresses": ["2001:db8::1", "2001:db8::2", "2001:db8:0::1"]}"#
            ])),
            vec!["reservations[0].addresses[2]: 2001:db8::1 is listed twice (also addresses[0])"]
        );
    }

    #[test]
    fn the_same_mac_or_duid_twice_names_both_entries() {
        assert_eq!(
            problems(&doc(&[
                r#"{"mac": "02:00:00:00:00:01", "addresses": ["2001:db8::1"]}"#,
                r#"{"duid": "00:03:00:01:02:00:00:00:00:01", "addresses": ["2001:db8::2"]}"#,
                r#"{"mac": "02:00:00:00:00:01", "addresses": ["2001:db8::3"]}"#,
                r#"{"duid": "00:03:00:01:02:00:00:00:00:01", "addresses": ["2001:db8::4"]}"#,
            ])),
            vec![
                "reservations[2].mac: 02:00:00:00:00:01 is already reserved by reservations[0]",
                "reservations[3].duid: 00:03:00:01:02:00:00:00:00:01 is already reserved by reservations[1]",
            ]
        );
    }

    #[test]
    fn an_address_reserved_twice_names_both_entries() {
        assert_eq!(
            problems(&doc(&[
                r#"{"mac": "02:00:00:00:00:09", "addresses": ["2001:db8::9"]}"#,
                r#"{"mac": "02:00:00:00:00:08", "addresses": ["2001:db8::8"]}"#,
                r#"{"mac": "02:00:00:00:00:01", "addresses": ["2001:db8::5"]}"#,
                r#"{"duid": "00:03:00:01:02:00:00:00:00:02", "addresses": ["2001:db8::6"]}"#,
                r#"{"mac": "bad", "addresses": ["2001:db8::7"]}"#,
                r#"{"mac": "02:00:00:00:00:03", "addresses": ["2001:db8::a", "2001:db8::5"]}"#,
                r#"{"mac": "02:00:00:00:00:04", "addresses": ["2001:db8::6", "2001:db8::7"]}"#,
                r#"{"mac": "02:00:00:00:00:05", "addresses": ["2001:db8::5"]}"#,
            ]))[1..],
            [
                "reservations[5].addresses[1]: 2001:db8::5 is also reserved for reservations[2] (02:00:00:00:00:01)",
                "reservations[6].addresses[0]: 2001:db8::6 is also reserved for reservations[3] (00:03:00:01:02:00:00:00:00:02)",
                "reservations[6].addresses[1]: 2001:db8::7 is also reserved for reservations[4]",
                "reservations[7].addresses[0]: 2001:db8::5 is also reserved for reservations[2] (02:00:00:00:00:01)",
            ]
        );
    }

    #[test]
    fn every_problem_in_a_document_is_reported() {
        let got = problems(
            r#"{"revision": -3, "reservations": [
                {"mac": "02:00:00:00:00:01", "addresses": ["2001:db8::1"]},
                {"mac": "nope", "addresses": ["fe80::1", "2001:db8::1"]},
                {"duid": "00", "addresses": []},
                {"addresses": ["2001:db8::2"]}
            ]}"#,
        );
        assert_eq!(got.len(), 7, "{got:?}");
        assert!(got[0].starts_with("revision: "), "{got:?}");
        assert!(
            got[1].starts_with("reservations[1].mac: \"nope\""),
            "{got:?}"
        );
        assert!(
            got[2].starts_with("reservations[1].addresses[0]: fe80::1"),
            "{got:?}"
        );
        assert!(
            got[3].starts_with("reservations[2].duid: \"00\""),
            "{got:?}"
        );
        assert!(
            got[4].starts_with("reservations[2].addresses: is empty"),
            "{got:?}"
        );
        assert!(
            got[5].starts_with("reservations[3]: has neither"),
            "{got:?}"
        );
        assert!(
            got[6].starts_with(
                "reservations[1].addresses[1]: 2001:db8::1 is also reserved for reservations[0]"
            ),
            "{got:?}"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        let got = problems(r#"{"revision": 1, "reservations": [], "colour": "blue"}"#);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(
                "colour: unknown key; expected `revision` or `reservations` (line 1, column 44)"
            ),
            "{got:?}"
        );
        let got = problems(&doc(&[
            r#"{"mac": "02:00:00:00:00:01", "addresses": ["2001:db8::1"]}"#,
            r#"{"mac": "02:00:00:00:00:02", "address": ["2001:db8::2"]}"#,
        ]));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(
                "reservations[1].address: unknown key; expected one of `mac`, `duid`, `addresses`"
            ),
            "{got:?}"
        );
    }

    #[test]
    fn not_json_is_one_problem_with_a_position() {
        let got = problems("revision = 7\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with("not valid JSON: expected value (line 1, column 1)"),
            "{got:?}"
        );
        let got = problems("{\"revision\": 1,\n \"reservations\": [\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].contains("not valid JSON: EOF while parsing a list (line 3"),
            "{got:?}"
        );
        let got = problems(r#"{"revision": 1, "reservations": []} trailing"#);
        assert!(
            got[0].starts_with("not valid JSON: trailing characters"),
            "{got:?}"
        );
        let got = Reservations::parse(&[0xff, 0xfe, b'{']).expect_err("binary");
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn wrong_types_are_reported_at_their_path() {
        let got = problems(&doc(&[
            r#"{"mac": "02:00:00:00:00:01", "addresses": ["2001:db8::1"]}"#,
            r#"{"mac": 5, "addresses": ["2001:db8::2"]}"#,
        ]));
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(
                "reservations[1].mac: invalid type: integer `5`, expected a string (line 1"
            ),
            "{got:?}"
        );
        let got = problems(&doc(&[
            r#"{"mac": "02:00:00:00:00:01", "addresses": "2001:db8::1"}"#,
        ]));
        assert!(
            got[0].starts_with("reservations[0].addresses: invalid type: string"),
            "{got:?}"
        );
        let got = problems(r#"{"revision": 1, "reservations": {}}"#);
        assert!(
            got[0].starts_with("reservations: invalid type: map, expected a list of reservations"),
            "{got:?}"
        );
        let got = problems("[]");
        assert!(
            got[0].starts_with("invalid type: sequence, expected a reservation document"),
            "{got:?}"
        );
        let got = problems(r#"{"revision": 1, "revision": 2, "reservations": []}"#);
        assert!(got[0].starts_with("duplicate field `revision`"), "{got:?}");
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Reservations::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_json_ish_text(text in r#"[\[\]{}:,"0-9a-f \-.]{0,200}"#) {
            let _ = Reservations::parse(text.as_bytes());
        }

        #[test]
        fn parse_never_panics_on_near_valid_documents(
            revision in r#"-?[0-9]{1,21}|"7"|null"#,
            entries in proptest::collection::vec(
                (
                    proptest::option::of("(0[0-3]:){5}0[0-9]|0[0-3]-00-00-00-00-0[0-9]|[0-9a-f:]{0,20}"),
                    proptest::option::of("00:0[1-4](:[0-9a-f]{2}){0,12}|[0-9a-f:]{0,8}"),
                    proptest::option::of(proptest::collection::vec(
                        "2001:db8::[0-9]{1,2}|fe80::1|::|ff02::[0-9]|[0-9a-f:]{0,10}",
                        0..4,
                    )),
                ),
                0..8,
            ),
        ) {
            let body: Vec<String> = entries
                .iter()
                .map(|(mac, duid, addresses)| {
                    let mut fields = Vec::new();
                    if let Some(mac) = mac {
                        fields.push(format!("\"mac\": \"{mac}\""));
                    }
                    if let Some(duid) = duid {
                        fields.push(format!("\"duid\": \"{duid}\""));
                    }
                    if let Some(addresses) = addresses {
                        let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
                        fields.push(format!("\"addresses\": [{}]", list.join(",")));
                    }
                    format!("{{{}}}", fields.join(","))
                })
                .collect();
            let json = format!(r#"{{"revision": {revision}, "reservations": [{}]}}"#, body.join(","));
            match Reservations::parse(json.as_bytes()) {
                Ok(table) => {
                    prop_assert_eq!(table.len(), entries.len());
                    for (mac, duid, addresses) in &entries {
                        let found = match (mac, duid) {
                            (Some(mac), None) => table.for_mac(&mac.parse::<Mac>().expect("valid")),
                            (None, Some(duid)) => table.for_duid(&duid.parse::<Duid>().expect("valid")),
                            _ => panic!("accepted an entry without exactly one key"),
                        };
                        let want: Vec<Ipv6Addr> = addresses
                            .iter()
                            .flatten()
                            .map(|a| a.parse().expect("valid"))
                            .collect();
                        prop_assert_eq!(found, Some(&want[..]));
                        for a in &want {
                            prop_assert!(table.is_reserved(a));
                        }
                    }
                }
                Err(problems) => prop_assert!(!problems.is_empty()),
            }
        }
    }

    fn resident_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS line");
        let kib: u64 = line
            .trim_start_matches("VmRSS:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("VmRSS number");
        kib * 1024
    }

    /// Load benchmark: `cargo test --release --lib load_one_million -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark; run in release with --ignored --nocapture"]
    fn load_one_million() {
        const N: u32 = 1_000_000;
        let before = resident_bytes();
        let mut json = String::with_capacity(80 * N as usize);
        json.push_str("{\"revision\": 1, \"reservations\": [\n");
        for n in 0..N {
            let [a, b, c, d] = n.to_be_bytes();
            if n > 0 {
                json.push_str(",\n");
            }
            json.push_str(&format!(
                "{{\"mac\": \"02:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}\", \"addresses\": [\"2001:db8:1:{:x}::1:{:x}\"]}}",
                n / 65536,
                n % 65536
            ));
        }
        json.push_str("]}\n");
        let size = json.len();
        let start = std::time::Instant::now();
        let table = Reservations::parse(json.as_bytes()).expect("valid");
        let elapsed = start.elapsed();
        drop(json);
        let after = resident_bytes();
        let per = after.saturating_sub(before) as f64 / f64::from(N);
        println!(
            "load_one_million: {} MB document, parsed {} reservations in {:.3} s; resident +{:.1} MB = {per:.1} bytes/reservation",
            size / 1_000_000,
            table.len(),
            elapsed.as_secs_f64(),
            after.saturating_sub(before) as f64 / 1e6,
        );
        assert_eq!(table.len(), N as usize);
        assert_eq!(table.on_link_prefixes().len(), 16);
        assert!(table.is_reserved(&addr("2001:db8:1:f::1:423f")));
        assert!(per <= 300.0, "{per} bytes per reservation");
        if !cfg!(debug_assertions) {
            assert!(elapsed.as_secs_f64() <= 2.0, "{elapsed:?}");
        }
    }
}
