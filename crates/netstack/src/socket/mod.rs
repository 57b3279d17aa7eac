//! The socket layer: the tokio adapter around the core. `stack` holds the shards behind
//! locks, the outbound queue, the driver task and the listeners' accept queues (it drains
//! the core's events); `tcp`, `udp` and `icmp` are the sockets applications use.

pub(crate) mod icmp;
pub(crate) mod stack;
pub(crate) mod tcp;
pub(crate) mod udp;
