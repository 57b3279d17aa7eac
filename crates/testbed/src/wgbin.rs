//! Which `wireguard-go` the gateways run: Debian's bookworm build (0.0.20220316) or the current
//! one from bookworm-backports (0.0.20231211: UDP GSO/GRO, TUN offloads, batched crypto). Both
//! are the same package at the same path, so neither is installed: each is fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x` under `target/wireguard-go/<label>/` and run
//! by its path. Fetching is idempotent, takes a file lock (parallel test processes), needs root,
//! and adds the bookworm-backports suite of the mirror apt already uses when no source lists it
//! (backports are never installed from by default: apt pins them below the release).
//!
//! Selection: [`WIREGUARD_GO_ENV`] (`TESTBED_WIREGUARD_GO`) is `current` / `2023` (the default),
//! `2022` / `bookworm`, or the path of a `wireguard-go` binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd::{TempDir, on_path, run_command};

/// The environment variable that picks the gateways' `wireguard-go` (see the module docs).
pub const WIREGUARD_GO_ENV: &str = "TESTBED_WIREGUARD_GO";

/// The sources file written when no apt source lists bookworm-backports.
pub const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/wg-testbed-bookworm-backports.sources";

/// The file beside an unpacked build that holds its Debian package version.
const PACKAGE_VERSION_FILE: &str = "package-version";

/// A `wireguard-go` build from Debian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WireguardGoVersion {
    /// 0.0.20231211 from bookworm-backports: UDP GSO/GRO, TUN offloads (the default).
    Current,
    /// 0.0.20220316 from bookworm: one datagram per system call, default socket buffers.
    Bookworm,
}

impl WireguardGoVersion {
    /// Both versions, the default first.
    pub const ALL: [Self; 2] = [Self::Current, Self::Bookworm];

    /// The upstream version (of the Debian package; see [`package_version`](Self::package_version)).
    pub fn upstream(self) -> &'static str {
        match self {
            Self::Current => "0.0.20231211",
            Self::Bookworm => "0.0.20220316",
        }
    }

    /// The Debian suite it comes from.
    pub fn suite(self) -> &'static str {
        match self {
            Self::Current => "bookworm-backports",
            Self::Bookworm => "bookworm",
        }
    }

    /// A short name: `2023` or `2022` (also the folder under `target/wireguard-go/`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Current => "2023",
            Self::Bookworm => "2022",
        }
    }

    /// Reads a name: `current`, `2023`, `backports`, `bookworm-backports` or the upstream
    /// version for [`Current`](Self::Current); `2022`, `bookworm` or its upstream version for
    /// [`Bookworm`](Self::Bookworm).
    pub fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "current" | "2023" | "backports" | "bookworm-backports" | "0.0.20231211" => {
                Some(Self::Current)
            }
            "2022" | "bookworm" | "0.0.20220316" => Some(Self::Bookworm),
            _ => None,
        }
    }

    /// Where the unpacked binary lives: `target/wireguard-go/<label>/usr/bin/wireguard-go`.
    pub fn binary(self) -> PathBuf {
        self.dir().join("usr/bin/wireguard-go")
    }

    fn dir(self) -> PathBuf {
        store().join(self.label())
    }

    /// The Debian package version of the unpacked build (`dpkg-deb -f DEB Version`, kept beside
    /// it), e.g. `0.0.20231211-1~bpo12+1`. The binary's own `--version` may differ: upstream
    /// 0.0.20231211 still prints `v0.0.20230223`.
    pub fn package_version(self) -> Option<String> {
        let text = fs::read_to_string(self.dir().join(PACKAGE_VERSION_FILE)).ok()?;
        Some(text.trim().to_owned())
    }

    /// Whether the unpacked binary is there, from a package of this version.
    pub fn is_fetched(self) -> bool {
        self.binary().is_file()
            && self
                .package_version()
                .is_some_and(|v| v.starts_with(self.upstream()))
    }

    /// Downloads and unpacks this version unless it is there already; returns the binary.
    /// Needs root (apt), `apt-get` and `dpkg-deb`. Safe to call from parallel processes.
    pub fn fetch(self) -> Result<PathBuf> {
        let binary = self.binary();
        if self.is_fetched() {
            return Ok(binary);
        }
        if !crate::prereq::is_root() {
            bail!(
                "wireguard-go {} ({}) is not at {} and fetching it needs root \
                 (run `cargo xtask test` as root once)",
                self.upstream(),
                self.label(),
                binary.display()
            );
        }
        for tool in ["apt-get", "dpkg-deb"] {
            if !on_path(tool) {
                bail!("cannot fetch wireguard-go {}: {tool} missing", self.label());
            }
        }
        fs::create_dir_all(store())
            .with_context(|| format!("cannot create {}", store().display()))?;
        let lock_path = store().join(".lock");
        let lock = fs::File::create(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        // Another process may have fetched it while this one waited for the lock.
        if self.is_fetched() {
            return Ok(binary);
        }
        if self == Self::Current {
            ensure_backports_source()?;
        }
        let download = TempDir::new("wggo-deb")?;
        let spec = format!("wireguard-go/{}", self.suite());
        let mut get = Command::new("apt-get");
        get.args(["download", "-q", &spec])
            .current_dir(download.path());
        if run_command(&mut get).is_err() {
            // The package lists may predate the suite (or be missing on a fresh machine).
            run_command(Command::new("apt-get").args(["update", "-q"]))?;
            run_command(&mut get).with_context(|| format!("apt-get download {spec}"))?;
        }
        let deb = fs::read_dir(download.path())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {spec} left no .deb"))?;
        let staging = store().join(format!("{}.partial", self.label()));
        let _ = fs::remove_dir_all(&staging);
        run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
        let version = run_command(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?;
        let version = version.trim();
        if !version.starts_with(self.upstream()) {
            let _ = fs::remove_dir_all(&staging);
            bail!(
                "{spec} is {version}, expected {}: the mirror moved on; update \
                 testbed's WireguardGoVersion",
                self.upstream()
            );
        }
        // It must run here, not only unpack.
        binary_version(&staging.join("usr/bin/wireguard-go"))?;
        fs::write(staging.join(PACKAGE_VERSION_FILE), format!("{version}\n"))?;
        let _ = fs::remove_dir_all(self.dir());
        fs::rename(&staging, self.dir())
            .with_context(|| format!("cannot move {} into place", staging.display()))?;
        drop(lock);
        Ok(binary)
    }
}

impl std::fmt::Display for WireguardGoVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wireguard-go {} ({})", self.upstream(), self.suite())
    }
}

