//! The human CLI on the controller API: `flat6 pod|instance|address|sg ...`. Tables by default,
//! `--json` for scripts.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::client::{Client, ClientError};

/// Where the controller is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Controller base URL.
    #[arg(
        long,
        env = "FLAT6_SERVER",
        default_value = "http://[::1]:8640",
        global = true
    )]
    pub server: String,
    /// Bearer token (prefer --token-file or FLAT6_TOKEN_FILE: a command line is visible to others).
    #[arg(long, env = "FLAT6_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "FLAT6_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// For an https:// server: PEM file with the CA certificate(s) to trust (default: the
    /// built-in public roots).
    #[arg(long, env = "FLAT6_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `flat6 pod ...`
#[derive(Debug, clap::Subcommand)]
pub enum PodCommand {
    /// Create a pod.
    Create {
        /// Pod name.
        name: String,
        /// The pod prefix, e.g. 2001:db8:1::/48.
        #[arg(long)]
        prefix: String,
        /// 64 for a /64 per instance, or the pod's own length for a shared range.
        #[arg(long)]
        instance_prefix_length: Option<u8>,
        /// An address or prefix never handed out (repeatable).
        #[arg(long)]
        exclude: Vec<String>,
    },
    /// Show a pod.
    Show {
        /// Pod name.
        name: String,
    },
    /// List every pod.
    List,
    /// Delete a pod (it must have no instances).
    Delete {
        /// Pod name.
        name: String,
    },
}

/// `flat6 instance ...`
#[derive(Debug, clap::Subcommand)]
pub enum InstanceCommand {
    /// Create an instance: allocates its /64 (per-instance pods) and first address.
    Create {
        /// Pod name.
        pod: String,
        /// Instance name.
        name: String,
        /// Its MAC.
        #[arg(long)]
        mac: String,
        /// The hypervisor it runs on.
        #[arg(long)]
        host: Option<String>,
        /// Its bridge port on that hypervisor.
        #[arg(long)]
        port: Option<String>,
        /// A security group (repeatable).
        #[arg(long = "sg")]
        security_groups: Vec<String>,
    },
    /// Show an instance.
    Show {
        /// Pod name.
        pod: String,
        /// Instance name.
        name: String,
    },
    /// List a pod's instances.
    List {
        /// Pod name.
        pod: String,
        /// Only those on this hypervisor.
        #[arg(long)]
        host: Option<String>,
        /// Only the one with this MAC.
        #[arg(long)]
        mac: Option<String>,
        /// Only the one holding this address or owning its /64.
        #[arg(long)]
        address: Option<String>,
    },
    /// Find instances in every pod by MAC or address (e.g. the sender of an abuse report).
    Find {
        /// The instance with this MAC (in any pod).
        #[arg(long, required_unless_present = "address")]
        mac: Option<String>,
        /// The instance holding this address or owning its /64.
        #[arg(long)]
        address: Option<String>,
    },
    /// Delete an instance, freeing its addresses and /64.
    Delete {
        /// Pod name.
        pod: String,
        /// Instance name.
        name: String,
    },
    /// Move an instance to another host or port, or change its security groups; its MAC, /64
    /// and addresses stay. Options left out are not changed.
    Update {
        /// Pod name.
        pod: String,
        /// Instance name.
        name: String,
        /// The hypervisor it runs on now.
        #[arg(long, conflicts_with = "no_host")]
        host: Option<String>,
        /// Its bridge port on that hypervisor.
        #[arg(long)]
        port: Option<String>,
        /// Take it off any host (clears host and port).
        #[arg(long)]
        no_host: bool,
        /// Its security groups, replacing the current list (repeatable).
        #[arg(long = "sg", conflicts_with = "no_sg")]
        security_groups: Vec<String>,
        /// Remove it from every security group.
        #[arg(long)]
        no_sg: bool,
    },
}

/// `flat6 address ...`
#[derive(Debug, clap::Subcommand)]
pub enum AddressCommand {
    /// Allocate another address for an instance (inside its /64).
    Add {
        /// Pod name.
        pod: String,
        /// Instance name.
        instance: String,
    },
    /// Release one of an instance's addresses.
    Remove {
        /// Pod name.
        pod: String,
        /// Instance name.
        instance: String,
        /// The address.
        address: String,
    },
}

/// `flat6 sg ...`
#[derive(Debug, clap::Subcommand)]
pub enum SgCommand {
    /// Create or replace a security group.
    Set {
        /// Group name.
        name: String,
        /// A rule: `DIRECTION PROTOCOL [PORTS] [REMOTE]`, e.g. `ingress tcp 80 ::/0`,
        /// `ingress tcp 22 group:admin`, `egress any` (repeatable).
        #[arg(long)]
        rule: Vec<String>,
    },
    /// Show a security group.
    Show {
        /// Group name.
        name: String,
    },
    /// Delete a security group.
    Delete {
        /// Group name.
        name: String,
    },
}

