//! The guard's ports document: which instance ports this hypervisor has, their identity (MAC,
//! addresses, /64) and the security groups they are in, with remote-group members resolved.
//!
//! The same JSON comes from a local file or from the controller's
//! `GET /v1/hosts/{host}/ports` watch. It is validated as a whole; a document with any problem is
//! rejected with every problem and its path, and the rules in force stay.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv6Addr;

use serde::Deserialize;

use crate::config::{Checker, Problems};
use crate::model::doc::{
    GroupChange, GroupEntry, HostChanges, PortEntry, PortsDocument, RuleEntry,
};
use crate::model::rule::validate_rule;
pub use crate::model::rule::{Direction, Protocol, Remote, Rule, parse_port_range};
use crate::model::{Mac, Prefix};

/// A validated ports document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortsDoc {
    /// The controller's revision of this host's document.
    pub revision: u64,
    /// The instance ports on this hypervisor.
    pub ports: Vec<Port>,
    /// Every group a port is in or a rule refers to, by name.
    pub groups: BTreeMap<String, Group>,
}

/// One instance port (a bridge port on this hypervisor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The instance's name (for logs).
    pub name: String,
    /// The bridge port's interface name (`vnet0`).
    pub interface: String,
    /// The MAC the instance must use.
    pub mac: Mac,
    /// Its IPv6 addresses (/128s).
    pub addresses: Vec<Ipv6Addr>,
    /// Its /64, when the pod gives one per instance.
    pub prefix: Option<Prefix>,
    /// The groups whose rules apply to it.
    pub security_groups: Vec<String>,
}

/// A security group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Every address in the group, on any host (what remote-group rules match).
    pub members: Vec<Ipv6Addr>,
    /// Its rules.
    pub rules: Vec<Rule>,
}

// The values that are parsed rather than kept (addresses, MACs, prefixes) borrow from the
// document where they can: a 10,000-port document has some 30,000 of them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocWire<'a> {
    revision: Option<u64>,
    #[serde(borrow)]
    ports: Option<Vec<PortWire<'a>>>,
    #[serde(default, borrow)]
    security_groups: Vec<GroupWire<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortWire<'a> {
    name: Option<String>,
    interface: Option<String>,
    #[serde(borrow)]
    mac: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    addresses: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    prefix: Option<Cow<'a, str>>,
    #[serde(default)]
    security_groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupWire<'a> {
    name: Option<String>,
    #[serde(default, borrow)]
    members: Vec<Cow<'a, str>>,
    #[serde(default)]
    rules: Vec<RuleEntry>,
}

fn is_instance_address(addr: &Ipv6Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address")
    } else if addr.is_loopback() {
        Some("the loopback address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else if (addr.segments()[0] & 0xffc0) == 0xfe80 {
        Some("a link-local address (those are always allowed)")
    } else {
        None
    }
}

