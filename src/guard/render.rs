//! Ports document → the guard's nftables ruleset, as a pure model ([`Desired`]) and as typed nft
//! JSON batches ([`full_batch`], [`diff_batch`]).
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
//! accept) dispatches on the port with two named verdict maps (see below), `iifname vmap
//! @from_port` (`"<if>" : jump from_<if>`) and `oifname vmap @to_port` (`"<if>" : jump to_<if>`).
//! Frames of interfaces that are not instance ports (uplinks, the virtual router) are not touched.
//!
//! `from_<port>` (frames the instance sends):
//! - `ether saddr != <mac> drop`: the instance must use its own MAC.
//! - VLAN-tagged frames (`8021q`, `8021ad`) are dropped.
//! - `ether type != ip6 return`: IPv4 and ARP are out of flat6's scope and pass untouched.
//! - Router Advertisement (134) and Redirect (137) are dropped: RA guard, RFC 6105.
//! - DHCPv6 server messages (UDP source port 547 or destination port 546) are dropped: the DHCPv6
//!   shield of RFC 7610.
//! - A Neighbor Advertisement jumps to `na_<port>`, where its target (ICMPv6 offset 8, RFC 4861
//!   §4.4) must be one of the port's own addresses (or inside its prefix in prefix mode) or
//!   link-local: one `return` rule per allowed value, then `drop`. nft 1.0.6 has no
//!   `icmpv6 taddr`, so the target is matched as a 128-bit raw payload, `@th,64,128`, against
//!   128-bit hex constants and ranges (`0x2001…0010`, `0xfe80…-0xfebf…`). nft's JSON parser takes
//!   a hex string for an integer of any width, which sidesteps the `u32`-only numbers of the
//!   `nftables` crate; a typed `ipv6_addr` value cannot be used because nft rejects a raw payload
//!   compared with a typed value ("datatype mismatch").
//! - Neighbor Solicitations and Advertisements whose first option (ICMPv6 offset 24) is a
//!   source/target link-layer address option (type 1 or 2, length 1, RFC 4861 §4.6.1) must carry
//!   the port's MAC; so must a Router Solicitation's first option (offset 8). A message without the
//!   option is not affected. Only the first option is checked.
//! - Last, the IPv6 source: `return` for one of the port's addresses (`anti_spoofing =
//!   "address"`), or its prefix (`"prefix"`; a port without a prefix falls back to its
//!   addresses), or link-local (`fe80::/10`), or `::` for ICMPv6 Neighbor Solicitation (duplicate
//!   address detection, RFC 4862 §5.4.2) and MLD reports (RFC 3590 §4: a host joins the
//!   solicited-node group before it has a link-local address); then `drop` for anything else.
//!
//! The per-port chains use no sets, not even anonymous ones (`{ a, b }`): "one of several values"
//! is spelled as several rules. nft 1.0.6 and the kernel keep a table's sets in lists: every
//! anonymous set created costs a scan of all sets in the table, and every batch that adds or
//! deletes an element makes nft fetch the elements of every interval set in the table, one
//! linear lookup each. With seven anonymous sets per port, a one-port change on a 2,000-port host
//! took about 5 s and a full apply about 45 s; without them, 0.05 s and 2 s. The only sets left
//! are the handful per table named here, plus the anonymous ICMPv6 type sets of the inet base
//! chain.
//!
//! `to_<port>` (frames delivered to the instance): traffic to a link-local unicast destination is
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
//! - `ip6 saddr vmap @egress` (`<port address or /64> : jump eg_<port>`), then
//!   `ip6 daddr vmap @ingress` (`<port address or /64> : jump in_<port>`).
//!
//! `eg_<port>` holds the egress rules of the port's groups with verdict `return` (allowed; go on to
//! the receiver's ingress check), then the default: nothing for `egress = "allow"`, `drop` for
//! `"deny"`. `in_<port>` holds the ingress rules with verdict `accept`, then `drop`. Traffic between
//! two instances on this host passes the sender's egress and then the receiver's ingress chain;
//! replies are established. A rule's remote group becomes a named set `sg_<group>` (`ipv6_addr`,
//! `flags interval`) holding the group's members, created only for groups that a rendered rule
//! refers to; `::/0` as a remote prefix matches without an address test.
//!
//! # Named verdict maps
//!
//! The dispatch maps are named maps, so that the base chains never change: `bridge <table>` holds
//! `from_port` and `to_port` (`type ifname : verdict`), `inet <table>` holds `egress` and `ingress`
//! (`type ipv6_addr : verdict`, `flags interval`). Adding or removing a port, or changing its
//! addresses, adds or deletes that port's map elements and chains and nothing else, so the batch
//! sent for a change does not grow with the number of ports (24 KB to add a port, 4 KB to remove
//! one). What still grows, slowly, is work outside flat6: before it applies a batch nft 1.0.6
//! lists the table's chains and the inet maps' elements into its cache, and on commit the kernel
//! walks the jump graph for loops. Measured here with `nft -j -f`: a one-port change costs under
//! 10 ms of CPU at 100 ports and about 0.35 s at 10,000. The inet maps always use interval keys
//! (an `/128` per address in address mode, the port's prefix plus any address outside it in
//! prefix mode), so one design serves both modes; nft rejects overlapping interval elements, so a key
//! that overlaps an earlier port's stays with the earlier port (see [`render`]).
//!
//! The `nftables` crate (0.6) cannot declare such a map: its `SetType` has no `verdict`. The
//! batches therefore declare the maps with a placeholder value type ([`MAP_PLACEHOLDER`]), and
//! [`encode`] — the one way a batch becomes JSON, used both to apply it and to print it — rewrites
//! the `"map"` field of every map declaration to `"verdict"`. The elements need no patch: an
//! [`Expression::List`] of the key and an [`NftVerdict::Jump`] serializes to nft's
//! `[key, {"jump": {"target": chain}}]`. Serializing a batch without [`encode`] leaves the
//! placeholder, which nft rejects (a `mark` map cannot hold a jump), so a missed patch fails
//! closed instead of applying something else.
//!
//! # Marker
//!
//! Each table carries a set `flat6_state` (type `ipv6_addr`) with one element: `::` plus the 64-bit
//! [`Desired::marker`], a FNV-1a hash of the canonical text of the whole model. After a restart the
//! daemon compares it (see `apply::read_marker`) with the marker of its persisted previous state;
//! if they differ it rebuilds both tables with [`full_batch`] in one transaction.
//!
//! # Batches
//!
//! [`full_batch`] deletes both tables if present (the `add table` + `delete table` pair makes that a
//! no-op-safe delete, as nft 1.0.6 has no `destroy`) and creates everything, in one transaction.
//! [`diff_batch`] touches only what changed, in an order nft accepts within one transaction:
//! verdict-map elements that go away are deleted first (before their chains, and before a key
//! they held is given to another port), then new chains and sets are added and set elements
//! added and deleted, chains whose rules changed are flushed and re-filled, new map elements are
//! added (their chains exist by then), removed chains and sets are deleted, and the markers are
//! swapped. The base chains are the same in every model and are never re-sent. Equal models give
//! an empty batch.
//!
//! Chain and set names are derived from interface and group names: characters other than ASCII
//! letters, digits and `_` become `_`, and a name that had to be changed gets a short hash of the
//! original appended so that `vnet-1` and `vnet.1` stay apart. The prefixes (`from_`, `to_`, `eg_`,
//! `in_`, `na_`, `sg_`) also keep names clear of nft keywords such as `fwd`. Chains and sets (maps
//! are sets) have separate names in nft, so a port on interface `port` (chain `from_port`) does not
//! collide with the map `from_port`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use nftables::expr::{
    CT, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadBase, PayloadField, PayloadRaw,
    Prefix as NftPrefix, Range, SetItem, Verdict as NftVerdict,
};
use nftables::schema::{
    Chain, Element, FlushObject, Map, NfCmd, NfListObject, NfObject, Nftables, Set, SetFlag,
    SetType, SetTypeValue, Table,
};
use nftables::stmt::{JumpTarget, Match, Operator, Statement, VerdictMap};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use serde_json::Value;

use super::document::{Direction, Port, PortsDoc, Protocol, Remote, Rule};
use crate::config::{AntiSpoofing, EgressDefault, GuardConfig};

/// Name of the one-element set in each table that holds the marker of the applied state.
pub const MARKER_SET: &str = "flat6_state";

/// Name of the base chain (hook forward) in both tables.
pub const BASE_CHAIN: &str = "forward";

/// The bridge map from an instance port's name (`iifname`) to its `from_<port>` chain.
pub const FROM_PORT_MAP: &str = "from_port";
/// The bridge map from an instance port's name (`oifname`) to its `to_<port>` chain.
pub const TO_PORT_MAP: &str = "to_port";
/// The inet interval map from a port's source keys (`ip6 saddr`) to its `eg_<port>` chain.
pub const EGRESS_MAP: &str = "egress";
/// The inet interval map from a port's destination keys (`ip6 daddr`) to its `in_<port>` chain.
pub const INGRESS_MAP: &str = "ingress";

/// The value type the verdict maps are declared with in the typed batch, replaced by `verdict`
/// in [`encode`] (the `nftables` crate has no `verdict` set type).
pub const MAP_PLACEHOLDER: SetType = SetType::Mark;

/// `fe80::/10`, link-local unicast (RFC 4291 §2.5.6).
const LINK_LOCAL: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10);

/// ICMPv6 types (RFC 4443, RFC 4861) by the names nft knows them by.
const ICMPV6_NS: &str = "nd-neighbor-solicit";
const ICMPV6_NA: &str = "nd-neighbor-advert";
const ICMPV6_RS: &str = "nd-router-solicit";
const ICMPV6_RA: &str = "nd-router-advert";
const ICMPV6_REDIRECT: &str = "nd-redirect";

/// DHCPv6 ports (RFC 8415 §7.2).
const DHCPV6_CLIENT_PORT: u32 = 546;
const DHCPV6_SERVER_PORT: u32 = 547;

/// What the renderer needs from the guard config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Name of both tables (`bridge <table>` and `inet <table>`).
    pub table: String,
    /// How strictly an instance's IPv6 source address is checked.
    pub anti_spoofing: AntiSpoofing,
    /// What happens to egress traffic that no rule allows.
    pub egress: EgressDefault,
}

