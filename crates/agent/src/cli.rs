//! The command line (the interface in docs/configuration.md and docs/operations.md) and what
//! each subcommand does.

// The doc comments on the argument types are clap's `--help` text, written for a terminal:
// `[::1]`, `[admin]` and `[log]` there are an address and TOML sections, not doc links.
#![allow(rustdoc::broken_intra_doc_links)]

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agent::admin::AdminAddr;
use agent::config::{AdminListen, Config, Endpoint, LogFormat};
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
    /// Send ICMP echoes through the running agent's tunnel, like `ping`: one line per echo,
    /// then a summary. It asks the agent's admin endpoint (local clients only), so the echoes
    /// use the agent's own sessions. Exit 0 when any reply came, 1 when none did, 2 for an
    /// unknown gateway id.
    Ping {
        /// The admin endpoint: 127.0.0.1:5182 (the default), [::1]:5182 or unix:/path.
        #[arg(long, value_name = "ADDR", conflicts_with = "config")]
        admin: Option<AdminAddr>,
        /// Find the admin endpoint in this config file's [admin] section.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Stop after COUNT echoes (one a second).
        #[arg(
            short = 'c',
            long = "count",
            value_name = "COUNT",
            default_value_t = 4,
            value_parser = clap::value_parser!(u32).range(1..=10_000)
        )]
        count: u32,
        /// Seconds to wait for each reply.
        #[arg(
            short = 'W',
            long = "timeout",
            value_name = "SECONDS",
            default_value_t = 2,
            value_parser = clap::value_parser!(u64).range(1..=10)
        )]
        timeout: u64,
        /// A gateway id (its virtual IP is pinged) or an IP address inside the tunnel.
        #[arg(value_name = "GATEWAY_ID|TUNNEL_IP")]
        target: String,
    },
    /// Run a gateway, a sample app and the agent on loopback, and report what happened.
    Demo {
        #[command(flatten)]
        log: LogArgs,
    },
    /// Convert a wg-quick file (wg0.conf) to an agent config: TOML on stdout, notes (ignored
    /// fields, guesses to check) on stderr.
    Import {
        /// The wg-quick file.
        #[arg(value_name = "WG_QUICK_FILE")]
        file: PathBuf,
        /// Add an HTTP route from a port on the virtual IP to a local upstream; repeatable.
        #[arg(long = "route", value_name = "PORT=HOST:PORT", value_parser = parse_route)]
        routes: Vec<(u16, Endpoint)>,
        /// Write the private key to this new file (mode 0600) and name it in the config,
        /// instead of writing the key inline.
        #[arg(long, value_name = "PATH")]
        key_file: Option<PathBuf>,
    },
    /// Print a shell completion script on stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print the manual page (roff) on stdout, e.g. `wg-agent man | man -l -`.
    Man,
}

/// Shells `completions` writes for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// `--route 80=127.0.0.1:8080`.
fn parse_route(text: &str) -> Result<(u16, Endpoint), String> {
    let (port, upstream) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not PORT=HOST:PORT (like 80=127.0.0.1:8080)"))?;
    let port = match port.trim().parse::<u16>() {
        Ok(0) | Err(_) => return Err(format!("`{port}` is not a port 1-65535")),
        Ok(p) => p,
    };
    Ok((port, upstream.trim().parse()?))
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
            warn_if_stdout_is_readable_file(
                "a private key",
                "`wg-agent check` refuses such a key file",
            );
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
        Command::Ping {
            admin,
            config,
            count,
            timeout,
            target,
        } => ping(admin, config.as_deref(), count, timeout, &target),
        Command::Demo { log } => demo(&log),
        Command::Import {
            file,
            routes,
            key_file,
        } => import(&file, routes, key_file),
        Command::Completions { shell } => completions(shell),
        Command::Man => man(),
    }
}

/// Loads the config; on failure, the exit to take (with the message printed), pointing at
/// `wg-agent import` when the file is a wg-quick file.
fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|error| {
        let wg_quick = std::fs::read_to_string(path)
            .is_ok_and(|text| agent::wg_quick::looks_like_wg_quick(&text));
        if wg_quick {
            fail(
                EXIT_CONFIG,
                format!(
                    "{path}: this is a wg-quick file: run wg-agent import {path} > agent.toml to convert it",
                    path = path.display()
                ),
            )
        } else {
            fail(EXIT_CONFIG, error)
        }
    })
}