impl PortsDoc {
    /// Parse and validate a document; on failure, every problem with its path.
    pub fn parse(json: &[u8]) -> Result<PortsDoc, Problems> {
        let mut check = Checker::default();
        // The plain decoder is about twice as fast; only a broken document is decoded again to
        // find the path of its first problem.
        let wire: DocWire = match serde_json::from_slice(json) {
            Ok(w) => w,
            Err(_) => match serde_path_to_error::deserialize(
                &mut serde_json::Deserializer::from_slice(json),
            ) {
                Ok(w) => w,
                Err(err) => {
                    let path = err.path().to_string();
                    let inner = err.into_inner();
                    let path = if path == "." { String::new() } else { path };
                    check.problem(&path, inner.to_string());
                    return Err(check.finish());
                }
            },
        };
        let revision = check.required("revision", wire.revision);
        let ports_wire = check.required("ports", wire.ports).unwrap_or_default();

        // Groups first: ports and rules refer to them.
        let mut names: HashMap<String, usize> = HashMap::new();
        for (i, g) in wire.security_groups.iter().enumerate() {
            if let Some(name) = &g.name {
                if let Some(first) = names.get(name) {
                    check.problem(
                        &format!("security_groups[{i}].name"),
                        format!("{name:?} is already defined by security_groups[{first}]"),
                    );
                } else {
                    names.insert(name.clone(), i);
                }
            }
        }
        let mut groups = BTreeMap::new();
        for (i, g) in wire.security_groups.into_iter().enumerate() {
            let base = format!("security_groups[{i}]");
            let name = check.required(&format!("{base}.name"), g.name);
            if let Some(n) = &name
                && n.is_empty()
            {
                check.problem(&format!("{base}.name"), "empty name");
            }
            let mut members = Vec::with_capacity(g.members.len());
            let mut seen: HashSet<Ipv6Addr> = HashSet::with_capacity(g.members.len());
            for (j, text) in g.members.iter().enumerate() {
                // Paths are made only for problems: a group can have thousands of members.
                let path = || format!("{base}.members[{j}]");
                match text.parse::<Ipv6Addr>() {
                    Err(_) => {
                        check.ipv6(&path(), text);
                    }
                    Ok(addr) if addr.is_multicast() || addr.is_unspecified() => {
                        check.problem(&path(), format!("{addr} is not a unicast address"));
                    }
                    Ok(addr) => {
                        if seen.insert(addr) {
                            members.push(addr);
                        }
                    }
                }
            }
            let mut rules = Vec::new();
            for (j, r) in g.rules.into_iter().enumerate() {
                let rbase = format!("{base}.rules[{j}]");
                if let Some(rule) =
                    validate_rule(&mut check, &rbase, &r, &|g| names.contains_key(g))
                {
                    rules.push(rule);
                }
            }
            if let Some(name) = name {
                groups.insert(
                    name.clone(),
                    Group {
                        name,
                        members,
                        rules,
                    },
                );
            }
        }

        let mut ports = Vec::with_capacity(ports_wire.len());
        let mut interfaces: HashMap<String, usize> = HashMap::with_capacity(ports_wire.len());
        let mut owners: HashMap<Ipv6Addr, usize> = HashMap::with_capacity(ports_wire.len());
        for (i, p) in ports_wire.into_iter().enumerate() {
            // Paths are made only for problems: a document can have thousands of ports.
            let at = |field: &str| format!("ports[{i}].{field}");
            // Names and MACs are unique per pod, not per host: two pods may both have an `i-1`
            // here. The interface (and every address) is what must be unique on a host.
            let name = check.required_at(p.name, || at("name"));
            let interface = check.required_at(p.interface, || at("interface"));
            if let Some(ifname) = &interface {
                if let Some(problem) = crate::config::interface_name_problem(ifname) {
                    check.problem(&at("interface"), problem);
                } else if let Some(first) = interfaces.insert(ifname.clone(), i) {
                    check.problem(
                        &at("interface"),
                        format!("{ifname:?} is already used by ports[{first}]"),
                    );
                }
            }
            let mac = check
                .required_at(p.mac, || at("mac"))
                .and_then(|t| check.parse_at::<Mac>(&t, || at("mac")));
            if let Some(m) = mac
                && !m.is_unicast()
            {
                check.problem(&at("mac"), format!("{m} is not a unicast MAC"));
            }
            let prefix = p
                .prefix
                .and_then(|t| check.parse_at::<Prefix>(&t, || at("prefix")));
            let mut addresses = Vec::with_capacity(p.addresses.len());
            for (j, text) in p.addresses.iter().enumerate() {
                let path = || at(&format!("addresses[{j}]"));
                let Ok(addr) = text.parse::<Ipv6Addr>() else {
                    check.ipv6(&path(), text);
                    continue;
                };
                if let Some(why) = is_instance_address(&addr) {
                    check.problem(&path(), format!("{addr} is {why}"));
                    continue;
                }
                if let Some(pfx) = &prefix
                    && !pfx.contains(&addr)
                {
                    check.problem(
                        &path(),
                        format!("{addr} is outside the port's prefix {pfx}"),
                    );
                }
                match owners.get(&addr) {
                    Some(&first) if first == i => {
                        check.problem(&path(), format!("{addr} is listed twice"))
                    }
                    Some(&first) => check.problem(
                        &path(),
                        format!("{addr} is already an address of ports[{first}]"),
                    ),
                    None => {
                        owners.insert(addr, i);
                        addresses.push(addr);
                    }
                }
            }
            let mut security_groups = Vec::with_capacity(p.security_groups.len());
            for (j, g) in p.security_groups.into_iter().enumerate() {
                let path = || at(&format!("security_groups[{j}]"));
                if !names.contains_key(&g) {
                    check.problem(&path(), format!("unknown security group {g:?}"));
                } else if security_groups.contains(&g) {
                    check.problem(&path(), format!("{g:?} is listed twice"));
                } else {
                    security_groups.push(g);
                }
            }
            if let (Some(name), Some(interface), Some(mac)) = (name, interface, mac) {
                ports.push(Port {
                    name,
                    interface,
                    mac,
                    addresses,
                    prefix,
                    security_groups,
                });
            }
        }
        match revision {
            Some(revision) if check.is_clean() => Ok(PortsDoc {
                revision,
                ports,
                groups,
            }),
            _ => Err(check.finish()),
        }
    }
}

