//! Regions on real nats-servers joined by gateways, and a standalone server per region.

use crate::{Link, Nats, NatsPorts, Server, ServerBuilder};

/// One nats-server per region, joined by gateways (a supercluster, as in `nats/`). Every
/// gateway connection between two regions runs through a [`Link`], so tests can partition
/// regions while clients stay connected to their own region.
pub struct Supercluster {
    pub regions: Vec<String>,
    pub servers: Vec<Nats>,
    /// `links[(from, to)]`: the link `from` dials to reach `to`.
    pub links: std::collections::HashMap<(String, String), Link>,
    _dir: tempfile::TempDir,
}

impl Supercluster {
    pub async fn start(regions: &[&str]) -> Supercluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // Each link learns its target (the gateway port of `to`) once `to` is up.
        let mut links = std::collections::HashMap::new();
        for (i, from) in regions.iter().enumerate() {
            for (j, to) in regions.iter().enumerate() {
                if i != j {
                    links.insert((from.to_string(), to.to_string()), Link::start(0).await);
                }
            }
        }
        let mut servers = Vec::new();
        for (i, region) in regions.iter().enumerate() {
            // Every other region through its link (a gateway need not list itself).
            let gateways: Vec<String> = regions
                .iter()
                .filter(|other| *other != region)
                .map(|other| {
                    let port = links[&(region.to_string(), other.to_string())].port;
                    format!("    {{ name: \"{other}\", urls: [\"nats://127.0.0.1:{port}\"] }}")
                })
                .collect::<Vec<_>>();
            // Gateways gossip their own address and peers may dial it directly: advertise a link
            // instead so a cut between two regions really cuts (exact for two regions; with
            // more, a third region may share that link).
            let advertise = (regions.len() > 1).then(|| {
                let next = regions[(i + 1) % regions.len()];
                format!(
                    "  advertise: \"127.0.0.1:{}\"\n",
                    links[&(next.to_string(), region.to_string())].port
                )
            });
            let region_name = region.to_string();
            let gws = gateways.join("\n");
            let render = move |p: &NatsPorts| {
                format!(
                    "server_name: \"{region_name}-1\"\nlisten: \"{client}\"\n\
                     cluster {{ name: \"{region_name}\", listen: \"127.0.0.1:-1\" }}\n\
                     gateway {{\n  name: \"{region_name}\"\n  listen: \"{gw}\"\n{advertise}  reject_unknown_cluster: true\n  gateways: [\n{gws}\n  ]\n}}\n",
                    client = NatsPorts::listen(p.client),
                    gw = NatsPorts::listen(p.gateway),
                    advertise = advertise.as_deref().unwrap_or(""),
                )
            };
            let path = dir.path().join(format!("{region}.conf"));
            let nats = Nats::with_config(&path, render).await;
            let gw = nats.gateway_port.expect("nats-server listens for gateways");
            for ((_, to), link) in &links {
                if to == region {
                    link.set_target(gw);
                }
            }
            servers.push(nats);
        }
        Supercluster {
            regions: regions.iter().map(|r| r.to_string()).collect(),
            servers,
            links,
            _dir: dir,
        }
    }

    pub fn url(&self, region: &str) -> String {
        let i = self
            .regions
            .iter()
            .position(|r| r == region)
            .expect("region");
        self.servers[i].url.clone()
    }

    pub fn nats_mut(&mut self, region: &str) -> &mut Nats {
        let i = self
            .regions
            .iter()
            .position(|r| r == region)
            .expect("region");
        &mut self.servers[i]
    }

    /// Partitions two regions (both directions) until [`Self::heal`].
    pub fn cut(&self, a: &str, b: &str) {
        self.links[&(a.to_string(), b.to_string())].cut();
        self.links[&(b.to_string(), a.to_string())].cut();
    }

    pub fn heal(&self, a: &str, b: &str) {
        self.links[&(a.to_string(), b.to_string())].heal();
        self.links[&(b.to_string(), a.to_string())].heal();
    }
}

/// A standalone region of a deployment: its own store, `--region`, all `--regions`.
pub async fn region_server(sc: &Supercluster, region: &str) -> Server {
    region_server_builder(sc, region).start().await
}

/// [`region_server`] before its start, for more flags or environment.
pub fn region_server_builder(sc: &Supercluster, region: &str) -> ServerBuilder {
    Server::standalone().nats(&sc.url(region)).args([
        "--region",
        region,
        "--regions",
        &sc.regions.join(","),
        "--max-streams-per-ip",
        "10000",
    ])
}