impl From<&GuardConfig> for Settings {
    fn from(config: &GuardConfig) -> Self {
        Settings {
            table: config.table.clone(),
            anti_spoofing: config.anti_spoofing,
            egress: config.egress,
        }
    }
}

/// The ruleset the guard wants in force: both tables' chains with their rules and the named sets
/// with their elements. Built by [`render`]; turned into nft commands by [`full_batch`] and
/// [`diff_batch`]. The table name is not part of it (it comes with the [`Settings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// [`Desired::marker`], computed once by [`render`] (hashing a large ruleset is not free).
    /// First, so that comparing two models usually stops here.
    marker: u64,
    bridge: TableState,
    inet: TableState,
}

/// One table's contents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct TableState {
    chains: BTreeMap<String, ChainState>,
    /// Named sets, all `ipv6_addr` with `flags interval`.
    sets: BTreeMap<String, BTreeSet<Ipv6Net>>,
    /// Named verdict maps, each element a `jump` to a chain of this table.
    maps: BTreeMap<String, VerdictMapState>,
}

/// A named verdict map: its key type and its elements (key → chain to jump to).
#[derive(Debug, Clone, PartialEq, Eq)]
struct VerdictMapState {
    key: MapKeyType,
    elems: BTreeMap<MapKey, String>,
}

/// The key type of a verdict map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MapKeyType {
    /// `ifname`, hashed.
    Ifname,
    /// `ipv6_addr` with `flags interval`.
    Ipv6Interval,
}

/// One verdict-map key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum MapKey {
    Ifname(String),
    Net(Ipv6Net),
}

impl MapKey {
    fn text(&self) -> String {
        match self {
            MapKey::Ifname(name) => format!("\"{name}\""),
            MapKey::Net(n) => net_text(*n),
        }
    }

    fn expr(&self) -> Expression<'static> {
        match self {
            MapKey::Ifname(name) => Expression::String(name.clone().into()),
            MapKey::Net(n) => net_expr(*n),
        }
    }
}

/// One chain: a base chain (hook forward, priority 0, policy accept) or a regular one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainState {
    base: bool,
    rules: Vec<NftRule>,
}

/// One rule: its nft-like text (for people, tests and the marker) and its JSON statements.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NftRule {
    text: String,
    expr: Vec<Statement<'static>>,
}

/// Which of the two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `bridge <table>`: per-port identity.
    Bridge,
    /// `inet <table>`: security groups.
    Inet,
}

impl Family {
    fn nf(self) -> NfFamily {
        match self {
            Family::Bridge => NfFamily::Bridge,
            Family::Inet => NfFamily::INet,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::Bridge => "bridge",
            Family::Inet => "inet",
        }
    }
}

impl Desired {
    fn tables(&self) -> [(Family, &TableState); 2] {
        [(Family::Bridge, &self.bridge), (Family::Inet, &self.inet)]
    }

    /// A stable identifier of this state: 16 hex digits of a FNV-1a 64 hash over the canonical
    /// text of every chain, rule and set (and each rule's JSON). Equal models have equal markers
    /// across runs and builds; any change to a rule or element changes it.
    pub fn marker(&self) -> String {
        format!("{:016x}", self.marker_value())
    }

    fn marker_value(&self) -> u64 {
        self.marker
    }

    fn compute_marker(&self) -> u64 {
        let mut hash = Fnv1a64::new();
        hash.write(b"flat6 guard marker v2\n");
        hash.write(self.describe_rules().as_bytes());
        for (_, table) in self.tables() {
            for rule in table.chains.values().flat_map(|c| &c.rules) {
                // Serializing plain statements cannot fail; if it ever did, the text above still
                // identifies the rule.
                let json = serde_json::to_string(&rule.expr).unwrap_or_default();
                hash.write(json.as_bytes());
                hash.write(b"\n");
            }
        }
        hash.finish()
    }

    /// A compact, nft-like text of the whole model, one rule per line, for `flat6 guard render`,
    /// logs and tests.
    pub fn describe_rules(&self) -> String {
        let mut out = String::new();
        for (family, table) in self.tables() {
            let _ = writeln!(out, "table {}", family.name());
            for (name, elems) in &table.sets {
                let elems: Vec<String> = elems.iter().map(|n| net_text(*n)).collect();
                let _ = writeln!(out, "  set {name} {{ {} }}", elems.join(", "));
            }
            for (name, map) in &table.maps {
                let key = match map.key {
                    MapKeyType::Ifname => "ifname",
                    MapKeyType::Ipv6Interval => "ipv6_addr interval",
                };
                let elems: Vec<String> = map
                    .elems
                    .iter()
                    .map(|(k, chain)| format!("{} : jump {chain}", k.text()))
                    .collect();
                let _ = writeln!(
                    out,
                    "  map {name} ({key} : verdict) {{ {} }}",
                    elems.join(", ")
                );
            }
            for (name, chain) in &table.chains {
                let hook = if chain.base {
                    " (hook forward priority 0 policy accept)"
                } else {
                    ""
                };
                let _ = writeln!(out, "  chain {name}{hook}");
                for rule in &chain.rules {
                    let _ = writeln!(out, "    {}", rule.text);
                }
            }
        }
        out
    }

    /// The rules of one chain as text, or `None` when there is no such chain.
    pub fn rules(&self, family: Family, chain: &str) -> Option<Vec<&str>> {
        let table = match family {
            Family::Bridge => &self.bridge,
            Family::Inet => &self.inet,
        };
        table
            .chains
            .get(chain)
            .map(|c| c.rules.iter().map(|r| r.text.as_str()).collect())
    }

    /// The names of one table's chains.
    pub fn chains(&self, family: Family) -> Vec<&str> {
        let table = match family {
            Family::Bridge => &self.bridge,
            Family::Inet => &self.inet,
        };
        table.chains.keys().map(String::as_str).collect()
    }

    /// The elements of a named verdict map as `key : jump chain` text, or `None` when there is no
    /// such map.
    pub fn map_entries(&self, family: Family, map: &str) -> Option<Vec<String>> {
        let table = match family {
            Family::Bridge => &self.bridge,
            Family::Inet => &self.inet,
        };
        table.maps.get(map).map(|m| {
            m.elems
                .iter()
                .map(|(k, chain)| format!("{} : jump {chain}", k.text()))
                .collect()
        })
    }

    /// The elements of a named set in the inet table, or `None` when there is no such set.
    pub fn set_elements(&self, name: &str) -> Option<Vec<Ipv6Net>> {
        self.inet
            .sets
            .get(name)
            .map(|s| s.iter().copied().collect())
    }
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
// Rule building: every piece carries its text and its JSON expression, built together.

/// One side of a match.
#[derive(Debug, Clone)]
struct Term {
    text: String,
    expr: Expression<'static>,
}

fn term(text: impl Into<String>, expr: Expression<'static>) -> Term {
    Term {
        text: text.into(),
        expr,
    }
}

fn meta(key: MetaKey, text: &str) -> Term {
    term(text, Expression::Named(NamedExpression::Meta(Meta { key })))
}

fn field(protocol: &'static str, name: &'static str) -> Term {
    term(
        format!("{protocol} {name}"),
        Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: protocol.into(),
                field: name.into(),
            },
        ))),
    )
}

/// A raw payload at the transport header: `@th,<offset>,<len>` (bits).
fn th(offset: u32, len: u32) -> Term {
    term(
        format!("@th,{offset},{len}"),
        Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(PayloadRaw {
            base: PayloadBase::TH,
            offset,
            len,
        }))),
    )
}

fn ct_state() -> Term {
    term(
        "ct state",
        Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
    )
}

/// A symbolic constant or address, written bare.
fn sym(s: impl Into<String>) -> Term {
    let s = s.into();
    term(s.clone(), Expression::String(s.into()))
}

fn num(n: u32) -> Term {
    term(n.to_string(), Expression::Number(n))
}

/// A small integer written in hex (the text) but sent as a JSON number.
fn hex_num(n: u32, digits: usize) -> Term {
    term(format!("0x{n:0digits$x}"), Expression::Number(n))
}

/// An integer of `bits` bits as a hex string: nft parses it at any width.
fn hex_bits(value: u128, bits: u32) -> Term {
    let digits = (bits / 4) as usize;
    sym(format!("0x{value:0digits$x}"))
}

fn range(lo: Term, hi: Term) -> Term {
    term(
        format!("{}-{}", lo.text, hi.text),
        Expression::Range(Box::new(Range {
            range: [lo.expr, hi.expr],
        })),
    )
}

