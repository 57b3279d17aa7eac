//! The `wg-agent` binary (work in progress).
fn main() {
    println!("wg-agent {}: work in progress", env!("CARGO_PKG_VERSION"));
}
