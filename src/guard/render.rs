//! Ports document → the guard's nftables ruleset, as a pure model ([`Desired`]) and as batches of
//! nft commands ([`full_batch`], [`diff_batch`]).
//!
//! # Two tables, two stages
//!
//! The guard owns exactly two tables, both named after the configured table name (default `flat6`):
//! `bridge <table>` and `inet <table>`. Nothing else in the ruleset is ever read or written.
//!
//! **Stage 1, `bridge <table>`: stateless per-port identity.** Only the bridge family knows which
//! bridge port a frame came from or goes to, but on the kernels flat6 targets it has no connection
//! tracking (`CONFIG_NF_CONNTRACK_BRIDGE` may be missing). So everything that depends on the port
//! and needs no state is enforced here. The base chain `forward` (hook forward, priority 0, policy
//! accept) sends frames from an instance port (`iifname @ports`) to `from_instance` and frames to
//! one (`oifname @ports`) to `to_instance`. Frames of interfaces that are not instance ports
//! (uplinks, the virtual router) are not touched.
//!
//! Both chains are shared by every port. What differs between ports lives in named sets keyed by
//! the interface name, so a port is a handful of set elements and no rules:
//!
//! | set | key | elements of a port |
//! | --- | --- | --- |
//! | `ports` | `ifname` | its interface |
//! | `port_mac` | `ifname . ether_addr` | interface . MAC |
//! | `port_src` | `ifname . ipv6_addr` | interface . each allowed source (its /128s, or its /64 in prefix mode) |
//! | `nd_mac` | `typeof iifname . @th,208,48` | interface . MAC as a 48-bit integer |
//! | `na_target` | `typeof iifname . @th,64,128` | interface . each allowed source as a 128-bit integer (a range for a prefix) |
//!
//! `from_instance` (frames the instance sends):
//! - `iifname . ether saddr != @port_mac drop`: the instance must use its own MAC.
//! - VLAN-tagged frames (`8021q`, `8021ad`) are dropped; `ether type != ip6 return`: IPv4 and ARP
//!   are out of flat6's scope and pass untouched.
//! - TCP from one of the port's sources (`iifname . ip6 saddr @port_src`) returns at once: the
//!   checks below are about ICMPv6 and UDP, and most traffic is TCP.
//! - Router Advertisement (134) and Redirect (137) are dropped: RA guard, RFC 6105.
//! - DHCPv6 server messages (UDP source port 547 or destination port 546) are dropped: the DHCPv6
//!   shield of RFC 7610.
//! - Neighbor Solicitations and Advertisements whose first option (ICMPv6 offset 24) is a
//!   source/target link-layer address option (type 1 or 2, length 1, RFC 4861 §4.6.1) must carry
//!   the port's MAC, and so must a Router Solicitation's first option (offset 8): the option's
//!   48 bits, concatenated with the interface, must be in `nd_mac`. Only the first option is
//!   checked; a message without one is not affected.
//! - A Neighbor Advertisement's target (ICMPv6 offset 8, RFC 4861 §4.4) must be link-local or,
//!   concatenated with the interface, in `na_target`. nft 1.0.6 has no `icmpv6 taddr`, so the
//!   target is the raw payload `@th,64,128`; a set can hold such keys only when declared with
//!   `typeof` (its key type is then a 128-bit integer; a typed `ipv6_addr` key is a "datatype
//!   mismatch").
//! - With `router_link_local` set: `drop` for those addresses as the IPv6 source and as an NA's
//!   target. Instances use the routers' link-local address as their gateway, and any other
//!   link-local address is allowed below, so this is what stops an instance from taking it over.
//! - Last, the IPv6 source: `return` for `iifname . ip6 saddr @port_src`, for link-local
//!   (`fe80::/10`), and for `::` in ICMPv6 Neighbor Solicitation (duplicate address detection, RFC
//!   4862 §5.4.2) and MLD reports (RFC 3590 §4: a host joins the solicited-node group before it
//!   has a link-local address); then `drop` for anything else.
//!
//! `to_instance` (frames delivered to an instance): traffic to a link-local unicast destination is
//! allowed only for ICMPv6 and DHCPv6 replies (UDP 547 → 546). Link-local addresses are never
//! instance addresses in stage 2, so without this the stateful stage would let anything through to
//! `fe80::/10`.
//!
//! **Stage 2, `inet <table>`: stateful security groups.** With
//! `net.bridge.bridge-nf-call-ip6tables=1` (set by the guard, not here) bridged IPv6 also passes the
//! inet hooks, where conntrack works but the bridge port is not known. This stage therefore keys on
//! IPv6 addresses, which stage 1 has already proven genuine. The base chain `forward` (hook forward,
//! priority 0, policy accept):
//! - `meta nfproto != ipv6 accept` (IPv4 is left alone),
//! - `ct state established,related accept`,
//! - ICMPv6 that RFC 4890 §4.3 says must not be dropped, both ways: destination unreachable,
//!   packet too big, time exceeded, parameter problem, echo request/reply, MLD (130, 131, 132,
//!   143); and RS/RA/NS/NA (133–136) only with `ip6 hoplimit 255` (RFC 4861 §6.1, §7.1),
//! - `meta mark set ip6 saddr map @port_groups meta mark vmap @egress`, then the same with
//!   `ip6 daddr` and `@ingress`: `port_groups` maps each port address (key) to the mark of the
//!   port's set of groups, and the verdict maps `egress` and `ingress` map that mark to the set's
//!   `eg_`/`in_` chain. A key that is not in `port_groups` ends the rule before the mark is read,
//!   so a packet's own mark never selects a chain.
//!
//! Why the mark, and not a verdict map from the address straight to the chain (as an earlier
//! renderer did): whenever a transaction adds an element whose verdict is a `jump`, the kernel
//! re-validates the whole table for jump loops, walking every element of every verdict map. With
//! one jump element per port, adding a port cost about 1.2 ms more at 10,000 ports than at 100
//! (measured here, kernel 6.18). With the mark, the per-port map holds plain data, the verdict
//! maps hold one element per *set of groups*, and a port is added without any jump element. The
//! cost: the packet mark (`skb->mark`) of a packet that reaches the dispatch (the first packet of
//! a connection to or from a guarded address; established traffic and the ICMPv6 above are
//! accepted before it) is overwritten with the mark of its groups. nftables 1.0.6 can use a map
//! lookup's result only through such a field, not as the key of a second lookup.
//!
//! A port's security-group rules do not depend on the port, only on its set of groups, so there is
//! one pair of chains per distinct *set of groups* (ports with the same groups share them; a host
//! whose 10,000 instances are all in `default` and `web` has one pair). `eg_<groups>` holds the
//! egress rules of those groups with verdict `return` (allowed; go on to the receiver's ingress
//! check), then the default: nothing for `egress = "allow"`, `drop` for `"deny"`. `in_<groups>`
//! holds the ingress rules with verdict `accept`, then `drop`. Traffic between two instances on
//! this host passes the sender's egress and then the receiver's ingress chain; replies are
//! established. A rule's remote group becomes a named set `sg_<group>` (`ipv6_addr`) holding the
//! group's members, created only for groups that a rendered rule refers to; `::/0` as a remote
//! prefix matches without an address test.
//!
//! # Why every change is set elements
//!
//! Adding or removing a port, changing its addresses or a group's members adds and deletes set
//! and map elements; only a new combination of groups (or a changed rule) adds or refills a chain.
//! The batch for a one-port change therefore has the same size at 100 and at 10,000 ports, and
//! nft's own cost for it does not grow either: nft 1.0.6 fills its cache before applying a batch
//! (every chain for rule commands, the elements of interval sets for element commands), and with a
//! few dozen rules and no interval sets in address mode there is little to fetch; and no element
//! of a one-port change is a `jump`, so the kernel does not re-validate the table (see above).
//! Per packet, a set lookup costs the same whatever the number of ports. Planning the batch does
//! not walk the model either: see [`Planner`]. (An earlier renderer used chains of
//! ~50 rules per port: a one-port change at 10,000 ports took 0.3–0.4 s inside nft and a full
//! apply 22 s, most of it nft parsing and the kernel checking half a million rules.)
//!
//! The sets use `flags interval` only where a key can be a prefix: `port_src`, `na_target` and
//! `port_groups` in prefix mode (`anti_spoofing = "prefix"`, keys: the port's /64 plus any address
//! outside it). In address mode every key is a /128 and all sets are hashes. nft rejects
//! overlapping interval elements in a map, so an address or prefix that overlaps an earlier
//! port's stays with the earlier port (see [`render`]).
//!
//! # Why the batches are nft's text syntax
//!
//! `typeof` sets (the only way to match the raw ND payload against a set) cannot be declared in
//! nft 1.0.6's JSON: it prints their key as `["ifname", "integer"]` and rejects that as input
//! ("can not use variable sized data types (integer) in concat expressions"). The batches are
//! therefore nft's own text syntax, which `nft -f -` applies as one transaction just like JSON.
//! The `nftables` crate is still how the guard reads nft's state (`apply::read_marker`). The text
//! is built from validated values only: interface names cannot contain quotes, whitespace or
//! control characters (see `config::interface_name_problem`), set and chain names come from
//! `ident`, and everything else is formatted from typed addresses, MACs and numbers.
//!
//! # Marker
//!
//! Each table carries a set `flat6_state` (type `ipv6_addr`) with one element: `::` plus the 64-bit
//! [`Desired::marker`]: a FNV-1a hash of the model's structure (chains, rules, set declarations)
//! plus the sum of a hash of every element, so that [`Planner`] can keep it up to date element by
//! element. After a restart the daemon compares it (see `apply::read_marker`) with the marker of
//! its persisted previous state; if they differ it rebuilds both tables with [`full_batch`] in one
//! transaction.
//!
//! # Batches
//!
//! [`full_batch`] deletes both tables if present (the `add table` + `delete table` pair makes that a
//! no-op-safe delete, as nft 1.0.6 has no `destroy`) and creates everything, in one transaction.
//! [`diff_batch`] touches only what changed, in an order nft accepts within one transaction:
//! map elements that go away are deleted first (before their chains, and before a key they held
//! is given to another port), then new chains are added, then new sets, and set elements are
//! deleted and added; chains whose rules are new or changed are (flushed and) filled, new map
//! elements are added (their chains exist by then), removed chains and sets are deleted, and the
//! markers are swapped. The phases are `TableDiff`'s; the [`Planner`] fills the same phases from
//! the changes it makes. The base chains and the stage-1 chains are the same in every model and
//! are never re-sent. Equal models give an empty batch.
//!
//! Chain and set names are derived from group names: characters other than ASCII letters, digits
//! and `_` become `_`, and a name that had to be changed gets a short hash of the original
//! appended so that `web-1` and `web.1` stay apart. The prefixes (`eg_`, `in_`, `sg_`) keep names
//! clear of nft keywords such as `fwd`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use super::document::{Direction, Port, PortsDoc, Protocol, Remote, Rule};

mod plan;
use crate::config::{AntiSpoofing, EgressDefault, GuardConfig};
pub use plan::{PlanKind, Planner};

/// Name of the one-element set in each table that holds the marker of the applied state.
pub const MARKER_SET: &str = "flat6_state";

/// Name of the base chain (hook forward) in both tables.
pub const BASE_CHAIN: &str = "forward";

