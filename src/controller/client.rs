//! A small blocking HTTP client for the controller API, used by the human CLI
//! (`flat6 pod|instance|address|sg ...`) and, through `spawn_blocking`, by the agents' watches.
//! `https://` controllers are verified against the CA certificates of a PEM file when one is
//! given (a private CA, the usual case on a management network), else against the built-in
//! public roots.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// Errors talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete (connection refused, timeout, ...).
    #[error("{method} {url}: {reason}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// Full URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The CA file for https could not be used.
    #[error("{path}: {reason}")]
    Tls {
        /// The CA file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The controller answered with an error status.
    #[error("{method} {url}: {status} {message}{}", field.as_ref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Status {
        /// HTTP method.
        method: &'static str,
        /// Full URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The controller's `error`.
        message: String,
        /// The controller's `field`, if any.
        field: Option<String>,
    },
}

impl ClientError {
    /// The HTTP status, when the controller answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            ClientError::Transport { .. } | ClientError::Tls { .. } => None,
        }
    }
}

/// A client bound to one controller and one token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// `base` like `http://[::1]:8640`; `timeout` bounds each whole request. An `https://`
    /// controller is verified against the built-in public roots.
    pub fn new(base: &str, token: &str, timeout: Duration) -> Self {
        Self::build(base, token, timeout, ureq::tls::RootCerts::WebPki)
    }

    /// [`Client::new`], trusting the CA certificates in the PEM file `ca_file` (when given)
    /// instead of the public roots for an `https://` controller.
    pub fn with_ca_file(
        base: &str,
        token: &str,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let Some(path) = ca_file else {
            return Ok(Self::new(base, token, timeout));
        };
        let tls = |reason: String| ClientError::Tls {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| tls(format!("cannot read the CA file: {e}")))?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                Ok(_) => {}
                Err(e) => return Err(tls(format!("not a PEM file: {e}"))),
            }
        }
        if certs.is_empty() {
            return Err(tls("no CERTIFICATE in the CA file".into()));
        }
        Ok(Self::build(
            base,
            token,
            timeout,
            ureq::tls::RootCerts::new_with_certs(&certs),
        ))
    }

    fn build(base: &str, token: &str, timeout: Duration, roots: ureq::tls::RootCerts) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            agent,
        }
    }

    /// `GET path`: a 2xx answer's body as it came, of any size (agents follow documents and
    /// changes without decoding them twice), else the error.
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("Bearer {}", self.token);
        let transport = |e: ureq::Error| ClientError::Transport {
            method: "GET",
            url: url.clone(),
            reason: e.to_string(),
        };
        let response = self
            .agent
            .get(&url)
            .header("Authorization", &auth)
            .call()
            .map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(transport)?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let json: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Err(status_error("GET", url, status, &json))
    }

    /// Send one request; a 2xx answer's JSON body (or `null` for an empty one), else the error.
    pub fn request(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("Bearer {}", self.token);
        let transport = |e: ureq::Error| ClientError::Transport {
            method,
            url: url.clone(),
            reason: e.to_string(),
        };
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            ("POST", None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .send_json(b),
            ("PATCH", Some(b)) => self
                .agent
                .patch(&url)
                .header("Authorization", &auth)
                .send_json(b),
            (_, _) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .send_empty(),
        }
        .map_err(transport)?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().map_err(transport)?;
        let json: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if (200..300).contains(&status) {
            Ok(json)
        } else {
            Err(status_error(method, url, status, &json))
        }
    }
}

/// The error for a non-2xx answer: the controller's `error` and `field`.
fn status_error(method: &'static str, url: String, status: u16, json: &Value) -> ClientError {
    ClientError::Status {
        method,
        url,
        status,
        message: json
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| json.to_string()),
        field: json
            .get("field")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}