fn import(file: &Path, routes: Vec<(u16, Endpoint)>, key_file: Option<PathBuf>) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => zeroize::Zeroizing::new(text),
        Err(error) => {
            return fail(
                EXIT_CONFIG,
                format!("{}: cannot read: {error}", file.display()),
            );
        }
    };
    // The config is read from wherever it is saved: name the key file by an absolute path.
    let key_file = match key_file.map(std::path::absolute).transpose() {
        Ok(path) => path,
        Err(error) => return fail(EXIT_RUNTIME, format!("--key-file: {error}")),
    };
    let mut options = agent::wg_quick::ImportOptions::default();
    options.routes = routes;
    options.key_file = key_file.clone();
    let imported = match agent::wg_quick::import(&text, &options) {
        Ok(imported) => imported,
        Err(error) => return fail(EXIT_CONFIG, format!("{}: {error}", file.display())),
    };
    if let Some(path) = &key_file {
        if let Err(error) = write_key_file(path, &imported.private_key) {
            return fail(
                EXIT_RUNTIME,
                format!("--key-file {}: {error}", path.display()),
            );
        }
        eprintln!(
            "wg-agent: private key written to {} (mode 600)",
            path.display()
        );
    }
    if imported.has_inline_secret {
        warn_if_stdout_is_readable_file(
            "a config holding a secret key (private or preshared)",
            "keep it where only its owner can read it",
        );
    }
    for note in &imported.notes {
        eprintln!("wg-agent: note: {note}");
    }
    // The result must pass `check`; say so now rather than at the first start.
    let code = match Config::from_toml(&imported.toml, Path::new("imported.toml")) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => fail(
            EXIT_CONFIG,
            format!("the imported config does not pass check, edit it: {error}"),
        ),
    };
    match emit(&imported.toml) {
        c if c == ExitCode::SUCCESS => code,
        c => c,
    }
}

/// Creates `path` with mode 0600 and the key; an existing file is left alone.
fn write_key_file(path: &Path, key: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::new(e.kind(), "exists; remove it or choose another path")
            } else {
                e
            }
        })?;
    file.write_all(format!("{key}\n").as_bytes())?;
    file.sync_all()
}

fn completions(shell: CompletionShell) -> ExitCode {
    use clap::CommandFactory as _;
    let shell = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "wg-agent", &mut out);
    emit(&String::from_utf8_lossy(&out))
}

fn man() -> ExitCode {
    use clap::CommandFactory as _;
    match crate::man::render(&Cli::command()) {
        Ok(page) => emit(&page),
        Err(error) => fail(EXIT_RUNTIME, format!("man: {error}")),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("wg-agent: {message}");
    ExitCode::from(code)
}

fn check(path: &Path) -> ExitCode {
    match load_config(path) {
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
        Err(code) => code,
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

/// `wg genkey`'s habit: warn when `what` is about to land in a file others can read, and why
/// that matters (`why`).
fn warn_if_stdout_is_readable_file(what: &str, why: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    // /proc/self/fd/1 resolves to the file behind stdout (Linux); elsewhere this is skipped.
    if let Ok(meta) = std::fs::metadata("/proc/self/fd/1")
        && meta.is_file()
        && meta.permissions().mode() & 0o026 != 0
    {
        eprintln!(
            "wg-agent: warning: writing {what} to a file readable by others or writable by \
             group or others; {why}: run `chmod 600` on it (or `umask 077` first)"
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

/// Installs the subscriber; returns what changes its level later.
fn install_tracing(
    format: LogFormat,
    level: &str,
) -> Result<(agent::LogLevelControl, agent::logging::LogGuard), String> {
    let filter = agent::logging::filter(level).map_err(|e| format!("log level {e}"))?;
    // A slow stderr (a full pipe, a stalled journal) must not stall the tasks that log:
    // lines go through a bounded queue; overflow is dropped and counted.
    let (writer, guard) =
        agent::logging::non_blocking(std::io::stderr(), agent::logging::QUEUE_LINES);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal());
    fn control<L, S>(handle: tracing_subscriber::reload::Handle<L, S>) -> agent::LogLevelControl
    where
        L: From<tracing_subscriber::EnvFilter> + Send + Sync + 'static,
        S: Send + Sync + 'static,
    {
        std::sync::Arc::new(move |level: &str| {
            let filter = agent::logging::filter(level)?;
            handle
                .reload(L::from(filter))
                .map_err(|e| format!("cannot change the log level: {e}"))
        })
    }
    let control = match format {
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            control(handle)
        }
        _ => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            control(handle)
        }
    };
    Ok((control, guard))
}

/// The environment variable that sets the agent's worker threads (tokio's own name).
const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// Who runs on the runtime: the agent alone, or the demo's gateway, app and client with it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    Agent,
    Demo,
}

/// Worker threads for `workload` on a machine where the process may use `cpus` CPUs, unless
/// [`WORKER_THREADS_ENV`] (`env`) says otherwise.
///
/// The agent takes one fewer than the CPUs, at least one. Its traffic ends in kernel
/// sockets (UDP to the gateways, TCP to the local app) whose work, and the app's, needs a
/// CPU too; and a packet crossing from one worker to another costs a wake-up. Measured on
/// 2 vCPUs (docs/PERFORMANCE.md, "One worker on two CPUs"): one worker used 11 % less CPU
/// per GB than two, moved the download faster and kept peak RSS 20 MiB lower. The demo runs
/// both ends of the tunnel in one process, so it takes every CPU.
fn worker_threads(
    workload: Workload,
    cpus: usize,
    env: Option<std::ffi::OsString>,
) -> Result<usize, String> {
    match env {
        Some(value) => value
            .to_str()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                format!(
                    "{WORKER_THREADS_ENV}={}: not a positive whole number of threads; \
                     unset it for the default ({} on this machine)",
                    value.to_string_lossy(),
                    worker_threads(workload, cpus, None).unwrap_or(1)
                )
            }),
        None => Ok(match workload {
            Workload::Agent => cpus.saturating_sub(1).max(1),
            Workload::Demo => cpus.max(1),
        }),
    }
}

