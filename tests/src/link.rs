//! A TCP forwarder that can be cut and healed.

/// A TCP forwarder the tests can cut and heal: stands between NATS gateways to simulate a
/// network partition between regions while each region's clients stay connected.
pub struct Link {
    pub port: u16,
    enabled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Listens on a free port and forwards to 127.0.0.1:`target`. A `target` of 0 is not
    /// known yet ([`Self::set_target`]): until then connections are dropped, as if refused.
    pub async fn start(target: u16) -> Link {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let enabled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let target = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(target));
        let (en, cs, to) = (enabled.clone(), conns.clone(), target.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = to.load(Ordering::SeqCst);
                if !en.load(Ordering::SeqCst) || target == 0 {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                cs.lock().unwrap().push(task.abort_handle());
            }
        });
        Link {
            port,
            enabled,
            target,
            conns,
            accept,
        }
    }

    /// Forwards new connections to 127.0.0.1:`port` from now on.
    pub fn set_target(&self, port: u16) {
        self.target.store(port, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every connection through the link and refuses new ones.
    pub fn cut(&self) {
        self.enabled
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn heal(&self) {
        self.enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
