//! A non-blocking, bounded log writer: the process's log lines go through a queue of at most
//! [`QUEUE_LINES`] lines to one writer thread, so a slow log sink (a full pipe, a stalled
//! journal) never stalls the tasks that log. A line that finds the queue full is dropped and
//! counted ([`dropped_lines`], `wg_agent_log_lines_dropped_total`); the queue is flushed when
//! the [`LogGuard`] drops (at exit).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// The tracing filter for a `[log] level` or `--log-level` value (a level, or a filter such as
/// `info,wg_core=debug`). boringtun's own lines are off unless the value names `boringtun`:
/// they name no gateway (`HANDSHAKE(REKEY_TIMEOUT)` every 5 s while a gateway does not
/// answer), and the agent reports the same facts once, by gateway, from wg-core's events. A
/// value that names boringtun gets its lines inside wg-core's `peer{public_key=...}` span.
pub fn filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("`{level}` is not a level or tracing filter: {e}"))?;
    if level.contains("boringtun") {
        return Ok(filter);
    }
    // A constant directive: it parses.
    Ok(match "boringtun=off".parse() {
        Ok(off) => filter.add_directive(off),
        Err(_) => filter,
    })
}

/// Lines queued for the sink at most.
pub const QUEUE_LINES: usize = 8192;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because the sink was too slow, since the process started.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Relaxed)
}

/// How long the exit flush waits for a slow sink.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

enum Msg {
    Line(Vec<u8>),
    /// Everything queued before it is written: answer.
    Flush(SyncSender<()>),
}

/// The `MakeWriter` side: each event is formatted into a buffer and queued whole.
#[derive(Clone)]
pub struct NonBlocking {
    tx: SyncSender<Msg>,
}

impl std::fmt::Debug for NonBlocking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonBlocking")
    }
}

/// Flushes the queue when dropped (waiting at most 2 s for a slow sink).
pub struct LogGuard {
    tx: SyncSender<Msg>,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

/// A writer to `sink` through a queue of `capacity` lines, and the guard that flushes it.
pub fn non_blocking(sink: impl Write + Send + 'static, capacity: usize) -> (NonBlocking, LogGuard) {
    let (tx, rx) = sync_channel::<Msg>(capacity.max(1));
    // Without a thread nothing is written; the writer then only counts drops.
    let _ = std::thread::Builder::new()
        .name("wg-agent-log".into())
        .spawn(move || drain(&rx, sink));
    (NonBlocking { tx: tx.clone() }, LogGuard { tx })
}

fn drain(rx: &Receiver<Msg>, mut sink: impl Write) {
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Line(line) => {
                // Nowhere to report a failing log sink: the line is lost.
                let _ = sink.write_all(&line);
                let _ = sink.flush();
            }
            Msg::Flush(done) => {
                let _ = sink.flush();
                let _ = done.send(());
            }
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let (done_tx, done) = sync_channel(1);
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        let mut msg = Msg::Flush(done_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => {
                    let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
                    return;
                }
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    msg = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
    }
}

/// One event's bytes, queued when dropped.
pub struct Line {
    tx: SyncSender<Msg>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Line")
    }
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.tx.try_send(Msg::Line(std::mem::take(&mut self.buf))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Relaxed);
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NonBlocking {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            tx: self.tx.clone(),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter as _;

    use super::*;

    /// Whether a warning of `target` passes `filter(level)`.
    fn passes(level: &str, target_is_boringtun: bool) -> bool {
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(level).unwrap_or_else(|e| panic!("{e}")))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            if target_is_boringtun {
                tracing::enabled!(target: "boringtun::noise::timers", tracing::Level::WARN)
            } else {
                tracing::enabled!(target: "agent::manager", tracing::Level::WARN)
            }
        })
    }

    #[test]
    fn boringtun_is_off_unless_named() {
        for level in ["info", "trace", "warn,agent=debug"] {
            assert!(!passes(level, true), "{level}");
            assert!(passes(level, false), "{level}");
        }
        assert!(passes("info,boringtun=warn", true));
        assert!(passes("boringtun=trace,info", true));
        assert!(
            !passes("info,boringtun=error", true),
            "its own level applies"
        );
        assert!(filter("agent=loud").is_err());
    }

    /// A sink that blocks until the test opens it, then records what it gets.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.open;
            let mut is_open = open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while !*is_open {
                is_open = cv
                    .wait(is_open)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            self.got
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A stalled sink never blocks a writer: lines past the queue are dropped and counted;
    /// what was queued is written by the exit flush.
    #[test]
    fn a_stalled_sink_drops_and_counts_instead_of_blocking() {
        let gate = Gate::default();
        let (writer, guard) = non_blocking(gate.clone(), 4);
        let before = dropped_lines();
        for i in 0..100 {
            let mut line = writer.make_writer();
            writeln!(line, "line {i}").expect("buffered");
        }
        // Four queued, at most one taken by the (blocked) thread: the rest were dropped.
        let dropped = dropped_lines() - before;
        assert!((95..=96).contains(&dropped), "dropped {dropped}");
        {
            let (open, cv) = &*gate.open;
            *open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
            cv.notify_all();
        }
        drop(guard);
        let got = String::from_utf8(gate.got.lock().expect("lock").clone()).expect("utf-8");
        assert!(got.starts_with("line 0\n"), "{got}");
        assert_eq!(got.lines().count() as u64, 100 - dropped, "{got}");
    }
}
