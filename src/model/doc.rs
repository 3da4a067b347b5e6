//! The documents that cross roles, as typed serde structs: what the controller produces and the
//! agents consume. The controller serializes these (never a hand-built `json!`); the agents decode
//! them and then validate the values (their own parsers add the semantic checks and the problem
//! paths, see `vr::dhcp::reservations` and `guard::document`).
//!
//! Two shapes per role:
//! - the **document**, a full snapshot (`GET /v1/pods/{pod}/reservations`,
//!   `GET /v1/hosts/{host}/ports`), for people, the CLI and one-shot commands;
//! - the **changes** (`…/changes?after_revision=N&wait=S`), what agents follow: the items that
//!   changed since revision `N` in their state at the answer's revision, or a snapshot marked as
//!   one when `N` is older than the history the controller keeps (or from another cluster).
//!
//! Applying the changes since `N` to the document at `N` gives exactly the document at the
//! answer's revision: every item (a reservation by MAC, a port by interface, a group member by
//! address) that changed in between is sent whole, as it is now, or listed as removed.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};

use super::Mac;

/// One client's reservation: its MAC and addresses (the first is offered first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    /// The instance's MAC (the frame's source MAC identifies the client).
    pub mac: Mac,
    /// Its addresses, ascending.
    pub addresses: Vec<Ipv6Addr>,
}

/// The VR's reservation document for one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationsDoc {
    /// The pod's revision.
    pub revision: u64,
    /// Every instance of the pod with its addresses.
    pub reservations: Vec<Reservation>,
}

/// The answer of `GET /v1/pods/{pod}/reservations/changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationChanges {
    /// The pod.
    pub pod: String,
    /// The database these revisions belong to (see [`ClusterId`]).
    pub cluster: String,
    /// The pod's revision this answer brings the follower to.
    pub revision: u64,
    /// `true`: `reservations` is the whole table (replace, do not merge) and `removed` is empty.
    pub snapshot: bool,
    /// Reservations added or changed (or all of them, in a snapshot), whole.
    #[serde(default)]
    pub reservations: Vec<Reservation>,
    /// MACs whose reservation is gone.
    #[serde(default)]
    pub removed: Vec<Mac>,
}

/// A cluster identity: a random name the database gets when its schema is created, so that an
/// agent never resumes a revision number of one database against another.
pub type ClusterId = String;

/// One security-group rule, as stored and as the guard reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// `ingress` or `egress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// `tcp`, `udp`, `icmpv6` or `any` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `80` or `8000-8100` (TCP and UDP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// The other end, by prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_prefix: Option<String>,
    /// The other end, by group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_group: Option<String>,
}

/// One instance port on a host, as the guard enforces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortEntry {
    /// The instance's name.
    pub name: String,
    /// The bridge port (interface name), unique on the host.
    pub interface: String,
    /// The MAC the instance must use.
    pub mac: Mac,
    /// Its addresses.
    pub addresses: Vec<Ipv6Addr>,
    /// Its /64, in a pod with one per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Ipv6Net>,
    /// Its security groups, sorted.
    #[serde(default)]
    pub security_groups: Vec<String>,
}

/// A security group with its members, in a full ports document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// The group's name.
    pub name: String,
    /// Every address of every instance in the group, on any host, ascending.
    #[serde(default)]
    pub members: Vec<Ipv6Addr>,
    /// Its rules.
    #[serde(default)]
    pub rules: Vec<RuleEntry>,
}

/// The guard's full ports document for one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortsDocument {
    /// The host's revision.
    pub revision: u64,
    /// The host's instance ports, by interface.
    pub ports: Vec<PortEntry>,
    /// Every group a port is in or a rule of those names, by name.
    pub security_groups: Vec<GroupEntry>,
}

/// What changed in one security group (in [`HostChanges::groups`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupChange {
    /// The group.
    pub name: String,
    /// The group's revision this brings the follower to.
    pub revision: u64,
    /// `true`: `rules` and `members` are the whole group (the follower did not have it, or its
    /// revision fell out of the history).
    pub snapshot: bool,
    /// The rules, when they changed (always in a snapshot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleEntry>>,
    /// Members added (all members, in a snapshot).
    #[serde(default)]
    pub members: Vec<Ipv6Addr>,
    /// Members gone.
    #[serde(default)]
    pub removed_members: Vec<Ipv6Addr>,
}

/// The answer of `GET /v1/hosts/{host}/changes`: the host's ports and, once per group, the
/// groups they reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostChanges {
    /// The host.
    pub host: String,
    /// The database these revisions belong to.
    pub cluster: String,
    /// The host's revision this answer brings the follower to.
    pub revision: u64,
    /// `true`: `ports` are all the host's ports (replace, do not merge).
    pub snapshot: bool,
    /// Ports added or changed (all of them in a snapshot), whole.
    #[serde(default)]
    pub ports: Vec<PortEntry>,
    /// Interfaces whose port is gone.
    #[serde(default)]
    pub removed_ports: Vec<String>,
    /// Changes to the referenced groups; a group not listed did not change.
    #[serde(default)]
    pub groups: Vec<GroupChange>,
    /// Groups the host no longer references (drop them).
    #[serde(default)]
    pub removed_groups: Vec<String>,
}

impl HostChanges {
    /// Whether the answer changes nothing (a watch that timed out).
    pub fn is_empty(&self) -> bool {
        !self.snapshot
            && self.ports.is_empty()
            && self.removed_ports.is_empty()
            && self.groups.is_empty()
            && self.removed_groups.is_empty()
    }
}

impl ReservationChanges {
    /// Whether the answer changes nothing (a watch that timed out).
    pub fn is_empty(&self) -> bool {
        !self.snapshot && self.reservations.is_empty() && self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_refuse_unknown_fields() {
        let change = ReservationChanges {
            pod: "p1".into(),
            cluster: "c".into(),
            revision: 7,
            snapshot: false,
            reservations: vec![Reservation {
                mac: "02:00:00:00:00:01".parse().unwrap(),
                addresses: vec!["2001:db8::1".parse().unwrap()],
            }],
            removed: vec!["02:00:00:00:00:02".parse().unwrap()],
        };
        let text = serde_json::to_string(&change).unwrap();
        assert_eq!(
            serde_json::from_str::<ReservationChanges>(&text).unwrap(),
            change
        );
        assert!(
            serde_json::from_str::<ReservationChanges>(
                r#"{"pod":"p","cluster":"c","revision":1,"snapshot":true,"extra":1}"#
            )
            .is_err()
        );
        let bad_mac = serde_json::from_str::<ReservationChanges>(
            r#"{"pod":"p","cluster":"c","revision":1,"snapshot":false,"removed":["02:00"]}"#,
        );
        assert!(bad_mac.is_err());
        let rule: RuleEntry = serde_json::from_str(r#"{"direction":"ingress"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&rule).unwrap(),
            r#"{"direction":"ingress"}"#
        );
    }
}