/// A CLI failure: usage problems exit 2, everything else 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments (or a 400 from the controller).
    #[error("{0}")]
    Usage(String),
    /// The request failed.
    #[error("{0}")]
    Failed(String),
}

impl From<ClientError> for CliError {
    fn from(err: ClientError) -> Self {
        match err.status() {
            Some(400) => CliError::Usage(err.to_string()),
            _ => CliError::Failed(err.to_string()),
        }
    }
}

fn client(args: &ClientArgs) -> Result<Client, CliError> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| CliError::Usage(format!("read {}: {e}", path.display())))?,
        (None, None) => {
            return Err(CliError::Usage(
                "no token: set --token-file (or FLAT6_TOKEN_FILE) to the admin token file".into(),
            ));
        }
    };
    Client::with_ca_file(
        &args.server,
        &token,
        Duration::from_secs(30),
        args.ca_file.as_deref(),
    )
    .map_err(|e| CliError::Usage(e.to_string()))
}

/// Parse the `--rule` shorthand into the API's rule object.
pub fn parse_rule(text: &str) -> Result<Value, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (direction, rest) = words
        .split_first()
        .ok_or_else(|| format!("empty rule {text:?}"))?;
    let mut rule = serde_json::json!({"direction": direction});
    let mut rest = rest.iter();
    if let Some(protocol) = rest.next() {
        rule["protocol"] = Value::String(protocol.to_string());
    }
    for word in rest {
        if let Some(group) = word.strip_prefix("group:") {
            rule["remote_group"] = Value::String(group.to_string());
        } else if word.contains(':') {
            rule["remote_prefix"] = Value::String(word.to_string());
        } else if word.chars().all(|c| c.is_ascii_digit() || c == '-') {
            rule["ports"] = Value::String(word.to_string());
        } else {
            return Err(format!(
                "{word:?} in rule {text:?} is not ports (80, 8000-8100), a prefix (::/0) or group:NAME"
            ));
        }
    }
    Ok(rule)
}

