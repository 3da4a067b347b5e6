//! The only code that runs `nft`: apply a batch as one transaction, read the marker of the applied
//! state, tear the guard's tables down.
//!
//! Every call is one `nft …` child process. A batch goes to `nft -f -` on stdin in nft's text
//! syntax (see the `render` module docs for why not JSON), which nft commits as a single netfilter
//! transaction: it either applies completely or not at all, so a failed apply leaves the previous
//! ruleset in force (the firewall fails static). nft's stderr, which names the failing line, is
//! kept in the error. `flat6 guard render` prints the same text that is applied here. Reading
//! state uses nft's JSON output (`nft -j list set …`), parsed with the `nftables` crate's schema.
//! Nothing here touches tables other than the two named by the caller.
//!
//! [`Nft`] says how to run nft; tests use [`Nft::in_netns`] (`ip netns exec <ns> nft`) so they
//! never touch the host's ruleset.

use std::ffi::OsString;
use std::io::Write as _;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nftables::expr::Expression;
use nftables::schema::{NfListObject, NfObject, Nftables};

use super::libnft::LibNft;
use super::render::{Batch, MARKER_SET, marker_from_element};

/// How to run nft: a program and the arguments that come before nft's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nft {
    program: PathBuf,
    prefix_args: Vec<OsString>,
}

impl Default for Nft {
    /// Plain `nft` from `PATH`.
    fn default() -> Self {
        Nft {
            program: PathBuf::from("nft"),
            prefix_args: Vec::new(),
        }
    }
}

impl Nft {
    /// A custom command line: `program prefix_args… -j …`.
    pub fn new(program: impl Into<PathBuf>, prefix_args: Vec<OsString>) -> Self {
        Nft {
            program: program.into(),
            prefix_args,
        }
    }

    /// nft inside a named network namespace: `ip netns exec <ns> nft`.
    pub fn in_netns(ns: &str) -> Self {
        Nft::new(
            "ip",
            ["netns", "exec", ns, "nft"]
                .iter()
                .map(OsString::from)
                .collect(),
        )
    }

    fn command_line(&self, args: &[&str]) -> String {
        let mut parts = vec![self.program.display().to_string()];
        parts.extend(
            self.prefix_args
                .iter()
                .map(|a| a.to_string_lossy().into_owned()),
        );
        parts.extend(args.iter().map(|a| a.to_string()));
        parts.join(" ")
    }

    /// Run `nft -j <args>`, feeding `stdin` if given; nft's stdout on success.
    fn run(&self, what: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
        let mut full_args = vec!["-j"];
        full_args.extend_from_slice(args);
        self.run_args(what, &full_args, stdin)
    }

