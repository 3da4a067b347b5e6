//! One network namespace created by a test, and the ways to run things inside it.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::net::Ipv6Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::proc::{LogDir, ProcShared, TERM_GRACE};
use super::{POLL_INTERVAL, Proc, loud, pid_alive, unique_name, wait_until};

/// Where `ip netns` keeps the namespace handles.
const RUN_NETNS: &str = "/run/netns";
/// Where `ip netns exec` looks for per-namespace files to bind over `/etc`.
const ETC_NETNS: &str = "/etc/netns";

/// One address of an interface, parsed from `ip -j addr show`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    /// The address, e.g. `fe80::f6:ff:fe00:101`.
    pub addr: String,
    /// The prefix length.
    pub prefixlen: u8,
    /// The boolean flags `ip` reports as true: `tentative`, `dadfailed`, `nodad`, `dynamic`,
    /// `deprecated`, `noprefixroute`, `mngtmpaddr`, `optimistic`, ...
    pub flags: Vec<String>,
    /// `global`, `link`, `host`, ...
    pub scope: String,
}

impl Addr {
    /// Whether `ip` reports this flag.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// A network namespace named `f6t<pid>n<counter>`, with its own `/etc/netns/<ns>/resolv.conf` and
/// `lo` up. Dropping it stops the processes it spawned and every other process still inside it,
/// deletes the namespace (and with it its links) and removes `/etc/netns/<ns>`, reporting but not
/// stopping at errors.
pub struct Netns {
    name: String,
    created_netns: bool,
    created_etc: bool,
    logs: Arc<LogDir>,
    procs: Mutex<Vec<Arc<ProcShared>>>,
}

impl Netns {
    /// A new namespace.
    pub fn new() -> Netns {
        Netns::with_tag('n')
    }