fn tokio_runtime(workload: Workload) -> Result<tokio::runtime::Runtime, ExitCode> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let workers = worker_threads(workload, cpus, std::env::var_os(WORKER_THREADS_ENV))
        .map_err(|message| fail(EXIT_CONFIG, message))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| fail(EXIT_RUNTIME, format!("cannot start the async runtime: {e}")))
}

fn run(path: &Path, log: &LogArgs) -> ExitCode {
    // No core dump may hold the key: before the config (and the key) is read.
    if let Err(error) = agent::disable_core_dumps() {
        return fail(EXIT_RUNTIME, format!("cannot disable core dumps: {error}"));
    }
    // SIGHUP (reload) must never kill the agent: take it over before anything else.
    let runtime = match tokio_runtime(Workload::Agent) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let hangup = {
        let _enter = runtime.enter();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => signal,
            Err(error) => {
                return fail(
                    EXIT_RUNTIME,
                    format!("cannot install the SIGHUP handler: {error}"),
                );
            }
        }
    };
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let format = log.log_format.unwrap_or(config.log.format);
    let level = log
        .log_level
        .clone()
        .unwrap_or_else(|| config.log.level.clone());
    // `_log` flushes the queued lines when `run` returns.
    let (set_level, _log) = match install_tracing(format, &level) {
        Ok(installed) => installed,
        Err(message) => return fail(EXIT_CONFIG, message),
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let mut options = agent::RunOptions::default();
    // A level given on the command line wins over [log] level, reloads included.
    options.log_level = log.log_level.is_none().then_some(set_level);
    options.hangup = Some(hangup);
    match runtime.block_on(agent::run_with(config, shutdown_signal(), options)) {
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
    let _log = match install_tracing(log.log_format.unwrap_or_default(), level) {
        Ok((_, guard)) => guard,
        Err(message) => return fail(EXIT_CONFIG, message),
    };
    let runtime = match tokio_runtime(Workload::Demo) {
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

/// The admin endpoint to ask: `--admin`, else `--config`'s `[admin] listen` (reached as a
/// local client), else the default. On failure, the exit to take (message printed).
/// What a client of the running agent's admin endpoint needs (`status`, `ping`): its address
/// and a runtime to talk to it on.
fn admin_client(
    admin: Option<AdminAddr>,
    config: Option<&Path>,
) -> Result<(AdminAddr, tokio::runtime::Runtime), ExitCode> {
    let addr = admin_addr(admin, config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(EXIT_RUNTIME, format!("cannot start the async runtime: {e}")))?;
    Ok((addr, runtime))
}

fn admin_addr(admin: Option<AdminAddr>, config: Option<&Path>) -> Result<AdminAddr, ExitCode> {
    match (admin, config) {
        (Some(addr), _) => Ok(addr),
        (None, Some(path)) => match Config::load_admin_listen(path) {
            Ok(listen) => match AdminAddr::from_listen(&listen) {
                Some(addr) => Ok(addr.for_local_client()),
                None => Err(fail(
                    EXIT_RUNTIME,
                    format!(
                        "{}: the admin endpoint is off ([admin] listen = \"off\"); nothing to ask",
                        path.display()
                    ),
                )),
            },
            Err(error) => Err(fail(EXIT_CONFIG, error)),
        },
        (None, None) => AdminAddr::from_listen(&AdminListen::DEFAULT)
            .ok_or_else(|| fail(EXIT_RUNTIME, "no default admin address")),
    }
}

/// `wg-agent ping`: `count` echoes a second apart through the running agent, a line each,
/// then the summary; Ctrl-C stops early and still prints it.
fn ping(
    admin: Option<AdminAddr>,
    config: Option<&Path>,
    count: u32,
    timeout: u64,
    target: &str,
) -> ExitCode {
    use agent::ping::{PingOutcome, PingRequest, PingSummary, millis, ping_once};
    /// Time the admin exchange gets beyond the echo's own timeout.
    const SLACK: Duration = Duration::from_secs(5);
    const INTERVAL: Duration = Duration::from_secs(1);
    let (addr, runtime) = match admin_client(admin, config) {
        Ok(client) => client,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let request = PingRequest::new(target, Duration::from_secs(timeout));
        let mut summary = PingSummary::default();
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        let mut header = false;
        for seq in 1..=count {
            let started = tokio::time::Instant::now();
            let outcome = tokio::select! {
                outcome = ping_once(&addr, &request, SLACK) => outcome,
                _ = &mut interrupted => break,
            };
            let line = match outcome {
                Err(error) if summary.transmitted == 0 => return fail(EXIT_RUNTIME, error),
                Err(error) => {
                    summary.add(None);
                    format!("no answer from the agent: icmp_seq={seq} ({error})")
                }
                Ok(PingOutcome::Refused(status, message)) => {
                    let code = if status == hyper::StatusCode::NOT_FOUND {
                        EXIT_CONFIG
                    } else {
                        EXIT_RUNTIME
                    };
                    return fail(code, format!("ping {target}: {message}"));
                }
                Ok(PingOutcome::Sent(reply)) => {
                    let mut line = String::new();
                    if !header {
                        header = true;
                        line = format!(
                            "PING {target} ({}) through gateway {}, from the agent at {addr}\n",
                            reply.ip, reply.gateway
                        );
                    }
                    summary.add(reply.rtt());
                    match reply.rtt() {
                        Some(rtt) => line.push_str(&format!(
                            "reply from {}: icmp_seq={seq} time={} ms",
                            reply.ip,
                            millis(rtt)
                        )),
                        None => line.push_str(&format!(
                            "no reply from {}: icmp_seq={seq} ({})",
                            reply.ip,
                            reply.error.as_deref().unwrap_or("timed out")
                        )),
                    }
                    line
                }
            };
            if emit(&format!("{line}\n")) != ExitCode::SUCCESS {
                return ExitCode::from(EXIT_RUNTIME);
            }
            if seq < count {
                tokio::select! {
                    () = tokio::time::sleep_until(started + INTERVAL) => {}
                    _ = &mut interrupted => break,
                }
            }
        }
        let code = emit(&format!("\n{}", summary.render(target)));
        if code != ExitCode::SUCCESS {
            return code;
        }
        if summary.received > 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_RUNTIME)
        }
    })
}