/// Fetches both versions (see [`WireguardGoVersion::fetch`]).
pub fn fetch_wireguard_go() -> Result<()> {
    for version in WireguardGoVersion::ALL {
        version
            .fetch()
            .with_context(|| format!("cannot fetch {version}"))?;
    }
    Ok(())
}

/// The gateways' `wireguard-go` as [`WIREGUARD_GO_ENV`] selects it: a version (the binary may
/// still need fetching) or a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireguardGoSelection {
    /// A Debian build under `target/`.
    Version(WireguardGoVersion),
    /// A binary given by path.
    Path(PathBuf),
}

impl WireguardGoSelection {
    /// From [`WIREGUARD_GO_ENV`]; unset or empty means [`WireguardGoVersion::Current`].
    pub fn from_env() -> Result<Self> {
        match std::env::var(WIREGUARD_GO_ENV) {
            Err(_) => Ok(Self::Version(WireguardGoVersion::Current)),
            Ok(value) if value.trim().is_empty() => Ok(Self::Version(WireguardGoVersion::Current)),
            Ok(value) => Self::parse(&value),
        }
    }

    /// A version name (see [`WireguardGoVersion::parse`]) or a path (anything with a `/`).
    pub fn parse(value: &str) -> Result<Self> {
        if value.contains('/') {
            return Ok(Self::Path(PathBuf::from(value)));
        }
        WireguardGoVersion::parse(value)
            .map(Self::Version)
            .with_context(|| {
                format!(
                    "{WIREGUARD_GO_ENV}=`{value}`: expected current, 2023, 2022, bookworm or the \
                 path of a wireguard-go binary"
                )
            })
    }

    /// The binary, fetched first if it is a version not yet under `target/`.
    pub fn binary(&self) -> Result<PathBuf> {
        match self {
            Self::Version(version) => version.fetch(),
            Self::Path(path) if path.is_file() => Ok(path.clone()),
            Self::Path(path) => bail!(
                "wireguard-go missing at {} ({WIREGUARD_GO_ENV})",
                path.display()
            ),
        }
    }

