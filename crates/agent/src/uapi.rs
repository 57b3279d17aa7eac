//! WireGuard's cross-platform userspace API (UAPI) on a unix socket, so `wg show NAME` and
//! `wg showconf NAME` work against the running agent.
//!
//! The protocol: a client sends `get=1\n\n` and reads `key=value` lines ending with
//! `errno=N` and a blank line. Keys are lowercase hex. The agent answers `get` with its
//! private key (which `wg showconf` needs; the socket is 0600) but never with preshared
//! keys. `set=1` changes peers (`uapi/set.rs` says what applies) through the same prepare and
//! commit as a reload, all or nothing: a malformed or inapplicable request answers
//! `errno=22` and changes nothing. Such changes are runtime state: `SIGHUP` re-applies the
//! file and says which of them it replaced.
//!
//! The socket is `/var/run/wireguard/NAME.sock`, the only place `wg` looks, when that
//! directory can be used; otherwise it goes in the runtime directory (`$RUNTIME_DIRECTORY`,
//! else `$XDG_RUNTIME_DIR/wireguard`), for a tmpfiles.d link to point at. A link already at
//! `/var/run/wireguard/NAME.sock` (the package's) is left in place and the socket goes to the
//! runtime directory.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::runtime::{Agent, ChangeOrigin};

mod set;

/// The directory `wg` looks in (compiled into wireguard-tools).
pub const WG_SOCKET_DIR: &str = "/var/run/wireguard";
/// Longest request line read; longer ones end the connection.
const MAX_LINE: usize = 4096;
/// Most lines in one request.
const MAX_LINES: usize = 4096;
/// Most clients served at once.
const MAX_CLIENTS: usize = 16;

/// `EINVAL`: a malformed request, or one that cannot apply.
const EINVAL: i32 = 22;

/// The bound UAPI socket; the file is removed when the server stops.
#[derive(Debug)]
pub struct UapiServer {
    listener: UnixListener,
    path: PathBuf,
}

impl UapiServer {
    /// Binds `NAME.sock` in the first usable directory: [`WG_SOCKET_DIR`], then the runtime
    /// directory. A live socket of the same name is an error; a stale one is replaced.
    pub async fn bind(name: &str) -> anyhow::Result<Self> {
        let mut tried = Vec::new();
        let mut link = None;
        for dir in socket_dirs() {
            if std::fs::create_dir_all(&dir).is_err() {
                tried.push(dir.display().to_string());
                continue;
            }
            let path = dir.join(format!("{name}.sock"));
            // A link is the package's tmpfiles.d entry pointing `wg` at the runtime directory:
            // the socket goes there, the link stays.
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
                tried.push(dir.display().to_string());
                link = Some(path);
                continue;
            }
            ensure_not_live(&path).await?;
            match crate::admin::bind_private_socket(&path) {
                Ok(listener) => {
                    if let Some(link) = link {
                        check_link(&link, &path);
                    }
                    return Ok(Self { listener, path });
                }
                Err(error) => {
                    tracing::debug!(path = %path.display(), %error, "UAPI socket: cannot bind here");
                    tried.push(dir.display().to_string());
                }
            }
        }
        anyhow::bail!(
            "cannot create the UAPI socket {name}.sock in any of {}: make {WG_SOCKET_DIR} writable or set RUNTIME_DIRECTORY",
            tried.join(", ")
        )
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves clients until `shutdown` completes, then removes the socket file.
    pub async fn serve(self, agent: Agent, shutdown: impl std::future::Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    // Over the limit: the client is dropped rather than queued without bound.
                    let Ok(permit) = slots.clone().try_acquire_owned() else { continue };
                    let agent = agent.clone();
                    tokio::spawn(async move {
                        if let Err(error) = serve_client(stream, &agent).await {
                            tracing::debug!(%error, "UAPI: connection ended with an error");
                        }
                        drop(permit);
                    });
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn socket_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(WG_SOCKET_DIR)];
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd may list several, separated by colons: the first is ours.
        if let Some(first) = dir.to_string_lossy().split(':').next() {
            dirs.push(PathBuf::from(first));
        }
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        dirs.push(PathBuf::from(dir).join("wireguard"));
    }
    dirs
}

/// Warns when the link `wg` finds does not lead to the socket the agent serves.
fn check_link(link: &Path, socket: &Path) {
    let leads_here = std::fs::canonicalize(link)
        .ok()
        .zip(std::fs::canonicalize(socket).ok())
        .is_some_and(|(a, b)| a == b);
    if !leads_here {
        tracing::warn!(
            link = %link.display(),
            socket = %socket.display(),
            "the UAPI link does not lead to the agent's socket: `wg` will not find the agent; point the link at the socket"
        );
    }
}