fn net_text(net: Ipv6Net) -> String {
    if net.prefix_len() == 128 {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// An address (for a /128) or a prefix.
fn net_expr(net: Ipv6Net) -> Expression<'static> {
    if net.prefix_len() == 128 {
        Expression::String(net.addr().to_string().into())
    } else {
        Expression::Named(NamedExpression::Prefix(NftPrefix {
            addr: Box::new(Expression::String(net.network().to_string().into())),
            len: u32::from(net.prefix_len()),
        }))
    }
}

fn net(net: Ipv6Net) -> Term {
    term(net_text(net), net_expr(net))
}

/// A prefix as a 128-bit raw constant (a /128) or range, for `@th,64,128`.
fn raw_net(net: Ipv6Net) -> Term {
    let lo = u128::from(net.network());
    let hi = u128::from(net.broadcast());
    if lo == hi {
        hex_bits(lo, 128)
    } else {
        range(hex_bits(lo, 128), hex_bits(hi, 128))
    }
}

/// An anonymous set, or the element itself when there is just one.
fn one_of(mut items: Vec<Term>) -> Term {
    if items.len() == 1 {
        if let Some(only) = items.pop() {
            return only;
        }
    }
    let text = format!(
        "{{ {} }}",
        items
            .iter()
            .map(|t| t.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    term(
        text,
        Expression::Named(NamedExpression::Set(
            items
                .into_iter()
                .map(|t| SetItem::Element(t.expr))
                .collect(),
        )),
    )
}

fn syms(names: &[&str]) -> Term {
    one_of(names.iter().map(|n| sym(*n)).collect())
}

fn set_ref(name: &str) -> Term {
    sym(format!("@{name}"))
}

#[derive(Debug, Clone, Copy)]
enum Verdict {
    Accept,
    Drop,
    Return,
}

/// Accumulates matches, then ends in a verdict or a verdict map.
#[derive(Default)]
struct RuleBuilder {
    text: Vec<String>,
    expr: Vec<Statement<'static>>,
}

fn rule() -> RuleBuilder {
    RuleBuilder::default()
}

impl RuleBuilder {
    fn matching(mut self, left: Term, op: Operator, right: Term) -> Self {
        let shown = match op {
            Operator::NEQ => format!("{} != {}", left.text, right.text),
            _ => format!("{} {}", left.text, right.text),
        };
        self.text.push(shown);
        self.expr.push(Statement::Match(Match {
            left: left.expr,
            right: right.expr,
            op,
        }));
        self
    }

    fn is(self, left: Term, right: Term) -> Self {
        self.matching(left, Operator::EQ, right)
    }

    fn not(self, left: Term, right: Term) -> Self {
        self.matching(left, Operator::NEQ, right)
    }

    fn with(mut self, parts: Vec<(Term, Term)>) -> Self {
        for (left, right) in parts {
            self = self.is(left, right);
        }
        self
    }

    /// `jump chain`.
    fn jump(mut self, chain: &str) -> NftRule {
        self.text.push(format!("jump {chain}"));
        self.expr.push(Statement::Jump(JumpTarget {
            target: chain.to_string().into(),
        }));
        self.finish()
    }

    fn then(mut self, verdict: Verdict) -> NftRule {
        let (text, stmt) = match verdict {
            Verdict::Accept => ("accept", Statement::Accept(None)),
            Verdict::Drop => ("drop", Statement::Drop(None)),
            Verdict::Return => ("return", Statement::Return(None)),
        };
        self.text.push(text.to_string());
        self.expr.push(stmt);
        self.finish()
    }

    /// `key vmap @map`: dispatch through a named verdict map.
    fn vmap(mut self, key: Term, map: &str) -> NftRule {
        let data = set_ref(map);
        self.text.push(format!("{} vmap {}", key.text, data.text));
        self.expr.push(Statement::VerdictMap(VerdictMap {
            key: key.expr,
            data: data.expr,
        }));
        self.finish()
    }

    fn finish(self) -> NftRule {
        NftRule {
            text: self.text.join(" "),
            expr: self.expr,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Render

/// Drop every prefix contained in another one (so an anonymous interval set never holds
/// overlapping elements, which nft rejects), keeping the result sorted.
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

fn mac_value(port: &Port) -> u128 {
    port.mac
        .octets()
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
}

/// The rules of `from_<port>` and of its `na_<port>` sub-chain (named `na_chain`).
///
/// No rule here uses a set, anonymous or named: nft 1.0.6 and the kernel handle every set of a
/// table in lists, so per-port sets would make each change cost grow with the number of ports
/// (see the module docs). A test against several values is spelled as several rules instead: a
/// "must be one of" test becomes `return` rules for the allowed values followed by `drop`, at the
/// end of its chain (the source address) or in a sub-chain (the Neighbor Advertisement target).
fn from_port_rules(
    settings: &Settings,
    port: &Port,
    na_chain: &str,
) -> (Vec<NftRule>, Vec<NftRule>) {
    let keys = port_keys(settings, port);
    let mac = port.mac.to_string();
    let mac_raw = || hex_bits(mac_value(port), 48);
    let mut from = vec![
        rule()
            .not(field("ether", "saddr"), sym(mac))
            .then(Verdict::Drop),
        // VLAN-tagged frames would skip every IPv6 check below (and br_netfilter's hooks): an
        // instance port is untagged, so a tag from the instance is never legitimate.
        rule()
            .is(field("ether", "type"), sym("8021q"))
            .then(Verdict::Drop),
        rule()
            .is(field("ether", "type"), sym("8021ad"))
            .then(Verdict::Drop),
        rule()
            .not(field("ether", "type"), sym("ip6"))
            .then(Verdict::Return),
        // RA guard (RFC 6105) and no redirects from an instance.
        rule()
            .is(field("icmpv6", "type"), sym(ICMPV6_RA))
            .then(Verdict::Drop),
        rule()
            .is(field("icmpv6", "type"), sym(ICMPV6_REDIRECT))
            .then(Verdict::Drop),
        // DHCPv6 shield (RFC 7610).
        rule()
            .is(field("udp", "sport"), num(DHCPV6_SERVER_PORT))
            .then(Verdict::Drop),
        rule()
            .is(field("udp", "dport"), num(DHCPV6_CLIENT_PORT))
            .then(Verdict::Drop),
        // RFC 4861 §4.4: the NA target sits at ICMPv6 offset 8; checked in the sub-chain.
        rule()
            .is(field("icmpv6", "type"), sym(ICMPV6_NA))
            .jump(na_chain),
    ];
    // RFC 4861 §4.3/§4.4/§4.6.1: first option at offset 24: type (1 source, 2 target link-layer
    // address), length 1 (8 octets), then the MAC.
    for icmp in [ICMPV6_NS, ICMPV6_NA] {
        for option in [0x0101, 0x0201] {
            from.push(
                rule()
                    .is(field("icmpv6", "type"), sym(icmp))
                    .is(th(192, 16), hex_num(option, 4))
                    .not(th(208, 48), mac_raw())
                    .then(Verdict::Drop),
            );
        }
    }
    // RFC 4861 §4.1: a Router Solicitation's options start at offset 8.
    from.push(
        rule()
            .is(field("icmpv6", "type"), sym(ICMPV6_RS))
            .is(th(64, 16), hex_num(0x0101, 4))
            .not(th(80, 48), mac_raw())
            .then(Verdict::Drop),
    );
    // The source must be one of the port's keys or link-local; `::` only for Neighbor
    // Solicitation (DAD, RFC 4862 §5.4.2) and MLD reports (RFC 3590 §4). Anything else is dropped.
    for key in normalize(keys.iter().copied().chain([LINK_LOCAL])) {
        from.push(
            rule()
                .is(field("ip6", "saddr"), net(key))
                .then(Verdict::Return),
        );
    }
    for icmp in [ICMPV6_NS, "mld-listener-report", "mld2-listener-report"] {
        from.push(
            rule()
                .is(field("ip6", "saddr"), sym("::"))
                .is(field("icmpv6", "type"), sym(icmp))
                .then(Verdict::Return),
        );
    }
    from.push(rule().then(Verdict::Drop));

    // The NA target must be one of the port's keys or link-local, matched as a 128-bit raw
    // payload (nft 1.0.6 has no `icmpv6 taddr`).
    let mut na: Vec<NftRule> = normalize(keys.iter().copied().chain([LINK_LOCAL]))
        .into_iter()
        .map(|target| {
            rule()
                .is(th(64, 128), raw_net(target))
                .then(Verdict::Return)
        })
        .collect();
    na.push(rule().then(Verdict::Drop));
    (from, na)
}

fn to_port_rules() -> Vec<NftRule> {
    vec![
        rule()
            .not(field("ether", "type"), sym("ip6"))
            .then(Verdict::Return),
        rule()
            .not(field("ip6", "daddr"), net(LINK_LOCAL))
            .then(Verdict::Return),
        rule()
            .is(meta(MetaKey::L4proto, "meta l4proto"), sym("ipv6-icmp"))
            .then(Verdict::Return),
        rule()
            .is(field("udp", "sport"), num(DHCPV6_SERVER_PORT))
            .is(field("udp", "dport"), num(DHCPV6_CLIENT_PORT))
            .then(Verdict::Return),
        rule().then(Verdict::Drop),
    ]
}

fn inet_forward_static() -> Vec<NftRule> {
    vec![
        rule()
            .not(meta(MetaKey::Nfproto, "meta nfproto"), sym("ipv6"))
            .then(Verdict::Accept),
        rule()
            .matching(
                ct_state(),
                Operator::IN,
                term(
                    "established,related",
                    Expression::List(vec![
                        Expression::String("established".into()),
                        Expression::String("related".into()),
                    ]),
                ),
            )
            .then(Verdict::Accept),
        // RFC 4890 §4.3.1 (must not be dropped) and echo (§4.3.1, §4.4.1 for MLD).
        rule()
            .is(
                field("icmpv6", "type"),
                syms(&[
                    "destination-unreachable",
                    "packet-too-big",
                    "time-exceeded",
                    "parameter-problem",
                    "echo-request",
                    "echo-reply",
                    "mld-listener-query",
                    "mld-listener-report",
                    "mld-listener-done",
                    "mld2-listener-report",
                ]),
            )
            .then(Verdict::Accept),
        // RFC 4861 §6.1.1, §7.1.1: valid ND has hop limit 255.
        rule()
            .is(
                field("icmpv6", "type"),
                syms(&[ICMPV6_RS, ICMPV6_RA, ICMPV6_NS, ICMPV6_NA]),
            )
            .is(field("ip6", "hoplimit"), num(255))
            .then(Verdict::Accept),
    ]
}

/// Match parts of a security-group rule; a remote group is given a set name on first use.
fn rule_parts(
    r: &Rule,
    group_sets: &mut BTreeMap<String, String>,
    set_idents: &mut Idents,
) -> Vec<(Term, Term)> {
    let mut parts = Vec::new();
    let ports = |proto: &'static str, parts: &mut Vec<(Term, Term)>| match r.ports {
        Some((lo, hi)) if lo == hi => parts.push((field(proto, "dport"), num(u32::from(lo)))),
        Some((lo, hi)) => parts.push((
            field(proto, "dport"),
            range(num(u32::from(lo)), num(u32::from(hi))),
        )),
        None => parts.push((meta(MetaKey::L4proto, "meta l4proto"), sym(proto))),
    };
    match r.protocol {
        Protocol::Tcp => ports("tcp", &mut parts),
        Protocol::Udp => ports("udp", &mut parts),
        Protocol::Icmpv6 => parts.push((meta(MetaKey::L4proto, "meta l4proto"), sym("ipv6-icmp"))),
        Protocol::Any => {}
    }
    let remote_field = match r.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    match &r.remote {
        Remote::Prefix(p) if p.is_default() => {}
        Remote::Prefix(p) => parts.push((field("ip6", remote_field), net(p.net()))),
        Remote::Group(g) => {
            let name = group_sets
                .entry(g.clone())
                .or_insert_with(|| format!("sg_{}", set_idents.assign(g)))
                .clone();
            parts.push((field("ip6", remote_field), set_ref(&name)));
        }
    }
    parts
}

/// Keys already given to a port in the inet maps, mutually disjoint, by network address.
#[derive(Default)]
struct Claimed<'a> {
    by_start: BTreeMap<u128, (Ipv6Net, &'a str)>,
}

impl<'a> Claimed<'a> {
    /// The owner of a claimed key that contains `key` or lies inside it. Two prefixes overlap only
    /// if one contains the other; as claimed keys are disjoint, the only one that can contain
    /// `key` is the last one starting at or before it. O(log n) per lookup.
    fn overlapping(&self, key: Ipv6Net) -> Option<&'a str> {
        let (start, end) = (u128::from(key.network()), u128::from(key.broadcast()));
        match self.by_start.range(..=start).next_back() {
            Some((_, (k, owner))) if k.contains(&key) => return Some(owner),
            _ => {}
        }
        self.by_start
            .range(start..=end)
            .next()
            .map(|(_, (_, owner))| *owner)
    }

    fn claim(&mut self, key: Ipv6Net, owner: &'a str) {
        self.by_start
            .insert(u128::from(key.network()), (key, owner));
    }
}

/// The ruleset for `doc` under `settings`. Pure; the document is assumed valid (see
/// `document::PortsDoc::parse`). Should two ports still claim overlapping keys in stage 2 (e.g.
/// the same prefix in prefix mode), the first port in document order keeps the key and a warning
/// is logged, so that nft never sees overlapping map elements.
pub fn render(settings: &Settings, doc: &PortsDoc) -> Desired {
    let mut port_idents = Idents::default();
    let mut set_idents = Idents::default();
    // group name → set name, filled as rules refer to groups.
    let mut group_sets: BTreeMap<String, String> = BTreeMap::new();

    let mut bridge = TableState::default();
    let mut inet = TableState::default();
    let mut from_map: BTreeMap<MapKey, String> = BTreeMap::new();
    let mut to_map: BTreeMap<MapKey, String> = BTreeMap::new();
    let mut egress_map: BTreeMap<MapKey, String> = BTreeMap::new();
    let mut ingress_map: BTreeMap<MapKey, String> = BTreeMap::new();
    let mut claimed = Claimed::default();

    for port in &doc.ports {
        let id = port_idents.assign(&port.interface);
        let (from, to, eg, ing) = (
            format!("from_{id}"),
            format!("to_{id}"),
            format!("eg_{id}"),
            format!("in_{id}"),
        );
        let na = format!("na_{id}");
        let (from_rules, na_rules) = from_port_rules(settings, port, &na);
        bridge.chains.insert(
            from.clone(),
            ChainState {
                base: false,
                rules: from_rules,
            },
        );
        bridge.chains.insert(
            na,
            ChainState {
                base: false,
                rules: na_rules,
            },
        );
        bridge.chains.insert(
            to.clone(),
            ChainState {
                base: false,
                rules: to_port_rules(),
            },
        );
        // Interface names are unique in a valid document; should one repeat, the first port keeps
        // it, as with overlapping address keys.
        from_map
            .entry(MapKey::Ifname(port.interface.clone()))
            .or_insert(from);
        to_map
            .entry(MapKey::Ifname(port.interface.clone()))
            .or_insert(to);

        let mut egress_rules: Vec<NftRule> = Vec::new();
        let mut ingress_rules: Vec<NftRule> = Vec::new();
        for group in port
            .security_groups
            .iter()
            .filter_map(|g| doc.groups.get(g))
        {
            for r in &group.rules {
                let parts = rule_parts(r, &mut group_sets, &mut set_idents);
                let (rules, verdict) = match r.direction {
                    Direction::Egress => (&mut egress_rules, Verdict::Return),
                    Direction::Ingress => (&mut ingress_rules, Verdict::Accept),
                };
                let built = rule().with(parts).then(verdict);
                if !rules.contains(&built) {
                    rules.push(built);
                }
            }
        }
        if settings.egress == EgressDefault::Deny {
            egress_rules.push(rule().then(Verdict::Drop));
        }
        ingress_rules.push(rule().then(Verdict::Drop));
        inet.chains.insert(
            eg.clone(),
            ChainState {
                base: false,
                rules: egress_rules,
            },
        );
        inet.chains.insert(
            ing.clone(),
            ChainState {
                base: false,
                rules: ingress_rules,
            },
        );

        for key in port_keys(settings, port) {
            if let Some(owner) = claimed.overlapping(key) {
                tracing::warn!(
                    port = %port.name,
                    key = %key,
                    owner = %owner,
                    "address key overlaps another port's; security groups use the other port's rules for it"
                );
                continue;
            }
            claimed.claim(key, &port.name);
            egress_map.insert(MapKey::Net(key), eg.clone());
            ingress_map.insert(MapKey::Net(key), ing.clone());
        }
    }

    // The base chains are the same for every document: ports come and go as map elements.
    bridge.chains.insert(
        BASE_CHAIN.to_string(),
        ChainState {
            base: true,
            rules: vec![
                rule().vmap(meta(MetaKey::Iifname, "iifname"), FROM_PORT_MAP),
                rule().vmap(meta(MetaKey::Oifname, "oifname"), TO_PORT_MAP),
            ],
        },
    );
    for (name, elems) in [(FROM_PORT_MAP, from_map), (TO_PORT_MAP, to_map)] {
        bridge.maps.insert(
            name.to_string(),
            VerdictMapState {
                key: MapKeyType::Ifname,
                elems,
            },
        );
    }

    let mut inet_forward = inet_forward_static();
    inet_forward.push(rule().vmap(field("ip6", "saddr"), EGRESS_MAP));
    inet_forward.push(rule().vmap(field("ip6", "daddr"), INGRESS_MAP));
    inet.chains.insert(
        BASE_CHAIN.to_string(),
        ChainState {
            base: true,
            rules: inet_forward,
        },
    );
    for (name, elems) in [(EGRESS_MAP, egress_map), (INGRESS_MAP, ingress_map)] {
        inet.maps.insert(
            name.to_string(),
            VerdictMapState {
                key: MapKeyType::Ipv6Interval,
                elems,
            },
        );
    }

    for (group, set) in group_sets {
        let members = doc
            .groups
            .get(&group)
            .map(|g| g.members.iter().map(|a| Ipv6Net::from(*a)).collect())
            .unwrap_or_default();
        inet.sets.insert(set, members);
    }

    let mut desired = Desired {
        marker: 0,
        bridge,
        inet,
    };
    desired.marker = desired.compute_marker();
    desired
}

// ---------------------------------------------------------------------------------------------
// Batches

fn cmd(c: NfCmd<'static>) -> NfObject<'static> {
    NfObject::CmdObject(c)
}

fn table_obj(family: Family, table: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: family.nf(),
        name: table.to_string().into(),
        handle: None,
    })
}

fn chain_obj(family: Family, table: &str, name: &str, base: bool) -> Chain<'static> {
    Chain {
        family: family.nf(),
        table: table.to_string().into(),
        name: name.to_string().into(),
        newname: None,
        handle: None,
        _type: base.then_some(NfChainType::Filter),
        hook: base.then_some(NfHook::Forward),
        prio: base.then_some(0),
        dev: None,
        policy: base.then_some(NfChainPolicy::Accept),
    }
}

fn set_obj(
    family: Family,
    table: &str,
    name: &str,
    interval: bool,
    elems: Vec<Expression<'static>>,
) -> Set<'static> {
    Set {
        family: family.nf(),
        table: table.to_string().into(),
        name: name.to_string().into(),
        handle: None,
        set_type: SetTypeValue::Single(SetType::Ipv6Addr),
        policy: None,
        flags: interval.then(|| HashSet::from([SetFlag::Interval])),
        elem: (!elems.is_empty()).then(|| Cow::Owned(elems)),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

fn map_obj(family: Family, table: &str, name: &str, map: &VerdictMapState) -> Map<'static> {
    let elems: Vec<Expression<'static>> = map
        .elems
        .iter()
        .map(|(k, chain)| map_elem(k, chain))
        .collect();
    let (key, interval) = match map.key {
        MapKeyType::Ifname => (SetType::Ifname, false),
        MapKeyType::Ipv6Interval => (SetType::Ipv6Addr, true),
    };
    Map {
        family: family.nf(),
        table: table.to_string().into(),
        name: name.to_string().into(),
        handle: None,
        set_type: SetTypeValue::Single(key),
        // Rewritten to `verdict` by `encode`.
        map: SetTypeValue::Single(MAP_PLACEHOLDER),
        policy: None,
        flags: interval.then(|| HashSet::from([SetFlag::Interval])),
        elem: (!elems.is_empty()).then(|| Cow::Owned(elems)),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }
}

/// A verdict-map element, `[key, {"jump": {"target": chain}}]` in nft's JSON.
fn map_elem(key: &MapKey, chain: &str) -> Expression<'static> {
    Expression::List(vec![
        key.expr(),
        Expression::Verdict(NftVerdict::Jump(JumpTarget {
            target: chain.to_string().into(),
        })),
    ])
}

fn element_obj(
    family: Family,
    table: &str,
    set: &str,
    elems: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family: family.nf(),
        table: table.to_string().into(),
        name: set.to_string().into(),
        elem: Cow::Owned(elems),
    })
}

