//! Running system commands (`ip`, `wg`, `kill`) with their output checked, and scratch folders.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// Runs `program args...` to completion and returns its stdout; fails with the command line,
/// the exit status and stderr when it does not exit 0.
pub fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(program);
    command.args(args);
    run_command(&mut command)
}

/// Runs a prepared command to completion (stdin closed) and returns its stdout.
pub fn run_command(command: &mut Command) -> Result<String> {
    let line = describe(command);
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    stdout_of(&line, out)
}

/// Runs a prepared command with `input` on its stdin and returns its stdout.
pub fn run_with_input(command: &mut Command, input: &str) -> Result<String> {
    use std::io::Write;
    let line = describe(command);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{line}`"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing stdin of `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    stdout_of(&line, out)
}

/// The stdout of a finished command, or an error with its command line, exit status and
/// stderr when it did not exit 0.
fn stdout_of(line: &str, out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line of `command`, for error messages.
pub(crate) fn describe(command: &Command) -> String {
    let mut line = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Whether `program` is an executable file in one of `PATH`'s folders.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(program))
            .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Sends `signal` (a name such as `TERM`, `SIGKILL` or `HUP`) to `pid`; errors (the process is
/// already gone, an unknown name) are ignored.
pub(crate) fn signal(pid: u32, signal: &str) {
    send(pid, signal, false);
}

/// Sends `signal` to the process group `pid` leads (a [`Daemon`](crate::Daemon) started with
/// `setsid` leads its own): the process and every child it started.
pub(crate) fn signal_group(pid: u32, signal: &str) {
    send(pid, signal, true);
}

fn send(pid: u32, signal: &str, group: bool) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let name = if signal.starts_with("SIG") {
        signal.to_owned()
    } else {
        format!("SIG{signal}")
    };
    let (Ok(sig), Ok(pid)) = (name.parse::<Signal>(), i32::try_from(pid)) else {
        return;
    };
    let pid = Pid::from_raw(pid);
    // The process itself first: right after spawning, `setsid` may not have made the group yet.
    let _ = kill(pid, sig);
    if group {
        let _ = killpg(pid, sig);
    }
}

/// Whether a process with this pid exists and is not a zombie (a zombie has exited; only its
/// parent's `wait` is missing, and PID 1 of a container may never reap it).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A private scratch folder under the system temp folder, removed with its content on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/wg-testbed-<label>-<pid>-<n>` with mode 0700.
    pub fn new(label: &str) -> Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("wg-testbed-{label}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Writes `content` to `path` with mode 0600 (key files).
pub fn write_private_file(path: &Path, content: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A command that runs the test `name` of the current test binary alone, ignored or not, with
/// its output shown (libtest's `--exact NAME --ignored --nocapture --test-threads=1`): for a
/// test that must run a part of itself in a process it can kill or give another environment.
pub fn child_test_command(name: &str) -> Result<Command> {
    let exe = std::env::current_exe().context("cannot find the test binary")?;
    let mut command = Command::new(exe);
    command.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    Ok(command)
}