    /// A new namespace whose name carries `tag` after the pid (the [`super::Lan`] hypervisor is `h`).
    pub(crate) fn with_tag(tag: char) -> Netns {
        let logs = LogDir::current();
        let mut ns = loop {
            let name = unique_name(tag);
            // A namespace left over by an earlier run that had our pid (and was killed) keeps its
            // name taken; skip to the next counter rather than touch what we did not create.
            if Path::new(RUN_NETNS).join(&name).exists()
                || Path::new(ETC_NETNS).join(&name).exists()
            {
                loud(&format!(
                    "flat6 test: {name} is left over from an earlier run; not touching it"
                ));
                continue;
            }
            break Netns {
                name,
                created_netns: false,
                created_etc: false,
                logs,
                procs: Mutex::new(Vec::new()),
            };
        };
        // The resolv.conf comes first: nothing may run in the namespace before it exists.
        let etc = ns.etc_dir();
        std::fs::create_dir_all(ETC_NETNS)
            .unwrap_or_else(|err| panic!("create {ETC_NETNS}: {err}"));
        std::fs::create_dir(&etc).unwrap_or_else(|err| panic!("create {}: {err}", etc.display()));
        ns.created_etc = true;
        let resolv = ns.resolv_conf_path();
        std::fs::write(&resolv, format!("# flat6 test namespace {}\n", ns.name))
            .unwrap_or_else(|err| panic!("write {}: {err}", resolv.display()));
        host_run(&["ip", "netns", "add", &ns.name]);
        ns.created_netns = true;
        ns.ip(["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, for `ip -n`, `ip netns exec` and messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/etc/netns/<ns>`.
    pub fn etc_dir(&self) -> PathBuf {
        Path::new(ETC_NETNS).join(&self.name)
    }

    /// `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` binds over `/etc/resolv.conf`.
    pub fn resolv_conf_path(&self) -> PathBuf {
        self.etc_dir().join("resolv.conf")
    }

    /// The test's temporary directory (shared by its namespaces): logs, and files such as configs
    /// and lease files a test wants to keep for inspection when it fails.
    pub fn work_dir(&self) -> &Path {
        self.logs.path()
    }

    /// The `Command` that runs `argv` inside the namespace (`ip netns exec <ns> argv...`), for
    /// callers that need to set environment variables or stdin themselves.
    pub fn command<I, S>(&self, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv = collect_argv(argv);
        assert!(
            !argv.is_empty(),
            "empty command for namespace {}",
            self.name
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Run `argv` inside the namespace to completion and return what happened, whatever it was.
    pub fn exec<I, S>(&self, argv: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv = collect_argv(argv);
        let shown = show_argv(&argv);
        self.command(&argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|err| panic!("cannot run `{shown}` in {}: {err}", self.name))
    }

    /// Run `argv` inside the namespace and return its stdout; panic with the command, exit status,
    /// stdout and stderr if it fails.
    pub fn run<I, S>(&self, argv: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv = collect_argv(argv);
        let out = self.exec(&argv);
        let what = format!(
            "in {}: {}\n(test files: {})",
            self.name,
            show_argv(&argv),
            self.work_dir().display()
        );
        check_output(&what, out)
    }

    /// Run `ip -n <ns> args...` (faster than `run(["ip", ...])`: no mount namespace) and return its
    /// stdout; panic with the details on failure.
    pub fn ip<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut argv = vec![OsString::from("ip"), "-n".into(), self.name.clone().into()];
        argv.extend(collect_argv(args));
        host_run(&argv)
    }

    /// Run `argv` (e.g. `["ip", "-j", "link"]` or `["nft", "-j", "list", "ruleset"]`) inside the
    /// namespace and parse its stdout as JSON. Empty output (some `ip -j` commands print nothing
    /// when there is nothing to show) is an empty array.
    pub fn json<I, S>(&self, argv: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv = collect_argv(argv);
        let out = self.run(&argv);
        parse_json(&out, &format!("in {}: {}", self.name, show_argv(&argv)))
    }

    /// `ip -n <ns> -j args...`, parsed.
    pub fn ip_json<I, S>(&self, args: I) -> Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut argv = vec![OsString::from("-j")];
        argv.extend(collect_argv(args));
        let shown = show_argv(&argv);
        parse_json(&self.ip(&argv), &format!("ip -n {} {shown}", self.name))
    }

    /// Set a sysctl inside the namespace (`sysctl -qw key=value` under `ip netns exec`).
    ///
    /// Only `net.*` keys are accepted: they are per network namespace, every other sysctl is global
    /// and would change the host. Keys may use `/` separators for interface names containing dots
    /// (`net/ipv6/conf/eth0.100/accept_dad`).
    pub fn sysctl(&self, key: &str, value: &str) {
        check_net_sysctl(key);
        self.run(["sysctl", "-qw", &format!("{key}={value}")]);
    }

    /// Read a `net.*` sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> String {
        check_net_sysctl(key);
        self.run(["sysctl", "-n", key]).trim().to_owned()
    }

    /// Make IPv6 on `ifname` usable at once: no Duplicate Address Detection (`accept_dad=0` for the
    /// interface and as the namespace default), so addresses added from now on are never
    /// tentative. If the interface's link-local address is still tentative, the link is cycled
    /// down and up so it comes back without DAD. Opt-in: tests of DAD itself must not call it.
    pub fn fast_ipv6(&self, ifname: &str) {
        self.sysctl("net/ipv6/conf/default/accept_dad", "0");
        self.sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
        let tentative = self.addrs(ifname).iter().any(|a| a.has("tentative"));
        if tentative {
            self.ip(["link", "set", "dev", ifname, "down"]);
            self.ip(["link", "set", "dev", ifname, "up"]);
        }
    }

    /// Start a long-running `argv` inside the namespace; stdout and stderr go to a log file in
    /// [`Netns::work_dir`]. To set environment variables, start `argv` with `env VAR=value`.
    pub fn spawn<I, S>(&self, argv: I) -> Proc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv = collect_argv(argv);
        let shown = show_argv(&argv);
        let program = argv
            .first()
            .map(|p| {
                Path::new(p)
                    .file_name()
                    .unwrap_or(p)
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        let log = self.logs.path().join(format!(
            "{}-{}-{}.log",
            self.name,
            program,
            super::next_counter()
        ));
        let file = File::create(&log)
            .unwrap_or_else(|err| panic!("create log file {}: {err}", log.display()));
        let file2 = file
            .try_clone()
            .unwrap_or_else(|err| panic!("dup log file {}: {err}", log.display()));
        let child = self
            .command(&argv)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(file2)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start `{shown}` in {}: {err}", self.name));
        let shared = Arc::new(ProcShared::new(
            child,
            format!("in {}: {shown}", self.name),
            log,
        ));
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&shared));
        Proc::new(shared, Arc::clone(&self.logs))
    }

    /// The addresses on `ifname` (`ip -j addr show dev <ifname>`, all families) as
    /// `(address, prefix length, flags)`; flags as in [`Addr::flags`]. See also [`Netns::addrs`].
    pub fn addresses(&self, ifname: &str) -> Vec<(String, u8, Vec<String>)> {
        self.addrs(ifname)
            .into_iter()
            .map(|a| (a.addr, a.prefixlen, a.flags))
            .collect()
    }

    /// The addresses on `ifname` with their scope (`ip -j addr show dev <ifname>`, all families).
    pub fn addrs(&self, ifname: &str) -> Vec<Addr> {
        let json = self.ip_json(["addr", "show", "dev", ifname]);
        parse_addresses(&json)
    }

    /// The IPv6 routes of the main table (`ip -j -6 route show`).
    pub fn routes(&self) -> Value {
        self.ip_json(["-6", "route", "show"])
    }

    /// The MAC address of `ifname`, lower case.
    pub fn link_mac(&self, ifname: &str) -> String {
        let json = self.ip_json(["link", "show", "dev", ifname]);
        json.get(0)
            .and_then(|link| link.get("address"))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no address for {ifname} in {}: {json}", self.name))
            .to_ascii_lowercase()
    }

    /// The usable (not tentative, not failed) link-local IPv6 address of `ifname`, if any.
    pub fn link_local(&self, ifname: &str) -> Option<String> {
        self.addrs(ifname)
            .into_iter()
            .find(|a| {
                a.scope == "link"
                    && a.addr.parse::<Ipv6Addr>().is_ok()
                    && !a.has("tentative")
                    && !a.has("dadfailed")
            })
            .map(|a| a.addr)
    }

    /// Wait until `ifname` has a usable link-local address, and return it.
    pub fn wait_link_local(&self, ifname: &str, timeout: Duration) -> String {
        wait_until(
            &format!(
                "a non-tentative link-local address on {ifname} in {}",
                self.name
            ),
            timeout,
            || self.link_local(ifname),
        )
    }

    /// Run `f` on a thread that has joined this namespace (`setns`), and return its result.
    ///
    /// Sockets created in `f` belong to the namespace for their whole life, so a test can open
    /// them here and use them from its own thread afterwards.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let handle = Path::new(RUN_NETNS).join(&self.name);
        std::thread::scope(|scope| {
            let joined = scope
                .spawn(|| {
                    let file = File::open(&handle)
                        .unwrap_or_else(|err| panic!("open {}: {err}", handle.display()));
                    // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
                    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    if rc != 0 {
                        panic!(
                            "setns into {}: {}",
                            self.name,
                            std::io::Error::last_os_error()
                        );
                    }
                    f()
                })
                .join();
            joined.unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
    }

    /// Send ICMPv6 Echo Requests from inside the namespace to `target` (`fe80::1%eth0` for a
    /// link-local one) until a reply comes or `timeout` passes; the round-trip time or why not.
    ///
    /// Done in-process (a raw socket opened by [`Netns::enter`]) so no `ping` binary is needed.
    pub fn ping6(&self, target: &str, timeout: Duration) -> Result<Duration, String> {
        let target = target.to_owned();
        self.enter(move || ping6_here(&target, timeout))
    }

    /// Panic unless `target` answers a ping from this namespace within `timeout`.
    pub fn assert_ping6(&self, target: &str, timeout: Duration) {
        if let Err(why) = self.ping6(target, timeout) {
            panic!("ping from {} to {target} failed: {why}", self.name);
        }
    }

    /// Stop the processes this namespace spawned, then every other process still inside it (such as
    /// a DHCP client that daemonized): all were started by this test, into a namespace it made.
    fn stop_processes(&self, errors: &mut Vec<String>) {
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|p| p.into_inner()));
        for proc in procs {
            proc.terminate();
        }
        let out = match Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            Ok(out) => out,
            Err(err) => {
                errors.push(format!("ip netns pids {}: {err}", self.name));
                return;
            }
        };
        if !out.status.success() {
            errors.push(format!(
                "ip netns pids {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return;
        }
        let own = std::process::id();
        let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != own)
            .collect();
        if pids.is_empty() {
            return;
        }
        loud(&format!(
            "flat6 test cleanup: stopping processes left in {}: {pids:?}",
            self.name
        ));
        for sig in [libc::SIGTERM, libc::SIGKILL] {
            for &pid in &pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid as libc::pid_t, sig) };
            }
            let deadline = Instant::now() + TERM_GRACE;
            while Instant::now() < deadline && pids.iter().any(|&p| pid_alive(p)) {
                std::thread::sleep(POLL_INTERVAL);
            }
            if !pids.iter().any(|&p| pid_alive(p)) {
                return;
            }
        }
        errors.push(format!(
            "processes in {} survived SIGKILL: {:?}",
            self.name,
            pids.iter().filter(|&&p| pid_alive(p)).collect::<Vec<_>>()
        ));
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netns").field("name", &self.name).finish()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut errors = Vec::new();
        if self.created_netns {
            self.stop_processes(&mut errors);
            match Command::new("ip")
                .args(["netns", "del", &self.name])
                .output()
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => errors.push(format!(
                    "ip netns del {}: {}",
                    self.name,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(err) => errors.push(format!("ip netns del {}: {err}", self.name)),
            }
        }
        if self.created_etc {
            if let Err(err) = std::fs::remove_dir_all(self.etc_dir()) {
                errors.push(format!("remove {}: {err}", self.etc_dir().display()));
            }
        }
        for err in errors {
            loud(&format!("flat6 test cleanup: {err}"));
        }
    }
}