/// The bridge set of instance ports (`ifname`).
pub const PORTS_SET: &str = "ports";
/// The bridge set `ifname . ether_addr` of each port's MAC.
pub const PORT_MAC_SET: &str = "port_mac";
/// The bridge set `ifname . ipv6_addr` of each port's allowed sources.
pub const PORT_SOURCE_SET: &str = "port_src";
/// The bridge set of each port's MAC as the raw 48 bits of an ND link-layer address option.
pub const ND_MAC_SET: &str = "nd_mac";
/// The bridge set of each port's allowed Neighbor Advertisement targets as raw 128 bits.
pub const NA_TARGET_SET: &str = "na_target";
/// The shared bridge chain for frames from an instance port.
pub const FROM_CHAIN: &str = "from_instance";
/// The shared bridge chain for frames to an instance port.
pub const TO_CHAIN: &str = "to_instance";
/// The inet map from a port's address keys to the mark of its set of groups.
pub const PORT_GROUPS_MAP: &str = "port_groups";
/// The inet verdict map from the mark of a set of groups to its `eg_` chain.
pub const EGRESS_MAP: &str = "egress";
/// The inet verdict map from the mark of a set of groups to its `in_` chain.
pub const INGRESS_MAP: &str = "ingress";

/// `fe80::/10`, link-local unicast (RFC 4291 §2.5.6).
const LINK_LOCAL: &str = "fe80::/10";

/// The hook line of both base chains.
const BASE_HOOK: &str = "type filter hook forward priority 0; policy accept;";

/// What the renderer needs from the guard config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Name of both tables (`bridge <table>` and `inet <table>`).
    pub table: String,
    /// How strictly an instance's IPv6 source address is checked.
    pub anti_spoofing: AntiSpoofing,
    /// What happens to egress traffic that no rule allows.
    pub egress: EgressDefault,
    /// The routers' link-local addresses, which no instance may send from or advertise (sorted).
    pub router_link_local: Vec<Ipv6Addr>,
}

impl From<&GuardConfig> for Settings {
    fn from(config: &GuardConfig) -> Self {
        Settings {
            table: config.table.clone(),
            anti_spoofing: config.anti_spoofing,
            egress: config.egress,
            router_link_local: config.router_link_local.clone(),
        }
    }
}

/// The ruleset the guard wants in force: both tables' chains with their rules and the named sets
/// and maps with their elements. Built by [`render`]; turned into nft commands by [`full_batch`]
/// and [`diff_batch`]. The table name is not part of it (it comes with the [`Settings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// [`Desired::marker`], computed once by [`render`]. First, so that comparing two models
    /// usually stops here.
    marker: u64,
    /// The sum of [`element_hash`] over every element of every set: the part of the marker that
    /// [`Planner`] updates element by element.
    elem_sum: u64,
    bridge: TableState,
    inet: TableState,
}

/// One table's contents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct TableState {
    chains: BTreeMap<String, ChainState>,
    /// Named sets and maps.
    sets: BTreeMap<String, SetState>,
}

/// One chain: a base chain (hook forward, priority 0, policy accept) or a regular one, with its
/// rules in nft syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainState {
    base: bool,
    rules: Vec<String>,
}

/// A named set or verdict map: its declaration and its elements, key → value (`None` in a set,
/// `jump <chain>` in a map), both in nft syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SetState {
    map: bool,
    /// The body of the declaration, e.g. `type ifname . ether_addr;`.
    decl: String,
    elems: BTreeMap<String, Option<String>>,
}

impl SetState {
    fn set(decl: impl Into<String>) -> Self {
        SetState {
            map: false,
            decl: decl.into(),
            elems: BTreeMap::new(),
        }
    }

    fn map(decl: impl Into<String>) -> Self {
        SetState {
            map: true,
            ..SetState::set(decl)
        }
    }

    fn kind(&self) -> &'static str {
        if self.map { "map" } else { "set" }
    }

    fn insert(&mut self, key: String) {
        self.elems.insert(key, None);
    }
}

/// One element as nft writes it: `key` or `key : value`.
fn element_text(key: &str, value: Option<&String>) -> String {
    match value {
        Some(v) => format!("{key} : {v}"),
        None => key.to_string(),
    }
}

/// Which of the two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// `bridge <table>`: per-port identity.
    Bridge,
    /// `inet <table>`: security groups.
    Inet,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Bridge => "bridge",
            Family::Inet => "inet",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Desired {
    fn tables(&self) -> [(Family, &TableState); 2] {
        [(Family::Bridge, &self.bridge), (Family::Inet, &self.inet)]
    }

    fn table(&self, family: Family) -> &TableState {
        match family {
            Family::Bridge => &self.bridge,
            Family::Inet => &self.inet,
        }
    }

    /// A stable identifier of this state, 16 hex digits: a FNV-1a 64 hash of the canonical text
    /// of both tables without their elements (chains, rules, set declarations), plus the sum of
    /// the hashes of every element (`element_hash`). Equal models have equal markers across
    /// runs and builds; any change to a rule or element changes it (but for a 2^-64 chance), and
    /// an element change updates it without a pass over the other elements.
    pub fn marker(&self) -> String {
        format!("{:016x}", self.marker)
    }

    fn compute_marker(&self) -> u64 {
        let mut hash = Fnv1a64::new();
        hash.write(b"flat6 guard marker v4\n");
        // Writing into the hasher cannot fail.
        let _ = self.write_tables("t", false, &mut hash);
        hash.finish().wrapping_add(self.elem_sum)
    }

    fn compute_elem_sum(&self) -> u64 {
        let mut sum = 0u64;
        for (family, table) in self.tables() {
            for (name, set) in &table.sets {
                for (k, v) in &set.elems {
                    sum = sum.wrapping_add(element_hash(family, name, k, v.as_deref()));
                }
            }
        }
        sum
    }

    /// Both tables in nft's syntax (what `nft list table` would show, without the marker set),
    /// with or without the sets' elements.
    fn write_tables(
        &self,
        table: &str,
        with_elements: bool,
        out: &mut impl fmt::Write,
    ) -> fmt::Result {
        for (family, state) in self.tables() {
            writeln!(out, "table {family} {table} {{")?;
            for (name, set) in &state.sets {
                writeln!(out, "\t{} {name} {{", set.kind())?;
                for line in set.decl.split(';').map(str::trim).filter(|l| !l.is_empty()) {
                    writeln!(out, "\t\t{line}")?;
                }
                if with_elements && !set.elems.is_empty() {
                    writeln!(out, "\t\telements = {{")?;
                    let last = set.elems.len() - 1;
                    for (i, (k, v)) in set.elems.iter().enumerate() {
                        let sep = if i == last { "" } else { "," };
                        match v {
                            Some(v) => writeln!(out, "\t\t\t{k} : {v}{sep}")?,
                            None => writeln!(out, "\t\t\t{k}{sep}")?,
                        }
                    }
                    writeln!(out, "\t\t}}")?;
                }
                writeln!(out, "\t}}")?;
            }
            for (name, chain) in &state.chains {
                writeln!(out, "\tchain {name} {{")?;
                if chain.base {
                    writeln!(out, "\t\t{BASE_HOOK}")?;
                }
                for rule in &chain.rules {
                    writeln!(out, "\t\t{rule}")?;
                }
                writeln!(out, "\t}}")?;
            }
            writeln!(out, "}}")?;
        }
        Ok(())
    }

    /// The whole model in nft's syntax, for `flat6 guard render`, logs and tests.
    pub fn describe_rules(&self) -> String {
        let mut out = String::new();
        let _ = self.write_tables("<table>", true, &mut out);
        out
    }

    /// The rules of one chain, or `None` when there is no such chain.
    pub fn rules(&self, family: Family, chain: &str) -> Option<Vec<&str>> {
        self.table(family)
            .chains
            .get(chain)
            .map(|c| c.rules.iter().map(String::as_str).collect())
    }

    /// The names of one table's chains.
    pub fn chains(&self, family: Family) -> Vec<&str> {
        self.table(family)
            .chains
            .keys()
            .map(String::as_str)
            .collect()
    }

    /// The elements of a named set or map as nft writes them (`key` or `key : jump chain`), or
    /// `None` when there is no such set.
    pub fn elements(&self, family: Family, set: &str) -> Option<Vec<String>> {
        self.table(family).sets.get(set).map(|s| {
            s.elems
                .iter()
                .map(|(k, v)| element_text(k, v.as_ref()))
                .collect()
        })
    }

    /// How many set and map elements the model holds (for logs).
    pub fn element_count(&self) -> usize {
        self.tables()
            .iter()
            .flat_map(|(_, t)| t.sets.values())
            .map(|s| s.elems.len())
            .sum()
    }
}

/// The hash of one element of the set `set` in `family`'s table, a term of [`Desired::marker`].
fn element_hash(family: Family, set: &str, key: &str, value: Option<&str>) -> u64 {
    let mut h = Fnv1a64::new();
    h.write(family.name().as_bytes());
    h.write(&[0]);
    h.write(set.as_bytes());
    h.write(&[0]);
    h.write(key.as_bytes());
    if let Some(v) = value {
        h.write(&[0]);
        h.write(v.as_bytes());
    }
    // FNV-1a alone is nearly linear in its last bytes: two elements that differ only there (a
    // MAC in `port_mac` and in `nd_mac`) can change the sum by amounts that cancel. MurmurHash3's
    // 64-bit finalizer spreads every input bit over the whole word first.
    let mut x = h.finish();
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The marker as it is stored in the [`MARKER_SET`] element: `::` plus the 64-bit hash.
fn marker_addr(value: u64) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(value))
}

/// The marker string for a [`MARKER_SET`] element read back from nft, the inverse of the encoding
/// [`full_batch`] writes. An element with the high 64 bits set (not written by flat6) yields a
/// longer string that matches no [`Desired::marker`].
pub fn marker_from_element(addr: Ipv6Addr) -> String {
    let value = u128::from(addr);
    match u64::try_from(value) {
        Ok(v) => format!("{v:016x}"),
        Err(_) => format!("{value:032x}"),
    }
}

/// FNV-1a, 64 bits: a fixed, seedless hash (unlike std's `DefaultHasher`).
struct Fnv1a64(u64);

impl Fnv1a64 {
    fn new() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl fmt::Write for Fnv1a64 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a64::new();
    h.write(bytes);
    h.finish()
}

// ---------------------------------------------------------------------------------------------
// Names

/// An nft identifier for an arbitrary name: unchanged when it is already `[A-Za-z0-9_]+` (and not
/// too long), else cleaned and suffixed with a hash of the original so distinct names stay
/// distinct.
fn ident(raw: &str) -> String {
    const MAX: usize = 48;
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(MAX)
        .collect();
    if clean == raw && !raw.is_empty() {
        clean
    } else {
        format!("{clean}_{:08x}", fnv1a64(raw.as_bytes()) & 0xffff_ffff)
    }
}

/// Assigns unique identifiers; a clash (only possible with names crafted to look like a hashed
/// one) gets a counter.
#[derive(Default)]
struct Idents {
    taken: BTreeSet<String>,
}

impl Idents {
    fn assign(&mut self, raw: &str) -> String {
        let base = ident(raw);
        let mut candidate = base.clone();
        let mut n = 2u32;
        while !self.taken.insert(candidate.clone()) {
            candidate = format!("{base}_{n}");
            n += 1;
        }
        candidate
    }
}

// ---------------------------------------------------------------------------------------------
// Keys and elements

/// An address or prefix as nft writes it: `2001:db8::1` for a /128, else `2001:db8::/64`.
fn net_text(net: Ipv6Net) -> String {
    if net.prefix_len() == 128 {
        net.addr().to_string()
    } else {
        net.trunc().to_string()
    }
}

/// An address or prefix as a raw 128-bit payload value: one hex value for a /128, else the
/// range `first-last`.
fn raw_net(net: Ipv6Net) -> String {
    let (lo, hi) = (u128::from(net.network()), u128::from(net.broadcast()));
    if lo == hi {
        format!("0x{lo:032x}")
    } else {
        format!("0x{lo:032x}-0x{hi:032x}")
    }
}