impl PortsDoc {
    /// The document as the controller writes it (what `applied.json` holds).
    pub fn to_wire(&self) -> PortsDocument {
        PortsDocument {
            revision: self.revision,
            ports: self
                .ports
                .iter()
                .map(|p| PortEntry {
                    name: p.name.clone(),
                    interface: p.interface.clone(),
                    mac: p.mac,
                    addresses: p.addresses.clone(),
                    prefix: p.prefix.map(|p| p.net()),
                    security_groups: p.security_groups.clone(),
                })
                .collect(),
            security_groups: self
                .groups
                .values()
                .map(|g| GroupEntry {
                    name: g.name.clone(),
                    members: g.members.clone(),
                    rules: g.rules.iter().map(Rule::to_entry).collect(),
                })
                .collect(),
        }
    }

    /// The document as a feed snapshot of `host` (what the guard persists to restart from).
    pub fn to_changes(
        &self,
        host: &str,
        cluster: &str,
        group_revisions: &BTreeMap<String, u64>,
    ) -> HostChanges {
        let wire = self.to_wire();
        HostChanges {
            host: host.to_string(),
            cluster: cluster.to_string(),
            revision: self.revision,
            snapshot: true,
            ports: wire.ports,
            removed_ports: Vec::new(),
            groups: wire
                .security_groups
                .into_iter()
                .map(|g| GroupChange {
                    revision: group_revisions.get(&g.name).copied().unwrap_or(0),
                    name: g.name,
                    snapshot: true,
                    rules: Some(g.rules),
                    members: g.members,
                    removed_members: Vec::new(),
                })
                .collect(),
            removed_groups: Vec::new(),
        }
    }

    /// The document after the controller's `changes` (applied to this one, or replacing it when
    /// they are a snapshot), validated like a whole document; every problem with its path in the
    /// resulting document. Changes of group members only (the common case: an instance joins
    /// or leaves a group somewhere in the cloud) are applied in place, checking only the new
    /// members; anything else rebuilds and re-reads the whole document.
    pub fn with_changes(
        base: Option<&PortsDoc>,
        changes: &HostChanges,
    ) -> Result<PortsDoc, Problems> {
        match base {
            Some(base) if only_members(changes) => base.with_member_changes(changes),
            _ => Self::rebuilt_with(base, changes),
        }
    }

