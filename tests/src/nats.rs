//! A real `nats-server` per test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, which_nats};

/// A `nats-server` on free loopback ports; killed on drop.
pub struct Nats {
    pub url: String,
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
}

impl Nats {
    pub async fn start() -> Nats {
        let port = free_port();
        let args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        let mut n = Nats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            child: None,
            args,
        };
        n.spawn().await;
        n
    }

    /// Starts with a config file (gateways, clusters).
    pub async fn with_config(config: &Path, port: u16) -> Nats {
        let args = vec!["-c".into(), config.display().to_string()];
        let mut n = Nats {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            child: None,
            args,
        };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        let exe = which_nats();
        self.child = Some(
            Command::new(exe)
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn nats-server"),
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