/// A quoted interface name (validated: no quotes, whitespace or control characters).
fn ifname(name: &str) -> String {
    format!("\"{name}\"")
}

fn normalize(nets: impl IntoIterator<Item = Ipv6Net>) -> Vec<Ipv6Net> {
    let mut sorted: Vec<Ipv6Net> = nets.into_iter().map(|n| n.trunc()).collect();
    // Shorter prefixes first so containers are seen before what they contain.
    sorted.sort_by_key(|n| (n.prefix_len(), *n));
    sorted.dedup();
    let mut kept: Vec<Ipv6Net> = Vec::new();
    for n in sorted {
        if !kept.iter().any(|k| k.contains(&n)) {
            kept.push(n);
        }
    }
    kept.sort();
    kept
}

/// The global addresses (or prefix) that identify a port as a source: what stage 1 allows besides
/// link-local and `::`, and the port's keys in stage 2.
fn port_keys(settings: &Settings, port: &Port) -> Vec<Ipv6Net> {
    let addresses = port.addresses.iter().map(|a| Ipv6Net::from(*a));
    match (settings.anti_spoofing, port.prefix) {
        (AntiSpoofing::Prefix, Some(prefix)) => {
            normalize(std::iter::once(prefix.net()).chain(addresses))
        }
        _ => normalize(addresses),
    }
}

fn mac_raw(port: &Port) -> String {
    let value = port
        .mac
        .octets()
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    format!("0x{value:012x}")
}

// ---------------------------------------------------------------------------------------------
// The fixed parts

/// `flags interval;` where keys can be prefixes (prefix mode), else nothing.
fn interval(settings: &Settings) -> &'static str {
    match settings.anti_spoofing {
        AntiSpoofing::Prefix => " flags interval;",
        AntiSpoofing::Address => "",
    }
}

/// The bridge table without any port: its sets (empty), chains and rules.
fn bridge_skeleton(settings: &Settings) -> TableState {
    let iv = interval(settings);
    let mut t = TableState::default();
    t.sets
        .insert(PORTS_SET.into(), SetState::set("type ifname;"));
    t.sets.insert(
        PORT_MAC_SET.into(),
        SetState::set("type ifname . ether_addr;"),
    );
    t.sets.insert(
        PORT_SOURCE_SET.into(),
        SetState::set(format!("type ifname . ipv6_addr;{iv}")),
    );
    t.sets.insert(
        ND_MAC_SET.into(),
        SetState::set("typeof iifname . @th,208,48;"),
    );
    t.sets.insert(
        NA_TARGET_SET.into(),
        SetState::set(format!("typeof iifname . @th,64,128;{iv}")),
    );
    let mut from = vec![
        format!("iifname . ether saddr != @{PORT_MAC_SET} drop"),
        // VLAN-tagged frames would skip every IPv6 check below (and br_netfilter's hooks): an
        // instance port is untagged, so a tag from the instance is never legitimate.
        "ether type { 8021q, 8021ad } drop".into(),
        "ether type != ip6 return".into(),
        // The common case first: TCP from one of the port's own sources needs none of the ICMPv6
        // and UDP checks below (a spoofed source falls through to them and to the final drop).
        format!("meta l4proto tcp iifname . ip6 saddr @{PORT_SOURCE_SET} return"),
        // RA guard (RFC 6105) and no redirects from an instance.
        "icmpv6 type { nd-router-advert, nd-redirect } drop".into(),
        // DHCPv6 shield (RFC 7610).
        "udp sport 547 drop".into(),
        "udp dport 546 drop".into(),
        // RFC 4861 §4.1: a Router Solicitation's options start at offset 8; type 1, length 1.
        format!(
            "icmpv6 type nd-router-solicit @th,64,16 0x0101 iifname . @th,80,48 != @{ND_MAC_SET} drop"
        ),
        // RFC 4861 §4.3/§4.4/§4.6.1: first option at offset 24: type (1 source, 2 target
        // link-layer address), length 1 (8 octets), then the MAC.
        format!(
            "icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} @th,192,16 {{ 0x0101, 0x0201 }} iifname . @th,208,48 != @{ND_MAC_SET} drop"
        ),
        // RFC 4861 §4.4: the NA target at offset 8 must be link-local or one of the port's.
        format!(
            "icmpv6 type nd-neighbor-advert @th,64,16 & 0xffc0 != 0xfe80 iifname . @th,64,128 != @{NA_TARGET_SET} drop"
        ),
    ];
    if !settings.router_link_local.is_empty() {
        // The routers' link-local addresses are the instances' default gateway: an instance that
        // sent from one, or advertised one as its own (an NA with the override flag), would take
        // the gateway's traffic from its neighbours.
        let addrs: Vec<String> = settings
            .router_link_local
            .iter()
            .map(|a| a.to_string())
            .collect();
        let raw: Vec<String> = settings
            .router_link_local
            .iter()
            .map(|a| format!("0x{:032x}", u128::from(*a)))
            .collect();
        from.push(format!("ip6 saddr {{ {} }} drop", addrs.join(", ")));
        from.push(format!(
            "icmpv6 type nd-neighbor-advert @th,64,128 {{ {} }} drop",
            raw.join(", ")
        ));
    }
    from.extend([
        format!("iifname . ip6 saddr @{PORT_SOURCE_SET} return"),
        format!("ip6 saddr {LINK_LOCAL} return"),
        // `::` only for Neighbor Solicitation (DAD, RFC 4862 §5.4.2) and MLD reports (RFC 3590).
        "ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld-listener-report, mld2-listener-report } return"
            .into(),
        "drop".into(),
    ]);
    let to = [
        "ether type != ip6 return".to_string(),
        format!("ip6 daddr != {LINK_LOCAL} return"),
        "meta l4proto ipv6-icmp return".into(),
        "udp sport 547 udp dport 546 return".into(),
        "drop".into(),
    ];
    t.chains.insert(
        FROM_CHAIN.into(),
        ChainState {
            base: false,
            rules: from,
        },
    );
    t.chains.insert(
        TO_CHAIN.into(),
        ChainState {
            base: false,
            rules: to.into(),
        },
    );
    t.chains.insert(
        BASE_CHAIN.into(),
        ChainState {
            base: true,
            rules: vec![
                format!("iifname @{PORTS_SET} jump {FROM_CHAIN}"),
                format!("oifname @{PORTS_SET} jump {TO_CHAIN}"),
            ],
        },
    );
    t
}

/// The inet table without any port: the two (empty) maps and the base chain.
fn inet_skeleton(settings: &Settings) -> TableState {
    let iv = interval(settings);
    let mut t = TableState::default();
    t.sets.insert(
        PORT_GROUPS_MAP.into(),
        SetState::map(format!("type ipv6_addr : mark;{iv}")),
    );
    for name in [EGRESS_MAP, INGRESS_MAP] {
        t.sets
            .insert(name.into(), SetState::map("type mark : verdict;"));
    }
    t.chains.insert(
        BASE_CHAIN.into(),
        ChainState {
            base: true,
            rules: vec![
                "meta nfproto != ipv6 accept".into(),
                "ct state established,related accept".into(),
                // RFC 4890 §4.3.1 (must not be dropped) and echo (§4.3.1, §4.4.1 for MLD).
                "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, echo-reply, mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report } accept".into(),
                // RFC 4861 §6.1.1, §7.1.1: valid ND has hop limit 255.
                "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept".into(),
                // One rule each, so that a key not in the map ends the rule before the mark is
                // used: a packet's own mark never selects a chain.
                format!("meta mark set ip6 saddr map @{PORT_GROUPS_MAP} meta mark vmap @{EGRESS_MAP}"),
                format!("meta mark set ip6 daddr map @{PORT_GROUPS_MAP} meta mark vmap @{INGRESS_MAP}"),
            ],
        },
    );
    t
}

/// One security-group rule in nft syntax (without its verdict); `set_of` names a remote group's
/// member set.
fn rule_text(r: &Rule, set_of: &mut dyn FnMut(&str) -> String) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut ports = |proto: &str| match r.ports {
        Some((lo, hi)) if lo == hi => parts.push(format!("{proto} dport {lo}")),
        Some((lo, hi)) => parts.push(format!("{proto} dport {lo}-{hi}")),
        None => parts.push(format!("meta l4proto {proto}")),
    };
    match r.protocol {
        Protocol::Tcp => ports("tcp"),
        Protocol::Udp => ports("udp"),
        Protocol::Icmpv6 => parts.push("meta l4proto ipv6-icmp".into()),
        Protocol::Any => {}
    }
    let remote_field = match r.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    match &r.remote {
        Remote::Prefix(p) if p.is_default() => {}
        Remote::Prefix(p) => parts.push(format!("ip6 {remote_field} {}", net_text(p.net()))),
        Remote::Group(g) => {
            let name = set_of(g);
            parts.push(format!("ip6 {remote_field} @{name}"));
        }
    }
    parts.join(" ")
}

/// Keys already given to a port in the inet maps, mutually disjoint, by network address, with the
/// interface of the port that has each.
#[derive(Debug, Clone, Default)]
struct Claimed {
    by_start: BTreeMap<u128, (Ipv6Net, String)>,
}

impl Claimed {
    /// The claimed keys that contain `key` or lie inside it. Two prefixes overlap only if one
    /// contains the other; as claimed keys are disjoint, the only one that can contain `key` is
    /// the last one starting at or before it. O(log n) plus the keys found.
    fn overlapping(&self, key: Ipv6Net) -> impl Iterator<Item = &(Ipv6Net, String)> {
        let (start, end) = (u128::from(key.network()), u128::from(key.broadcast()));
        let container = self
            .by_start
            .range(..=start)
            .next_back()
            .map(|(_, v)| v)
            .filter(|(k, _)| k.contains(&key));
        let inside = self
            .by_start
            .range(start..=end)
            .map(|(_, v)| v)
            .filter(move |(k, _)| u128::from(k.network()) != start || container.is_none());
        container.into_iter().chain(inside)
    }

    fn claim(&mut self, key: Ipv6Net, owner: &str) {
        self.by_start
            .insert(u128::from(key.network()), (key, owner.to_string()));
    }

    fn release(&mut self, key: Ipv6Net) {
        self.by_start.remove(&u128::from(key.network()));
    }
}

/// The `eg_`/`in_` chain pair of one set of groups (sorted, without duplicates), and the mark
/// that selects them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupChains {
    egress: String,
    ingress: String,
    mark: String,
}

impl GroupChains {
    /// The verdict-map elements that select these chains: `(map, mark, jump chain)`.
    fn map_elements(&self) -> [(&'static str, String, String); 2] {
        [
            (
                EGRESS_MAP,
                self.mark.clone(),
                format!("jump {}", self.egress),
            ),
            (
                INGRESS_MAP,
                self.mark.clone(),
                format!("jump {}", self.ingress),
            ),
        ]
    }

    /// The two chains with their rules.
    fn with_rules(&self, egress: Vec<String>, ingress: Vec<String>) -> [(String, ChainState); 2] {
        [
            (
                self.egress.clone(),
                ChainState {
                    base: false,
                    rules: egress,
                },
            ),
            (
                self.ingress.clone(),
                ChainState {
                    base: false,
                    rules: ingress,
                },
            ),
        ]
    }
}

/// A mark for the set of groups named `key`: 32 bits of its hash, never 0. Derived from the
/// groups rather than numbered, so that a new set of groups leaves every other port's mark, and
/// so its map element, as it was.
fn combo_mark_value(key: &str) -> u32 {
    match (fnv1a64(key.as_bytes()) & 0xffff_ffff) as u32 {
        0 => 1,
        m => m,
    }
}

fn mark_text(mark: u32) -> String {
    format!("0x{mark:08x}")
}

/// The name of a set of groups, from which its chain names and mark derive.
fn combo_key(groups: &[String]) -> String {
    format!("g:{}", groups.join(","))
}

/// One set of groups in the model: its chains and mark, the groups its rules refer to (whose
/// member sets it needs), and how many ports use it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Combo {
    chains: GroupChains,
    refs: BTreeSet<String>,
    ports: usize,
}