fn rule_obj(family: Family, table: &str, chain: &str, rule: &NftRule) -> NfListObject<'static> {
    NfListObject::Rule(nftables::schema::Rule {
        family: family.nf(),
        table: table.to_string().into(),
        chain: chain.to_string().into(),
        expr: Cow::Owned(rule.expr.clone()),
        handle: None,
        index: None,
        comment: None,
    })
}

fn marker_expr(value: u64) -> Expression<'static> {
    Expression::String(marker_addr(value).to_string().into())
}

fn batch(objects: Vec<NfObject<'static>>) -> Nftables<'static> {
    Nftables {
        objects: Cow::Owned(objects),
    }
}

/// One transaction that replaces both tables with `desired`: delete them if present (`add` first,
/// so the delete cannot fail on a missing table), then create every chain, set, map, marker and
/// rule. Nothing outside the two tables is touched, and until the transaction commits the old
/// rules stay in force.
pub fn full_batch(settings: &Settings, desired: &Desired) -> Nftables<'static> {
    let t = settings.table.as_str();
    let marker = desired.marker_value();
    let mut out = Vec::new();
    for (family, _) in desired.tables() {
        out.push(cmd(NfCmd::Add(table_obj(family, t))));
        out.push(cmd(NfCmd::Delete(table_obj(family, t))));
    }
    for (family, table) in desired.tables() {
        out.push(cmd(NfCmd::Add(table_obj(family, t))));
        // Chains before the maps whose elements jump to them; maps and sets before the rules
        // that refer to them.
        for (name, chain) in &table.chains {
            out.push(cmd(NfCmd::Add(NfListObject::Chain(chain_obj(
                family, t, name, chain.base,
            )))));
        }
        for (name, elems) in &table.sets {
            let elems = elems.iter().map(|n| net_expr(*n)).collect();
            out.push(cmd(NfCmd::Add(NfListObject::Set(Box::new(set_obj(
                family, t, name, true, elems,
            ))))));
        }
        for (name, map) in &table.maps {
            out.push(cmd(NfCmd::Add(NfListObject::Map(Box::new(map_obj(
                family, t, name, map,
            ))))));
        }
        out.push(cmd(NfCmd::Add(NfListObject::Set(Box::new(set_obj(
            family,
            t,
            MARKER_SET,
            false,
            vec![marker_expr(marker)],
        ))))));
        for (name, chain) in &table.chains {
            for r in &chain.rules {
                out.push(cmd(NfCmd::Add(rule_obj(family, t, name, r))));
            }
        }
    }
    batch(out)
}

