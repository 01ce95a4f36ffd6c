//! Free TCP ports on 127.0.0.1 for test servers.
//!
//! A port is found by binding port 0 and reading what the kernel chose; the listener is then
//! closed so the server under test can bind it. Within one process no port is handed out
//! twice, so concurrently starting tests never race for the same one. (Another process may
//! still grab it in the short window before the server binds; the kernel hands out ports
//! round-robin, which makes that rare.)

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

/// Returns a TCP port on 127.0.0.1 that was free a moment ago and was never returned before
/// in this process.
pub fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Default::default);
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        let mut taken = handed_out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if taken.insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no fresh free port after 100 attempts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().expect("a free port")).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        TcpListener::bind((Ipv4Addr::LOCALHOST, ports[0])).expect("the port is free");
    }
}
