//! The local app behind the agent: a small HTTP/1.1 server on `127.0.0.1:8080` inside the
//! agent's namespace, one thread per connection (at most [`App::MAX_CONNECTIONS`]), one request
//! per connection (`Connection: close`).
//!
//! - `GET /hello` → `hello from the app\n`
//! - `GET /forwarded-for` → the request's `X-Forwarded-For` (the client as the agent saw it)
//! - `GET /blob/<len>/<seed>` → the [`pattern`](super::pattern) of `seed`, `len` bytes
//! - `GET /paced/<len>/<seed>/<kib_per_s>` → the same body, written at that rate by the app
//!   (a transfer that lasts, whatever the client's own rate limiting does)
//! - `POST /upload` (Content-Length or chunked) → `<sha256 hex> <bytes>\n` of the body

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use sha2::{Digest, Sha256};
use testbed::Netns;

use super::pattern::{Pattern, hex};

/// The app's address on the agent's loopback (the agent's default route upstream).
pub(crate) const APP_ADDR: &str = "127.0.0.1:8080";

/// The running app; stops accepting on drop.
pub(crate) struct App {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Requests answered (any status).
    pub(crate) requests: Arc<AtomicU64>,
}

impl App {
    pub(crate) const MAX_CONNECTIONS: usize = 64;

    pub(crate) fn start(ns: &Netns) -> Result<Self> {
        let addr: SocketAddr = APP_ADDR.parse()?;
        let listener = ns.bind_tcp(addr)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let requests = Arc::clone(&requests);
            std::thread::Builder::new()
                .name("suite-app".into())
                .spawn(move || accept_loop(&listener, &stop, &requests))?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            requests,
        })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, requests: &Arc<AtomicU64>) {
    let open = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if open.load(Ordering::SeqCst) >= App::MAX_CONNECTIONS {
                    continue; // dropped: closed at once
                }
                open.fetch_add(1, Ordering::SeqCst);
                let open_here = Arc::clone(&open);
                let requests = Arc::clone(requests);
                let spawned = std::thread::Builder::new()
                    .name("suite-app-conn".into())
                    .spawn(move || {
                        let _ = serve(stream, &requests);
                        open_here.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    // The closure (and its decrement) was dropped with the error.
                    open.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Reads one request head (at most 64 KiB): (head text, bytes read past the head).
fn read_head(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&data).into_owned(), rest));
        }
        if data.len() > 64 * 1024 {
            return Err(io::Error::other("request head too large"));
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        data.extend_from_slice(&buf[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

fn respond(stream: &mut TcpStream, status: &str, body: &[u8]) -> io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

fn serve(mut stream: TcpStream, requests: &AtomicU64) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let (head, rest) = read_head(&mut stream)?;
    requests.fetch_add(1, Ordering::Relaxed);
    let mut words = head.split_whitespace();
    let method = words.next().unwrap_or("");
    let path = words.next().unwrap_or("");
    match (method, path.split('/').collect::<Vec<_>>().as_slice()) {
        ("GET", ["", "hello"]) => respond(&mut stream, "200 OK", b"hello from the app\n"),
        ("GET", ["", "forwarded-for"]) => {
            let client = header(&head, "x-forwarded-for").unwrap_or("-");
            respond(&mut stream, "200 OK", format!("{client}\n").as_bytes())
        }
        ("GET", ["", "blob", len, seed]) => {
            let (Ok(len), Ok(seed)) = (len.parse::<u64>(), seed.parse::<u64>()) else {
                return respond(&mut stream, "400 Bad Request", b"bad blob path\n");
            };
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )?;
            let mut pattern = Pattern::new(seed, len);
            io::copy(&mut pattern, &mut stream)?;
            stream.flush()
        }
        ("GET", ["", "paced", len, seed, kib_per_s]) => {
            let (Ok(len), Ok(seed), Ok(rate)) = (
                len.parse::<u64>(),
                seed.parse::<u64>(),
                kib_per_s.parse::<u64>(),
            ) else {
                return respond(&mut stream, "400 Bad Request", b"bad paced path\n");
            };
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )?;
            // 16 KiB at a time, each after the time the rate allows for what went before.
            let start = std::time::Instant::now();
            let mut pattern = Pattern::new(seed, len);
            let mut sent = 0u64;
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = pattern.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                let due = Duration::from_secs_f64(sent as f64 / (rate.max(1) * 1024) as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                stream.write_all(&chunk[..n])?;
                sent += n as u64;
            }
            stream.flush()
        }
        ("POST", ["", "upload"]) => {
            let body = Cursor::new(rest).chain(stream.try_clone()?);
            let result = if header(&head, "transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
            {
                hash_chunked(BufReader::new(body))
            } else {
                let len: u64 = header(&head, "content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                hash_all(body.take(len), len)
            };
            match result {
                Ok((sha, n)) => respond(&mut stream, "200 OK", format!("{sha} {n}\n").as_bytes()),
                Err(e) => respond(&mut stream, "400 Bad Request", format!("{e}\n").as_bytes()),
            }
        }
        _ => respond(&mut stream, "404 Not Found", b"not found\n"),
    }
}

fn hash_all(mut body: impl Read, expect: u64) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    if total != expect {
        return Err(io::Error::other(format!(
            "body ended after {total} of {expect} bytes"
        )));
    }
    Ok((hex(&hasher.finalize()), total))
}

/// Decodes a chunked body (RFC 9112 section 7.1; extensions and trailers ignored) into a hash.
fn hash_chunked(mut body: impl BufRead) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut line = String::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        line.clear();
        if body.read_line(&mut line)? == 0 {
            return Err(io::Error::other("chunked body cut"));
        }
        let size_text = line.trim().split(';').next().unwrap_or("");
        let mut size = u64::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers up to the empty line.
            loop {
                line.clear();
                if body.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok((hex(&hasher.finalize()), total));
                }
            }
        }
        while size > 0 {
            let want = usize::try_from(size).unwrap_or(usize::MAX).min(buf.len());
            let n = body.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::other("chunk cut"));
            }
            hasher.update(&buf[..n]);
            total += n as u64;
            size -= n as u64;
        }
        line.clear();
        body.read_line(&mut line)?; // CRLF after the chunk
    }
}