/// Print a JSON object as `key  value` lines (lists joined by commas), or as JSON.
/// A value made safe for a URL query (RFC 3986 unreserved characters kept, the rest
/// percent-encoded).
/// `?k=v&…` of the parameters that are set (percent-encoded), or nothing.
fn query_string(params: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", query_value(v))))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One cell: strings as they are, lists joined with ", ", nothing for null.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// A list as a table with `columns` (or as JSON with `--json`).
fn print_table(rows: &Value, columns: &[&str], json: bool) {
    let empty = Vec::new();
    let rows = rows.as_array().unwrap_or(&empty);
    if json {
        println!("{}", serde_json::to_string_pretty(rows).unwrap_or_default());
        return;
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let parts: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(columns.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
}

fn print(value: &Value, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    let Some(map) = value.as_object() else {
        if !value.is_null() {
            println!("{value}");
        }
        return;
    };
    let width = map.keys().map(String::len).max().unwrap_or(0);
    for (key, v) in map {
        let shown = match v {
            Value::String(s) => s.clone(),
            Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        println!("{key:width$}  {shown}");
    }
}

/// Run `flat6 pod ...`.
pub fn pod(args: &ClientArgs, cmd: PodCommand) -> Result<(), CliError> {
    let c = client(args)?;
    let out = match cmd {
        PodCommand::Create {
            name,
            prefix,
            instance_prefix_length,
            exclude,
        } => {
            let mut body = serde_json::json!({"name": name, "prefix": prefix, "exclude": exclude});
            if let Some(len) = instance_prefix_length {
                body["instance_prefix_length"] = Value::from(len);
            }
            c.request("POST", "/v1/pods", Some(&body))?
        }
        PodCommand::Show { name } => c.request("GET", &format!("/v1/pods/{name}"), None)?,
        PodCommand::List => {
            let out = c.request("GET", "/v1/pods", None)?;
            print_table(
                &out["pods"],
                &["name", "prefix", "instance_prefix_length", "revision"],
                args.json,
            );
            return Ok(());
        }
        PodCommand::Delete { name } => c.request("DELETE", &format!("/v1/pods/{name}"), None)?,
    };
    print(&out, args.json);
    Ok(())
}

/// Run `flat6 instance ...`.
pub fn instance(args: &ClientArgs, cmd: InstanceCommand) -> Result<(), CliError> {
    let c = client(args)?;
    let out = match cmd {
        InstanceCommand::Create {
            pod,
            name,
            mac,
            host,
            port,
            security_groups,
        } => {
            let mut body =
                serde_json::json!({"name": name, "mac": mac, "security_groups": security_groups});
            if let Some(h) = host {
                body["host"] = Value::String(h);
            }
            if let Some(p) = port {
                body["port"] = Value::String(p);
            }
            c.request("POST", &format!("/v1/pods/{pod}/instances"), Some(&body))?
        }
        InstanceCommand::Show { pod, name } => {
            c.request("GET", &format!("/v1/pods/{pod}/instances/{name}"), None)?
        }
        InstanceCommand::List {
            pod,
            host,
            mac,
            address,
        } => {
            let query = query_string(&[("host", host), ("mac", mac), ("address", address)]);
            let out = c.request("GET", &format!("/v1/pods/{pod}/instances{query}"), None)?;
            print_table(
                &out["instances"],
                &[
                    "name",
                    "mac",
                    "host",
                    "port",
                    "addresses",
                    "security_groups",
                ],
                args.json,
            );
            return Ok(());
        }
        InstanceCommand::Find { mac, address } => {
            let query = query_string(&[("mac", mac), ("address", address)]);
            let out = c.request("GET", &format!("/v1/instances{query}"), None)?;
            print_table(
                &out["instances"],
                &["pod", "name", "mac", "host", "port", "addresses"],
                args.json,
            );
            return Ok(());
        }
        InstanceCommand::Delete { pod, name } => {
            c.request("DELETE", &format!("/v1/pods/{pod}/instances/{name}"), None)?
        }
        InstanceCommand::Update {
            pod,
            name,
            host,
            port,
            no_host,
            security_groups,
            no_sg,
        } => {
            let mut body = serde_json::Map::new();
            if no_host {
                body.insert("host".into(), Value::Null);
            } else if let Some(h) = host {
                body.insert("host".into(), Value::String(h));
            }
            if let Some(p) = port {
                body.insert("port".into(), Value::String(p));
            }
            if no_sg || !security_groups.is_empty() {
                body.insert("security_groups".into(), serde_json::json!(security_groups));
            }
            c.request(
                "PATCH",
                &format!("/v1/pods/{pod}/instances/{name}"),
                Some(&Value::Object(body)),
            )?
        }
    };
    print(&out, args.json);
    Ok(())
}

/// Run `flat6 address ...`.
pub fn address(args: &ClientArgs, cmd: AddressCommand) -> Result<(), CliError> {
    let c = client(args)?;
    let out = match cmd {
        AddressCommand::Add { pod, instance } => c.request(
            "POST",
            &format!("/v1/pods/{pod}/instances/{instance}/addresses"),
            None,
        )?,
        AddressCommand::Remove {
            pod,
            instance,
            address,
        } => c.request(
            "DELETE",
            &format!("/v1/pods/{pod}/instances/{instance}/addresses/{address}"),
            None,
        )?,
    };
    print(&out, args.json);
    Ok(())
}

/// Run `flat6 sg ...`.
pub fn sg(args: &ClientArgs, cmd: SgCommand) -> Result<(), CliError> {
    let c = client(args)?;
    let out = match cmd {
        SgCommand::Set { name, rule } => {
            let rules = rule
                .iter()
                .map(|r| parse_rule(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(CliError::Usage)?;
            c.request(
                "PUT",
                &format!("/v1/security-groups/{name}"),
                Some(&serde_json::json!({"rules": rules})),
            )?
        }
        SgCommand::Show { name } => {
            c.request("GET", &format!("/v1/security-groups/{name}"), None)?
        }
        SgCommand::Delete { name } => {
            c.request("DELETE", &format!("/v1/security-groups/{name}"), None)?
        }
    };
    print(&out, args.json);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("hv-1.example"), "hv-1.example");
        assert_eq!(query_value("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(query_string(&[("host", None), ("mac", None)]), "");
        assert_eq!(
            query_string(&[
                ("host", Some("hv1".into())),
                ("mac", None),
                ("address", Some("2001:db8::1".into()))
            ]),
            "?host=hv1&address=2001%3Adb8%3A%3A1"
        );
    }

    #[test]
    fn cells_join_lists_and_hide_null() {
        assert_eq!(
            cell(&serde_json::json!(["2001:db8::1", "2001:db8::2"])),
            "2001:db8::1, 2001:db8::2"
        );
        assert_eq!(cell(&Value::Null), "");
        assert_eq!(cell(&serde_json::json!(64)), "64");
    }

    #[test]
    fn rule_shorthand() {
        assert_eq!(
            parse_rule("ingress tcp 80 ::/0"),
            Ok(
                serde_json::json!({"direction": "ingress", "protocol": "tcp", "ports": "80", "remote_prefix": "::/0"})
            )
        );
        assert_eq!(
            parse_rule("ingress tcp 22 group:admin"),
            Ok(
                serde_json::json!({"direction": "ingress", "protocol": "tcp", "ports": "22", "remote_group": "admin"})
            )
        );
        assert_eq!(
            parse_rule("egress any"),
            Ok(serde_json::json!({"direction": "egress", "protocol": "any"}))
        );
        assert!(parse_rule("").is_err());
        assert!(parse_rule("ingress tcp http").is_err());
    }
}
