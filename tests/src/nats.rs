//! A real `nats-server` per test.
//!
//! Every port is `-1` (the server picks a free one) and the harness reads the ports from the
//! server's `Listening for … connections on …` lines: nothing can take a port between the pick
//! and the bind. A restart binds the same client and gateway ports again (clients and links
//! know them), retrying for a while if another process took one meanwhile.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::proc::{StartError, await_log, fresh_log, nats_listening};
use crate::which_nats;

const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The ports of a nats-server: `None` until it has bound them (then `-1` in its config).
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsPorts {
    pub client: Option<u16>,
    pub gateway: Option<u16>,
    /// The cluster (route) port, when the config has a `cluster` block.
    pub route: Option<u16>,
}

impl NatsPorts {
    /// `127.0.0.1:<port>`, or `127.0.0.1:-1` (any free port) while `port` is unknown.
    pub fn listen(port: Option<u16>) -> String {
        match port {
            Some(p) => format!("127.0.0.1:{p}"),
            None => "127.0.0.1:-1".into(),
        }
    }
}

type Render = Box<dyn Fn(&NatsPorts) -> String + Send + Sync>;

/// A `nats-server` on loopback ports it picked itself; killed on drop.
pub struct Nats {
    pub url: String,
    pub port: u16,
    /// The gateway port, when the config has a gateway.
    pub gateway_port: Option<u16>,
    ports: NatsPorts,
    config: Option<(PathBuf, Render)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Nats {
    pub async fn start() -> Nats {
        Self::launch(None).await
    }

    /// Starts with a config file (gateways, clusters) written to `path` by `render`, which
    /// puts [`NatsPorts::listen`] of each port in its `listen:`s.
    pub async fn with_config(
        path: &Path,
        render: impl Fn(&NatsPorts) -> String + Send + Sync + 'static,
    ) -> Nats {
        Self::launch(Some((path.to_path_buf(), Box::new(render)))).await
    }

    async fn launch(config: Option<(PathBuf, Render)>) -> Nats {
        let mut n = Nats {
            url: String::new(),
            port: 0,
            gateway_port: None,
            ports: NatsPorts::default(),
            config,
            child: None,
            log: PathBuf::new(),
        };
        if let Err(e) = n.spawn().await {
            panic!("{e}");
        }
        n
    }

    async fn spawn(&mut self) -> Result<(), StartError> {
        let mut clustered = false;
        let args: Vec<String> = match &self.config {
            Some((path, render)) => {
                let text = render(&self.ports);
                clustered = text.contains("cluster {");
                std::fs::write(path, text).expect("write the nats-server config");
                vec!["-c".into(), path.display().to_string()]
            }
            None => {
                let listen = NatsPorts::listen(self.ports.client);
                let (host, port) = listen.rsplit_once(':').expect("host:port");
                vec!["-a".into(), host.into(), "-p".into(), port.into()]
            }
        };
        let (path, log) = fresh_log("nats-server");
        self.log = path;
        let mut child = Command::new(which_nats())
            .args(&args)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        let what = format!("nats-server {args:?}");
        let deadline = Instant::now() + START_TIMEOUT;
        // The gateway is listening before the server says it is ready; the client port too.
        // The route port (a `cluster` block) comes just after.
        let found = await_log(&what, &mut child, &self.log, deadline, |log| {
            let routes = !clustered || nats_listening(log, "route").is_some();
            (log.contains("Server is ready") && routes).then(|| {
                (
                    nats_listening(log, "client"),
                    nats_listening(log, "gateways"),
                    nats_listening(log, "route"),
                )
            })
        })
        .await;
        self.child = Some(child);
        let (client, gateway, route) = found?;
        let client = client.ok_or_else(|| StartError::new(&what, None, &self.log))?;
        self.ports = NatsPorts {
            client: Some(client),
            gateway,
            route,
        };
        self.port = client;
        self.gateway_port = gateway;
        self.url = format!("nats://127.0.0.1:{client}");
        Ok(())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn().await {
                Ok(()) => return,
                // Another process took a port while it was free: it may let go again.
                Err(e) if e.exited.is_some() && Instant::now() < deadline => {
                    self.kill();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("nats-server restart on port {}: {e}", self.port),
            }
        }
    }

    /// The process id (0 while it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The ports it listens on.
    pub fn ports(&self) -> NatsPorts {
        self.ports
    }

    /// The log (stdout and stderr) of the current process start.
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