    /// A short description for reports: the version and where the binary is.
    pub fn describe(&self) -> String {
        match self {
            Self::Version(version) => format!(
                "wireguard-go {} ({}) at {}",
                version
                    .package_version()
                    .as_deref()
                    .unwrap_or(version.upstream()),
                version.suite(),
                version.binary().display()
            ),
            Self::Path(path) => format!(
                "{} ({})",
                path.display(),
                binary_version(path).unwrap_or_else(|e| format!("{e:#}"))
            ),
        }
    }
}

/// The selected binary ([`WireguardGoSelection::from_env`]), fetched if needed (looked up once
/// per process).
pub fn wireguard_go_binary() -> Result<PathBuf> {
    static BINARY: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            WireguardGoSelection::from_env()
                .and_then(|selection| selection.binary())
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The first line of `binary --version`, e.g. `wireguard-go v0.0.20231211`.
pub fn binary_version(binary: &Path) -> Result<String> {
    if !binary.is_file() {
        bail!("{} missing", binary.display());
    }
    let out = run_command(Command::new(binary).arg("--version"))?;
    Ok(out.lines().next().unwrap_or_default().trim().to_owned())
}

/// `target/wireguard-go` of this workspace.
fn store() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .join("target/wireguard-go")
}

/// Adds bookworm-backports of the mirror apt already uses for bookworm, unless a source lists
/// it already, and refreshes the package lists.
fn ensure_backports_source() -> Result<()> {
    let mut sources = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path.to_string_lossy();
            if name.ends_with(".sources") || name.ends_with(".list") {
                sources.push((path.clone(), fs::read_to_string(&path).unwrap_or_default()));
            }
        }
    }
    let legacy = Path::new("/etc/apt/sources.list");
    sources.push((
        legacy.to_path_buf(),
        fs::read_to_string(legacy).unwrap_or_default(),
    ));
    if sources.iter().any(|(path, text)| {
        let deb822 = path.to_string_lossy().ends_with(".sources");
        lists_suite(text, deb822, "bookworm-backports")
    }) {
        return Ok(());
    }
    let (uri, keyring) = sources
        .iter()
        .find_map(|(path, text)| {
            if path.to_string_lossy().ends_with(".sources") {
                deb822_mirror(text, "bookworm")
            } else {
                one_line_mirror(text, "bookworm")
            }
        })
        .unwrap_or_else(|| {
            (
                "http://deb.debian.org/debian".to_owned(),
                "/usr/share/keyrings/debian-archive-keyring.gpg".to_owned(),
            )
        });
    fs::write(BACKPORTS_SOURCES, backports_stanza(&uri, &keyring))
        .with_context(|| format!("cannot write {BACKPORTS_SOURCES}"))?;
    run_command(Command::new("apt-get").args(["update", "-q"]))?;
    Ok(())
}

/// The deb822 stanza for bookworm-backports of `uri`.
fn backports_stanza(uri: &str, keyring: &str) -> String {
    format!(
        "# Added by wg-agent's testbed: wireguard-go 0.0.20231211 is fetched from here with\n\
         # `apt-get download` (never installed). Safe to remove.\n\
         Types: deb\nURIs: {uri}\nSuites: bookworm-backports\nComponents: main\nSigned-By: {keyring}\n"
    )
}

/// Whether a sources file lists `suite` for binary packages (deb822 or one-line format).
fn lists_suite(text: &str, deb822: bool, suite: &str) -> bool {
    if deb822 {
        stanzas(text).iter().any(|stanza| {
            field(stanza, "Types").is_some_and(|t| t.split_whitespace().any(|w| w == "deb"))
                && field(stanza, "Suites").is_some_and(|s| s.split_whitespace().any(|w| w == suite))
                && field(stanza, "Enabled").is_none_or(|e| e.trim() != "no")
        })
    } else {
        one_line_entries(text).any(|(_, _, s)| s == suite)
    }
}

/// URI and keyring of the first deb822 stanza that lists `suite` (Debian's main archive).
fn deb822_mirror(text: &str, suite: &str) -> Option<(String, String)> {
    stanzas(text).iter().find_map(|stanza| {
        let suites = field(stanza, "Suites")?;
        if !suites.split_whitespace().any(|w| w == suite) {
            return None;
        }
        let uri = field(stanza, "URIs")?.split_whitespace().next()?.to_owned();
        let keyring = field(stanza, "Signed-By")
            .map(str::trim)
            .filter(|k| k.starts_with('/'))
            .unwrap_or("/usr/share/keyrings/debian-archive-keyring.gpg")
            .to_owned();
        Some((uri, keyring))
    })
}

