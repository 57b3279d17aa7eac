//! A transparent UDP relay between the agent and a gateway that remembers the receiver index of
//! the latest transport data message sent to the agent: the index of the agent's live session,
//! which hostile datagrams can then aim at.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use testbed::{Netns, garbage};

/// The running relay; its threads stop on drop.
pub(crate) struct Tap {
    local_addr: SocketAddr,
    /// `1 << 32 | index` once a data message went to the agent, else 0.
    last_index: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Tap {
    /// Listens on `127.0.0.1:0` inside `ns` (the agent's namespace) and forwards to `gateway`
    /// from a socket on `0.0.0.0:0` there.
    pub(crate) fn start_in(ns: &Netns, gateway: SocketAddr) -> Result<Self> {
        let front = ns.bind_udp("127.0.0.1:0".parse()?)?;
        let back = ns.bind_udp("0.0.0.0:0".parse()?)?;
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
        }
        let local_addr = front.local_addr()?;
        let front = Arc::new(front);
        let back = Arc::new(back);
        let agent: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let last_index = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (front, back, agent, stop) = (
                Arc::clone(&front),
                Arc::clone(&back),
                Arc::clone(&agent),
                Arc::clone(&stop),
            );
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_535];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *agent.lock().unwrap_or_else(PoisonError::into_inner) = Some(from);
                        let _ = back.send_to(&buf[..n], gateway);
                    }
                }
            }));
        }
        {
            let (last_index, stop) = (Arc::clone(&last_index), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_535];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = back.recv_from(&mut buf) else {
                        continue;
                    };
                    if from != gateway {
                        continue;
                    }
                    let datagram = &buf[..n];
                    if datagram.first() == Some(&garbage::TRANSPORT_DATA)
                        && let Some(index) = garbage::receiver_index_of(datagram)
                    {
                        last_index.store(1 << 32 | u64::from(index), Ordering::Relaxed);
                    }
                    let to = *agent.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(to) = to {
                        let _ = front.send_to(datagram, to);
                    }
                }
            }));
        }
        Ok(Self {
            local_addr,
            last_index,
            stop,
            threads,
        })
    }

    /// Where the agent sends (its gateway endpoint).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The receiver index of the latest data message to the agent.
    pub(crate) fn agent_receiver_index(&self) -> Option<u32> {
        let v = self.last_index.load(Ordering::Relaxed);
        (v >> 32 == 1).then_some(v as u32)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