    /// [`PortsDoc::with_changes`] for changes of group members only.
    fn with_member_changes(&self, changes: &HostChanges) -> Result<PortsDoc, Problems> {
        let mut check = Checker::default();
        let mut doc = self.clone();
        doc.revision = changes.revision;
        for (i, change) in changes.groups.iter().enumerate() {
            let Some(group) = doc.groups.get_mut(&change.name) else {
                unknown_group(&mut check, i, &change.name);
                continue;
            };
            for (j, addr) in change.members.iter().enumerate() {
                if addr.is_multicast() || addr.is_unspecified() {
                    check.problem(
                        &format!("groups[{i}].members[{j}]"),
                        format!("{addr} is not a unicast address"),
                    );
                }
            }
            merge_members(&mut group.members, change);
        }
        if check.is_clean() {
            Ok(doc)
        } else {
            Err(check.finish())
        }
    }

    /// [`PortsDoc::with_changes`] through the wire form: the merged document is encoded and
    /// parsed again, so it is validated exactly like a whole document.
    fn rebuilt_with(base: Option<&PortsDoc>, changes: &HostChanges) -> Result<PortsDoc, Problems> {
        let mut check = Checker::default();
        let mut wire = match (changes.snapshot, base) {
            (true, _) => PortsDocument {
                revision: changes.revision,
                ports: Vec::new(),
                security_groups: Vec::new(),
            },
            (false, Some(base)) => base.to_wire(),
            (false, None) => {
                check.problem("snapshot", "changes need the document they apply to");
                return Err(check.finish());
            }
        };
        wire.revision = changes.revision;
        let mut ports: BTreeMap<String, PortEntry> = wire
            .ports
            .into_iter()
            .map(|p| (p.interface.clone(), p))
            .collect();
        for gone in &changes.removed_ports {
            ports.remove(gone);
        }
        for port in &changes.ports {
            ports.insert(port.interface.clone(), port.clone());
        }
        let mut groups: BTreeMap<String, GroupEntry> = wire
            .security_groups
            .into_iter()
            .map(|g| (g.name.clone(), g))
            .collect();
        for gone in &changes.removed_groups {
            groups.remove(gone);
        }
        for (i, change) in changes.groups.iter().enumerate() {
            if change.snapshot {
                groups.insert(
                    change.name.clone(),
                    GroupEntry {
                        name: change.name.clone(),
                        members: change.members.clone(),
                        rules: change.rules.clone().unwrap_or_default(),
                    },
                );
                continue;
            }
            let Some(group) = groups.get_mut(&change.name) else {
                unknown_group(&mut check, i, &change.name);
                continue;
            };
            if let Some(rules) = &change.rules {
                group.rules = rules.clone();
            }
            merge_members(&mut group.members, change);
        }
        if !check.is_clean() {
            return Err(check.finish());
        }
        wire.ports = ports.into_values().collect();
        wire.security_groups = groups.into_values().collect();
        let bytes = serde_json::to_vec(&wire).map_err(|e| {
            let mut check = Checker::default();
            check.problem("", format!("encode the document: {e}"));
            check.finish()
        })?;
        PortsDoc::parse(&bytes)
    }
}

/// A group's members after `change`'s additions and removals, ascending and without
/// duplicates; untouched when it has neither.
fn merge_members(members: &mut Vec<Ipv6Addr>, change: &GroupChange) {
    if change.members.is_empty() && change.removed_members.is_empty() {
        return;
    }
    if !change.removed_members.is_empty() {
        let gone: HashSet<Ipv6Addr> = change.removed_members.iter().copied().collect();
        members.retain(|a| !gone.contains(a));
    }
    members.extend(change.members.iter().copied());
    members.sort_unstable();
    members.dedup();
}

/// The problem of a change to a group the document does not have (`groups[i]` of the changes).
fn unknown_group(check: &mut Checker, i: usize, name: &str) {
    check.problem(
        &format!("groups[{i}]"),
        format!("changes to group {name:?}, which this document does not have"),
    );
}