async fn ensure_not_live(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!(
            "the UAPI socket path {} exists and is not a socket: remove it or set another [uapi] name",
            path.display()
        );
    }
    if UnixStream::connect(path).await.is_ok() {
        anyhow::bail!(
            "the UAPI socket {} is in use by another process (another wg-agent or a WireGuard interface with this name): set another [uapi] name",
            path.display()
        );
    }
    std::fs::remove_file(path)
        .with_context(|| format!("cannot remove the stale UAPI socket {}", path.display()))
}

async fn serve_client(stream: UnixStream, agent: &Agent) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let Some(command) = read_line(&mut reader).await? else {
            return Ok(());
        };
        let mut lines: Vec<String> = Vec::new();
        while let Some(line) = read_line(&mut reader).await? {
            if line.is_empty() {
                break;
            }
            if lines.len() == MAX_LINES {
                return Ok(());
            }
            lines.push(line);
        }
        let answer = match command.as_str() {
            "get=1" if lines.is_empty() => get(agent),
            "set=1" => zeroize::Zeroizing::new(format!("errno={}\n\n", set(agent, &lines).await)),
            _ => zeroize::Zeroizing::new(format!("errno={EINVAL}\n\n")),
        };
        // A set may carry a key: no copy outlives the request.
        lines.iter_mut().for_each(zeroize::Zeroize::zeroize);
        write.write_all(answer.as_bytes()).await?;
    }
}

/// Serves `set=1`: parses the request, builds the configuration it makes from the running
/// one, and applies that through the same prepare and commit as a reload. The answer's
/// errno: 0 when it applied, `EINVAL` when nothing did (the reason goes to the log).
async fn set(agent: &Agent, lines: &[String]) -> i32 {
    let request = match set::parse(lines) {
        Ok(request) => request,
        Err(reason) => {
            tracing::info!("UAPI set refused, nothing changed: {reason}");
            return EINVAL;
        }
    };
    let listen_port = agent.listen_port();
    let prepared = agent
        .prepare_change(ChangeOrigin::Uapi, |running| {
            request
                .apply(running, listen_port)
                .map_err(anyhow::Error::msg)
        })
        .await;
    match prepared {
        Ok(prepared) => {
            agent.commit_reload(prepared).await;
            0
        }
        Err(error) => {
            tracing::info!("UAPI set refused, nothing changed: {error:#}");
            EINVAL
        }
    }
}

/// One line without its `\n`; `None` at the end of input. An over-long line is an error.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> io::Result<Option<String>> {
    let mut bytes = Vec::new();
    let n = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut bytes)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if bytes.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "UAPI line too long or unterminated",
        ));
    }
    bytes.pop();
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "UAPI line is not UTF-8"))
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The `get=1` answer: the interface, then one block per gateway. Preshared keys are never
/// returned.
fn get(agent: &Agent) -> zeroize::Zeroizing<String> {
    let config = agent.config();
    let stats = agent.manager().stats();
    // Sized up front so the text holding the key is not copied by reallocation.
    let mut out = String::with_capacity(256 + 512 * config.gateways.len());
    let secret = config.agent.private_key.to_bytes_secret();
    let mut key_hex = zeroize::Zeroizing::new(hex(&secret[..]));
    out.push_str("private_key=");
    out.push_str(&key_hex);
    out.push('\n');
    zeroize::Zeroize::zeroize(&mut *key_hex);
    let _ = writeln!(out, "listen_port={}", agent.listen_port());
    for gateway in &config.gateways {
        let _ = writeln!(out, "public_key={}", hex(gateway.public_key.as_bytes()));
        let live = stats.iter().find(|s| s.public_key == gateway.public_key);
        if let Some(endpoint) = live.and_then(|s| s.endpoint.parse::<std::net::SocketAddr>().ok()) {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            gateway.persistent_keepalive
        );
        let (sec, nsec) = live
            .and_then(|s| s.last_handshake)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        let _ = writeln!(out, "last_handshake_time_sec={sec}");
        let _ = writeln!(out, "last_handshake_time_nsec={nsec}");
        let _ = writeln!(out, "rx_bytes={}", live.map_or(0, |s| s.rx_bytes));
        let _ = writeln!(out, "tx_bytes={}", live.map_or(0, |s| s.tx_bytes));
        for ip in &gateway.allowed_ips {
            let _ = writeln!(out, "allowed_ip={ip}");
        }
        out.push_str("protocol_version=1\n");
    }
    out.push_str("errno=0\n\n");
    zeroize::Zeroizing::new(out)
}
