//! Security-group rules: the one validation of the rule format (the controller checks a group
//! with it before storing it, the guard every rule of its document), and the validated rule.

use crate::config::Checker;
use crate::model::Prefix;
use crate::model::doc::RuleEntry;

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Which way the traffic flows, seen from the instance.
    pub direction: Direction,
    /// Which protocol.
    pub protocol: Protocol,
    /// Destination port range (inclusive) for TCP and UDP; `None` for all.
    pub ports: Option<(u16, u16)>,
    /// Who is on the other end.
    pub remote: Remote,
}

/// Traffic direction seen from the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Towards the instance.
    Ingress,
    /// From the instance.
    Egress,
}

/// Protocols a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMPv6 (beyond what is allowed by default).
    Icmpv6,
    /// Any protocol.
    Any,
}

/// The other end of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Remote {
    /// Addresses in a prefix (`::/0` for anyone).
    Prefix(Prefix),
    /// The members of a group.
    Group(String),
}

/// Parse a port range: `"80"` or `"8000-8100"`.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let number = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u16>() {
            Ok(0) => Err(format!("{text:?}: port 0 is not a port")),
            Ok(p) => Ok(p),
            Err(_) => Err(format!("{text:?} is not a port or a range like 8000-8100")),
        }
    };
    match text.split_once('-') {
        None => number(text).map(|p| (p, p)),
        Some((a, b)) => {
            let (lo, hi) = (number(a)?, number(b)?);
            if lo > hi {
                Err(format!("{lo}-{hi} is an empty range"))
            } else {
                Ok((lo, hi))
            }
        }
    }
}

/// Validate one rule as written (`base` is its path, e.g. `security_groups[0].rules[2]`);
/// `known` says whether a `remote_group` exists. Every problem goes to `check`.
pub(crate) fn validate_rule(
    check: &mut Checker,
    base: &str,
    r: &RuleEntry,
    known: &dyn Fn(&str) -> bool,
) -> Option<Rule> {
    let direction = match check
        .required(&format!("{base}.direction"), r.direction.clone())
        .as_deref()
    {
        Some("ingress") => Some(Direction::Ingress),
        Some("egress") => Some(Direction::Egress),
        Some(other) => {
            check.problem(
                &format!("{base}.direction"),
                format!("{other:?} is not a direction; expected \"ingress\" or \"egress\""),
            );
            None
        }
        None => None,
    };
    let protocol = match r.protocol.as_deref() {
        None | Some("any") => Some(Protocol::Any),
        Some("tcp") => Some(Protocol::Tcp),
        Some("udp") => Some(Protocol::Udp),
        Some("icmpv6") => Some(Protocol::Icmpv6),
        Some(other) => {
            check.problem(
                &format!("{base}.protocol"),
                format!(
                    "{other:?} is not a protocol; expected \"tcp\", \"udp\", \"icmpv6\" or \"any\""
                ),
            );
            None
        }
    };
    let ports = match (&r.ports, protocol) {
        (None, _) => Some(None),
        (Some(text), Some(Protocol::Tcp | Protocol::Udp)) => match parse_port_range(text) {
            Ok(range) => Some(Some(range)),
            Err(why) => {
                check.problem(&format!("{base}.ports"), why);
                None
            }
        },
        (Some(_), Some(_)) => {
            check.problem(
                &format!("{base}.ports"),
                "ports only apply to protocol \"tcp\" or \"udp\"",
            );
            None
        }
        (Some(_), None) => None,
    };
    let remote = match (r.remote_prefix.clone(), r.remote_group.clone()) {
        (Some(_), Some(_)) => {
            check.problem(base, "set remote_prefix or remote_group, not both");
            None
        }
        (None, None) => "::/0".parse::<Prefix>().ok().map(Remote::Prefix),
        (Some(text), None) => check
            .parse::<Prefix>(&format!("{base}.remote_prefix"), &text)
            .map(Remote::Prefix),
        (None, Some(group)) => {
            if known(&group) {
                Some(Remote::Group(group))
            } else {
                check.problem(
                    &format!("{base}.remote_group"),
                    format!("unknown security group {group:?}"),
                );
                None
            }
        }
    };
    Some(Rule {
        direction: direction?,
        protocol: protocol?,
        ports: ports?,
        remote: remote?,
    })
}

impl Rule {
    /// The rule as the documents write it.
    pub fn to_entry(&self) -> RuleEntry {
        let protocol = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmpv6 => "icmpv6",
            Protocol::Any => "any",
        };
        let (remote_prefix, remote_group) = match &self.remote {
            Remote::Prefix(p) => (Some(p.to_string()), None),
            Remote::Group(g) => (None, Some(g.clone())),
        };
        RuleEntry {
            direction: Some(
                match self.direction {
                    Direction::Ingress => "ingress",
                    Direction::Egress => "egress",
                }
                .to_string(),
            ),
            protocol: Some(protocol.to_string()),
            ports: self.ports.map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            }),
            remote_prefix,
            remote_group,
        }
    }
}