/// Whether `changes` only add or remove members of groups the document has (no ports, no
/// rules, no snapshot, no group coming or going).
fn only_members(changes: &HostChanges) -> bool {
    !changes.snapshot
        && changes.ports.is_empty()
        && changes.removed_ports.is_empty()
        && changes.removed_groups.is_empty()
        && changes
            .groups
            .iter()
            .all(|g| !g.snapshot && g.rules.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{ "revision": 3,
  "ports": [ { "name": "i-1", "interface": "vnet0", "mac": "02:00:00:00:00:01",
               "addresses": ["2001:db8:1:4a2b::9c1"], "prefix": "2001:db8:1:4a2b::/64",
               "security_groups": ["web"] } ],
  "security_groups": [
    { "name": "web", "members": ["2001:db8:1:4a2b::9c1"],
      "rules": [ { "direction": "ingress", "protocol": "tcp", "ports": "80", "remote_prefix": "::/0" },
                 { "direction": "ingress", "protocol": "tcp", "ports": "22", "remote_group": "admin" } ] },
    { "name": "admin", "members": ["2001:db8:1:77::5"], "rules": [] } ] }"#;

    fn problems(json: &str) -> Vec<String> {
        match PortsDoc::parse(json.as_bytes()) {
            Ok(doc) => panic!("expected problems, got {doc:?}"),
            Err(p) => p.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn member_changes_in_place_give_what_the_rebuilt_document_gives() {
        let base = PortsDoc::parse(EXAMPLE.as_bytes()).expect("example");
        let addr = |s: &str| s.parse::<Ipv6Addr>().expect("address");
        let member_change =
            |name: &str, members: Vec<Ipv6Addr>, removed: Vec<Ipv6Addr>| GroupChange {
                name: name.into(),
                revision: 9,
                snapshot: false,
                rules: None,
                members,
                removed_members: removed,
            };
        let changes = HostChanges {
            host: "hv".into(),
            cluster: "c".into(),
            revision: 4,
            snapshot: false,
            ports: Vec::new(),
            removed_ports: Vec::new(),
            groups: vec![
                member_change(
                    "web",
                    vec![
                        addr("2001:db8:9::2"),
                        addr("2001:db8:1:4a2b::9c1"),
                        addr("2001:db8::1"),
                    ],
                    vec![],
                ),
                member_change("admin", vec![], vec![addr("2001:db8:1:77::5")]),
            ],
            removed_groups: Vec::new(),
        };
        assert!(only_members(&changes));
        let in_place = PortsDoc::with_changes(Some(&base), &changes).expect("in place");
        let rebuilt = PortsDoc::rebuilt_with(Some(&base), &changes).expect("rebuilt");
        assert_eq!(in_place, rebuilt);
        assert_eq!(in_place.revision, 4);
        assert_eq!(in_place.groups["web"].members.len(), 3);
        assert!(in_place.groups["admin"].members.is_empty());

        // A bad member and an unknown group name their place; the base stays as it was.
        let mut bad = changes.clone();
        bad.groups[0].members.push(addr("ff02::1"));
        bad.groups
            .push(member_change("nope", vec![addr("2001:db8::7")], vec![]));
        let problems: Vec<String> = PortsDoc::with_changes(Some(&base), &bad)
            .expect_err("refused")
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("groups[0].members[3]") && p.contains("ff02::1")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("groups[2]") && p.contains("nope")),
            "{problems:?}"
        );
        // A rule change is not a member change: it goes the whole way.
        let mut rules = changes.clone();
        rules.groups[1].rules = Some(Vec::new());
        assert!(!only_members(&rules));
    }

    #[test]
    fn the_issue_example_parses() {
        let doc = PortsDoc::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(doc.revision, 3);
        assert_eq!(doc.ports[0].interface, "vnet0");
        assert_eq!(doc.ports[0].security_groups, vec!["web".to_string()]);
        let web = &doc.groups["web"];
        assert_eq!(web.rules[0].ports, Some((80, 80)));
        assert_eq!(web.rules[1].remote, Remote::Group("admin".into()));
        assert_eq!(doc.groups["admin"].members.len(), 1);
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("80"), Ok((80, 80)));
        assert_eq!(parse_port_range("8000-8100"), Ok((8000, 8100)));
        assert_eq!(
            parse_port_range("90-80"),
            Err("90-80 is an empty range".into())
        );
        assert!(parse_port_range("0").is_err());
        assert!(parse_port_range("70000").is_err());
        assert!(parse_port_range("http").is_err());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let got = problems(
            r#"{ "revision": 1,
  "ports": [
    { "name": "a", "interface": "vnet0", "mac": "02:00:00:00:00:01", "addresses": ["2001:db8:1:1::1"],
      "prefix": "2001:db8:1:2::/64", "security_groups": ["nope"] },
    { "name": "b", "interface": "vnet0", "mac": "zz", "addresses": ["fe80::1", "2001:db8:1:1::1"] } ],
  "security_groups": [
    { "name": "web", "rules": [ { "direction": "ingress", "protocol": "tcp", "ports": "90-80" },
                                { "direction": "sideways" },
                                { "direction": "egress", "remote_group": "ghost" },
                                { "direction": "egress", "protocol": "icmpv6", "ports": "1" } ] },
    { "name": "web" } ] }"#,
        );
        let want = [
            "security_groups[1].name: \"web\" is already defined by security_groups[0]",
            "security_groups[0].rules[0].ports: 90-80 is an empty range",
            "security_groups[0].rules[1].direction: \"sideways\" is not a direction",
            "security_groups[0].rules[2].remote_group: unknown security group \"ghost\"",
            "security_groups[0].rules[3].ports: ports only apply to protocol",
            "ports[0].addresses[0]: 2001:db8:1:1::1 is outside the port's prefix 2001:db8:1:2::/64",
            "ports[0].security_groups[0]: unknown security group \"nope\"",
            "ports[1].interface: \"vnet0\" is already used by ports[0]",
            "ports[1].mac: \"zz\" is not a MAC address",
            "ports[1].addresses[0]: fe80::1 is a link-local address",
            "ports[1].addresses[1]: 2001:db8:1:1::1 is already an address of ports[0]",
        ];
        for w in want {
            assert!(
                got.iter().any(|g| g.starts_with(w)),
                "missing {w:?} in {got:#?}"
            );
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
    }

    #[test]
    fn structural_errors_name_the_path() {
        let got = problems(r#"{"revision": 1, "ports": [{"name": "a", "colour": "red"}]}"#);
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("ports[0]"), "{got:?}");
        assert!(got[0].contains("colour"), "{got:?}");
        let got = problems("not json");
        assert_eq!(got.len(), 1);
        assert_eq!(
            problems(r#"{"ports": []}"#),
            vec!["revision: missing (required)"]
        );
    }

    #[test]
    fn both_remotes_is_an_error_and_neither_means_anyone() {
        let got = problems(
            r#"{"revision": 1, "ports": [], "security_groups": [{"name": "g", "members": [],
              "rules": [{"direction": "ingress", "remote_prefix": "::/0", "remote_group": "g"}]}]}"#,
        );
        assert_eq!(
            got,
            vec!["security_groups[0].rules[0]: set remote_prefix or remote_group, not both"]
        );
        let doc = PortsDoc::parse(
            br#"{"revision": 1, "ports": [], "security_groups": [{"name": "g", "rules": [{"direction": "egress"}]}]}"#,
        )
        .expect("valid");
        let rule = &doc.groups["g"].rules[0];
        assert_eq!(rule.protocol, Protocol::Any);
        assert!(matches!(&rule.remote, Remote::Prefix(p) if p.is_default()));
    }
}
