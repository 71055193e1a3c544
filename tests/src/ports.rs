//! Loopback ports for listeners that tests close and bind again.

/// A loopback port that was free a moment ago, for a listener that may be closed and bound again (a
/// broker restarted in place): below the kernel's ephemeral range (32768-60999 by default), so the local
/// port of some outgoing connection cannot take it meanwhile, as one picked by binding port 0 can.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(2_654_435_761);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(7_919)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
