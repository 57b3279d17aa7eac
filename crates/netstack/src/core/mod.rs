//! The sans-IO core: packets and `now` in, packets, events and the next deadline out.
//! Nothing here knows tokio or the socket layer (`stack`, `tcp`, `udp`, `icmp`); the
//! `layering` test checks it.

pub(crate) mod autotune;
#[allow(unsafe_code)]
pub(crate) mod buffer;
pub(crate) mod config;
pub(crate) mod deadlines;
pub(crate) mod device;
pub(crate) mod env;
pub(crate) mod offload;
pub(crate) mod sender;
pub(crate) mod shard;
pub(crate) mod stats;
pub(crate) mod synq;
pub(crate) mod time;
pub(crate) mod wire;
