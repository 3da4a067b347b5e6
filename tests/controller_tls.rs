//! `flat6 controller` over HTTPS (`tls_cert_file`, `tls_key_file`) with a private CA, and the
//! clients that follow it: the library client and the CLI with `--ca-file`, and an agent source
//! (`[source] controller = "https://…"`, `ca_file`) through `flat6 guard render`. Needs no root:
//! everything is on loopback.

// Tests panic on purpose when something is wrong; that is how they fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flat6::controller::client::{Client, ClientError};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;

const ADMIN: &str = "admin-token-0123456789abcdef";
const AGENT: &str = "agent-token-0123456789abcdef";

/// A CA, and a server certificate it signed for `::1`, as PEM files in `dir`: (ca, cert, key).
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["::1".to_string(), "localhost".to_string()])
        .expect("server params")
        .signed_by(&key, &ca)
        .expect("server certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write ca");
    std::fs::write(&paths.1, cert.pem()).expect("write cert");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    paths
}

/// Tokens and a controller config listening on `listen` with the given TLS files, in `dir`.
fn write_config(dir: &Path, listen: &str, cert: &Path, key: &Path) -> PathBuf {
    let (admin, agent) = (dir.join("admin.token"), dir.join("agent.token"));
    std::fs::write(&admin, ADMIN).expect("token");
    std::fs::write(&agent, AGENT).expect("token");
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"controller\"\nlisten = \"{listen}\"\ndatabase = \"sqlite://{}/c.db\"\nadmin_token_file = \"{}\"\nagent_token_file = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            dir.display(),
            admin.display(),
            agent.display(),
            cert.display(),
            key.display()
        ),
    )
    .expect("config");
    config
}

/// A `flat6 controller` serving HTTPS on a free loopback port (SQLite), killed on drop.
struct TlsController {
    child: Child,
    url: String,
    ca: PathBuf,
    dir: tempfile::TempDir,
}

impl TlsController {
    fn start() -> TlsController {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, cert, key) = private_ca(dir.path());
        let port = TcpListener::bind("[::1]:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = write_config(dir.path(), &format!("[::1]:{port}"), &cert, &key);
        let log = std::fs::File::create(dir.path().join("controller.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_flat6"))
            .args(["controller", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start controller");
        let mut c = TlsController {
            child,
            url: format!("https://[::1]:{port}"),
            ca,
            dir,
        };
        let started = Instant::now();
        while c.client(ADMIN).request("GET", "/healthz", None).is_err() {
            if let Ok(Some(status)) = c.child.try_wait() {
                panic!("controller exited {status}:\n{}", c.logs());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "controller not ready:\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn client(&self, token: &str) -> Client {
        Client::with_ca_file(&self.url, token, Duration::from_secs(30), Some(&self.ca))
            .expect("client with the CA file")
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }
}

impl Drop for TlsController {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn clients_and_agents_follow_an_https_controller_with_a_private_ca() {
    let c = TlsController::start();
    let admin = c.client(ADMIN);
    admin
        .request(
            "POST",
            "/v1/pods",
            Some(&json!({"name": "p1", "prefix": "2001:db8:7::/48", "instance_prefix_length": 64})),
        )
        .expect("create pod over https");
    let created = admin
        .request(
            "POST",
            "/v1/pods/p1/instances",
            Some(
                &json!({"name": "i-1", "mac": "02:f6:00:00:07:01", "host": "hv1", "port": "vnet7"}),
            ),
        )
        .expect("create instance over https");
    let address = created["addresses"][0]
        .as_str()
        .expect("address")
        .to_string();

    // The CLI with --ca-file.
    let out = Command::new(env!("CARGO_BIN_EXE_flat6"))
        .args([
            "instance", "show", "p1", "i-1", "--json", "--server", &c.url,
        ])
        .arg("--ca-file")
        .arg(&c.ca)
        .env("FLAT6_TOKEN", ADMIN)
        .output()
        .expect("run flat6 instance show");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&address));

    // An agent source: the guard's one-shot render fetches its host's document over https.
    let token = c.dir.path().join("agent.token");
    let guard = c.dir.path().join("guard.toml");
    std::fs::write(
        &guard,
        format!(
            "role = \"guard\"\nstate_dir = \"{}/guard\"\n[source]\ncontroller = \"{}\"\nhost = \"hv1\"\ntoken_file = \"{}\"\nca_file = \"{}\"\n",
            c.dir.path().display(),
            c.url,
            token.display(),
            c.ca.display()
        ),
    )
    .expect("guard config");
    let out = Command::new(env!("CARGO_BIN_EXE_flat6"))
        .args(["guard", "render", "--config"])
        .arg(&guard)
        .output()
        .expect("run flat6 guard render");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"vnet7\" . 02:f6:00:00:07:01"), "{text}");
    assert!(text.contains(&address), "{text}");

    // Without the CA the certificate is not trusted: the request fails, it is not sent in clear.
    match Client::new(&c.url, ADMIN, Duration::from_secs(10)).request("GET", "/v1/pods/p1", None) {
        Err(ClientError::Transport { reason, .. }) => {
            assert!(reason.to_lowercase().contains("certificate"), "{reason}")
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
    // Plain http to the https port gets no answer it could take for the API's.
    let plain = c.url.replace("https://", "http://");
    assert!(
        Client::new(&plain, ADMIN, Duration::from_secs(10))
            .request("GET", "/v1/pods/p1", None)
            .is_err()
    );
    // A CA file that is not PEM is named in the error.
    let bogus = c.dir.path().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").expect("write");
    match Client::with_ca_file(&c.url, ADMIN, Duration::from_secs(10), Some(&bogus)) {
        Err(ClientError::Tls { path, reason }) => {
            assert!(path.ends_with("bogus.pem"), "{path}");
            assert!(reason.contains("CERTIFICATE"), "{reason}");
        }
        Ok(_) => panic!("a CA file without a certificate was accepted"),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn a_controller_with_an_unreadable_certificate_says_which_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        dir.path(),
        "[::1]:0",
        &dir.path().join("missing.pem"),
        &dir.path().join("missing.key"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_flat6"))
        .args(["controller", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("run controller");
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("missing.pem"), "{text}");
}
