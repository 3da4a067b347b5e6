//! The `[source]` section shared by the agents: where their watch document comes from.

use std::path::PathBuf;

use serde::Deserialize;

use super::problems::Checker;

/// Where an agent reads its document (reservations for a VR, ports for a guard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceConfig {
    /// A local JSON file, reloaded when it changes (standalone use).
    File(PathBuf),
    /// A long-poll watch on the controller's API.
    Controller {
        /// Base URL, `http://[::1]:8640`.
        url: String,
        /// The pod (VR) or host (guard) whose document to follow.
        scope: String,
        /// File holding the agent bearer token.
        token_file: PathBuf,
        /// For an `https://` URL: PEM file with the CA certificate(s) to trust instead of the
        /// built-in public roots.
        ca_file: Option<PathBuf>,
    },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct SourceWire {
    file: Option<String>,
    controller: Option<String>,
    pod: Option<String>,
    host: Option<String>,
    token_file: Option<String>,
    ca_file: Option<String>,
}

impl SourceWire {
    /// Validate; `scope_key` is "pod" for a VR and "host" for a guard.
    pub(crate) fn validate(self, check: &mut Checker, scope_key: &str) -> Option<SourceConfig> {
        let other_scope = if scope_key == "pod" { "host" } else { "pod" };
        let misplaced = if scope_key == "pod" {
            self.host.is_some()
        } else {
            self.pod.is_some()
        };
        if misplaced {
            check.problem(
                &format!("source.{other_scope}"),
                format!("not used by this role; it follows one {scope_key}"),
            );
        }
        let scope = if scope_key == "pod" {
            self.pod
        } else {
            self.host
        };
        match (self.file, self.controller) {
            (Some(_), Some(_)) => {
                check.problem("source", "set either file or controller, not both");
                None
            }
            (None, None) => {
                check.problem("source", "set file = \"…\" or controller = \"http://…\"");
                None
            }
            (Some(file), None) => {
                for (key, set) in [
                    (scope_key, scope.is_some()),
                    ("token_file", self.token_file.is_some()),
                    ("ca_file", self.ca_file.is_some()),
                ] {
                    if set {
                        check.problem(&format!("source.{key}"), "only used with source.controller");
                    }
                }
                if file.is_empty() {
                    check.problem("source.file", "empty path");
                    return None;
                }
                Some(SourceConfig::File(PathBuf::from(file)))
            }
            (None, Some(url)) => {
                let https = url.starts_with("https://");
                if !https && !url.starts_with("http://") {
                    check.problem(
                        "source.controller",
                        format!("{url:?} is not an http:// or https:// URL"),
                    );
                }
                if let Some(ca) = &self.ca_file {
                    if !https {
                        check.problem(
                            "source.ca_file",
                            "only used with an https:// source.controller",
                        );
                    } else if ca.is_empty() {
                        check.problem("source.ca_file", "empty path");
                    }
                }
                let scope = check.required(&format!("source.{scope_key}"), scope);
                let token = check.required("source.token_file", self.token_file);
                if let Some(s) = &scope
                    && s.is_empty()
                {
                    check.problem(&format!("source.{scope_key}"), "empty name");
                }
                Some(SourceConfig::Controller {
                    url: url.trim_end_matches('/').to_string(),
                    scope: scope?,
                    token_file: PathBuf::from(token?),
                    ca_file: self.ca_file.map(PathBuf::from),
                })
            }
        }
    }
}
