//! `Daemon`: a detached process started by a test (in a namespace or not), with its output in a
//! log file, stopped on drop.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cmd::{describe, signal_group};

/// A process in its own session (`setsid`), stdin closed, stdout and stderr appended to a log
/// file. Dropping it sends `SIGTERM` to its process group, then `SIGKILL` after 2 s, and reaps
/// it; children it started in its group are killed with it.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    line: String,
}

impl Daemon {
    /// How long [`stop`](Self::stop) waits after `SIGTERM` before `SIGKILL`.
    pub const STOP_GRACE: Duration = Duration::from_secs(2);

    /// Starts `program args...` detached, output appended to `log`.
    pub fn spawn<I, S>(program: &str, args: I, log: &Path) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(program);
        command.args(args);
        Self::spawn_command(command, log)
    }

    /// Starts a prepared command detached (wrapped in `setsid`), output appended to `log`.
    /// The command's environment and working folder are kept.
    pub fn spawn_command(command: Command, log: &Path) -> Result<Self> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open log {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("cannot open log {}", log.display()))?;
        let mut wrapped = Command::new("setsid");
        wrapped
            .arg(command.get_program())
            .args(command.get_args())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        let line = describe(&command);
        // `setsid` execs in place (the spawned child is never a process group leader), so the
        // child's pid is the program's pid.
        let child = wrapped
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        Ok(Self {
            child: Some(child),
            log: log.to_owned(),
            line,
        })
    }

    /// The process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.line
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to exit by itself (`None` at once if it was
    /// already reaped by [`stop`](Self::stop) or [`kill`](Self::kill)).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.as_ref()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`, `KILL`, ...) to the process and the children it
    /// started (its process group), if it still runs.
    pub fn signal(&mut self, name: &str) {
        if self.try_wait().is_none()
            && let Some(pid) = self.pid()
        {
            signal_group(pid, name);
        }
    }

    /// `SIGTERM`, then `SIGKILL` after [`STOP_GRACE`](Self::STOP_GRACE); reaps the process and
    /// returns its status. Idempotent (`None` when already stopped).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.as_ref()?;
        self.signal("TERM");
        let status = self.wait_timeout(Self::STOP_GRACE).or_else(|| self.kill());
        // Children that outlived it (its process group) go too.
        self.kill_group();
        self.child = None;
        status
    }
}

impl Daemon {
    /// `SIGKILL` at once (a crash, as far as the process can tell), reaps it and returns its
    /// status. Idempotent.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // The whole group at once, while the unreaped leader keeps its pid from being reused.
        signal_group(child.id(), "KILL");
        let _ = child.kill();
        child.wait().ok()
    }

    /// `SIGKILL` to what is left of the process group just after the leader was reaped (pids
    /// are allocated in increasing order, so the id is not reused within microseconds).
    fn kill_group(&mut self) {
        if let Some(child) = &self.child {
            signal_group(child.id(), "KILL");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}
