//! [`ConfigError`]: every way a config file can be refused.

use std::path::PathBuf;

/// A refused configuration. Every message names the config file and the field
/// (`gateways[1].public_key`), says what is wrong, and never contains a secret's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("{path}: cannot read config file: {source}", path = path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown field, a missing field or a value of the wrong type.
    #[error("{path}:{line}:{column}: {field}{sep}{message}", path = path.display(), sep = if field.is_empty() { "" } else { ": " })]
    Syntax {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// The field at that place (`gateways[1].endpoint`), or the table, or empty.
        field: String,
        /// What the parser said (a secret's value is never part of it).
        message: String,
    },
    /// A field has a value that is not allowed.
    #[error("{path}: {field}: {message}", path = path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The field (`gateways[1].endpoint`).
        field: String,
        /// What is wrong, with the offending value when it is not a secret.
        message: String,
    },
    /// A key file can be read by others, or written by group or others (group-readable is
    /// fine).
    #[error(
        "{path}: {field}: key file {file} is {access} (mode {mode:03o}); run `chmod 600 {file}` (or 640 to share it with a group)",
        path = path.display(), file = file.display(), access = if mode & 0o004 != 0 { "readable by others" } else { "writable by group or others" }
    )]
    KeyFilePermissions {
        /// The config file.
        path: PathBuf,
        /// The field naming the key file.
        field: String,
        /// The key file.
        file: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A key file belongs to a user other than the agent's user or root.
    #[error(
        "{path}: {field}: key file {file} is owned by uid {owner}, not by the agent's user (uid {user}) or root; run `chown {user} {file}`",
        path = path.display(), file = file.display()
    )]
    KeyFileOwner {
        /// The config file.
        path: PathBuf,
        /// The field naming the key file.
        field: String,
        /// The key file.
        file: PathBuf,
        /// Its owner.
        owner: u32,
        /// The agent's effective user.
        user: u32,
    },
    /// A key file could not be read.
    #[error("{path}: {field}: cannot read key file {file}: {source}", path = path.display(), file = file.display())]
    KeyFileRead {
        /// The config file.
        path: PathBuf,
        /// The field naming the key file.
        field: String,
        /// The key file.
        file: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The environment variable named by `private_key_env` is not set.
    #[error("{path}: {field}: environment variable `{var}` is not set (or not UTF-8)", path = path.display())]
    MissingEnv {
        /// The config file.
        path: PathBuf,
        /// The field naming the variable.
        field: String,
        /// The variable's name.
        var: String,
    },
    /// A secret key is not valid base64 of 32 bytes. Its value is not shown.
    #[error("{path}: {field}: {origin} is not a WireGuard key: {reason} (value not shown)", path = path.display())]
    InvalidSecret {
        /// The config file.
        path: PathBuf,
        /// The field holding or naming the key.
        field: String,
        /// Where the key came from: "the inline value", "key file F", "variable `V`".
        origin: String,
        /// Why it was refused.
        reason: wg_core::KeyError,
    },
    /// Two gateways share an id, a public key or a virtual IP, or two routes share a port.
    #[error("{path}: {field}: `{value}` is already used by {first}", path = path.display())]
    Duplicate {
        /// The config file.
        path: PathBuf,
        /// The second field with that value.
        field: String,
        /// The repeated value.
        value: String,
        /// The first field with that value.
        first: String,
    },
    /// An address that must lie inside `agent.subnet` does not.
    #[error("{path}: {field}: {addr} is outside agent.subnet {subnet}", path = path.display())]
    OutsideSubnet {
        /// The config file.
        path: PathBuf,
        /// The field.
        field: String,
        /// The address.
        addr: std::net::IpAddr,
        /// The subnet.
        subnet: String,
    },
    /// `admin.listen` is neither a loopback address, a unix socket nor "off", and
    /// `admin.allow_remote` is not set.
    #[error(
        "{path}: admin.listen: `{value}` is not allowed: the admin endpoint listens on a loopback address (127.0.0.1:5182, [::1]:5182), a unix socket (\"unix:/path\") or \"off\"; to serve /healthz, /readyz and /metrics to other hosts (kubelet probes, Prometheus), write an IP address (\"0.0.0.0:5182\") and set `allow_remote = true` in [admin] (/status and /ping stay local-only)",
        path = path.display()
    )]
    AdminNotLoopback {
        /// The config file.
        path: PathBuf,
        /// The refused value.
        value: String,
    },
}