/// URI of the first one-line `deb URI suite ...` entry for `suite`, with Debian's keyring.
fn one_line_mirror(text: &str, suite: &str) -> Option<(String, String)> {
    one_line_entries(text)
        .find(|(_, _, s)| *s == suite)
        .map(|(_, uri, _)| {
            (
                uri.to_owned(),
                "/usr/share/keyrings/debian-archive-keyring.gpg".to_owned(),
            )
        })
}

/// `(type, uri, suite)` of each one-line entry, options in brackets skipped.
fn one_line_entries(text: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    text.lines().filter_map(|line| {
        let line = line.split('#').next()?.trim();
        let (kind, rest) = line.split_once(char::is_whitespace)?;
        if kind != "deb" {
            return None;
        }
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(after) => after.split_once(']')?.1.trim_start(),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        Some((kind, words.next()?, words.next()?))
    })
}

/// Paragraphs of a deb822 file, comment lines removed.
fn stanzas(text: &str) -> Vec<Vec<&str>> {
    let mut out = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            if out.last().is_some_and(|s| !s.is_empty()) {
                out.push(Vec::new());
            }
        } else if !line.trim_start().starts_with('#')
            && let Some(last) = out.last_mut()
        {
            last.push(line);
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The value of `name:` in a stanza (first line only; enough for the fields read here).
fn field<'a>(stanza: &[&'a str], name: &str) -> Option<&'a str> {
    stanza.iter().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DEBIAN: &str = "Types: deb\n# snapshot\nURIs: http://deb.debian.org/debian\n\
        Suites: bookworm bookworm-updates\nComponents: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
        Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\
        Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";

    #[test]
    fn finds_the_mirror_of_bookworm_in_deb822() {
        assert_eq!(
            deb822_mirror(DEBIAN, "bookworm"),
            Some((
                "http://deb.debian.org/debian".to_owned(),
                "/usr/share/keyrings/debian-archive-keyring.gpg".to_owned()
            ))
        );
        assert!(!lists_suite(DEBIAN, true, "bookworm-backports"));
        assert!(lists_suite(DEBIAN, true, "bookworm-security"));
        let added = backports_stanza("http://mirror.example/debian", "/k.gpg");
        assert!(lists_suite(&added, true, "bookworm-backports"));
        assert_eq!(
            deb822_mirror(&added, "bookworm-backports").unwrap().0,
            "http://mirror.example/debian"
        );
        let disabled = format!("{added}Enabled: no\n");
        assert!(!lists_suite(&disabled, true, "bookworm-backports"));
    }

    #[test]
    fn reads_one_line_sources() {
        let text = "# deb http://old/ bookworm main\n\
            deb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian bookworm main\n\
            deb-src http://ftp.example/debian bookworm-backports main\n";
        assert_eq!(
            one_line_mirror(text, "bookworm").unwrap().0,
            "http://ftp.example/debian"
        );
        assert!(!lists_suite(text, false, "bookworm-backports"));
        assert!(lists_suite(
            "deb http://x/debian bookworm-backports main",
            false,
            "bookworm-backports"
        ));
    }

    #[test]
    fn names_select_versions_or_paths() {
        for name in ["current", "2023", "Backports", "0.0.20231211"] {
            assert_eq!(
                WireguardGoSelection::parse(name).unwrap(),
                WireguardGoSelection::Version(WireguardGoVersion::Current)
            );
        }
        for name in ["2022", "bookworm"] {
            assert_eq!(
                WireguardGoSelection::parse(name).unwrap(),
                WireguardGoSelection::Version(WireguardGoVersion::Bookworm)
            );
        }
        assert_eq!(
            WireguardGoSelection::parse("/usr/bin/wireguard-go").unwrap(),
            WireguardGoSelection::Path("/usr/bin/wireguard-go".into())
        );
        assert!(WireguardGoSelection::parse("2021").is_err());
        let binary = WireguardGoVersion::Bookworm.binary();
        assert!(binary.ends_with("target/wireguard-go/2022/usr/bin/wireguard-go"));
    }
}