/// Commands for one table in the phases of [`diff_batch`]; `None` when base chains or map
/// declarations differ (the caller then rebuilds everything).
#[derive(Default)]
struct TableDiff {
    unmap: Vec<NfObject<'static>>,
    add: Vec<NfObject<'static>>,
    refill: Vec<NfObject<'static>>,
    map: Vec<NfObject<'static>>,
    remove: Vec<NfObject<'static>>,
}

fn diff_table(family: Family, t: &str, prev: &TableState, next: &TableState) -> Option<TableDiff> {
    let base_chains = |s: &TableState| -> Vec<String> {
        s.chains
            .iter()
            .filter(|(_, c)| c.base)
            .map(|(n, _)| n.clone())
            .collect()
    };
    let map_types = |s: &TableState| -> Vec<(String, MapKeyType)> {
        s.maps.iter().map(|(n, m)| (n.clone(), m.key)).collect()
    };
    if base_chains(prev) != base_chains(next) || map_types(prev) != map_types(next) {
        return None;
    }
    let mut d = TableDiff::default();

    // Map elements: those that go away (or jump elsewhere now) are deleted before anything else,
    // so their chains can be deleted and their keys given to another port (interval elements
    // must not overlap); new ones are added after their chains have been filled.
    for (name, map) in &next.maps {
        let empty = BTreeMap::new();
        let old = prev.maps.get(name).map_or(&empty, |m| &m.elems);
        let gone: Vec<_> = old
            .iter()
            .filter(|(k, chain)| map.elems.get(*k) != Some(*chain))
            .map(|(k, chain)| map_elem(k, chain))
            .collect();
        let new: Vec<_> = map
            .elems
            .iter()
            .filter(|(k, chain)| old.get(*k) != Some(*chain))
            .map(|(k, chain)| map_elem(k, chain))
            .collect();
        if !gone.is_empty() {
            d.unmap
                .push(cmd(NfCmd::Delete(element_obj(family, t, name, gone))));
        }
        if !new.is_empty() {
            d.map
                .push(cmd(NfCmd::Add(element_obj(family, t, name, new))));
        }
    }

    // New chains first: refilled rules and new map elements may jump to them.
    for (name, chain) in &next.chains {
        if !prev.chains.contains_key(name) {
            d.add.push(cmd(NfCmd::Add(NfListObject::Chain(chain_obj(
                family, t, name, chain.base,
            )))));
        }
    }
    for (name, elems) in &next.sets {
        match prev.sets.get(name) {
            None => {
                let elems = elems.iter().map(|n| net_expr(*n)).collect();
                d.add
                    .push(cmd(NfCmd::Add(NfListObject::Set(Box::new(set_obj(
                        family, t, name, true, elems,
                    ))))));
            }
            Some(old) => {
                let gone: Vec<_> = old.difference(elems).map(|n| net_expr(*n)).collect();
                let new: Vec<_> = elems.difference(old).map(|n| net_expr(*n)).collect();
                if !gone.is_empty() {
                    d.add
                        .push(cmd(NfCmd::Delete(element_obj(family, t, name, gone))));
                }
                if !new.is_empty() {
                    d.add
                        .push(cmd(NfCmd::Add(element_obj(family, t, name, new))));
                }
            }
        }
    }

    for (name, chain) in &next.chains {
        match prev.chains.get(name) {
            Some(old) if old.rules == chain.rules => continue,
            Some(_) => d.refill.push(cmd(NfCmd::Flush(FlushObject::Chain(chain_obj(
                family, t, name, false,
            ))))),
            None => {}
        }
        for r in &chain.rules {
            d.refill.push(cmd(NfCmd::Add(rule_obj(family, t, name, r))));
        }
    }

    // Removed chains are only referenced by map elements deleted above and by rules re-filled
    // above; flush them all before deleting any, then delete the sets no rule refers to any more.
    let removed: Vec<&String> = prev
        .chains
        .keys()
        .filter(|n| !next.chains.contains_key(*n))
        .collect();
    for name in &removed {
        d.remove.push(cmd(NfCmd::Flush(FlushObject::Chain(chain_obj(
            family, t, name, false,
        )))));
    }
    for name in &removed {
        d.remove
            .push(cmd(NfCmd::Delete(NfListObject::Chain(chain_obj(
                family, t, name, false,
            )))));
    }
    for name in prev.sets.keys().filter(|n| !next.sets.contains_key(*n)) {
        d.remove
            .push(cmd(NfCmd::Delete(NfListObject::Set(Box::new(set_obj(
                family,
                t,
                name,
                true,
                Vec::new(),
            ))))));
    }
    Some(d)
}

/// The smallest transaction that turns the applied `prev` into `next`: stale map elements
/// deleted, chains and sets added, set elements added and deleted, chains whose rules changed
/// flushed and re-filled, new map elements added, removed chains and sets deleted, markers
/// swapped. Its size depends on what changed, not on how many ports there are. Empty when
/// `prev == next`. When the base chains or maps differ (not possible between two renders of this
/// version) it is [`full_batch`] of `next`.
pub fn diff_batch(settings: &Settings, prev: &Desired, next: &Desired) -> Nftables<'static> {
    if prev == next {
        return batch(Vec::new());
    }
    let t = settings.table.as_str();
    let mut diffs = Vec::new();
    for ((family, p), (_, n)) in prev.tables().into_iter().zip(next.tables()) {
        match diff_table(family, t, p, n) {
            Some(d) => diffs.push(d),
            None => return full_batch(settings, next),
        }
    }
    let mut out = Vec::new();
    for phase in [
        |d: &mut TableDiff| std::mem::take(&mut d.unmap),
        |d: &mut TableDiff| std::mem::take(&mut d.add),
        |d: &mut TableDiff| std::mem::take(&mut d.refill),
        |d: &mut TableDiff| std::mem::take(&mut d.map),
        |d: &mut TableDiff| std::mem::take(&mut d.remove),
    ] {
        for d in &mut diffs {
            out.append(&mut phase(d));
        }
    }
    let (old, new) = (prev.marker_value(), next.marker_value());
    if old != new {
        for (family, _) in next.tables() {
            out.push(cmd(NfCmd::Delete(element_obj(
                family,
                t,
                MARKER_SET,
                vec![marker_expr(old)],
            ))));
            out.push(cmd(NfCmd::Add(element_obj(
                family,
                t,
                MARKER_SET,
                vec![marker_expr(new)],
            ))));
        }
    }
    batch(out)
}

/// The batch as the JSON nft is given: the crate's serialization with every map declaration's
/// value type patched to `verdict`. Applying and printing both go through here, so what
/// `flat6 guard render` shows is what is applied.
pub fn encode(batch: &Nftables) -> Result<Value, serde_json::Error> {
    let mut value = serde_json::to_value(batch)?;
    // The `nftables` crate has no `verdict` set type (see the module docs): every map flat6
    // declares is a verdict map, declared with `MAP_PLACEHOLDER` as its value type.
    if let Some(commands) = value.get_mut("nftables").and_then(Value::as_array_mut) {
        for command in commands.iter_mut().filter_map(Value::as_object_mut) {
            for body in command.values_mut() {
                if let Some(map) = body.get_mut("map").and_then(Value::as_object_mut) {
                    map.insert("map".into(), Value::String("verdict".into()));
                }
            }
        }
    }
    Ok(value)
}

/// The batch as pretty JSON, exactly what `nft -j -f -` is given (see [`encode`]).
pub fn describe(batch: &Nftables) -> String {
    encode(batch)
        .and_then(|value| serde_json::to_string_pretty(&value))
        .unwrap_or_else(|err| format!("<the batch cannot be shown as JSON: {err}>"))
}

// ---------------------------------------------------------------------------------------------

