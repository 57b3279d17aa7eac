//! WireGuard peers for several gateways, over boringtun (work in progress).