impl Combo {
    /// A set of groups with its chains, used by no port yet.
    fn unused(chains: GroupChains, refs: BTreeSet<String>) -> Self {
        Combo {
            chains,
            refs,
            ports: 0,
        }
    }
}

/// What [`render`] learns besides the model, kept by [`Planner`] for incremental updates.
#[derive(Debug, Clone, Default)]
struct Index {
    /// Each set of groups (sorted) in use.
    combos: BTreeMap<Vec<String>, Combo>,
    /// Group name → the name of its member set, for the groups a rendered rule refers to.
    group_sets: BTreeMap<String, String>,
    claimed: Claimed,
    /// A port's key or interface was skipped because an earlier port had it: the model depends
    /// on the order of the ports, and only a full render gets it right.
    conflicts: bool,
}

/// The rules of the `eg_`/`in_` chains of `groups`, and the remote groups they refer to; `set_of`
/// names the member set of a remote group.
fn combo_rules(
    settings: &Settings,
    doc: &PortsDoc,
    groups: &[String],
    set_of: &mut dyn FnMut(&str) -> String,
) -> (Vec<String>, Vec<String>, BTreeSet<String>) {
    let mut egress_rules: Vec<String> = Vec::new();
    let mut ingress_rules: Vec<String> = Vec::new();
    let mut refs = BTreeSet::new();
    for group in groups.iter().filter_map(|g| doc.groups.get(g)) {
        for r in &group.rules {
            if let Remote::Group(g) = &r.remote {
                refs.insert(g.clone());
            }
            let text = rule_text(r, set_of);
            let (rules, verdict) = match r.direction {
                Direction::Egress => (&mut egress_rules, "return"),
                Direction::Ingress => (&mut ingress_rules, "accept"),
            };
            let built = if text.is_empty() {
                verdict.to_string()
            } else {
                format!("{text} {verdict}")
            };
            if !rules.contains(&built) {
                rules.push(built);
            }
        }
    }
    if settings.egress == EgressDefault::Deny {
        egress_rules.push("drop".into());
    }
    ingress_rules.push("drop".into());
    (egress_rules, ingress_rules, refs)
}

/// A port's groups as a set-of-groups key: those the document defines, sorted, without
/// duplicates.
fn port_combo(doc: &PortsDoc, port: &Port) -> Vec<String> {
    let mut groups: Vec<String> = port
        .security_groups
        .iter()
        .filter(|g| doc.groups.contains_key(*g))
        .cloned()
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// A port's elements in the bridge table's sets: `(set, element)`.
fn bridge_elements(keys: &[Ipv6Net], port: &Port) -> Vec<(&'static str, String)> {
    let iface = ifname(&port.interface);
    let mut out = vec![
        (PORT_MAC_SET, format!("{iface} . {}", port.mac)),
        (ND_MAC_SET, format!("{iface} . {}", mac_raw(port))),
    ];
    for key in keys {
        out.push((PORT_SOURCE_SET, format!("{iface} . {}", net_text(*key))));
        out.push((NA_TARGET_SET, format!("{iface} . {}", raw_net(*key))));
    }
    out.push((PORTS_SET, iface));
    out
}

/// The ruleset for `doc` under `settings`. Pure; the document is assumed valid (see
/// `document::PortsDoc::parse`). Should two ports still claim overlapping keys in stage 2 (e.g.
/// the same prefix in prefix mode), the first port in document order keeps the key and a warning
/// is logged, so that nft never sees overlapping map elements.
pub fn render(settings: &Settings, doc: &PortsDoc) -> Desired {
    build(settings, doc).0
}

/// [`render`], and the [`Index`] that lets [`Planner`] update the model port by port.
fn build(settings: &Settings, doc: &PortsDoc) -> (Desired, Index) {
    let mut bridge = bridge_skeleton(settings);
    let mut inet = inet_skeleton(settings);
    let mut set_idents = Idents::default();
    let mut chain_idents = Idents::default();
    let mut index = Index::default();
    let mut seen_ifnames: BTreeSet<&str> = BTreeSet::new();
    let mut marks: BTreeSet<u32> = BTreeSet::new();
    let mut port_elems: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut egress_elems: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut ingress_elems: BTreeMap<String, Option<String>> = BTreeMap::new();

    for port in &doc.ports {
        // Interface names are unique in a valid document; should one repeat, the first port keeps
        // it, as with overlapping address keys.
        if !seen_ifnames.insert(port.interface.as_str()) {
            tracing::warn!(port = %port.name, interface = %port.interface, "interface already used by an earlier port; ignored");
            index.conflicts = true;
            continue;
        }
        let keys = port_keys(settings, port);
        for (set, elem) in bridge_elements(&keys, port) {
            if let Some(s) = bridge.sets.get_mut(set) {
                s.insert(elem);
            }
        }

        let groups = port_combo(doc, port);
        if !index.combos.contains_key(&groups) {
            let key = combo_key(&groups);
            let id = chain_idents.assign(&key);
            let mut mark = combo_mark_value(&key);
            while !marks.insert(mark) {
                mark = mark.wrapping_add(1).max(1);
            }
            let chains = GroupChains {
                egress: format!("eg_{id}"),
                ingress: format!("in_{id}"),
                mark: mark_text(mark),
            };
            let group_sets = &mut index.group_sets;
            let (egress_rules, ingress_rules, refs) =
                combo_rules(settings, doc, &groups, &mut |g: &str| {
                    group_sets
                        .entry(g.to_string())
                        .or_insert_with(|| format!("sg_{}", set_idents.assign(g)))
                        .clone()
                });
            for (map, key, value) in chains.map_elements() {
                let elems = if map == EGRESS_MAP {
                    &mut egress_elems
                } else {
                    &mut ingress_elems
                };
                elems.insert(key, Some(value));
            }
            inet.chains
                .extend(chains.with_rules(egress_rules, ingress_rules));
            index
                .combos
                .insert(groups.clone(), Combo::unused(chains, refs));
        }
        let Some(combo) = index.combos.get_mut(&groups) else {
            continue;
        };
        combo.ports += 1;

        for key in keys {
            if let Some((_, owner)) = index.claimed.overlapping(key).next() {
                tracing::warn!(
                    port = %port.name,
                    key = %key,
                    owner = %owner,
                    "address key overlaps another port's; security groups use the other port's rules for it"
                );
                index.conflicts = true;
                continue;
            }
            index.claimed.claim(key, &port.interface);
            port_elems.insert(net_text(key), Some(combo.chains.mark.clone()));
        }
    }

    for (name, elems) in [
        (PORT_GROUPS_MAP, port_elems),
        (EGRESS_MAP, egress_elems),
        (INGRESS_MAP, ingress_elems),
    ] {
        if let Some(map) = inet.sets.get_mut(name) {
            map.elems = elems;
        }
    }
    for (group, set) in &index.group_sets {
        let mut state = SetState::set("type ipv6_addr;");
        if let Some(g) = doc.groups.get(group) {
            for member in &g.members {
                state.insert(member.to_string());
            }
        }
        inet.sets.insert(set.clone(), state);
    }

    let mut desired = Desired {
        marker: 0,
        elem_sum: 0,
        bridge,
        inet,
    };
    desired.elem_sum = desired.compute_elem_sum();
    desired.marker = desired.compute_marker();
    (desired, index)
}

// ---------------------------------------------------------------------------------------------
// Batches

/// One nft command of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cmd {
    AddTable(Family),
    DeleteTable(Family),
    AddChain {
        family: Family,
        name: String,
        base: bool,
    },
    FlushChain(Family, String),
    DeleteChain(Family, String),
    /// The rules go to the end of the chain.
    AddRules {
        family: Family,
        chain: String,
        rules: Vec<String>,
    },
    AddSet {
        family: Family,
        name: String,
        map: bool,
        decl: String,
    },
    DeleteSet {
        family: Family,
        name: String,
        map: bool,
    },
    /// Elements as nft writes them (`key` or `key : value`).
    AddElements {
        family: Family,
        set: String,
        elems: Vec<String>,
    },
    /// Keys only.
    DeleteElements {
        family: Family,
        set: String,
        keys: Vec<String>,
    },
}

/// A list of nft commands applied as one transaction (`nft -f -`). Empty when nothing changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    table: String,
    cmds: Vec<Cmd>,
}

impl Batch {
    fn new(table: &str) -> Self {
        Batch {
            table: table.to_string(),
            cmds: Vec::new(),
        }
    }

    /// Whether the batch has no commands.
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// How many commands the batch holds.
    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    /// How many set and map elements the batch adds or deletes.
    pub fn element_count(&self) -> usize {
        self.cmds
            .iter()
            .map(|c| match c {
                Cmd::AddElements { elems, .. } => elems.len(),
                Cmd::DeleteElements { keys, .. } => keys.len(),
                _ => 0,
            })
            .sum()
    }

    /// The batch in nft's syntax, exactly what `nft -f -` is given.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> fmt::Result {
        let t = &self.table;
        for cmd in &self.cmds {
            match cmd {
                Cmd::AddTable(f) => writeln!(out, "add table {f} {t}")?,
                Cmd::DeleteTable(f) => writeln!(out, "delete table {f} {t}")?,
                Cmd::AddChain { family, name, base } => {
                    if *base {
                        writeln!(out, "add chain {family} {t} {name} {{ {BASE_HOOK} }}")?;
                    } else {
                        writeln!(out, "add chain {family} {t} {name}")?;
                    }
                }
                Cmd::FlushChain(f, name) => writeln!(out, "flush chain {f} {t} {name}")?,
                Cmd::DeleteChain(f, name) => writeln!(out, "delete chain {f} {t} {name}")?,
                Cmd::AddRules {
                    family,
                    chain,
                    rules,
                } => {
                    writeln!(out, "table {family} {t} {{\n\tchain {chain} {{")?;
                    for rule in rules {
                        writeln!(out, "\t\t{rule}")?;
                    }
                    writeln!(out, "\t}}\n}}")?;
                }
                Cmd::AddSet {
                    family,
                    name,
                    map,
                    decl,
                } => {
                    let kind = if *map { "map" } else { "set" };
                    writeln!(out, "add {kind} {family} {t} {name} {{ {decl} }}")?;
                }
                Cmd::DeleteSet { family, name, map } => {
                    let kind = if *map { "map" } else { "set" };
                    writeln!(out, "delete {kind} {family} {t} {name}")?;
                }
                Cmd::AddElements { family, set, elems } => {
                    write_elements(out, "add", *family, t, set, elems)?;
                }
                Cmd::DeleteElements { family, set, keys } => {
                    write_elements(out, "delete", *family, t, set, keys)?;
                }
            }
        }
        Ok(())
    }
}

/// `<verb> element <family> <table> <set> { e1, e2, … }`, one element per line.
fn write_elements(
    out: &mut String,
    verb: &str,
    family: Family,
    table: &str,
    set: &str,
    elems: &[String],
) -> fmt::Result {
    writeln!(out, "{verb} element {family} {table} {set} {{")?;
    let last = elems.len().saturating_sub(1);
    for (i, e) in elems.iter().enumerate() {
        let sep = if i == last { "" } else { "," };
        writeln!(out, "\t{e}{sep}")?;
    }
    writeln!(out, "}}")
}