fn status(admin: Option<AdminAddr>, config: Option<&Path>, json: bool, check: bool) -> ExitCode {
    let (addr, runtime) = match admin_client(admin, config) {
        Ok(client) => client,
        Err(code) => return code,
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

    #[test]
    fn the_agent_leaves_one_cpu_and_the_demo_takes_them_all() {
        for (cpus, agent, demo) in [(1, 1, 1), (2, 1, 2), (4, 3, 4), (64, 63, 64)] {
            assert_eq!(
                worker_threads(Workload::Agent, cpus, None),
                Ok(agent),
                "{cpus}"
            );
            assert_eq!(
                worker_threads(Workload::Demo, cpus, None),
                Ok(demo),
                "{cpus}"
            );
        }
    }

    #[test]
    fn the_environment_sets_the_workers_and_a_bad_value_is_named() {
        let env = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(worker_threads(Workload::Agent, 2, env("2")), Ok(2));
        assert_eq!(worker_threads(Workload::Demo, 8, env(" 1 ")), Ok(1));
        for bad in ["0", "-1", "two", ""] {
            let error = worker_threads(Workload::Agent, 4, env(bad)).unwrap_err();
            assert!(
                error.starts_with(&format!("TOKIO_WORKER_THREADS={bad}: not a positive"))
                    && error.ends_with("(3 on this machine)"),
                "{error}"
            );
        }
    }
}