fn collect_argv<I, S>(argv: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    argv.into_iter().map(|a| a.as_ref().to_owned()).collect()
}

/// A command line for messages, with arguments that contain spaces quoted.
fn show_argv(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run a command in the host's namespace (only `ip netns ...` and `ip -n ...`: commands that act
/// on test namespaces) and return its stdout; panic with the details on failure.
fn host_run<S: AsRef<OsStr>>(argv: &[S]) -> String {
    let argv = collect_argv(argv);
    let shown = show_argv(&argv);
    let Some((program, args)) = argv.split_first() else {
        panic!("empty command");
    };
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run `{shown}`: {err}"));
    check_output(&shown, out)
}

/// stdout of a finished command, or a panic showing everything about its failure.
fn check_output(what: &str, out: Output) -> String {
    if !out.status.success() {
        panic!(
            "command failed: {what}\nexit status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn parse_json(text: &str, what: &str) -> Value {
    if text.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(text)
        .unwrap_or_else(|err| panic!("output of `{what}` is not JSON ({err}):\n{text}"))
}

fn check_net_sysctl(key: &str) {
    assert!(
        key.starts_with("net.") || key.starts_with("net/"),
        "sysctl {key:?} is not a net.* key: only those are per namespace, others would change the host"
    );
}

/// The `addr_info` entries of `ip -j addr show` output.
pub(crate) fn parse_addresses(json: &Value) -> Vec<Addr> {
    let mut addrs = Vec::new();
    for link in json.as_array().into_iter().flatten() {
        let infos = link.get("addr_info").and_then(Value::as_array);
        for info in infos.into_iter().flatten() {
            let Some(map) = info.as_object() else {
                continue;
            };
            let (Some(addr), Some(prefixlen)) = (
                map.get("local").and_then(Value::as_str),
                map.get("prefixlen").and_then(Value::as_u64),
            ) else {
                continue;
            };
            let flags = map
                .iter()
                .filter(|(_, v)| v.as_bool() == Some(true))
                .map(|(k, _)| k.clone())
                .collect();
            addrs.push(Addr {
                addr: addr.to_owned(),
                prefixlen: u8::try_from(prefixlen).unwrap_or(u8::MAX),
                flags,
                scope: map
                    .get("scope")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    addrs
}

const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// The body of [`Netns::ping6`], run on a thread inside the namespace.
fn ping6_here(target: &str, timeout: Duration) -> Result<Duration, String> {
    let (addr, scope) = match target.split_once('%') {
        Some((addr, ifname)) => (addr, Some(ifname)),
        None => (target, None),
    };
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|err| format!("{target:?} is not an IPv6 address: {err}"))?;
    let scope_id = match scope {
        None => 0,
        Some(ifname) => {
            let c = CString::new(ifname).map_err(|err| format!("bad interface name: {err}"))?;
            // SAFETY: a valid NUL-terminated string.
            let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
            if index == 0 {
                return Err(format!("no interface {ifname}"));
            }
            index
        }
    };
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    };
    if raw < 0 {
        return Err(format!(
            "raw ICMPv6 socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: the option value points to a timeval of the size given.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    to.sin6_addr.s6_addr = addr.octets();
    to.sin6_scope_id = scope_id;
    let ident = (std::process::id() as u16) ^ (super::next_counter() as u16);

    let start = Instant::now();
    let deadline = start + timeout;
    let mut seq: u16 = 0;
    let mut next_send = start;
    let mut last_error = String::from("no reply");
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if Instant::now() >= next_send {
            seq = seq.wrapping_add(1);
            // The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets (RFC 3542 §3.1).
            let mut packet = vec![ICMPV6_ECHO_REQUEST, 0, 0, 0];
            packet.extend_from_slice(&ident.to_be_bytes());
            packet.extend_from_slice(&seq.to_be_bytes());
            packet.extend_from_slice(b"flat6 fixture ping");
            // SAFETY: buffer and address are valid for the lengths given.
            let sent = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&to as *const libc::sockaddr_in6).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                last_error = format!("send: {}", std::io::Error::last_os_error());
            }
            next_send = Instant::now() + Duration::from_millis(500);
        }
        // SAFETY: sockaddr_in6 is plain data.
        let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        // SAFETY: buffer and address are valid for the lengths given.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_in6).cast(),
                &mut from_len,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            continue; // timeout (EAGAIN) or EINTR: check the deadline and maybe resend
        };
        // A raw ICMPv6 socket receives every ICMPv6 message (ND too) without the IPv6 header.
        if n >= 8
            && buf[0] == ICMPV6_ECHO_REPLY
            && buf[4..6] == ident.to_be_bytes()
            && u16::from_be_bytes([buf[6], buf[7]]) <= seq
            && from.sin6_addr.s6_addr == addr.octets()
        {
            return Ok(start.elapsed());
        }
    }
    Err(format!("{last_error} within {timeout:?}"))
}