/// Documents and settings shared by the unit tests here and the namespace tests in `apply`.
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
    use serde_json::Value;

    /// The batch as nft gets it (map declarations patched).
    fn json(batch: &Nftables) -> Value {
        encode(batch).expect("json")
    }

    /// The commands of a batch as `verb kind name` lines (rules: `add rule <chain>`), a compact
    /// form to assert on.
    fn outline(batch: &Nftables) -> Vec<String> {
        let mut lines = Vec::new();
        for obj in json(batch)["nftables"].as_array().expect("array") {
            let (verb, body) = obj
                .as_object()
                .expect("object")
                .iter()
                .next()
                .expect("verb");
            let (kind, o) = body.as_object().expect("kind").iter().next().expect("kind");
            let name = match kind.as_str() {
                "rule" => o["chain"].as_str().unwrap_or_default().to_string(),
                "element" => format!(
                    "{} {}",
                    o["name"].as_str().unwrap_or_default(),
                    serde_json::to_string(&o["elem"]).expect("elem")
                ),
                _ => o["name"].as_str().unwrap_or_default().to_string(),
            };
            lines.push(format!(
                "{verb} {kind} {} {name}",
                o["family"].as_str().unwrap_or("")
            ));
        }
        lines
    }

    #[test]
    fn lone_port_bridge_stage() {
        let d = render(&settings(), &lone_port());
        assert_eq!(
            d.rules(Family::Bridge, "forward").expect("forward"),
            ["iifname vmap @from_port", "oifname vmap @to_port"]
        );
        assert_eq!(
            d.map_entries(Family::Bridge, FROM_PORT_MAP).expect("map"),
            ["\"vnet1\" : jump from_vnet1"]
        );
        assert_eq!(
            d.map_entries(Family::Bridge, TO_PORT_MAP).expect("map"),
            ["\"vnet1\" : jump to_vnet1"]
        );
        assert_eq!(
            d.rules(Family::Bridge, "from_vnet1").expect("from"),
            [
                "ether saddr != 02:00:00:00:00:01 drop",
                "ether type 8021q drop",
                "ether type 8021ad drop",
                "ether type != ip6 return",
                "icmpv6 type nd-router-advert drop",
                "icmpv6 type nd-redirect drop",
                "udp sport 547 drop",
                "udp dport 546 drop",
                "icmpv6 type nd-neighbor-advert jump na_vnet1",
                "icmpv6 type nd-neighbor-solicit @th,192,16 0x0101 @th,208,48 != 0x020000000001 drop",
                "icmpv6 type nd-neighbor-solicit @th,192,16 0x0201 @th,208,48 != 0x020000000001 drop",
                "icmpv6 type nd-neighbor-advert @th,192,16 0x0101 @th,208,48 != 0x020000000001 drop",
                "icmpv6 type nd-neighbor-advert @th,192,16 0x0201 @th,208,48 != 0x020000000001 drop",
                "icmpv6 type nd-router-solicit @th,64,16 0x0101 @th,80,48 != 0x020000000001 drop",
                "ip6 saddr 2001:db8:0:1::10 return",
                "ip6 saddr fe80::/10 return",
                "ip6 saddr :: icmpv6 type nd-neighbor-solicit return",
                "ip6 saddr :: icmpv6 type mld-listener-report return",
                "ip6 saddr :: icmpv6 type mld2-listener-report return",
                "drop",
            ]
        );
        assert_eq!(
            d.rules(Family::Bridge, "na_vnet1").expect("na"),
            [
                "@th,64,128 0x20010db8000000010000000000000010 return",
                "@th,64,128 0xfe800000000000000000000000000000-0xfebfffffffffffffffffffffffffffff return",
                "drop",
            ]
        );
        assert_eq!(
            d.rules(Family::Bridge, "to_vnet1").expect("to"),
            [
                "ether type != ip6 return",
                "ip6 daddr != fe80::/10 return",
                "meta l4proto ipv6-icmp return",
                "udp sport 547 udp dport 546 return",
                "drop",
            ]
        );
    }

    #[test]
    fn lone_port_inet_stage() {
        let d = render(&settings(), &lone_port());
        let forward = d.rules(Family::Inet, "forward").expect("forward");
        assert_eq!(forward[0], "meta nfproto != ipv6 accept");
        assert_eq!(forward[1], "ct state established,related accept");
        assert!(forward[2].starts_with("icmpv6 type { destination-unreachable, packet-too-big,"));
        assert_eq!(
            forward[3],
            "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept"
        );
        assert_eq!(
            &forward[4..],
            ["ip6 saddr vmap @egress", "ip6 daddr vmap @ingress"]
        );
        assert_eq!(
            d.map_entries(Family::Inet, EGRESS_MAP).expect("map"),
            ["2001:db8:0:1::10 : jump eg_vnet1"]
        );
        assert_eq!(
            d.map_entries(Family::Inet, INGRESS_MAP).expect("map"),
            ["2001:db8:0:1::10 : jump in_vnet1"]
        );
        // No groups: egress allowed by default (chain falls through), ingress dropped.
        assert_eq!(
            d.rules(Family::Inet, "eg_vnet1").expect("eg"),
            Vec::<&str>::new()
        );
        assert_eq!(d.rules(Family::Inet, "in_vnet1").expect("in"), ["drop"]);
        assert_eq!(d.set_elements("sg_web"), None);
    }

    #[test]
    fn group_rules_and_remote_group_set() {
        let d = render(&settings(), &web());
        assert_eq!(
            d.rules(Family::Inet, "in_vnet1").expect("in"),
            [
                "tcp dport 80 accept",
                "tcp dport 22 ip6 saddr @sg_admin accept",
                "drop"
            ]
        );
        // Only the group a rule refers to gets a set.
        assert_eq!(
            d.set_elements("sg_admin").expect("set"),
            [
                "2001:db8:ff::1/128".parse::<Ipv6Net>().expect("net"),
                "2001:db8:ff::2/128".parse().expect("net")
            ]
        );
        assert_eq!(d.set_elements("sg_web"), None);

        // The JSON of the remote-group rule.
        let b = full_batch(&settings(), &d);
        let rules: Vec<Value> = json(&b)["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .filter(|o| o["add"]["rule"]["chain"] == "in_vnet1")
            .map(|o| o["add"]["rule"]["expr"].clone())
            .collect();
        assert_eq!(
            rules[1],
            serde_json::json!([
                {"match": {"left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22, "op": "=="}},
                {"match": {"left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@sg_admin", "op": "=="}},
                {"accept": null}
            ])
        );
    }

    #[test]
    fn na_target_is_a_128_bit_hex_payload_match() {
        let b = full_batch(&settings(), &render(&settings(), &lone_port()));
        let na: Vec<Value> = json(&b)["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .filter(|o| o["add"]["rule"]["chain"] == "na_vnet1")
            .map(|o| o["add"]["rule"]["expr"].clone())
            .collect();
        let th = serde_json::json!({"payload": {"base": "th", "offset": 64, "len": 128}});
        assert_eq!(
            na,
            [
                serde_json::json!([
                    {"match": {"left": th, "right": "0x20010db8000000010000000000000010", "op": "=="}},
                    {"return": null}
                ]),
                serde_json::json!([
                    {"match": {"left": th, "right": {"range": [
                        "0xfe800000000000000000000000000000",
                        "0xfebfffffffffffffffffffffffffffff"
                    ]}, "op": "=="}},
                    {"return": null}
                ]),
                serde_json::json!([{"drop": null}]),
            ]
        );
    }

    #[test]
    fn per_port_chains_use_no_sets() {
        // Sets cost a scan of all of a table's sets in nft 1.0.6 and the kernel (module docs).
        for s in [
            settings(),
            Settings {
                anti_spoofing: AntiSpoofing::Prefix,
                egress: EgressDefault::Deny,
                ..settings()
            },
        ] {
            let b = full_batch(&s, &render(&s, &shared()));
            for o in json(&b)["nftables"].as_array().expect("array") {
                let r = &o["add"]["rule"];
                if r.is_null() || r["chain"] == BASE_CHAIN {
                    continue;
                }
                let text = r["expr"].to_string();
                assert!(!text.contains("\"set\""), "{}: {text}", r["chain"]);
            }
        }
    }

    #[test]
    fn prefix_anti_spoofing_uses_the_prefix_everywhere() {
        let s = Settings {
            anti_spoofing: AntiSpoofing::Prefix,
            ..settings()
        };
        let d = render(&s, &lone_port());
        let sources = |d: &Desired| -> Vec<String> {
            d.rules(Family::Bridge, "from_vnet1")
                .expect("from")
                .into_iter()
                .filter(|r| r.starts_with("ip6 saddr") && !r.starts_with("ip6 saddr ::"))
                .map(String::from)
                .collect()
        };
        assert_eq!(
            sources(&d),
            [
                "ip6 saddr 2001:db8:0:1::/64 return",
                "ip6 saddr fe80::/10 return"
            ]
        );
        assert_eq!(
            d.rules(Family::Bridge, "na_vnet1").expect("na")[0],
            "@th,64,128 0x20010db8000000010000000000000000-0x20010db800000001ffffffffffffffff return"
        );
        assert_eq!(
            d.map_entries(Family::Inet, EGRESS_MAP).expect("map"),
            ["2001:db8:0:1::/64 : jump eg_vnet1"]
        );

        // A port without a prefix falls back to its addresses.
        let mut doc = lone_port();
        doc.ports[0].prefix = None;
        let d = render(&s, &doc);
        assert_eq!(
            sources(&d),
            [
                "ip6 saddr 2001:db8:0:1::10 return",
                "ip6 saddr fe80::/10 return"
            ]
        );
    }

    #[test]
    fn egress_deny_ends_the_egress_chain_in_drop() {
        let s = Settings {
            egress: EgressDefault::Deny,
            ..settings()
        };
        let d = render(&s, &shared());
        assert_eq!(
            d.rules(Family::Inet, "eg_vnet1").expect("eg"),
            ["tcp dport 443 ip6 daddr 2001:db8:aa::/48 return", "drop"]
        );
        let allow = render(&settings(), &shared());
        assert_eq!(
            allow.rules(Family::Inet, "eg_vnet1").expect("eg"),
            ["tcp dport 443 ip6 daddr 2001:db8:aa::/48 return"]
        );
    }

    #[test]
    fn two_ports_share_a_group() {
        let d = render(&settings(), &shared());
        let want = [
            "udp dport 8000-8100 ip6 saddr @sg_app accept",
            "meta l4proto ipv6-icmp ip6 saddr 2001:db8:bb::/64 accept",
            "drop",
        ];
        assert_eq!(d.rules(Family::Inet, "in_vnet1").expect("in1"), want);
        assert_eq!(d.rules(Family::Inet, "in_vnet2").expect("in2"), want);
        assert_eq!(d.set_elements("sg_app").expect("set").len(), 2);
        assert_eq!(
            d.map_entries(Family::Inet, INGRESS_MAP).expect("map"),
            [
                "2001:db8:0:1::10 : jump in_vnet1",
                "2001:db8:0:2::10 : jump in_vnet2"
            ]
        );
        assert_eq!(
            d.chains(Family::Bridge),
            [
                "forward",
                "from_vnet1",
                "from_vnet2",
                "na_vnet1",
                "na_vnet2",
                "to_vnet1",
                "to_vnet2"
            ]
        );
    }

    #[test]
    fn no_ports_means_base_chains_and_empty_maps() {
        let d = render(&settings(), &doc(vec![], vec![]));
        // The base chains do not depend on the ports: only map elements do.
        let one = render(&settings(), &lone_port());
        for family in [Family::Bridge, Family::Inet] {
            assert_eq!(d.rules(family, "forward"), one.rules(family, "forward"));
        }
        assert_eq!(
            d.rules(Family::Bridge, "forward").expect("forward").len(),
            2
        );
        assert_eq!(d.rules(Family::Inet, "forward").expect("forward").len(), 6);
        assert_eq!(d.chains(Family::Inet), ["forward"]);
        for (family, map) in [
            (Family::Bridge, FROM_PORT_MAP),
            (Family::Bridge, TO_PORT_MAP),
            (Family::Inet, EGRESS_MAP),
            (Family::Inet, INGRESS_MAP),
        ] {
            assert_eq!(d.map_entries(family, map), Some(Vec::new()), "{map}");
        }
    }

    #[test]
    fn names_are_sanitized_and_kept_apart() {
        let mut a = port(1, &["web app"]);
        a.interface = "vnet-1".into();
        let mut b = port(2, &[]);
        b.interface = "vnet.1".into();
        let mut c = port(3, &[]);
        c.interface = "fwd".into();
        let d = render(
            &settings(),
            &doc(
                vec![a, b, c],
                vec![group(
                    "web app",
                    &[],
                    vec![tcp_in((80, 80), Remote::Group("web app".into()))],
                )],
            ),
        );
        let chains = d.chains(Family::Bridge);
        assert!(chains.contains(&"from_fwd"), "{chains:?}");
        let from: Vec<&&str> = chains
            .iter()
            .filter(|c| c.starts_with("from_vnet_1_"))
            .collect();
        assert_eq!(from.len(), 2, "{chains:?}");
        assert_ne!(from[0], from[1]);
        for c in &chains {
            assert!(
                c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'),
                "{c}"
            );
        }
        let sets: Vec<String> = json(&full_batch(&settings(), &d))["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|o| o["add"]["set"]["name"].as_str().map(String::from))
            .filter(|n| n.starts_with("sg_"))
            .collect();
        assert_eq!(sets.len(), 1);
        assert!(sets[0].starts_with("sg_web_app_"), "{sets:?}");
    }

    #[test]
    fn overlapping_keys_go_to_the_first_port() {
        let s = Settings {
            anti_spoofing: AntiSpoofing::Prefix,
            ..settings()
        };
        let mut b = port(2, &[]);
        b.prefix = Some(prefix("2001:db8:0:1::/64"));
        b.addresses = vec![addr("2001:db8:0:1::20")];
        let d = render(&s, &doc(vec![port(1, &[]), b], vec![]));
        assert_eq!(
            d.map_entries(Family::Inet, EGRESS_MAP).expect("map"),
            ["2001:db8:0:1::/64 : jump eg_vnet1"]
        );

        // A later prefix that contains an earlier port's address is not given out either.
        let mut a = port(1, &[]);
        a.prefix = None;
        a.addresses = vec![addr("2001:db8:0:2::20")];
        let d = render(&s, &doc(vec![a, port(2, &[]), port(3, &[])], vec![]));
        assert_eq!(
            d.map_entries(Family::Inet, INGRESS_MAP).expect("map"),
            [
                "2001:db8:0:2::20 : jump in_vnet1",
                "2001:db8:0:3::/64 : jump in_vnet3"
            ]
        );
        assert!(d.chains(Family::Inet).contains(&"in_vnet2"));
    }

    #[test]
    fn verdict_maps_are_declared_with_a_patched_value_type() {
        let s = settings();
        let b = full_batch(&s, &render(&s, &lone_port()));
        let maps: Vec<Value> = json(&b)["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|o| o["add"].get("map").cloned())
            .collect();
        assert_eq!(
            maps,
            [
                serde_json::json!({"family": "bridge", "table": "flat6", "name": "from_port",
                    "type": "ifname", "map": "verdict",
                    "elem": [["vnet1", {"jump": {"target": "from_vnet1"}}]]}),
                serde_json::json!({"family": "bridge", "table": "flat6", "name": "to_port",
                    "type": "ifname", "map": "verdict",
                    "elem": [["vnet1", {"jump": {"target": "to_vnet1"}}]]}),
                serde_json::json!({"family": "inet", "table": "flat6", "name": "egress",
                    "type": "ipv6_addr", "map": "verdict", "flags": ["interval"],
                    "elem": [["2001:db8:0:1::10", {"jump": {"target": "eg_vnet1"}}]]}),
                serde_json::json!({"family": "inet", "table": "flat6", "name": "ingress",
                    "type": "ipv6_addr", "map": "verdict", "flags": ["interval"],
                    "elem": [["2001:db8:0:1::10", {"jump": {"target": "in_vnet1"}}]]}),
            ]
        );
        // Without the patch the placeholder is left, which nft rejects.
        let raw = serde_json::to_value(&b).expect("json");
        let placeholder = serde_json::to_value(MAP_PLACEHOLDER).expect("json");
        assert!(
            raw["nftables"]
                .as_array()
                .expect("array")
                .iter()
                .filter_map(|o| o["add"].get("map"))
                .all(|m| m["map"] == placeholder)
        );
        // The base chains dispatch through the maps by name.
        let vmap = json(&b)["nftables"]
            .as_array()
            .expect("array")
            .iter()
            .find(|o| {
                o["add"]["rule"]["chain"] == "forward" && o["add"]["rule"]["family"] == "bridge"
            })
            .map(|o| o["add"]["rule"]["expr"].clone())
            .expect("rule");
        assert_eq!(
            vmap,
            serde_json::json!([{"vmap": {"key": {"meta": {"key": "iifname"}}, "data": "@from_port"}}])
        );
        // In prefix mode a map key is a prefix.
        let p = Settings {
            anti_spoofing: AntiSpoofing::Prefix,
            ..settings()
        };
        let lines = outline(&diff_batch(
            &p,
            &render(&p, &doc(vec![], vec![])),
            &render(&p, &lone_port()),
        ));
        assert!(lines.contains(
            &"add element inet egress [[{\"prefix\":{\"addr\":\"2001:db8:0:1::\",\"len\":64}},{\"jump\":{\"target\":\"eg_vnet1\"}}]]"
                .to_string()
        ), "{lines:#?}");
    }

    #[test]
    fn full_batch_recreates_both_tables_in_one_transaction() {
        let b = full_batch(&settings(), &render(&settings(), &lone_port()));
        let lines = outline(&b);
        assert_eq!(
            &lines[..6],
            [
                "add table bridge flat6",
                "delete table bridge flat6",
                "add table inet flat6",
                "delete table inet flat6",
                "add table bridge flat6",
                "add chain bridge forward",
            ]
        );
        // Chains and sets come before the rules that refer to them.
        let first_rule = lines
            .iter()
            .position(|l| l.starts_with("add rule bridge"))
            .expect("rule");
        let marker = lines
            .iter()
            .position(|l| l == "add set bridge flat6_state")
            .expect("marker");
        assert!(marker < first_rule);
        assert!(lines.contains(&"add set inet flat6_state".to_string()));
        let v = json(&b);
        let base = v["nftables"][5]["add"]["chain"].clone();
        assert_eq!(
            base,
            serde_json::json!({"family": "bridge", "table": "flat6", "name": "forward",
                "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"})
        );
    }

    #[test]
    fn marker_is_stable_and_sensitive() {
        let s = settings();
        let d = render(&s, &web());
        // Fixed algorithm: the same value in every run and build of this renderer.
        assert_eq!(d.marker(), render(&s, &web()).marker());
        assert_eq!(d.marker().len(), 16);
        assert_eq!(
            marker_from_element(marker_addr(d.marker_value())),
            d.marker()
        );
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);

        let mut member = web();
        if let Some(g) = member.groups.get_mut("admin") {
            g.members.push(addr("2001:db8:ff::3"));
        }
        let mut mac = web();
        mac.ports[0].mac = crate::model::Mac([2, 0, 0, 0, 0, 9]);
        let deny = Settings {
            egress: EgressDefault::Deny,
            ..s.clone()
        };
        let markers: BTreeSet<String> = [
            d.marker(),
            render(&s, &member).marker(),
            render(&s, &mac).marker(),
            render(&deny, &web()).marker(),
            render(&s, &lone_port()).marker(),
        ]
        .into_iter()
        .collect();
        assert_eq!(markers.len(), 5);
    }

    // ---- diff_batch, table-driven

    struct Case {
        name: &'static str,
        prev: PortsDoc,
        next: PortsDoc,
        want: &'static [&'static str],
    }

    fn cases() -> Vec<Case> {
        let mut member_added = web();
        if let Some(g) = member_added.groups.get_mut("admin") {
            g.members.push(addr("2001:db8:ff::3"));
        }
        let mut rule_changed = shared();
        if let Some(g) = rule_changed.groups.get_mut("app") {
            g.rules[1].ports = Some((8443, 8443));
        }
        let mut address_added = lone_port();
        address_added.ports[0]
            .addresses
            .push(addr("2001:db8:0:1::11"));
        vec![
            Case {
                name: "unchanged",
                prev: web(),
                next: web(),
                want: &[],
            },
            Case {
                name: "add a port",
                prev: doc(vec![port(1, &[])], vec![]),
                next: doc(vec![port(1, &[]), port(2, &[])], vec![]),
                want: &[
                    "add chain bridge from_vnet2",
                    "add chain bridge na_vnet2",
                    "add chain bridge to_vnet2",
                    "add chain inet eg_vnet2",
                    "add chain inet in_vnet2",
                    "add rule bridge from_vnet2",
                    "add rule bridge na_vnet2",
                    "add rule bridge to_vnet2",
                    "add rule inet in_vnet2",
                    r#"add element bridge from_port [["vnet2",{"jump":{"target":"from_vnet2"}}]]"#,
                    r#"add element bridge to_port [["vnet2",{"jump":{"target":"to_vnet2"}}]]"#,
                    r#"add element inet egress [["2001:db8:0:2::10",{"jump":{"target":"eg_vnet2"}}]]"#,
                    r#"add element inet ingress [["2001:db8:0:2::10",{"jump":{"target":"in_vnet2"}}]]"#,
                ],
            },
            Case {
                name: "remove a port",
                prev: doc(vec![port(1, &[]), port(2, &[])], vec![]),
                next: doc(vec![port(1, &[])], vec![]),
                want: &[
                    r#"delete element bridge from_port [["vnet2",{"jump":{"target":"from_vnet2"}}]]"#,
                    r#"delete element bridge to_port [["vnet2",{"jump":{"target":"to_vnet2"}}]]"#,
                    r#"delete element inet egress [["2001:db8:0:2::10",{"jump":{"target":"eg_vnet2"}}]]"#,
                    r#"delete element inet ingress [["2001:db8:0:2::10",{"jump":{"target":"in_vnet2"}}]]"#,
                    "flush chain bridge from_vnet2",
                    "flush chain bridge na_vnet2",
                    "flush chain bridge to_vnet2",
                    "delete chain bridge from_vnet2",
                    "delete chain bridge na_vnet2",
                    "delete chain bridge to_vnet2",
                    "flush chain inet eg_vnet2",
                    "flush chain inet in_vnet2",
                    "delete chain inet eg_vnet2",
                    "delete chain inet in_vnet2",
                ],
            },
            Case {
                name: "group member added",
                prev: web(),
                next: member_added,
                want: &["add element inet sg_admin [\"2001:db8:ff::3\"]"],
            },
            Case {
                name: "rule changed",
                prev: shared(),
                next: rule_changed,
                want: &[
                    "flush chain inet eg_vnet1",
                    "add rule inet eg_vnet1",
                    "flush chain inet eg_vnet2",
                    "add rule inet eg_vnet2",
                ],
            },
            Case {
                name: "address added",
                prev: lone_port(),
                next: address_added,
                want: &[
                    "flush chain bridge from_vnet1",
                    "add rule bridge from_vnet1",
                    "flush chain bridge na_vnet1",
                    "add rule bridge na_vnet1",
                    r#"add element inet egress [["2001:db8:0:1::11",{"jump":{"target":"eg_vnet1"}}]]"#,
                    r#"add element inet ingress [["2001:db8:0:1::11",{"jump":{"target":"in_vnet1"}}]]"#,
                ],
            },
            Case {
                name: "last remote-group rule removed",
                prev: web(),
                next: doc(
                    vec![port(1, &["web"])],
                    vec![group(
                        "web",
                        &[],
                        vec![tcp_in((80, 80), Remote::Prefix(prefix("::/0")))],
                    )],
                ),
                want: &[
                    "flush chain inet in_vnet1",
                    "add rule inet in_vnet1",
                    "delete set inet sg_admin",
                ],
            },
        ]
    }

    /// The outline without repeated `add rule` lines and without the marker swap.
    fn compact(batch: &Nftables) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for line in outline(batch) {
            if line.contains(" flat6_state ") {
                continue;
            }
            if line.starts_with("add rule") && out.last() == Some(&line) {
                continue;
            }
            out.push(line);
        }
        out
    }

    #[test]
    fn diff_batch_cases() {
        let s = settings();
        for case in cases() {
            let (prev, next) = (render(&s, &case.prev), render(&s, &case.next));
            let b = diff_batch(&s, &prev, &next);
            // `compact` folds runs of rules into one line.
            let got = compact(&b);
            let want: Vec<String> = {
                let mut w: Vec<String> = Vec::new();
                for line in case.want {
                    if line.starts_with("add rule") && w.last().map(String::as_str) == Some(*line) {
                        continue;
                    }
                    w.push(line.to_string());
                }
                w
            };
            assert_eq!(got, want, "case {:?}", case.name);
            let markers = outline(&b)
                .iter()
                .filter(|l| l.contains(" flat6_state "))
                .count();
            assert_eq!(
                markers,
                if prev == next { 0 } else { 4 },
                "case {:?}",
                case.name
            );
        }
    }

    /// The JSON nft is given for the diffs that add and remove port 60000 on a host with `n`
    /// ports: total bytes, and bytes without the four marker commands.
    fn one_port_diff_bytes(s: &Settings, n: u16) -> [(usize, usize); 2] {
        let base = many_ports(n);
        let mut more = base.clone();
        more.ports.push(numbered_port(60000, &["web"]));
        let (with, without) = (render(s, &more), render(s, &base));
        [
            diff_batch(s, &without, &with),
            diff_batch(s, &with, &without),
        ]
        .map(|b| {
            let mut v = json(&b);
            let total = v.to_string().len();
            if let Some(a) = v["nftables"].as_array_mut() {
                a.retain(|o| !o.to_string().contains(MARKER_SET));
            }
            (total, v.to_string().len())
        })
    }

    #[test]
    fn a_one_port_diff_does_not_grow_with_the_number_of_ports() {
        let s = settings();
        let small = one_port_diff_bytes(&s, 100);
        let large = one_port_diff_bytes(&s, 10_000);
        for (what, (small, small_core), (large, large_core)) in
            [("add", small[0], large[0]), ("remove", small[1], large[1])]
        {
            // Only the text of the marker addresses may differ in length.
            assert_eq!(small_core, large_core, "{what}");
            assert!(
                small.abs_diff(large) <= 64,
                "{what}: {small} bytes at 100 ports, {large} at 10,000"
            );
            assert!(small < 32_000, "{what}: {small} bytes");
        }
    }

    #[test]
    fn diff_swaps_the_marker_in_both_tables() {
        let s = settings();
        let (prev, next) = (render(&s, &lone_port()), render(&s, &web()));
        let lines = outline(&diff_batch(&s, &prev, &next));
        let old = format!("[\"{}\"]", marker_addr(prev.marker_value()));
        let new = format!("[\"{}\"]", marker_addr(next.marker_value()));
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
    }

    #[test]
    fn describe_is_pretty_json() {
        let b = full_batch(&settings(), &render(&settings(), &lone_port()));
        let text = describe(&b);
        assert!(text.starts_with("{\n  \"nftables\": ["), "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).expect("parse"),
            json(&b)
        );
        assert!(text.contains("\"map\": \"verdict\""), "{text}");
        let rules = render(&settings(), &lone_port()).describe_rules();
        assert!(
            rules.contains("  chain from_vnet1\n    ether saddr != 02:00:00:00:00:01 drop\n"),
            "{rules}"
        );
        assert!(
            rules.contains("  map from_port (ifname : verdict) { \"vnet1\" : jump from_vnet1 }\n"),
            "{rules}"
        );
    }

    // ---- a model of what nft does with our batches, to check diff against full without root

    /// Per table: chains → rule JSON, sets and maps → element JSON; tables keyed by family.
    type Model = BTreeMap<
        String,
        (
            BTreeMap<String, Vec<String>>,
            BTreeMap<String, BTreeSet<String>>,
        ),
    >;

    fn interpret(model: &mut Model, batch: &Nftables) {
        for obj in json(batch)["nftables"].as_array().expect("array") {
            let (verb, body) = obj.as_object().expect("obj").iter().next().expect("verb");
            let (kind, o) = body.as_object().expect("obj").iter().next().expect("kind");
            let fam = o["family"].as_str().expect("family").to_string();
            let name = o["name"].as_str().unwrap_or_default().to_string();
            let elems = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|a| a.iter().map(|e| e.to_string()).collect())
                    .unwrap_or_default()
            };
            // A map element must jump to a chain that exists when it is added.
            let targets_exist = |t: &(BTreeMap<String, Vec<String>>, _), v: &Value| {
                for e in v.as_array().into_iter().flatten() {
                    if let Some(target) = e[1]["jump"]["target"].as_str() {
                        assert!(
                            t.0.contains_key(target),
                            "element jumps to missing {target}"
                        );
                    }
                }
            };
            match (verb.as_str(), kind.as_str()) {
                ("add", "table") => {
                    model.entry(fam).or_default();
                }
                ("delete", "table") => {
                    model.remove(&fam).expect("delete of a missing table");
                }
                (verb, kind) => {
                    let t = model.get_mut(&fam).expect("table exists");
                    match (verb, kind) {
                        ("add", "chain") => {
                            t.0.entry(name).or_default();
                        }
                        ("flush", "chain") => t.0.get_mut(&name).expect("chain").clear(),
                        ("delete", "chain") => {
                            let rules = t.0.remove(&name).expect("chain");
                            assert!(rules.is_empty(), "delete of a non-empty chain {name}");
                            let jump = serde_json::json!({"jump": {"target": name}}).to_string();
                            assert!(
                                t.1.values().flatten().all(|e| !e.contains(&jump)),
                                "delete of chain {name} while a map element jumps to it"
                            );
                        }
                        ("add", "rule") => {
                            let chain = o["chain"].as_str().expect("chain");
                            t.0.get_mut(chain)
                                .expect("rule in a missing chain")
                                .push(o["expr"].to_string());
                        }
                        ("add", "set") | ("add", "map") => {
                            assert!(!t.1.contains_key(&name), "set {name} added twice");
                            targets_exist(t, &o["elem"]);
                            t.1.insert(name, elems(&o["elem"]).into_iter().collect());
                        }
                        ("delete", "set") => {
                            t.1.remove(&name).expect("set");
                        }
                        ("add", "element") => {
                            targets_exist(t, &o["elem"]);
                            t.1.get_mut(&name).expect("set").extend(elems(&o["elem"]));
                        }
                        ("delete", "element") => {
                            let set = t.1.get_mut(&name).expect("set");
                            for e in elems(&o["elem"]) {
                                assert!(set.remove(&e), "delete of a missing element {e}");
                            }
                        }
                        other => panic!("unexpected command {other:?}"),
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
        /// when the models are equal.
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
            prop_assert_eq!(diff.objects.is_empty(), p == n);
            // Ports come and go as map elements: the base chains are never re-sent.
            let touched: Vec<String> = outline(&diff)
                .into_iter()
                .filter(|l| l.ends_with(" forward"))
                .collect();
            prop_assert!(touched.is_empty(), "{:?}", touched);
            prop_assert_eq!(p.marker() == n.marker(), p == n);
        }
    }
}
