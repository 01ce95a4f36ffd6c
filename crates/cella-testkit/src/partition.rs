//! A TCP proxy in front of a cluster member that can cut chosen callers off, for partition
//! tests.
//!
//! Members connect to each other from the IP they listen on (Cella binds outgoing peer
//! traffic to it). Giving each member its own loopback IP (127.0.0.x) and advertising its
//! proxy's address in `--peers` lets a test cut one side of the cluster off from the other —
//! both ways, when each side's proxies block the other side's IPs — while clients still reach
//! every member directly. Blocking also closes the blocked callers' open connections.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy forwarding to one member; see the module docs.
pub struct PartitionProxy {
    addr: SocketAddr,
    blocked: watch::Sender<BTreeSet<IpAddr>>,
    accept: JoinHandle<()>,
}

impl PartitionProxy {
    /// Listens on `listen` and forwards every allowed connection to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (blocked, _) = watch::channel(BTreeSet::new());
        let rules = blocked.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, caller)) = listener.accept().await {
                let ip = caller.ip();
                let mut rules = rules.subscribe();
                if rules.borrow().contains(&ip) {
                    continue; // dropped: the caller sees its connection closed
                }
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut inbound, mut outbound) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rules.wait_for(|blocked| blocked.contains(&ip)) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            blocked,
            accept,
        })
    }

    /// The address callers connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Refuses `ips` from now on and closes their open connections.
    pub fn block(&self, ips: impl IntoIterator<Item = IpAddr>) {
        self.blocked.send_modify(|blocked| blocked.extend(ips));
    }

    /// Lets everyone through again.
    pub fn heal(&self) {
        self.blocked.send_modify(BTreeSet::clear);
    }
}

impl Drop for PartitionProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Open connections end too: their rule watchers see the sender go.
        self.block([]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 4];
        stream.write_all(b"ping").await.is_ok() && matches!(stream.read(&mut buf).await, Ok(4))
    }

    #[tokio::test]
    async fn blocked_callers_are_cut_off_and_healing_lets_them_back() {
        let upstream = echo_server().await;
        let proxy = PartitionProxy::start("127.0.0.1:0".parse().expect("addr"), upstream)
            .await
            .expect("proxy");
        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(round_trip(&mut open).await);
        proxy.block(["127.0.0.1".parse().expect("ip")]);
        assert!(
            !round_trip(&mut open).await,
            "the open connection is closed"
        );
        let mut refused = TcpStream::connect(proxy.addr())
            .await
            .expect("tcp accepts, proxy drops");
        assert!(!round_trip(&mut refused).await);
        proxy.heal();
        let mut again = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(round_trip(&mut again).await);
    }
}
