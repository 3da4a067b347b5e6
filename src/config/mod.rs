//! Configuration files: TOML text → serde wire structs → validated, typed config.
//!
//! Every role's file declares its role at the top (`role = "vr"`). Loading never stops at the first
//! mistake: unknown keys and mistyped values are collected while deserializing (each offending key is
//! reported with its path and left out, then deserialization is retried), and the validation step adds
//! every semantic problem, so `flat6 check` shows the whole list at once.

mod controller;
mod guard;
mod problems;
mod source;
mod vr;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use controller::{ControllerConfig, DatabaseKind, TlsFiles};
pub use guard::{AntiSpoofing, EgressDefault, GuardConfig};
pub use problems::{Problem, Problems};
pub use source::SourceConfig;
pub use vr::{Dhcpv6Config, MacSource, RaConfig, RaPrefix, RaRoute, RoutePreference, VrConfig};

pub(crate) use problems::Checker;
pub(crate) use vr::interface_name_problem;

/// The three roles a flat6 process can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `flat6 controller`: address management, security groups, the API and the watches.
    Controller,
    /// `flat6 vr`: Router Advertisements and DHCPv6 on one pod link.
    Vr,
    /// `flat6 guard`: per-instance nftables rules on a hypervisor.
    Guard,
}

impl Role {
    /// The name used in `role = "..."` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Vr => "vr",
            Role::Guard => "guard",
        }
    }
}

/// A validated configuration for one role.
#[derive(Debug, Clone, PartialEq)]
pub enum Config {
    /// See [`ControllerConfig`].
    Controller(ControllerConfig),
    /// See [`VrConfig`].
    Vr(Box<VrConfig>),
    /// See [`GuardConfig`].
    Guard(GuardConfig),
}

impl Config {
    /// Which role this file configures.
    pub fn role(&self) -> Role {
        match self {
            Config::Controller(_) => Role::Controller,
            Config::Vr(_) => Role::Vr,
            Config::Guard(_) => Role::Guard,
        }
    }

    /// Settings that are valid but unsafe where instances may be hostile, each naming its key
    /// (`flat6 check` prints them; the roles log them at start).
    pub fn warnings(&self) -> Vec<String> {
        match self {
            Config::Vr(vr) => vr.warnings(),
            _ => Vec::new(),
        }
    }
}

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; every problem is listed.
    #[error("config {path} is invalid:\n{problems}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, each with its field path.
        problems: Problems,
    },
    /// The file is valid but configures another role than the one asked for.
    #[error("config {path} is for role {found:?}, not {wanted:?}")]
    WrongRole {
        /// The file.
        path: PathBuf,
        /// The role the file declares.
        found: &'static str,
        /// The role that was started.
        wanted: &'static str,
    },
}

