//! The agent: wires wg-core, netstack and local-proxy (work in progress).