    /// Run `nft <args>` (no `-j`), feeding `stdin` if given; nft's stdout on success.
    fn run_args(
        &self,
        what: &str,
        full_args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, ApplyError> {
        let full_args = full_args.to_vec();
        let command = self.command_line(&full_args);
        let mut child = Command::new(&self.program)
            .args(&self.prefix_args)
            .args(&full_args)
            // nft's messages are matched below; keep them untranslated.
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ApplyError::Spawn {
                what: what.to_string(),
                command: command.clone(),
                source,
            })?;
        // Write stdin on its own thread so that a chatty child cannot deadlock us on a full pipe.
        let output = std::thread::scope(|scope| {
            let writer = child.stdin.take().zip(stdin).map(|(mut pipe, text)| {
                scope.spawn(move || {
                    let result = pipe.write_all(text.as_bytes());
                    drop(pipe);
                    result
                })
            });
            let output = child.wait_with_output();
            let written = match writer.map(|w| w.join()) {
                None | Some(Ok(Ok(()))) => Ok(()),
                Some(Ok(Err(err))) => Err(err),
                Some(Err(_)) => Err(std::io::Error::other("the stdin writer panicked")),
            };
            output.and_then(|o| written.map(|()| o))
        })
        .map_err(|source| ApplyError::Spawn {
            what: what.to_string(),
            command: command.clone(),
            source,
        })?;
        if !output.status.success() {
            return Err(ApplyError::Nft {
                what: what.to_string(),
                command,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Why talking to nft failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// nft could not be started or fed.
    #[error("{what}: cannot run `{command}`: {source}")]
    Spawn {
        /// What was being done.
        what: String,
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// nft ran and failed; nothing of the batch was applied.
    #[error("{what}: `{command}` failed ({status}): {stderr}")]
    Nft {
        /// What was being done.
        what: String,
        /// The command line.
        command: String,
        /// The exit status.
        status: String,
        /// nft's stderr, which names the failing command.
        stderr: String,
    },
    /// nft printed something this code does not understand.
    #[error("{what}: unexpected nft output: {detail}")]
    Output {
        /// What was being done.
        what: String,
        /// What was wrong with it.
        detail: String,
    },
    /// Some tables could not be deleted (the others were).
    #[error("teardown of table {table}: {}", join(.errors))]
    Teardown {
        /// The table name.
        table: String,
        /// One error per table that could not be deleted.
        errors: Vec<ApplyError>,
    },
}

fn join(errors: &[ApplyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Apply `batch` with one `nft -f -`, i.e. as one transaction. An empty batch does nothing.
pub fn apply(nft: &Nft, batch: &Batch) -> Result<(), ApplyError> {
    if batch.is_empty() {
        return Ok(());
    }
    let what = format!("apply {} nft commands", batch.len());
    nft.run_args(&what, &["-f", "-"], Some(&batch.text()))?;
    tracing::debug!(commands = batch.len(), "nft batch applied");
    Ok(())
}

/// How the guard's batches reach the kernel: through libnftables in this process (see the
/// `libnft` module: no process per batch, and no wait for the kernel's cleanup when a short-lived
/// netlink socket closes), or by running `nft -f -`. Both take the same text as one transaction.
#[derive(Debug)]
pub enum Applier {
    /// libnftables, loaded at run time.
    Library(LibNft),
    /// The `nft` program.
    Program(Nft),
}

impl Default for Applier {
    fn default() -> Self {
        Applier::new()
    }
}

impl Applier {
    /// libnftables when it loads, unless `FLAT6_GUARD_NFT=program`; else the `nft` program.
    pub fn new() -> Applier {
        if std::env::var("FLAT6_GUARD_NFT").as_deref() == Ok("program") {
            tracing::info!("FLAT6_GUARD_NFT=program: running nft for each batch");
            return Applier::Program(Nft::default());
        }
        match LibNft::open() {
            Ok(lib) => {
                tracing::debug!("applying batches through libnftables in this process");
                Applier::Library(lib)
            }
            Err(why) => {
                tracing::info!(%why, "libnftables not available; running nft for each batch");
                Applier::Program(Nft::default())
            }
        }
    }

    /// Apply `batch` as one transaction. An empty batch does nothing.
    pub fn apply(&mut self, batch: &Batch) -> Result<(), ApplyError> {
        match self {
            Applier::Program(nft) => apply(nft, batch),
            Applier::Library(lib) => {
                if batch.is_empty() {
                    return Ok(());
                }
                lib.run(&batch.text()).map_err(|stderr| ApplyError::Nft {
                    what: format!("apply {} nft commands", batch.len()),
                    command: "libnftables (as nft -f -)".into(),
                    status: "failed".into(),
                    stderr,
                })?;
                tracing::debug!(commands = batch.len(), "nft batch applied");
                Ok(())
            }
        }
    }
}

/// nft's JSON output, parsed with the `nftables` crate's schema.
fn objects(what: &str, text: &str) -> Result<Vec<NfObject<'static>>, ApplyError> {
    let parsed: Nftables<'static> =
        serde_json::from_str(text).map_err(|err| ApplyError::Output {
            what: what.to_string(),
            detail: format!("not nft JSON: {err}"),
        })?;
    Ok(parsed.objects.into_owned())
}

/// Whether nft's error says the object does not exist.
fn is_missing(err: &ApplyError) -> bool {
    matches!(err, ApplyError::Nft { stderr, .. } if stderr.contains("No such file or directory"))
}

/// The marker element of `<family> <table>`, `None` when the table has no marker set or it is
/// empty.
fn table_marker(nft: &Nft, family: &str, table: &str) -> Result<Option<String>, ApplyError> {
    let what = format!("read the marker of {family} {table}");
    let out = match nft.run(&what, &["list", "set", family, table, MARKER_SET], None) {
        Ok(out) => out,
        Err(err) if is_missing(&err) => return Ok(None),
        Err(err) => return Err(err),
    };
    for obj in objects(&what, &out)? {
        let NfObject::ListObject(NfListObject::Set(set)) = obj else {
            continue;
        };
        let Some(first) = set.elem.as_ref().and_then(|e| e.first()) else {
            // The set exists but is empty.
            return Ok(None);
        };
        // An element is a plain string, or an object when it carries options.
        let text = match first {
            Expression::String(s) => Some(s.to_string()),
            Expression::Named(nftables::expr::NamedExpression::Elem(elem)) => match &*elem.val {
                Expression::String(s) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        };
        return match text.as_deref().map(str::parse::<Ipv6Addr>) {
            Some(Ok(addr)) => Ok(Some(marker_from_element(addr))),
            Some(Err(_)) | None => Err(ApplyError::Output {
                what,
                detail: format!("marker element {first:?} is not an IPv6 address"),
            }),
        };
    }
    Ok(None)
}

/// The marker of the applied state (see `render::Desired::marker`): `None` when either of the two
/// tables is missing. When both exist but their markers are missing or disagree, the result is a
/// string that equals no marker, so the caller rebuilds.
pub fn read_marker(nft: &Nft, table: &str) -> Result<Option<String>, ApplyError> {
    // The common case lists only the two one-element marker sets: `nft list tables` would make
    // nft 1.0.6 load every rule of the ruleset (about 14 s at 10,000 ports).
    let b = table_marker(nft, "bridge", table)?;
    let i = table_marker(nft, "inet", table)?;
    if let (Some(b), Some(i)) = (&b, &i)
        && b == i
    {
        return Ok(Some(b.clone()));
    }
    // Rare (first start, a partial teardown, someone else's table): tell a missing table, which
    // reads as "nothing applied", from a table without our marker, which reads as a mismatch.
    for (family, marker) in [("bridge", &b), ("inet", &i)] {
        if marker.is_none() && !table_exists(nft, family, table)? {
            return Ok(None);
        }
    }
    Ok(Some(format!(
        "inconsistent (bridge {}, inet {})",
        b.as_deref().unwrap_or("none"),
        i.as_deref().unwrap_or("none")
    )))
}

/// Whether `<family> <table>` exists.
fn table_exists(nft: &Nft, family: &str, table: &str) -> Result<bool, ApplyError> {
    let what = format!("look for table {family} {table}");
    match nft.run(&what, &["list", "table", family, table], None) {
        Ok(_) => Ok(true),
        Err(err) if is_missing(&err) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Delete `bridge <table>` and `inet <table>` if present, each in its own transaction so that one
/// failure does not keep the other table; true if anything was removed. Touches nothing else.
pub fn teardown(nft: &Nft, table: &str) -> Result<bool, ApplyError> {
    let mut removed = false;
    let mut errors = Vec::new();
    for family in ["bridge", "inet"] {
        let what = format!("delete table {family} {table}");
        match nft.run(&what, &["delete", "table", family, table], None) {
            Ok(_) => removed = true,
            Err(err) if is_missing(&err) => {}
            Err(err) => errors.push(err),
        }
    }
    if errors.is_empty() {
        Ok(removed)
    } else {
        Err(ApplyError::Teardown {
            table: table.to_string(),
            errors,
        })
    }
}

/// Root-only: each test runs nft inside its own fresh network namespace (`ip netns exec`), never
/// against the host's ruleset.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write as _;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};

    use serde_json::Value;

    use super::*;
    use crate::config::{AntiSpoofing, EgressDefault};
    use crate::guard::document::PortsDoc;
    use crate::guard::render::fixtures::*;
    use crate::guard::render::{Settings, describe, diff_batch, full_batch, render};

    static COUNTER: AtomicU32 = AtomicU32::new(0);

    /// A fresh network namespace, deleted on drop (also while a failing test unwinds). Named like
    /// the integration fixture's, `f6t<pid>g<counter>`, so leftovers are recognised.
    struct Netns {
        name: String,
    }

    impl Netns {
        fn new() -> Netns {
            let name = format!(
                "f6t{}g{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .expect("run ip netns add");
            assert!(
                out.status.success(),
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Netns { name }
        }

        fn nft(&self) -> Nft {
            Nft::in_netns(&self.name)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    /// Whether root-only tests can run; prints a loud SKIPPED line, or panics under
    /// `FLAT6_REQUIRE_ROOT=1`, when they cannot.
    fn root(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        let reason = if euid != 0 {
            Some("not root".to_string())
        } else if Command::new("nft").arg("--version").output().is_err() {
            Some("nft is not installed".to_string())
        } else {
            None
        };
        let Some(reason) = reason else { return true };
        if std::env::var("FLAT6_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!("FLAT6_REQUIRE_ROOT=1 but {test} cannot run: {reason}");
        }
        // Straight to stderr, past libtest's capture, so the skip is seen.
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED {test}: needs root and network namespaces ({reason})"
        );
        false
    }

    /// nft's JSON output as plain values (the tests look at everything, also what the
    /// `nftables` crate's schema does not model).
    fn values(text: &str) -> Vec<Value> {
        let value: Value = serde_json::from_str(text).expect("nft JSON");
        value["nftables"]
            .as_array()
            .cloned()
            .expect("nftables array")
    }

    /// Both tables as a comparable value: chains with hook and rule expressions, sets and maps
    /// with sorted elements; handles and listing order removed.
    fn snapshot(nft: &Nft, table: &str) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        for family in ["bridge", "inet"] {
            let text = nft
                .run("list", &["list", "table", family, table], None)
                .expect("list table");
            let mut rules: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for mut obj in values(&text) {
                if let Some(rule) = obj.get_mut("rule") {
                    let chain = rule["chain"].as_str().unwrap_or_default().to_string();
                    rules
                        .entry(chain)
                        .or_default()
                        .push(sorted(rule["expr"].clone()));
                } else if let Some(chain) = obj.get_mut("chain") {
                    let name = chain["name"].as_str().unwrap_or_default().to_string();
                    strip_handle(chain);
                    out.insert(format!("{family} chain {name}"), chain.clone());
                } else if let Some(set) = obj.get_mut("set") {
                    let name = set["name"].as_str().unwrap_or_default().to_string();
                    strip_handle(set);
                    out.insert(format!("{family} set {name}"), sorted(set.clone()));
                } else if let Some(map) = obj.get_mut("map") {
                    let name = map["name"].as_str().unwrap_or_default().to_string();
                    strip_handle(map);
                    out.insert(format!("{family} map {name}"), sorted(map.clone()));
                }
            }
            for (chain, exprs) in rules {
                out.insert(format!("{family} rules {chain}"), Value::Array(exprs));
            }
        }
        out
    }

    fn strip_handle(v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.remove("handle");
        }
    }

    /// Sort the elements of every `set` and `elem` array (the kernel lists hash sets in an order
    /// of its own).
    fn sorted(mut v: Value) -> Value {
        fn walk(v: &mut Value) {
            match v {
                Value::Object(o) => {
                    for (k, child) in o.iter_mut() {
                        walk(child);
                        if (k == "set" || k == "elem")
                            && let Value::Array(items) = child
                        {
                            items.sort_by_key(|i| i.to_string());
                        }
                    }
                }
                Value::Array(items) => items.iter_mut().for_each(walk),
                _ => {}
            }
        }
        walk(&mut v);
        v
    }

    fn settings_variants() -> Vec<Settings> {
        vec![
            settings(),
            Settings {
                anti_spoofing: AntiSpoofing::Prefix,
                egress: EgressDefault::Deny,
                router_link_local: vec!["fe80::1".parse().expect("address")],
                ..settings()
            },
        ]
    }

    fn scenarios() -> Vec<(&'static str, PortsDoc)> {
        let mut member_added = web();
        if let Some(g) = member_added.groups.get_mut("admin") {
            g.members.push(addr("2001:db8:ff::3"));
        }
        let mut rule_changed = shared();
        if let Some(g) = rule_changed.groups.get_mut("app") {
            g.rules[0].ports = Some((9000, 9000));
        }
        let mut port_added = rule_changed.clone();
        // An interface named like a set or chain must not collide with it.
        let mut named_port = port(3, &["app"]);
        named_port.interface = "ports".into();
        port_added.ports.push(named_port);
        let mut address_changed = port_added.clone();
        address_changed.ports[0].addresses = vec![addr("2001:db8:0:1::99")];
        // Port 4 claims a key inside port 5's prefix; in prefix mode port 5's prefix is then
        // left out of the maps until port 4 goes, when the key changes owner in one batch.
        let mut claimer = port(4, &[]);
        claimer.addresses.push(addr("2001:db8:0:5::11"));
        let overlap = doc(vec![claimer.clone(), port(5, &[])], vec![]);
        let mut owner_gone = overlap.clone();
        owner_gone.ports.remove(0);
        vec![
            ("empty", doc(vec![], vec![])),
            ("lone port", lone_port()),
            ("web", web()),
            ("web, member added", member_added),
            ("shared", shared()),
            ("shared, rule changed", rule_changed),
            ("shared, port added", port_added),
            ("shared, address changed", address_changed),
            ("lone port again", lone_port()),
            ("overlap", overlap),
            ("overlap, owner removed", owner_gone),
            (
                "overlap, owner back",
                doc(vec![claimer, port(5, &[])], vec![]),
            ),
            ("empty again", doc(vec![], vec![])),
        ]
    }

    #[test]
    fn full_batches_apply_and_leave_the_marker() {
        if !root("full_batches_apply_and_leave_the_marker") {
            return;
        }
        let ns = Netns::new();
        let nft = ns.nft();
        assert_eq!(read_marker(&nft, "flat6").expect("read"), None);
        for s in settings_variants() {
            for (name, doc) in scenarios() {
                let desired = render(&s, &doc);
                apply(&nft, &full_batch(&s, &desired))
                    .unwrap_or_else(|e| panic!("{name} ({s:?}): {e}"));
                assert_eq!(
                    read_marker(&nft, "flat6").expect("read"),
                    Some(desired.marker()),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn diffs_apply_and_match_a_full_apply() {
        if !root("diffs_apply_and_match_a_full_apply") {
            return;
        }
        let via_diff = Netns::new();
        let direct = Netns::new();
        for s in settings_variants() {
            let steps = scenarios();
            let mut prev = render(&s, &steps[0].1);
            apply(&via_diff.nft(), &full_batch(&s, &prev)).expect("first full apply");
            for (name, doc) in &steps[1..] {
                let next = render(&s, doc);
                apply(&via_diff.nft(), &diff_batch(&s, &prev, &next))
                    .unwrap_or_else(|e| panic!("diff to {name} ({s:?}): {e}"));
                apply(&direct.nft(), &full_batch(&s, &next))
                    .unwrap_or_else(|e| panic!("full {name} ({s:?}): {e}"));
                assert_eq!(
                    snapshot(&via_diff.nft(), "flat6"),
                    snapshot(&direct.nft(), "flat6"),
                    "diff to {name} ({s:?})"
                );
                assert_eq!(
                    read_marker(&via_diff.nft(), "flat6").expect("read"),
                    Some(next.marker())
                );
                prev = next;
            }
        }
    }

    #[test]
    fn a_failing_batch_changes_nothing_and_reports_stderr() {
        if !root("a_failing_batch_changes_nothing_and_reports_stderr") {
            return;
        }
        let ns = Netns::new();
        let nft = ns.nft();
        let s = settings();
        let applied = render(&s, &web());
        apply(&nft, &full_batch(&s, &applied)).expect("full");
        let before = snapshot(&nft, "flat6");
        // A diff from a state that is not the applied one: deleting a port that is not there.
        let stale = render(&s, &shared());
        let err = apply(&nft, &diff_batch(&s, &stale, &render(&s, &lone_port())))
            .expect_err("stale diff must fail");
        match &err {
            ApplyError::Nft { stderr, .. } => assert!(!stderr.is_empty(), "{err}"),
            other => panic!("unexpected error {other}"),
        }
        assert_eq!(snapshot(&nft, "flat6"), before);
        assert_eq!(
            read_marker(&nft, "flat6").expect("read"),
            Some(applied.marker())
        );
    }

    #[test]
    fn teardown_and_marker_touch_only_our_tables() {
        if !root("teardown_and_marker_touch_only_our_tables") {
            return;
        }
        let ns = Netns::new();
        let nft = ns.nft();
        nft.run(
            "other table",
            &["-f", "-"],
            Some(
                r#"{"nftables":[{"add":{"table":{"family":"inet","name":"other"}}},
                {"add":{"chain":{"family":"inet","table":"other","name":"c","type":"filter","hook":"input","prio":0,"policy":"accept"}}},
                {"add":{"table":{"family":"bridge","name":"other"}}}]}"#,
            ),
        )
        .expect("create other tables");
        let s = settings();
        assert!(!teardown(&nft, "flat6").expect("teardown of nothing"));

        let desired = render(&s, &shared());
        apply(&nft, &full_batch(&s, &desired)).expect("full");
        assert_eq!(
            read_marker(&nft, "flat6").expect("read"),
            Some(desired.marker())
        );

        // Only one of the two tables: no trustworthy marker.
        nft.run("drop bridge", &["delete", "table", "bridge", "flat6"], None)
            .expect("delete bridge table");
        assert_eq!(read_marker(&nft, "flat6").expect("read"), None);
        assert!(teardown(&nft, "flat6").expect("teardown"));

        apply(&nft, &full_batch(&s, &desired)).expect("full again");
        assert!(teardown(&nft, "flat6").expect("teardown"));
        assert!(!teardown(&nft, "flat6").expect("second teardown"));
        assert_eq!(read_marker(&nft, "flat6").expect("read"), None);

        let text = nft
            .run("list", &["list", "tables"], None)
            .expect("list tables");
        let names: Vec<String> = values(&text)
            .iter()
            .filter_map(|o| {
                let t = o.get("table")?;
                Some(format!("{} {}", t["family"].as_str()?, t["name"].as_str()?))
            })
            .collect();
        assert_eq!(names, ["inet other", "bridge other"]);
        let other = nft
            .run("list", &["list", "chain", "inet", "other", "c"], None)
            .expect("the other table's chain is still there");
        assert!(other.contains("\"hook\": \"input\""), "{other}");
    }

    #[test]
    fn a_table_without_our_marker_reads_as_a_mismatch() {
        if !root("a_table_without_our_marker_reads_as_a_mismatch") {
            return;
        }
        let ns = Netns::new();
        let nft = ns.nft();
        nft.run(
            "foreign tables",
            &["-f", "-"],
            Some(
                r#"{"nftables":[{"add":{"table":{"family":"inet","name":"flat6"}}},
                {"add":{"table":{"family":"bridge","name":"flat6"}}}]}"#,
            ),
        )
        .expect("create");
        let marker = read_marker(&nft, "flat6")
            .expect("read")
            .expect("tables exist");
        assert_eq!(marker, "inconsistent (bridge none, inet none)");
        assert_ne!(marker, render(&settings(), &web()).marker());
        // A full batch replaces them.
        let desired = render(&settings(), &web());
        apply(&nft, &full_batch(&settings(), &desired)).expect("full");
        assert_eq!(
            read_marker(&nft, "flat6").expect("read"),
            Some(desired.marker())
        );
    }

    /// Run `f` on a new thread that has entered the network namespace `ns` (`setns` changes only
    /// the calling thread), as the guard's own thread lives in the host's.
    fn in_netns_thread<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        use std::os::fd::AsRawFd as _;
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: a valid descriptor of a network namespace; affects this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the namespace thread panicked")
    }

    #[test]
    fn the_library_applies_what_the_program_applies() {
        if !root("the_library_applies_what_the_program_applies") {
            return;
        }
        for s in settings_variants() {
            let via_lib = Netns::new();
            let direct = Netns::new();
            let steps = scenarios();
            let mut batches = Vec::new();
            let mut prev = render(&s, &steps[0].1);
            batches.push(("first full".to_string(), full_batch(&s, &prev)));
            for (name, doc) in &steps[1..] {
                let next = render(&s, doc);
                batches.push((format!("diff to {name}"), diff_batch(&s, &prev, &next)));
                prev = next;
            }
            // A stale diff (from a state that is not applied) must fail and change nothing.
            let stale = diff_batch(&s, &render(&s, &shared()), &render(&s, &lone_port()));
            // One context for the whole sequence, as the daemon keeps one.
            let failure = in_netns_thread(&via_lib.name, move || {
                let mut lib = LibNft::open().expect("libnftables.so.1 loads");
                for (what, batch) in &batches {
                    lib.run(&batch.text())
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                }
                lib.run(&stale.text()).expect_err("a stale diff must fail")
            });
            assert!(failure.contains("Error"), "{failure}");
            apply(&direct.nft(), &full_batch(&s, &prev)).expect("full apply of the last state");
            assert_eq!(
                snapshot(&via_lib.nft(), "flat6"),
                snapshot(&direct.nft(), "flat6"),
                "{s:?}"
            );
            assert_eq!(
                read_marker(&via_lib.nft(), "flat6").expect("read"),
                Some(prev.marker())
            );
        }
    }

    #[test]
    fn the_printed_batch_is_what_applies() {
        if !root("the_printed_batch_is_what_applies") {
            return;
        }
        let ns = Netns::new();
        let nft = ns.nft();
        let s = settings();
        let b = full_batch(&s, &render(&s, &web()));
        // What `flat6 guard render` prints is what applies.
        nft.run_args("printed", &["-f", "-"], Some(&describe(&b)))
            .expect("the printed batch applies");
        let listed = nft
            .run(
                "list",
                &["list", "map", "inet", "flat6", "port_groups"],
                None,
            )
            .expect("list map");
        assert!(listed.contains("\"map\": \"mark\""), "{listed}");
        assert!(listed.contains("2001:db8:0:1::10"), "{listed}");
        let listed = nft
            .run("list", &["list", "map", "inet", "flat6", "ingress"], None)
            .expect("list map");
        assert!(listed.contains("\"map\": \"verdict\""), "{listed}");
        assert!(listed.contains("\"target\": \"in_g_web_"), "{listed}");
        let typed = nft
            .run_args(
                "list",
                &["list", "set", "bridge", "flat6", "na_target"],
                None,
            )
            .expect("list set");
        assert!(typed.contains("typeof iifname . @th,64,128"), "{typed}");
        assert!(
            typed.contains("\"vnet1\" . 0x20010db8000000010000000000000010"),
            "{typed}"
        );
    }

    /// Adds and removes one port on hosts with 100 and 10,000 ports and prints the time of each
    /// `nft -f -` and the batch sizes; checks that the result equals a full apply.
    #[test]
    #[ignore = "benchmark: builds 10,000-port rulesets (about a minute); run as root with --ignored --nocapture"]
    fn one_port_diff_cost_does_not_grow_with_the_ports() {
        if !root("one_port_diff_cost_does_not_grow_with_the_ports") {
            return;
        }
        use std::time::{Duration, Instant};
        const ROUNDS: usize = 5;
        let s = settings();
        let mut report = Vec::new();
        // FLAT6_BENCH_PORTS=100,1000 picks other sizes.
        let sizes: Vec<u16> = std::env::var("FLAT6_BENCH_PORTS")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![100, 10_000]);
        for n in sizes {
            let ns = Netns::new();
            let nft = ns.nft();
            let base_doc = many_ports(n);
            let mut more_doc = base_doc.clone();
            more_doc.ports.push(numbered_port(60000, &["web"]));
            let (base, more) = (render(&s, &base_doc), render(&s, &more_doc));
            let full = full_batch(&s, &base);
            let started = Instant::now();
            apply(&nft, &full).expect("full apply");
            let full_time = started.elapsed();
            let (add, remove) = (diff_batch(&s, &base, &more), diff_batch(&s, &more, &base));
            let (mut add_times, mut remove_times) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                let started = Instant::now();
                apply(&nft, &add).expect("add a port");
                add_times.push(started.elapsed());
                let started = Instant::now();
                apply(&nft, &remove).expect("remove a port");
                remove_times.push(started.elapsed());
            }
            apply(&nft, &add).expect("add a port");
            let direct = Netns::new();
            apply(&direct.nft(), &full_batch(&s, &more)).expect("full apply of the target");
            assert_eq!(snapshot(&nft, "flat6"), snapshot(&direct.nft(), "flat6"));
            assert_eq!(
                read_marker(&nft, "flat6").expect("read"),
                Some(more.marker())
            );
            let median = |mut t: Vec<Duration>| {
                t.sort();
                t[t.len() / 2]
            };
            let bytes = |b: &Batch| b.text().len();
            report.push(format!(
                "{n:>6} ports: full apply {:>8.1} ms ({} bytes); one-port add {:>6.1} ms ({} commands, \
                 {} bytes), remove {:>6.1} ms ({} commands, {} bytes) (medians of {ROUNDS})",
                full_time.as_secs_f64() * 1e3,
                bytes(&full),
                median(add_times).as_secs_f64() * 1e3,
                add.len(),
                bytes(&add),
                median(remove_times).as_secs_f64() * 1e3,
                remove.len(),
                bytes(&remove),
            ));
        }
        let _ = writeln!(std::io::stderr().lock(), "{}", report.join("\n"));
    }

    #[test]
    fn an_empty_batch_runs_nothing() {
        // No root needed: a program that does not exist proves nft is never started.
        let nft = Nft::new("/nonexistent/nft", Vec::new());
        let s = settings();
        let d = render(&s, &web());
        apply(&nft, &diff_batch(&s, &d, &d)).expect("empty batch");
        let err = apply(&nft, &full_batch(&s, &d)).expect_err("missing program");
        assert!(
            err.to_string()
                .contains("cannot run `/nonexistent/nft -f -`"),
            "{err}"
        );
    }
}
