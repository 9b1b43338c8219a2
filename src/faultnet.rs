//! Network faults between real processes on loopback, for the chaos runner and the
//! multi-process tests: a TCP proxy per directed peer link (node i's connections to node j)
//! that the caller can cut and heal.
//!
//! A cut link refuses new connections and closes the ones it carries, so every RPC node i
//! makes to node j fails (its answers ride the same connection); node j's own calls to i go
//! through the link (j, i) and are not affected. Cutting (i, j) for every j makes i "mute"
//! (it hears its peers' requests but cannot reach them); cutting (j, i) makes it "deaf".
//!
//! May import: tokio. Nothing from the rest of the crate.

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One directed peer link through a proxy; dropping it leaves the link as it is.
#[derive(Debug)]
pub struct Link {
    /// `true` while the link is cut.
    pub cut: watch::Sender<bool>,
}

impl Link {
    /// Starts a proxy on a free loopback port that forwards to `127.0.0.1:target`; returns
    /// the proxy's port (give it to the connecting node as the peer's address) and the link.
    ///
    /// # Errors
    /// No loopback port could be bound.
    pub async fn spawn(target: u16) -> std::io::Result<(u16, Link)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (tx, rx) = watch::channel(false);
        tokio::spawn(proxy(listener, target, rx));
        Ok((port, Link { cut: tx }))
    }

    /// Cuts (`true`) or heals (`false`) the link.
    pub fn set_cut(&self, cut: bool) {
        let _ = self.cut.send(cut);
    }
}

/// Forwards every connection accepted on `listener` to `127.0.0.1:target` while `cut` is
/// false; a cut closes the forwarded connections and refuses new ones.
pub async fn proxy(listener: TcpListener, target: u16, mut cut: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = cut.changed() => continue,
        };
        let Ok((mut inbound, _)) = accepted else {
            continue;
        };
        if *cut.borrow() {
            continue; // dropped: the connection closes at once
        }
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                return;
            };
            tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = async { while cut.changed().await.is_ok() { if *cut.borrow() { break; } } } => {}
            }
        });
    }
}