fn marker_elem(value: u64) -> String {
    marker_addr(value).to_string()
}

/// One transaction that replaces both tables with `desired`: delete them if present (`add` first,
/// so the delete cannot fail on a missing table), then create every chain, set, map, marker and
/// rule. Nothing outside the two tables is touched, and until the transaction commits the old
/// rules stay in force.
pub fn full_batch(settings: &Settings, desired: &Desired) -> Batch {
    let mut b = Batch::new(&settings.table);
    for (family, _) in desired.tables() {
        b.cmds.push(Cmd::AddTable(family));
        b.cmds.push(Cmd::DeleteTable(family));
    }
    for (family, table) in desired.tables() {
        b.cmds.push(Cmd::AddTable(family));
        // Chains before the maps whose elements jump to them; sets and maps before the rules
        // that refer to them.
        for (name, chain) in &table.chains {
            b.cmds.push(Cmd::AddChain {
                family,
                name: name.clone(),
                base: chain.base,
            });
        }
        for (name, set) in &table.sets {
            b.cmds.extend(add_set(family, name, set));
        }
        b.cmds.push(Cmd::AddSet {
            family,
            name: MARKER_SET.into(),
            map: false,
            decl: "type ipv6_addr;".into(),
        });
        b.cmds.push(Cmd::AddElements {
            family,
            set: MARKER_SET.into(),
            elems: vec![marker_elem(desired.marker)],
        });
        for (name, chain) in &table.chains {
            if !chain.rules.is_empty() {
                b.cmds.push(Cmd::AddRules {
                    family,
                    chain: name.clone(),
                    rules: chain.rules.clone(),
                });
            }
        }
    }
    b
}

/// The commands that create `set` with its elements.
fn add_set(family: Family, name: &str, set: &SetState) -> Vec<Cmd> {
    let mut cmds = vec![Cmd::AddSet {
        family,
        name: name.to_string(),
        map: set.map,
        decl: set.decl.clone(),
    }];
    if !set.elems.is_empty() {
        cmds.push(Cmd::AddElements {
            family,
            set: name.to_string(),
            elems: set
                .elems
                .iter()
                .map(|(k, v)| element_text(k, v.as_ref()))
                .collect(),
        });
    }
    cmds
}

/// The keys to delete and the elements to add to turn `old` into `new`: one merge pass over the
/// two sorted maps (a set of 10,000 ports is compared in a few milliseconds).
fn element_changes(
    old: &BTreeMap<String, Option<String>>,
    new: &BTreeMap<String, Option<String>>,
) -> (Vec<String>, Vec<String>) {
    use std::cmp::Ordering;
    let (mut gone, mut added) = (Vec::new(), Vec::new());
    let (mut o, mut n) = (old.iter().peekable(), new.iter().peekable());
    loop {
        match (o.peek(), n.peek()) {
            (None, None) => break,
            (Some((k, _)), None) => {
                gone.push((*k).clone());
                o.next();
            }
            (None, Some((k, v))) => {
                added.push(element_text(k, v.as_ref()));
                n.next();
            }
            (Some((ok, ov)), Some((nk, nv))) => match ok.cmp(nk) {
                Ordering::Less => {
                    gone.push((*ok).clone());
                    o.next();
                }
                Ordering::Greater => {
                    added.push(element_text(nk, nv.as_ref()));
                    n.next();
                }
                Ordering::Equal => {
                    if ov != nv {
                        gone.push((*ok).clone());
                        added.push(element_text(nk, nv.as_ref()));
                    }
                    o.next();
                    n.next();
                }
            },
        }
    }
    (gone, added)
}

/// Commands for one table, in the phases of an incremental batch (see [`TableDiff::assemble`]).
/// Built by [`diff_table`] from two models, or by the planner from the changes it made.
#[derive(Default)]
struct TableDiff {
    /// Map elements that go away: before their chains are deleted and before a key they held is
    /// given to another port.
    unmap: Vec<Cmd>,
    /// New chains: before rules or map elements refer to them.
    create: Vec<Cmd>,
    /// New sets with their elements; set elements deleted, then added (interval sets must not
    /// overlap).
    add: Vec<Cmd>,
    /// Chains whose rules are new or changed: flushed and filled.
    refill: Vec<Cmd>,
    /// Map elements added (their chains exist by then).
    map: Vec<Cmd>,
    /// Removed chains (flushed, then deleted) and removed sets.
    remove: Vec<Cmd>,
}

impl TableDiff {
    /// Elements of `set` that go away (keys) and that are added (elements as nft writes them),
    /// each into its phase.
    fn elements(
        &mut self,
        family: Family,
        set: &str,
        map: bool,
        gone: Vec<String>,
        added: Vec<String>,
    ) {
        if !gone.is_empty() {
            let cmd = Cmd::DeleteElements {
                family,
                set: set.to_string(),
                keys: gone,
            };
            if map {
                self.unmap.push(cmd);
            } else {
                self.add.push(cmd);
            }
        }
        if !added.is_empty() {
            let cmd = Cmd::AddElements {
                family,
                set: set.to_string(),
                elems: added,
            };
            if map {
                self.map.push(cmd);
            } else {
                self.add.push(cmd);
            }
        }
    }

    /// A set that is new, with its elements (a map after the chains its elements jump to).
    fn new_set(&mut self, family: Family, name: &str, set: &SetState) {
        let cmds = add_set(family, name, set);
        if set.map {
            self.map.extend(cmds);
        } else {
            self.add.extend(cmds);
        }
    }

    /// A chain that is new, with its rules.
    fn new_chain(&mut self, family: Family, name: &str, chain: &ChainState) {
        self.create.push(Cmd::AddChain {
            family,
            name: name.to_string(),
            base: chain.base,
        });
        if !chain.rules.is_empty() {
            self.refill.push(Cmd::AddRules {
                family,
                chain: name.to_string(),
                rules: chain.rules.clone(),
            });
        }
    }

    /// Chains and sets that go away. The chains are only referenced by map elements deleted in
    /// the first phase and by rules re-filled before: flush them all before deleting any, then
    /// delete the sets no rule refers to any more. `sets`: name and whether it is a map.
    fn removed<'a>(
        &mut self,
        family: Family,
        chains: &[&String],
        sets: impl IntoIterator<Item = (&'a String, bool)>,
    ) {
        for name in chains {
            self.remove.push(Cmd::FlushChain(family, (*name).clone()));
        }
        for name in chains {
            self.remove.push(Cmd::DeleteChain(family, (*name).clone()));
        }
        for (name, map) in sets {
            self.remove.push(Cmd::DeleteSet {
                family,
                name: name.clone(),
                map,
            });
        }
    }

    /// The batch of both tables' diffs, phase by phase, then the markers swapped from
    /// `prev_marker` to `next_marker` (when they differ).
    fn assemble(
        table: &str,
        mut diffs: Vec<TableDiff>,
        prev_marker: u64,
        next_marker: u64,
    ) -> Batch {
        let mut b = Batch::new(table);
        for phase in [
            |d: &mut TableDiff| std::mem::take(&mut d.unmap),
            |d: &mut TableDiff| std::mem::take(&mut d.create),
            |d: &mut TableDiff| std::mem::take(&mut d.add),
            |d: &mut TableDiff| std::mem::take(&mut d.refill),
            |d: &mut TableDiff| std::mem::take(&mut d.map),
            |d: &mut TableDiff| std::mem::take(&mut d.remove),
        ] {
            for d in &mut diffs {
                b.cmds.append(&mut phase(d));
            }
        }
        if prev_marker != next_marker {
            for family in [Family::Bridge, Family::Inet] {
                b.cmds.push(Cmd::DeleteElements {
                    family,
                    set: MARKER_SET.into(),
                    keys: vec![marker_elem(prev_marker)],
                });
                b.cmds.push(Cmd::AddElements {
                    family,
                    set: MARKER_SET.into(),
                    elems: vec![marker_elem(next_marker)],
                });
            }
        }
        b
    }
}

fn diff_table(family: Family, prev: &TableState, next: &TableState) -> Option<TableDiff> {
    let base_chains = |s: &TableState| -> Vec<(String, Vec<String>)> {
        s.chains
            .iter()
            .filter(|(_, c)| c.base)
            .map(|(n, c)| (n.clone(), c.rules.clone()))
            .collect()
    };
    if base_chains(prev) != base_chains(next) {
        return None;
    }
    // A set present in both with another declaration cannot be changed in place.
    for (name, set) in &next.sets {
        if let Some(old) = prev.sets.get(name)
            && (old.decl != set.decl || old.map != set.map)
        {
            return None;
        }
    }
    let mut d = TableDiff::default();

    for (name, set) in &next.sets {
        match prev.sets.get(name) {
            // New sets (a remote group now referred to) come with their elements.
            None => d.new_set(family, name, set),
            // Elements that go away, or whose value changes, are deleted; new or changed ones
            // added.
            Some(old) => {
                let (gone, new) = element_changes(&old.elems, &set.elems);
                d.elements(family, name, set.map, gone, new);
            }
        }
    }

    for (name, chain) in &next.chains {
        match prev.chains.get(name) {
            None => d.new_chain(family, name, chain),
            Some(old) if old.rules == chain.rules => {}
            Some(_) => {
                d.refill.push(Cmd::FlushChain(family, name.clone()));
                if !chain.rules.is_empty() {
                    d.refill.push(Cmd::AddRules {
                        family,
                        chain: name.clone(),
                        rules: chain.rules.clone(),
                    });
                }
            }
        }
    }

    let removed: Vec<&String> = prev
        .chains
        .keys()
        .filter(|n| !next.chains.contains_key(*n))
        .collect();
    d.removed(
        family,
        &removed,
        prev.sets
            .iter()
            .filter(|(n, _)| !next.sets.contains_key(*n))
            .map(|(n, set)| (n, set.map)),
    );
    Some(d)
}

/// The smallest transaction that turns the applied `prev` into `next`: stale map elements
/// deleted, chains and sets added, set elements added and deleted, chains whose rules changed
/// flushed and re-filled, new map elements added, removed chains and sets deleted, markers
/// swapped. Its size depends on what changed, not on how many ports there are. Empty when
/// `prev == next`. When the base chains or set declarations differ (another `anti_spoofing`
/// mode, or another version of this renderer) it is [`full_batch`] of `next`.
pub fn diff_batch(settings: &Settings, prev: &Desired, next: &Desired) -> Batch {
    if prev == next {
        return Batch::new(&settings.table);
    }
    let mut diffs = Vec::new();
    for ((family, p), (_, n)) in prev.tables().into_iter().zip(next.tables()) {
        match diff_table(family, p, n) {
            Some(d) => diffs.push(d),
            None => return full_batch(settings, next),
        }
    }
    TableDiff::assemble(&settings.table, diffs, prev.marker, next.marker)
}

