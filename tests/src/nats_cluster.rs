//! A region's NATS as in production: a cluster of three `nats-server`s joined by routes.
//!
//! Every port is picked by its server (`-1`) and read from its log, as in [`Nats`]: the first
//! server starts with no routes, each next one routes to those already up (the cluster gossips
//! the full mesh), and a restarted server binds its client and route ports again and routes to
//! every other server's route port.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Nats, NatsPorts, RawNats};

/// `n` nats-servers of one cluster (`name`); each killed on drop.
pub struct NatsCluster {
    pub name: String,
    pub servers: Vec<Nats>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    pub async fn start(name: &str, n: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // The route port of each server once it is known (a restart routes to all the others).
        let routes: Arc<Mutex<Vec<Option<u16>>>> = Arc::new(Mutex::new(vec![None; n]));
        let mut servers = Vec::new();
        for i in 0..n {
            let known_routes = routes.clone();
            let name_ = name.to_string();
            let render = move |p: &NatsPorts| {
                let known = known_routes.lock().expect("routes").clone();
                let others: Vec<String> = known
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .filter_map(|(_, r)| r.map(|port| format!("\"nats://127.0.0.1:{port}\"")))
                    .collect();
                format!(
                    "server_name: \"{name_}-{i}\"\nlisten: \"{client}\"\n\
                     cluster {{\n  name: \"{name_}\"\n  listen: \"{route}\"\n  routes: [{others}]\n}}\n",
                    client = NatsPorts::listen(p.client),
                    route = NatsPorts::listen(p.route),
                    others = others.join(", "),
                )
            };
            let path = dir.path().join(format!("{name}-{i}.conf"));
            let nats = Nats::with_config(&path, render).await;
            routes.lock().expect("routes")[i] =
                Some(nats.ports().route.expect("nats-server listens for routes"));
            servers.push(nats);
        }
        let c = NatsCluster {
            name: name.to_string(),
            servers,
            _dir: dir,
        };
        c.wait_meshed().await;
        c
    }

    /// Every client URL, comma separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until a message published on each server reaches a subscriber on every other:
    /// the routes are up (interest crosses routes asynchronously, so it publishes until one
    /// arrives).
    pub async fn wait_meshed(&self) {
        for (i, from) in self.servers.iter().enumerate() {
            for (j, to) in self.servers.iter().enumerate() {
                if i == j {
                    continue;
                }
                let mut sub = RawNats::connect(&to.url).await;
                let subject = format!("mesh.{i}.{j}");
                sub.subscribe(&subject).await;
                sub.flush().await;
                let mut publisher = RawNats::connect(&from.url).await;
                let deadline = Instant::now() + Duration::from_secs(15);
                let mut arrived = false;
                while !arrived && Instant::now() < deadline {
                    publisher.publish(&subject, b"x").await;
                    publisher.flush().await;
                    arrived = sub.next(Duration::from_millis(100)).await.is_some();
                }
                assert!(
                    arrived,
                    "nats cluster {}: no route from server {i} to server {j}",
                    self.name
                );
            }
        }
    }

    /// `kill -9` of server `i`.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Starts server `i` again on its ports, routed to the others.
    pub async fn restart(&mut self, i: usize) {
        self.servers[i].restart().await;
    }
}
