//! Long-running processes inside a namespace, and the per-test directory that holds their logs.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::{Deadline, POLL_INTERVAL, loud};

/// How long a process gets between SIGTERM and SIGKILL when it is cleaned up.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// A per-test temporary directory for logs and files a test writes (configs, lease files).
///
/// Shared by every namespace and process of one test thread; removed when the last user drops,
/// unless that happens while the test is panicking: then it is kept and its path printed.
pub(crate) struct LogDir {
    path: PathBuf,
}

thread_local! {
    static CURRENT: RefCell<Weak<LogDir>> = const { RefCell::new(Weak::new()) };
}

impl LogDir {
    /// The directory of the test running on this thread, created on first use.
    pub(crate) fn current() -> Arc<LogDir> {
        CURRENT.with(|current| {
            if let Some(dir) = current.borrow().upgrade() {
                return dir;
            }
            let dir = Arc::new(LogDir::create());
            *current.borrow_mut() = Arc::downgrade(&dir);
            dir
        })
    }

    fn create() -> LogDir {
        // The harness names each test's thread after the test.
        let test = std::thread::current()
            .name()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>();
        let path = tempfile::Builder::new()
            .prefix(&format!("flat6-{test}-"))
            .tempdir()
            .unwrap_or_else(|err| panic!("cannot create a temporary log directory: {err}"))
            .keep();
        LogDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            loud(&format!(
                "flat6 test: logs of the failed test kept in {}",
                self.path.display()
            ));
        } else if let Err(err) = std::fs::remove_dir_all(&self.path) {
            loud(&format!(
                "flat6 test cleanup: cannot remove {}: {err}",
                self.path.display()
            ));
        }
    }
}

/// The part of a [`Proc`] its [`super::Netns`] also holds, so the namespace can stop processes the
/// test forgot (or could not reach because it panicked).
pub(crate) struct ProcShared {
    child: Mutex<Child>,
    pid: u32,
    command: String,
    log: PathBuf,
}

impl ProcShared {
    pub(crate) fn new(child: Child, command: String, log: PathBuf) -> ProcShared {
        ProcShared {
            pid: child.id(),
            child: Mutex::new(child),
            command,
            log,
        }
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        // A panic while holding the lock leaves the Child itself intact.
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The exit status if the process has ended (and reaps it), `None` while it runs.
    fn try_status(child: &mut Child) -> Option<ExitStatus> {
        // An error here means the child was already reaped; treat it as gone.
        match child.try_wait() {
            Ok(status) => status,
            Err(_) => Some(ExitStatus::default()),
        }
    }

    fn is_running(&self) -> bool {
        Self::try_status(&mut self.child()).is_none()
    }

    fn signal(&self, sig: i32) -> bool {
        let mut child = self.child();
        // Only signal a child we have not reaped: its pid cannot have been reused.
        if Self::try_status(&mut child).is_some() {
            return false;
        }
        // SAFETY: kill has no memory-safety preconditions; the pid is our own unreaped child.
        unsafe { libc::kill(self.pid as libc::pid_t, sig) == 0 }
    }

    fn wait_exit(&self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = Self::try_status(&mut self.child()) {
                return Some(status);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// SIGTERM, up to [`TERM_GRACE`] to exit, then SIGKILL; always reaps. Returns the exit status.
    pub(crate) fn terminate(&self) -> ExitStatus {
        if let Some(status) = Self::try_status(&mut self.child()) {
            return status;
        }
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_exit(Instant::now() + TERM_GRACE) {
            return status;
        }
        loud(&format!(
            "flat6 test cleanup: pid {} ({}) ignored SIGTERM for {TERM_GRACE:?}; sending SIGKILL",
            self.pid, self.command
        ));
        let mut child = self.child();
        // Child::kill sends SIGKILL only if the child has not been reaped.
        if let Err(err) = child.kill() {
            loud(&format!(
                "flat6 test cleanup: SIGKILL pid {}: {err}",
                self.pid
            ));
        }
        child.wait().unwrap_or_default()
    }
}

/// A long-running process started by [`super::Netns::spawn`]; stdout and stderr go to a log file.
///
/// Dropping it stops the process (SIGTERM, then SIGKILL) and reaps it. Note that only this pid is
/// signalled: a shell's own children are stopped when the namespace is deleted instead.
pub struct Proc {
    shared: Arc<ProcShared>,
    _logs: Arc<LogDir>,
}

impl Proc {
    pub(crate) fn new(shared: Arc<ProcShared>, logs: Arc<LogDir>) -> Proc {
        Proc {
            shared,
            _logs: logs,
        }
    }

    /// The process id (of the command itself: `ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.shared.command
    }

    /// Path of the log file that receives stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.shared.log
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        match std::fs::read(&self.shared.log) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(err) => format!("<cannot read {}: {err}>", self.shared.log.display()),
        }
    }

    /// Send a signal (`libc::SIGHUP`, ...). Returns false if the process had already exited.
    pub fn signal(&self, sig: i32) -> bool {
        self.shared.signal(sig)
    }

    /// Wait until `deadline` (an `Instant`, or a `Duration` from now) for the process to exit;
    /// `None` if it is still running then.
    pub fn wait_exit(&self, deadline: impl Deadline) -> Option<ExitStatus> {
        self.shared.wait_exit(deadline.deadline())
    }

    /// Whether the process is still running (an exited process is reaped by this call).
    pub fn is_running(&self) -> bool {
        self.shared.is_running()
    }

    /// Stop it now: SIGTERM, then SIGKILL after a grace period. Returns its exit status.
    pub fn stop(&self) -> ExitStatus {
        self.shared.terminate()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.shared.terminate();
    }
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("pid", &self.shared.pid)
            .field("command", &self.shared.command)
            .field("log", &self.shared.log)
            .finish()
    }
}
