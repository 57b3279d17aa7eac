//! The command line (SPEC "Fixed interface") and what each subcommand does.

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent::admin::AdminAddr;
use agent::config::{AdminListen, Config, LogFormat};
use agent::snapshot::StatusSnapshot;
use wg_core::PrivateKey;

/// Exit code for a runtime failure.
const EXIT_RUNTIME: u8 = 1;
/// Exit code for a bad configuration or bad usage (clap uses 2 as well).
const EXIT_CONFIG: u8 = 2;
/// How long `status` waits for the admin endpoint.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Publish a local app to WireGuard gateways from userspace: no root, no TUN, no open port.
#[derive(Debug, clap::Parser)]
#[command(name = "wg-agent", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        /// The config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate a config file (no network access): exit 0 if valid, 2 if not.
    Check {
        /// The config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print a new base64 private key, like `wg genkey`.
    Genkey,
    /// Read a private key on stdin and print its public key, like `wg pubkey`.
    Pubkey,
    /// Show gateways, handshakes, traffic and routes of a running agent.
    Status {
        /// The admin endpoint: 127.0.0.1:5182 (the default), [::1]:5182 or unix:/path.
        #[arg(long, value_name = "ADDR", conflicts_with = "config")]
        admin: Option<AdminAddr>,
        /// Find the admin endpoint in this config file's [admin] section.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the status document as JSON.
        #[arg(long, conflicts_with = "check")]
        json: bool,
        /// Only ask whether the agent is ready (at least one gateway up): exit 0 if so, 1 if
        /// not or if the agent cannot be reached. For exec probes and scripts.
        #[arg(long)]
        check: bool,
    },
    /// Run a gateway, a sample app and the agent on loopback, and report what happened.
    Demo {
        #[command(flatten)]
        log: LogArgs,
    },
}

#[derive(Debug, clap::Args)]
struct LogArgs {
    /// Log format (overrides [log] format).
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Log level or tracing filter, e.g. info or info,wg_core=debug (overrides [log] level).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

/// Runs the parsed command and returns the process exit code.
pub(crate) fn execute(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run { config, log } => run(&config, &log),
        Command::Check { config } => check(&config),
        Command::Genkey => {
            warn_if_stdout_is_readable_file();
            let key = PrivateKey::generate().to_base64_secret();
            emit(&zeroize::Zeroizing::new(format!("{}\n", key.as_str())))
        }
        Command::Pubkey => pubkey(),
        Command::Status {
            admin,
            config,
            json,
            check,
        } => status(admin, config.as_deref(), json, check),
        Command::Demo { log } => demo(&log),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("wg-agent: {message}");
    ExitCode::from(code)
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("wg-agent: warning: {warning}");
            }
            let remote = if config.admin.is_remote() {
                " (remote clients: /healthz, /readyz, /metrics)"
            } else {
                ""
            };
            eprintln!(
                "{}: ok ({}, {}, admin {}{remote})",
                path.display(),
                count(config.gateways.len(), "gateway"),
                count(config.routes.len(), "route"),
                config.admin
            );
            ExitCode::SUCCESS
        }
        Err(error) => fail(EXIT_CONFIG, error),
    }
}

/// Writes a result to stdout; a closed stdout is a runtime failure, not a panic.
fn emit(text: &str) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(EXIT_RUNTIME, format!("cannot write to stdout: {error}")),
    }
}

/// `wg genkey`'s habit: warn when the key is about to land in a file others can read.
fn warn_if_stdout_is_readable_file() {
    use std::os::unix::fs::PermissionsExt as _;
    // /proc/self/fd/1 resolves to the file behind stdout (Linux); elsewhere this is skipped.
    if let Ok(meta) = std::fs::metadata("/proc/self/fd/1")
        && meta.is_file()
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "wg-agent: warning: writing a private key to a file readable by group or others; \
             `wg-agent check` refuses such a key file: run `chmod 600` on it (or `umask 077` first)"
        );
    }
}

fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn pubkey() -> ExitCode {
    // A key is 44 characters; read a little more to tell "too long" from "just right".
    let mut input = zeroize::Zeroizing::new(Vec::with_capacity(128));
    if let Err(error) = std::io::stdin().lock().take(4096).read_to_end(&mut input) {
        return fail(EXIT_RUNTIME, format!("pubkey: cannot read stdin: {error}"));
    }
    let Ok(text) = std::str::from_utf8(&input) else {
        return fail(EXIT_CONFIG, "pubkey: stdin is not a base64 private key");
    };
    match PrivateKey::from_base64(text) {
        Ok(key) => emit(&format!("{}\n", key.public_key())),
        Err(reason) => fail(
            EXIT_CONFIG,
            format!("pubkey: stdin is not a base64 private key: {reason}"),
        ),
    }
}

fn install_tracing(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("log level `{level}` is not a level or tracing filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        _ => builder.init(),
    }
    Ok(())
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(EXIT_RUNTIME, format!("cannot start the async runtime: {e}")))
}

fn run(path: &Path, log: &LogArgs) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => return fail(EXIT_CONFIG, error),
    };
    let format = log.log_format.unwrap_or(config.log.format);
    let level = log
        .log_level
        .clone()
        .unwrap_or_else(|| config.log.level.clone());
    if let Err(message) = install_tracing(format, &level) {
        return fail(EXIT_CONFIG, message);
    }
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(agent::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if tracing::enabled!(tracing::Level::ERROR) {
                tracing::error!("{error:#}");
                ExitCode::from(EXIT_RUNTIME)
            } else {
                fail(EXIT_RUNTIME, format!("{error:#}"))
            }
        }
    }
}

fn demo(log: &LogArgs) -> ExitCode {
    let level = log.log_level.as_deref().unwrap_or("warn");
    if let Err(message) = install_tracing(log.log_format.unwrap_or_default(), level) {
        return fail(EXIT_CONFIG, message);
    }
    let runtime = match tokio_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match runtime.block_on(agent::demo()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(EXIT_RUNTIME, format!("demo: {error:#}")),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
    }
}

fn status(admin: Option<AdminAddr>, config: Option<&Path>, json: bool, check: bool) -> ExitCode {
    let addr = match (admin, config) {
        (Some(addr), _) => addr,
        (None, Some(path)) => match Config::load_admin_listen(path) {
            Ok(listen) => match AdminAddr::from_listen(&listen) {
                Some(addr) => addr.for_local_client(),
                None => {
                    return fail(
                        EXIT_RUNTIME,
                        format!(
                            "{}: the admin endpoint is off ([admin] listen = \"off\"); nothing to ask",
                            path.display()
                        ),
                    );
                }
            },
            Err(error) => return fail(EXIT_CONFIG, error),
        },
        (None, None) => match AdminAddr::from_listen(&AdminListen::DEFAULT) {
            Some(addr) => addr,
            None => return fail(EXIT_RUNTIME, "no default admin address"),
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_RUNTIME, format!("cannot start the async runtime: {e}")),
    };
    if check {
        return match runtime.block_on(agent::status::fetch_readiness(&addr, STATUS_TIMEOUT)) {
            Ok((true, reason)) => emit(&format!("{reason}\n")),
            Ok((false, reason)) => fail(EXIT_RUNTIME, reason),
            Err(error) => fail(EXIT_RUNTIME, error),
        };
    }
    let body = match runtime.block_on(agent::status::fetch_status(&addr, STATUS_TIMEOUT)) {
        Ok(body) => body,
        Err(error) => return fail(EXIT_RUNTIME, error),
    };
    if json {
        let newline = if body.ends_with('\n') { "" } else { "\n" };
        return emit(&format!("{body}{newline}"));
    }
    let snapshot: StatusSnapshot = match serde_json::from_str(&body) {
        Ok(s) => s,
        Err(error) => {
            return fail(
                EXIT_RUNTIME,
                format!("admin endpoint at {addr}: /status is not a status document: {error}"),
            );
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    emit(&agent::status::render_table(&snapshot, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