/// Read and validate a config file of any role.
pub fn load_file(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|problems| LoadError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Read a config file and require that it is for `role`.
pub fn load_role(path: &Path, role: Role) -> Result<Config, LoadError> {
    let config = load_file(path)?;
    if config.role() != role {
        return Err(LoadError::WrongRole {
            path: path.to_path_buf(),
            found: config.role().name(),
            wanted: role.name(),
        });
    }
    Ok(config)
}

/// Parse and validate config text; on failure, every problem found.
pub fn parse(text: &str) -> Result<Config, Problems> {
    let mut check = Checker::default();
    let table: toml::Table = match toml::from_str(text) {
        Ok(table) => table,
        Err(err) => {
            check.problem("", err.to_string().trim_end().replace('\n', " "));
            return Err(check.finish());
        }
    };
    let role = match table.get("role") {
        Some(toml::Value::String(role)) => match role.as_str() {
            "controller" => Some(Role::Controller),
            "vr" => Some(Role::Vr),
            "guard" => Some(Role::Guard),
            other => {
                check.problem(
                    "role",
                    format!(
                        "{other:?} is not a role; expected \"vr\", \"guard\" or \"controller\""
                    ),
                );
                None
            }
        },
        Some(other) => {
            check.problem(
                "role",
                format!("expected a string, found {}", other.type_str()),
            );
            None
        }
        None => {
            check.problem(
                "role",
                "missing; every config declares its role: \"vr\", \"guard\" or \"controller\"",
            );
            None
        }
    };
    let config = match role {
        Some(Role::Vr) => deserialize_collecting::<vr::VrFile>(table, &mut check)
            .and_then(|wire| wire.validate(&mut check))
            .map(|c| Config::Vr(Box::new(c))),
        Some(Role::Guard) => deserialize_collecting::<guard::GuardFile>(table, &mut check)
            .and_then(|wire| wire.validate(&mut check))
            .map(Config::Guard),
        Some(Role::Controller) => {
            deserialize_collecting::<controller::ControllerFile>(table, &mut check)
                .and_then(|wire| wire.validate(&mut check))
                .map(Config::Controller)
        }
        None => None,
    };
    match config {
        Some(config) if check.is_clean() => Ok(config),
        _ => Err(check.finish()),
    }
}

/// How many offending keys one file may have before we stop retrying and report what we have.
const MAX_STRUCTURAL_PROBLEMS: usize = 64;

/// Deserialize `table` into the wire struct `T`, reporting and removing each unknown or mistyped key
/// until what remains deserializes. Returns `None` only when that does not converge.
fn deserialize_collecting<T: DeserializeOwned>(
    mut table: toml::Table,
    check: &mut Checker,
) -> Option<T> {
    for _ in 0..MAX_STRUCTURAL_PROBLEMS {
        let err = match serde_path_to_error::deserialize::<_, T>(toml::Value::Table(table.clone()))
        {
            Ok(value) => return Some(value),
            Err(err) => err,
        };
        let mut segments: Vec<PathSegment> = err
            .path()
            .iter()
            .filter_map(|segment| match segment {
                serde_path_to_error::Segment::Map { key } => Some(PathSegment::Key(key.clone())),
                serde_path_to_error::Segment::Seq { index } => Some(PathSegment::Index(*index)),
                _ => None,
            })
            .collect();
        let message = err.into_inner().message().to_string();
        let message = match unknown_field(&message) {
            Some(key) => {
                // serde reports an unknown key at the path of the table that holds it.
                if segments.last() != Some(&PathSegment::Key(key.to_string())) {
                    segments.push(PathSegment::Key(key.to_string()));
                }
                "unknown key".to_string()
            }
            None => message,
        };
        check.problem(&render_path(&segments), message);
        if !remove_at(&mut table, &segments) {
            return None;
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PathSegment {
    Key(String),
    Index(usize),
}

fn render_path(segments: &[PathSegment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            PathSegment::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            PathSegment::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// The key named in serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Remove the value at `segments` from `table`; false when there is nothing there to remove.
fn remove_at(table: &mut toml::Table, segments: &[PathSegment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current: &mut toml::Value = match parents.first() {
        None => {
            return match last {
                PathSegment::Key(key) => table.remove(key).is_some(),
                PathSegment::Index(_) => false,
            };
        }
        Some(PathSegment::Key(key)) => match table.get_mut(key) {
            Some(value) => value,
            None => return false,
        },
        Some(PathSegment::Index(_)) => return false,
    };
    for segment in &parents[1..] {
        let next = match (segment, current) {
            (PathSegment::Key(key), toml::Value::Table(t)) => t.get_mut(key),
            (PathSegment::Index(i), toml::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(value) => current = value,
            None => return false,
        }
    }
    match (last, current) {
        (PathSegment::Key(key), toml::Value::Table(t)) => t.remove(key).is_some(),
        (PathSegment::Index(i), toml::Value::Array(a)) if *i < a.len() => {
            a.remove(*i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(problems) => problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn missing_and_unknown_roles() {
        assert_eq!(
            problems("interface = \"vr0\"\n"),
            vec![
                "role: missing; every config declares its role: \"vr\", \"guard\" or \"controller\""
            ]
        );
        assert_eq!(
            problems("role = \"router\"\n"),
            vec!["role: \"router\" is not a role; expected \"vr\", \"guard\" or \"controller\""]
        );
        assert_eq!(
            problems("role = 3\n"),
            vec!["role: expected a string, found integer"]
        );
    }

    #[test]
    fn toml_syntax_errors_are_reported() {
        let got = problems("role = \"vr\"\ninterface = \n");
        assert_eq!(got.len(), 1);
        assert!(got[0].contains("line 2"), "{got:?}");
    }

    #[test]
    fn collects_unknown_keys_at_every_depth_in_one_pass() {
        let got = problems(
            r#"
role = "vr"
interface = "vr0"
colour = "blue"
[ra]
flavour = 1
[[ra.prefixes]]
prefix = "2001:db8:1::/48"
onlink = true
[dhcpv6]
enabled = false
"#,
        );
        assert_eq!(
            got,
            vec![
                "colour: unknown key",
                "ra.flavour: unknown key",
                "ra.prefixes[0].onlink: unknown key",
            ]
        );
    }

    #[test]
    fn mistyped_values_are_reported_with_their_path_and_the_rest_still_checked() {
        let got = problems(
            r#"
role = "vr"
interface = "vr0"
[ra]
managed = "yes"
max_interval = 5000
[dhcpv6]
enabled = false
"#,
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("ra.managed: invalid type"), "{got:?}");
        assert!(got[1].starts_with("ra.max_interval: 5000"), "{got:?}");
    }

    #[test]
    fn wrong_role_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.toml");
        std::fs::write(
            &path,
            "role = \"guard\"\n[source]\nfile = \"/tmp/p.json\"\n",
        )
        .expect("write");
        let err = load_role(&path, Role::Vr).expect_err("wrong role");
        assert!(
            err.to_string()
                .contains("is for role \"guard\", not \"vr\""),
            "{err}"
        );
    }
}