/// The batch as nft's text, exactly what `nft -f -` is given.
pub fn describe(batch: &Batch) -> String {
    batch.text()
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
pub(crate) mod fixtures {
    use std::collections::BTreeMap;
    use std::net::Ipv6Addr;

    use super::Settings;
    use crate::config::{AntiSpoofing, EgressDefault};
    use crate::guard::document::{Direction, Group, Port, PortsDoc, Protocol, Remote, Rule};
    use crate::model::{Mac, Prefix};

    pub fn settings() -> Settings {
        Settings {
            router_link_local: Vec::new(),
            table: "flat6".into(),
            anti_spoofing: AntiSpoofing::Address,
            egress: EgressDefault::Allow,
        }
    }

    pub fn addr(s: &str) -> Ipv6Addr {
        s.parse().expect("address")
    }

    pub fn prefix(s: &str) -> Prefix {
        s.parse().expect("prefix")
    }

    pub fn port(n: u8, groups: &[&str]) -> Port {
        Port {
            name: format!("vm{n}"),
            interface: format!("vnet{n}"),
            mac: Mac([0x02, 0, 0, 0, 0, n]),
            addresses: vec![addr(&format!("2001:db8:0:{n}::10"))],
            prefix: Some(prefix(&format!("2001:db8:0:{n}::/64"))),
            security_groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    pub fn tcp_in(ports: (u16, u16), remote: Remote) -> Rule {
        Rule {
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            ports: Some(ports),
            remote,
        }
    }

    pub fn group(name: &str, members: &[&str], rules: Vec<Rule>) -> Group {
        Group {
            name: name.into(),
            members: members.iter().map(|m| addr(m)).collect(),
            rules,
        }
    }

    pub fn doc(ports: Vec<Port>, groups: Vec<Group>) -> PortsDoc {
        PortsDoc {
            revision: 1,
            ports,
            groups: groups
                .into_iter()
                .map(|g| (g.name.clone(), g))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    /// Port number `i` of a large host: `vnet<i>`, `2001:db8:<i>::10` in `2001:db8:<i>::/64`.
    pub fn numbered_port(i: u16, groups: &[&str]) -> Port {
        let [hi, lo] = i.to_be_bytes();
        Port {
            name: format!("vm{i}"),
            interface: format!("vnet{i}"),
            mac: Mac([0x02, 0, 0, 0, hi, lo]),
            addresses: vec![addr(&format!("2001:db8:{i:x}::10"))],
            prefix: Some(prefix(&format!("2001:db8:{i:x}::/64"))),
            security_groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// `n` ports (`vnet1` …), all in group `web` of [`web`].
    pub fn many_ports(n: u16) -> PortsDoc {
        let mut d = web();
        d.ports = (1..=n).map(|i| numbered_port(i, &["web"])).collect();
        d
    }

    /// One port, no groups.
    pub fn lone_port() -> PortsDoc {
        doc(vec![port(1, &[])], vec![])
    }

    /// A port in group `web`: tcp 80 from anyone, tcp 22 from group `admin`.
    pub fn web() -> PortsDoc {
        doc(
            vec![port(1, &["web"])],
            vec![
                group(
                    "web",
                    &["2001:db8:0:1::10"],
                    vec![
                        tcp_in((80, 80), Remote::Prefix(prefix("::/0"))),
                        tcp_in((22, 22), Remote::Group("admin".into())),
                    ],
                ),
                group("admin", &["2001:db8:ff::1", "2001:db8:ff::2"], vec![]),
            ],
        )
    }

    /// Two ports sharing group `app`, which allows udp 8000-8100 from its own members and egress
    /// tcp to a prefix.
    pub fn shared() -> PortsDoc {
        doc(
            vec![port(1, &["app"]), port(2, &["app"])],
            vec![group(
                "app",
                &["2001:db8:0:1::10", "2001:db8:0:2::10"],
                vec![
                    Rule {
                        direction: Direction::Ingress,
                        protocol: Protocol::Udp,
                        ports: Some((8000, 8100)),
                        remote: Remote::Group("app".into()),
                    },
                    Rule {
                        direction: Direction::Egress,
                        protocol: Protocol::Tcp,
                        ports: Some((443, 443)),
                        remote: Remote::Prefix(prefix("2001:db8:aa::/48")),
                    },
                    Rule {
                        direction: Direction::Ingress,
                        protocol: Protocol::Icmpv6,
                        ports: None,
                        remote: Remote::Prefix(prefix("2001:db8:bb::/64")),
                    },
                ],
            )],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;
    use crate::guard::document::Group;
    use proptest::prelude::*;

    fn bridge_elems(d: &Desired, set: &str) -> Vec<String> {
        d.elements(Family::Bridge, set).expect("set")
    }

    fn inet_elems(d: &Desired, set: &str) -> Vec<String> {
        d.elements(Family::Inet, set).expect("set")
    }

    /// The egress and ingress chains that stage 2 jumps to for packets from and to `key`, found
    /// the way the kernel does: the key's mark in `port_groups`, then the mark in each verdict map.
    fn dispatch(d: &Desired, key: &str) -> Option<(String, String)> {
        let mark = d.inet.sets[PORT_GROUPS_MAP].elems.get(key)?.clone()?;
        let chain = |map: &str| {
            d.inet.sets[map].elems[&mark]
                .as_deref()
                .and_then(|v| v.strip_prefix("jump "))
                .map(str::to_string)
        };
        Some((chain(EGRESS_MAP)?, chain(INGRESS_MAP)?))
    }

    #[test]
    fn a_port_is_set_elements_in_the_bridge_stage() {
        let d = render(&settings(), &lone_port());
        assert_eq!(bridge_elems(&d, PORTS_SET), ["\"vnet1\""]);
        assert_eq!(
            bridge_elems(&d, PORT_MAC_SET),
            ["\"vnet1\" . 02:00:00:00:00:01"]
        );
        assert_eq!(
            bridge_elems(&d, PORT_SOURCE_SET),
            ["\"vnet1\" . 2001:db8:0:1::10"]
        );
        assert_eq!(bridge_elems(&d, ND_MAC_SET), ["\"vnet1\" . 0x020000000001"]);
        assert_eq!(
            bridge_elems(&d, NA_TARGET_SET),
            ["\"vnet1\" . 0x20010db8000000010000000000000010"]
        );
        // The chains are the shared ones only: no chain is named after a port.
        assert_eq!(d.chains(Family::Bridge), [BASE_CHAIN, FROM_CHAIN, TO_CHAIN]);
        let from = d.rules(Family::Bridge, FROM_CHAIN).expect("from");
        assert_eq!(from[0], "iifname . ether saddr != @port_mac drop");
        assert!(from.contains(&"icmpv6 type { nd-router-advert, nd-redirect } drop"));
        assert!(from.contains(&"udp sport 547 drop"));
        assert!(from.contains(&"udp dport 546 drop"));
        assert!(from.contains(
            &"icmpv6 type nd-neighbor-advert @th,64,16 & 0xffc0 != 0xfe80 iifname . @th,64,128 != @na_target drop"
        ));
        assert_eq!(from.last(), Some(&"drop"));
        // The source check comes after every drop rule but the last; before it only non-IPv6
        // frames and TCP from the port's own sources return.
        let src = from
            .iter()
            .position(|r| *r == "iifname . ip6 saddr @port_src return")
            .expect("source rule");
        let early: Vec<&&str> = from[..src]
            .iter()
            .filter(|r| !r.ends_with("drop"))
            .collect();
        assert_eq!(
            early,
            [
                &"ether type != ip6 return",
                &"meta l4proto tcp iifname . ip6 saddr @port_src return"
            ],
            "{from:?}"
        );
        assert_eq!(
            d.rules(Family::Bridge, BASE_CHAIN).expect("base"),
            [
                "iifname @ports jump from_instance",
                "oifname @ports jump to_instance"
            ]
        );
    }

    #[test]
    fn router_link_local_addresses_are_neither_sources_nor_na_targets() {
        let s = Settings {
            router_link_local: vec![addr("fe80::1"), addr("fe80::2")],
            ..settings()
        };
        let d = render(&s, &lone_port());
        let from = d.rules(Family::Bridge, FROM_CHAIN).expect("from");
        let pos = |rule: &str| from.iter().position(|r| *r == rule).expect(rule);
        let src = pos("ip6 saddr { fe80::1, fe80::2 } drop");
        let na = pos(
            "icmpv6 type nd-neighbor-advert @th,64,128 { 0xfe800000000000000000000000000001, 0xfe800000000000000000000000000002 } drop",
        );
        // Both before link-local sources are let through.
        let ll = pos("ip6 saddr fe80::/10 return");
        assert!(src < ll && na < ll, "{from:?}");
        // Without the option, no such rules.
        let plain = render(&settings(), &lone_port());
        let plain_from = plain.rules(Family::Bridge, FROM_CHAIN).expect("from");
        assert_eq!(plain_from.len() + 2, from.len());
    }

    #[test]
    fn a_port_without_groups_gets_the_empty_group_chains() {
        let d = render(&settings(), &lone_port());
        assert_eq!(inet_elems(&d, PORT_GROUPS_MAP).len(), 1);
        assert_eq!(inet_elems(&d, EGRESS_MAP).len(), 1);
        assert_eq!(inet_elems(&d, INGRESS_MAP).len(), 1);
        let (eg, ing) = dispatch(&d, "2001:db8:0:1::10").expect("dispatched");
        assert!(ing.starts_with("in_g__"), "{ing}");
        assert_eq!(d.rules(Family::Inet, &ing).expect("chain"), ["drop"]);
        assert_eq!(
            d.rules(Family::Inet, &eg).expect("chain"),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn group_rules_and_remote_group_set() {
        let d = render(&settings(), &web());
        let key = inet_elems(&d, PORT_GROUPS_MAP)[0]
            .split(' ')
            .next()
            .expect("key")
            .to_string();
        let (_, chain) = dispatch(&d, &key).expect("dispatched");
        assert_eq!(
            d.rules(Family::Inet, &chain).expect("chain"),
            [
                "tcp dport 80 accept",
                "tcp dport 22 ip6 saddr @sg_admin accept",
                "drop"
            ]
        );
        assert_eq!(
            inet_elems(&d, "sg_admin"),
            ["2001:db8:ff::1", "2001:db8:ff::2"]
        );
        // `web` is not referred to by a rule: no set for it.
        assert!(d.elements(Family::Inet, "sg_web").is_none());
    }

    #[test]
    fn ports_with_the_same_groups_share_their_chains() {
        let d = render(&settings(), &many_ports(50));
        // One egress and one ingress chain for the 50 ports, plus the base chain.
        assert_eq!(
            d.chains(Family::Inet).len(),
            3,
            "{:?}",
            d.chains(Family::Inet)
        );
        assert_eq!(d.chains(Family::Bridge).len(), 3);
        assert_eq!(inet_elems(&d, PORT_GROUPS_MAP).len(), 50);
        // One mark for the one set of groups: the verdict maps do not grow with the ports.
        assert_eq!(inet_elems(&d, INGRESS_MAP).len(), 1);
        assert_eq!(inet_elems(&d, EGRESS_MAP).len(), 1);
        assert_eq!(bridge_elems(&d, PORTS_SET).len(), 50);
        let rules = d.describe_rules();
        assert_eq!(rules.matches("tcp dport 80 accept").count(), 1, "{rules}");
    }

    #[test]
    fn shared_group_with_egress_and_udp_range() {
        let d = render(&settings(), &shared());
        let chains = d.chains(Family::Inet);
        let eg = chains.iter().find(|c| c.starts_with("eg_")).expect("eg");
        let ing = chains.iter().find(|c| c.starts_with("in_")).expect("in");
        assert_eq!(
            d.rules(Family::Inet, eg).expect("eg"),
            ["tcp dport 443 ip6 daddr 2001:db8:aa::/48 return"]
        );
        assert_eq!(
            d.rules(Family::Inet, ing).expect("in"),
            [
                "udp dport 8000-8100 ip6 saddr @sg_app accept",
                "meta l4proto ipv6-icmp ip6 saddr 2001:db8:bb::/64 accept",
                "drop"
            ]
        );
    }

    #[test]
    fn prefix_anti_spoofing_uses_intervals_and_the_prefix() {
        let s = Settings {
            anti_spoofing: AntiSpoofing::Prefix,
            ..settings()
        };
        let mut doc = lone_port();
        doc.ports[0].addresses.push(addr("2001:db8:9::1"));
        let d = render(&s, &doc);
        assert_eq!(
            bridge_elems(&d, PORT_SOURCE_SET),
            ["\"vnet1\" . 2001:db8:0:1::/64", "\"vnet1\" . 2001:db8:9::1"]
        );
        assert_eq!(
            bridge_elems(&d, NA_TARGET_SET),
            [
                "\"vnet1\" . 0x20010db8000000010000000000000000-0x20010db800000001ffffffffffffffff",
                "\"vnet1\" . 0x20010db8000900000000000000000001"
            ]
        );
        let text = d.describe_rules();
        assert!(
            text.contains("\tset port_src {\n\t\ttype ifname . ipv6_addr\n\t\tflags interval\n"),
            "{text}"
        );
        assert!(
            text.contains("\tmap port_groups {\n\t\ttype ipv6_addr : mark\n\t\tflags interval\n"),
            "{text}"
        );
        // Address mode: no interval flag anywhere.
        assert!(
            !render(&settings(), &doc)
                .describe_rules()
                .contains("interval")
        );
    }

    #[test]
    fn egress_deny_ends_the_egress_chain_in_drop() {
        let s = Settings {
            egress: EgressDefault::Deny,
            ..settings()
        };
        let d = render(&s, &shared());
        let chains = d.chains(Family::Inet);
        let eg = chains.iter().find(|c| c.starts_with("eg_")).expect("eg");
        assert_eq!(d.rules(Family::Inet, eg).expect("eg").last(), Some(&"drop"));
    }

    #[test]
    fn no_ports_means_the_skeleton_with_empty_sets() {
        let d = render(&settings(), &doc(vec![], vec![]));
        for set in [
            PORTS_SET,
            PORT_MAC_SET,
            PORT_SOURCE_SET,
            ND_MAC_SET,
            NA_TARGET_SET,
        ] {
            assert_eq!(bridge_elems(&d, set), Vec::<String>::new(), "{set}");
        }
        for map in [PORT_GROUPS_MAP, EGRESS_MAP, INGRESS_MAP] {
            assert_eq!(inet_elems(&d, map), Vec::<String>::new(), "{map}");
        }
        assert_eq!(d.chains(Family::Inet), [BASE_CHAIN]);
    }

    #[test]
    fn group_names_are_sanitized_and_kept_apart() {
        let rule = |g: &str| tcp_in((1, 1), Remote::Group(g.into()));
        let d = render(
            &settings(),
            &doc(
                vec![port(1, &["web-1"]), port(2, &["web.1"]), port(3, &["fwd"])],
                vec![
                    group("web-1", &[], vec![rule("web-1")]),
                    group("web.1", &[], vec![rule("web.1")]),
                    group("fwd", &[], vec![rule("fwd")]),
                ],
            ),
        );
        let sets: Vec<String> = d
            .inet
            .sets
            .keys()
            .filter(|n| n.starts_with("sg_"))
            .cloned()
            .collect();
        assert_eq!(sets.len(), 3, "{sets:?}");
        assert!(sets.contains(&"sg_fwd".to_string()));
        assert!(
            sets.iter()
                .all(|s| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        );
        // Three group sets, three chain pairs.
        assert_eq!(d.chains(Family::Inet).len(), 7);
    }

    #[test]
    fn overlapping_keys_go_to_the_first_port() {
        let mut doc = shared();
        doc.ports[1].addresses = doc.ports[0].addresses.clone();
        let d = render(&settings(), &doc);
        assert_eq!(inet_elems(&d, PORT_GROUPS_MAP).len(), 1);
        // Stage 1 still knows both ports (keys there carry the interface).
        assert_eq!(bridge_elems(&d, PORT_SOURCE_SET).len(), 2);
    }

    #[test]
    fn full_batch_recreates_both_tables_in_one_transaction() {
        let s = settings();
        let d = render(&s, &web());
        let text = full_batch(&s, &d).text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..6],
            [
                "add table bridge flat6",
                "delete table bridge flat6",
                "add table inet flat6",
                "delete table inet flat6",
                "add table bridge flat6",
                "add chain bridge flat6 forward { type filter hook forward priority 0; policy accept; }",
            ]
        );
        assert!(text.contains("add set bridge flat6 nd_mac { typeof iifname . @th,208,48; }\n"));
        assert!(text.contains("add map inet flat6 port_groups { type ipv6_addr : mark; }\n"));
        assert!(text.contains("add map inet flat6 ingress { type mark : verdict; }\n"));
        assert!(text.contains(&format!(
            "add element inet flat6 flat6_state {{\n\t{}\n}}\n",
            marker_addr(d.marker)
        )));
        // Every chain exists before an element jumps to it or a rule goes in.
        let first = |needle: &str| text.find(needle).expect(needle);
        assert!(first("add chain inet flat6 in_") < first("add element inet flat6 ingress"));
        assert!(first("add set inet flat6 sg_admin") < first("@sg_admin accept"));
    }

    #[test]
    fn marker_is_stable_and_sensitive() {
        let s = settings();
        let d = render(&s, &web());
        assert_eq!(d.marker(), render(&s, &web()).marker());
        assert_eq!(d.marker().len(), 16);
        assert_eq!(marker_from_element(marker_addr(d.marker)), d.marker());
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);

        let mut member = web();
        if let Some(g) = member.groups.get_mut("admin") {
            g.members.push(addr("2001:db8:ff::3"));
        }
        let mut rule = web();
        if let Some(g) = rule.groups.get_mut("web") {
            g.rules.pop();
        }
        let mut mac = web();
        mac.ports[0].mac = crate::model::Mac([2, 0, 0, 0, 0, 9]);
        let prefix_mode = Settings {
            anti_spoofing: AntiSpoofing::Prefix,
            ..settings()
        };
        let markers = [
            d.marker(),
            render(&s, &member).marker(),
            render(&s, &rule).marker(),
            render(&s, &mac).marker(),
            render(&prefix_mode, &web()).marker(),
            render(&s, &lone_port()).marker(),
        ];
        let distinct: BTreeSet<&String> = markers.iter().collect();
        assert_eq!(distinct.len(), markers.len(), "{markers:?}");
        // An element read back with high bits set is never a marker.
        assert_eq!(marker_from_element(addr("2001:db8::1")).len(), 32);
    }

    /// `verb kind set` lines of a batch, without elements and rules.
    fn outline(b: &Batch) -> Vec<String> {
        b.cmds
            .iter()
            .map(|c| match c {
                Cmd::AddTable(f) => format!("add table {f}"),
                Cmd::DeleteTable(f) => format!("delete table {f}"),
                Cmd::AddChain { family, name, .. } => format!("add chain {family} {name}"),
                Cmd::FlushChain(f, n) => format!("flush chain {f} {n}"),
                Cmd::DeleteChain(f, n) => format!("delete chain {f} {n}"),
                Cmd::AddRules { family, chain, .. } => format!("add rules {family} {chain}"),
                Cmd::AddSet { family, name, .. } => format!("add set {family} {name}"),
                Cmd::DeleteSet { family, name, .. } => format!("delete set {family} {name}"),
                Cmd::AddElements { family, set, elems } => {
                    format!("add element {family} {set} {}", elems.join(", "))
                }
                Cmd::DeleteElements { family, set, keys } => {
                    format!("delete element {family} {set} {}", keys.join(", "))
                }
            })
            .collect()
    }

    #[test]
    fn adding_a_port_with_known_groups_is_elements_only() {
        let s = settings();
        let prev = render(&s, &many_ports(3));
        let mut more = many_ports(3);
        more.ports.push(numbered_port(4, &["web"]));
        let next = render(&s, &more);
        let b = diff_batch(&s, &prev, &next);
        let lines = outline(&b);
        assert!(
            lines.iter().all(|l| l.starts_with("add element")
                || l.starts_with("delete element flat6_state")
                || l.contains(" flat6_state ")),
            "{lines:#?}"
        );
        let text = b.text();
        for want in [
            "add element bridge flat6 ports {\n\t\"vnet4\"\n}\n",
            "add element bridge flat6 port_mac {\n\t\"vnet4\" . 02:00:00:00:00:04\n}\n",
            "add element bridge flat6 nd_mac {\n\t\"vnet4\" . 0x020000000004\n}\n",
            "add element bridge flat6 port_src {\n\t\"vnet4\" . 2001:db8:4::10\n}\n",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        // And back: the same elements deleted, by key.
        let back = outline(&diff_batch(&s, &next, &prev));
        assert!(
            back.contains(&"delete element bridge ports \"vnet4\"".to_string()),
            "{back:#?}"
        );
        assert!(
            back.iter()
                .any(|l| l.starts_with("delete element inet port_groups 2001:db8:4::10"))
        );
    }

    #[test]
    fn element_changes_merge_two_sorted_maps() {
        let m = |items: &[(&str, Option<&str>)]| -> BTreeMap<String, Option<String>> {
            items
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect()
        };
        let (gone, added) = element_changes(
            &m(&[("a", None), ("b", Some("jump x")), ("d", None), ("e", None)]),
            &m(&[("b", Some("jump y")), ("c", None), ("d", None), ("f", None)]),
        );
        assert_eq!(gone, ["a", "b", "e"]);
        assert_eq!(added, ["b : jump y", "c", "f"]);
        let same = m(&[("a", None)]);
        assert_eq!(element_changes(&same, &same), (vec![], vec![]));
    }

    #[test]
    fn a_new_group_combination_adds_its_chains_before_the_elements_jump() {
        let s = settings();
        let prev = render(&s, &web());
        let mut next_doc = web();
        next_doc.ports.push(port(2, &["admin"]));
        let next = render(&s, &next_doc);
        let lines = outline(&diff_batch(&s, &prev, &next));
        let pos = |prefix: &str| {
            lines
                .iter()
                .position(|l| l.starts_with(prefix))
                .expect(prefix)
        };
        assert!(
            pos("add chain inet in_") < pos("add element inet ingress"),
            "{lines:#?}"
        );
        assert!(
            pos("add rules inet in_") < pos("add element inet ingress"),
            "{lines:#?}"
        );
        // Removing the port removes its chains after their elements.
        let back = outline(&diff_batch(&s, &next, &prev));
        let pos = |prefix: &str| {
            back.iter()
                .position(|l| l.starts_with(prefix))
                .expect(prefix)
        };
        assert!(
            pos("delete element inet ingress") < pos("delete chain inet in_"),
            "{back:#?}"
        );
    }

    #[test]
    fn a_one_port_diff_does_not_grow_with_the_number_of_ports() {
        let s = settings();
        let size = |n: u16| {
            let base = many_ports(n);
            let mut more = base.clone();
            more.ports.push(numbered_port(60000, &["web"]));
            let (with, without) = (render(&s, &more), render(&s, &base));
            [
                diff_batch(&s, &without, &with),
                diff_batch(&s, &with, &without),
            ]
            .map(|b| {
                let core: Vec<String> = outline(&b)
                    .into_iter()
                    .filter(|l| !l.contains(MARKER_SET))
                    .collect();
                (b.len(), core)
            })
        };
        let (small, large) = (size(100), size(10_000));
        assert_eq!(small, large);
        assert!(small[0].0 <= 12, "{:?}", small[0]);
    }

    #[test]
    fn diff_swaps_the_marker_in_both_tables_and_is_empty_for_equal_models() {
        let s = settings();
        let (prev, next) = (render(&s, &lone_port()), render(&s, &web()));
        let lines = outline(&diff_batch(&s, &prev, &next));
        let (old, new) = (marker_addr(prev.marker), marker_addr(next.marker));
        let tail: Vec<&String> = lines.iter().rev().take(4).rev().collect();
        assert_eq!(
            tail,
            [
                &format!("delete element bridge flat6_state {old}"),
                &format!("add element bridge flat6_state {new}"),
                &format!("delete element inet flat6_state {old}"),
                &format!("add element inet flat6_state {new}"),
            ]
        );
        assert!(diff_batch(&s, &prev, &prev.clone()).is_empty());
    }

    #[test]
    fn switching_the_anti_spoofing_mode_rebuilds() {
        let (a, p) = (
            settings(),
            Settings {
                anti_spoofing: AntiSpoofing::Prefix,
                ..settings()
            },
        );
        let b = diff_batch(&p, &render(&a, &web()), &render(&p, &web()));
        assert_eq!(b, full_batch(&p, &render(&p, &web())));
    }

    #[test]
    fn describe_is_the_text_nft_gets() {
        let b = full_batch(&settings(), &render(&settings(), &lone_port()));
        assert_eq!(describe(&b), b.text());
        let rules = render(&settings(), &lone_port()).describe_rules();
        assert!(
            rules.starts_with("table bridge <table> {\n\tset na_target {\n"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "\tset ports {\n\t\ttype ifname\n\t\telements = {\n\t\t\t\"vnet1\"\n\t\t}\n\t}\n"
            ),
            "{rules}"
        );
    }

    // ---- a model of what nft does with our batches, to check diff against full without root

    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    struct ModelTable {
        chains: BTreeMap<String, Vec<String>>,
        sets: BTreeMap<String, (String, BTreeMap<String, String>)>,
    }

    type Model = BTreeMap<Family, ModelTable>;

    /// Applies a batch to the model, asserting the ordering rules nft enforces: chains exist
    /// before rules go in or elements jump to them, referenced sets exist, deleted chains are
    /// empty and unreferenced, deleted elements exist, added keys are new.
    fn interpret(model: &mut Model, batch: &Batch) {
        for cmd in &batch.cmds {
            match cmd {
                Cmd::AddTable(f) => {
                    model.entry(*f).or_default();
                }
                Cmd::DeleteTable(f) => {
                    model.remove(f).expect("delete of a missing table");
                }
                other => {
                    let family = match other {
                        Cmd::AddChain { family, .. }
                        | Cmd::AddRules { family, .. }
                        | Cmd::AddSet { family, .. }
                        | Cmd::DeleteSet { family, .. }
                        | Cmd::AddElements { family, .. }
                        | Cmd::DeleteElements { family, .. }
                        | Cmd::FlushChain(family, _)
                        | Cmd::DeleteChain(family, _) => *family,
                        Cmd::AddTable(_) | Cmd::DeleteTable(_) => unreachable!(),
                    };
                    let t = model.get_mut(&family).expect("table exists");
                    match other {
                        Cmd::AddChain { name, .. } => {
                            t.chains.entry(name.clone()).or_default();
                        }
                        Cmd::FlushChain(_, name) => t
                            .chains
                            .get_mut(name)
                            .expect("flush of a missing chain")
                            .clear(),
                        Cmd::DeleteChain(_, name) => {
                            let rules = t.chains.remove(name).expect("delete of a missing chain");
                            assert!(rules.is_empty(), "delete of a non-empty chain {name}");
                            let jump = format!("jump {name}");
                            assert!(
                                t.sets
                                    .values()
                                    .flat_map(|s| s.1.values())
                                    .all(|v| *v != jump),
                                "delete of chain {name} while an element jumps to it"
                            );
                            assert!(
                                t.chains.values().flatten().all(|r| !r.ends_with(&jump)),
                                "delete of chain {name} while a rule jumps to it"
                            );
                        }
                        Cmd::AddRules { chain, rules, .. } => {
                            for r in rules {
                                for word in r.split_whitespace() {
                                    if let Some(set) = word.strip_prefix('@') {
                                        if !set.starts_with("th,") {
                                            assert!(
                                                t.sets.contains_key(set),
                                                "rule refers to missing set {set}: {r}"
                                            );
                                        }
                                    }
                                }
                                if let Some(target) = r.split(" jump ").nth(1) {
                                    assert!(
                                        t.chains.contains_key(target),
                                        "rule jumps to missing {target}"
                                    );
                                }
                            }
                            t.chains
                                .get_mut(chain)
                                .expect("rules in a missing chain")
                                .extend(rules.iter().cloned());
                        }
                        Cmd::AddSet { name, decl, .. } => {
                            assert!(!t.sets.contains_key(name), "set {name} added twice");
                            t.sets.insert(name.clone(), (decl.clone(), BTreeMap::new()));
                        }
                        Cmd::DeleteSet { name, .. } => {
                            t.sets.remove(name).expect("delete of a missing set");
                            let r = format!("@{name}");
                            assert!(
                                t.chains
                                    .values()
                                    .flatten()
                                    .all(|rule| !rule.split_whitespace().any(|w| w == r)),
                                "delete of set {name} while a rule refers to it"
                            );
                        }
                        Cmd::AddElements { set, elems, .. } => {
                            let chains: BTreeSet<String> = t.chains.keys().cloned().collect();
                            let s = t.sets.get_mut(set).expect("elements for a missing set");
                            for e in elems {
                                let (k, v) = match e.split_once(" : ") {
                                    Some((k, v)) => (k.to_string(), v.to_string()),
                                    None => (e.clone(), String::new()),
                                };
                                if let Some(target) = v.strip_prefix("jump ") {
                                    assert!(
                                        chains.contains(target),
                                        "element jumps to missing {target}"
                                    );
                                }
                                assert!(
                                    s.1.insert(k, v).is_none(),
                                    "element {e} added twice to {set}"
                                );
                            }
                        }
                        Cmd::DeleteElements { set, keys, .. } => {
                            let s = t.sets.get_mut(set).expect("delete from a missing set");
                            for k in keys {
                                assert!(
                                    s.1.remove(k).is_some(),
                                    "delete of a missing element {k} from {set}"
                                );
                            }
                        }
                        Cmd::AddTable(_) | Cmd::DeleteTable(_) => unreachable!(),
                    }
                }
            }
        }
    }

    fn arb_doc() -> impl Strategy<Value = PortsDoc> {
        let port_ids = proptest::collection::btree_set(1u8..6, 0..4);
        let rule = (
            0u8..2,
            0u8..4,
            proptest::option::of((1u16..100, 0u16..3)),
            0u8..5,
        );
        let groups = proptest::collection::vec(
            (
                proptest::collection::btree_set(1u8..9, 0..3),
                proptest::collection::vec(rule, 0..3),
            ),
            3,
        );
        let membership =
            proptest::collection::vec(proptest::collection::btree_set(0usize..3, 0..3), 6);
        // 0: no extra address; 1: one inside the port's own prefix; 2: one inside the next
        // port's prefix, so that in prefix mode keys overlap and change owner between documents.
        let extra = proptest::collection::vec(0u8..3, 6);
        (port_ids, groups, membership, extra).prop_map(|(ids, groups, membership, extra)| {
            let names = ["a", "b", "c"];
            let groups: Vec<Group> = groups
                .into_iter()
                .enumerate()
                .map(|(i, (members, rules))| Group {
                    name: names[i].into(),
                    members: members
                        .iter()
                        .map(|m| addr(&format!("2001:db8:ff::{m}")))
                        .collect(),
                    rules: rules
                        .into_iter()
                        .map(|(dir, proto, ports, remote)| Rule {
                            direction: if dir == 0 {
                                Direction::Ingress
                            } else {
                                Direction::Egress
                            },
                            protocol: [
                                Protocol::Tcp,
                                Protocol::Udp,
                                Protocol::Icmpv6,
                                Protocol::Any,
                            ][proto as usize],
                            ports: ports
                                .filter(|_| proto < 2)
                                .map(|(lo, span)| (lo, lo + span)),
                            remote: match remote {
                                0 => Remote::Prefix(prefix("::/0")),
                                1 => Remote::Prefix(prefix("2001:db8:aa::/48")),
                                r => Remote::Group(names[r as usize - 2].into()),
                            },
                        })
                        .collect(),
                })
                .collect();
            let ports = ids
                .into_iter()
                .map(|n| {
                    let mut p = port(n, &[]);
                    p.security_groups = membership[n as usize]
                        .iter()
                        .map(|g| names[*g].to_string())
                        .collect();
                    match extra[n as usize] {
                        1 => p.addresses.push(addr(&format!("2001:db8:0:{n}::11"))),
                        2 => p.addresses.push(addr(&format!("2001:db8:0:{}::11", n + 1))),
                        _ => {}
                    }
                    p
                })
                .collect();
            doc(ports, groups)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// full(prev) then diff(prev, next) leaves what full(next) leaves; diff is empty exactly
        /// when the models are equal, and never re-sends the shared chains.
        #[test]
        fn diff_after_full_equals_full(prev in arb_doc(), next in arb_doc(), prefix_mode in any::<bool>()) {
            let s = Settings {
                anti_spoofing: if prefix_mode { AntiSpoofing::Prefix } else { AntiSpoofing::Address },
                ..settings()
            };
            let (p, n) = (render(&s, &prev), render(&s, &next));
            let mut via_diff = Model::new();
            interpret(&mut via_diff, &full_batch(&s, &p));
            let diff = diff_batch(&s, &p, &n);
            interpret(&mut via_diff, &diff);
            let mut direct = Model::new();
            interpret(&mut direct, &full_batch(&s, &n));
            prop_assert_eq!(via_diff, direct);
            prop_assert_eq!(diff.is_empty(), p == n);
            let touched: Vec<String> = outline(&diff)
                .into_iter()
                .filter(|l| l.ends_with(" forward") || l.contains(FROM_CHAIN) || l.contains(TO_CHAIN) || l.contains("table"))
                .collect();
            prop_assert!(touched.is_empty(), "{:?}", touched);
            prop_assert_eq!(p.marker() == n.marker(), p == n);
        }

        /// The planner's model after an update is `render(next)`, and its batch, applied after
        /// full(prev), leaves what full(next) leaves. `next` keeps `prev`'s rules and takes the
        /// ports and members of another document (planned port by port), or is any document.
        #[test]
        fn planner_updates_equal_full_renders(
            prev in arb_doc(),
            other in arb_doc(),
            keep_rules in any::<bool>(),
            prefix_mode in any::<bool>(),
        ) {
            let s = Settings {
                anti_spoofing: if prefix_mode { AntiSpoofing::Prefix } else { AntiSpoofing::Address },
                ..settings()
            };
            let next = if keep_rules {
                let mut next = prev.clone();
                next.ports = other.ports.clone();
                for (name, g) in next.groups.iter_mut() {
                    g.members = other.groups.get(name).map(|o| o.members.clone()).unwrap_or_default();
                }
                next
            } else {
                other
            };
            let mut planner = Planner::new(&s, prev.clone());
            let full_prev = planner.full_batch();
            let (batch, kind) = planner.update(&s, next.clone());
            let want = render(&s, &next);
            prop_assert_eq!(planner.desired(), &want);
            let mut via_plan = Model::new();
            interpret(&mut via_plan, &full_prev);
            interpret(&mut via_plan, &batch);
            let mut direct = Model::new();
            interpret(&mut direct, &full_batch(&s, &want));
            prop_assert_eq!(via_plan, direct);
            prop_assert_eq!(batch.is_empty(), render(&s, &prev) == want);
            if keep_rules && !build(&s, &prev).1.conflicts && !build(&s, &next).1.conflicts {
                prop_assert_eq!(kind, PlanKind::Ports);
            }
        }
    }
}
