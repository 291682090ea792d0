//! One region with separate roles on the CQL store, as most CQL end-to-end tests need it:
//! a nats-server, any number of ingest nodes on a fresh keyspace, a reader and a fanout.

use crate::{Nats, Server, ServerBuilder, cql_node, fresh_keyspace, migrate_keyspace};

pub struct CqlRegion {
    pub nats: Nats,
    pub ingest: Vec<Server>,
    pub reader: Server,
    pub fanout: Server,
    pub keyspace: String,
}

impl CqlRegion {
    /// `ingest_nodes` ingest processes, a reader and a fanout on a fresh keyspace named after
    /// `prefix`; `None` when no CQL server is reachable and the CQL tests are opted out of.
    pub async fn start(prefix: &str, ingest_nodes: usize) -> Option<CqlRegion> {
        Self::start_with(prefix, ingest_nodes, |b| b).await
    }

    /// [`CqlRegion::start`] with `ingest` applied to each ingest node's builder (more flags).
    pub async fn start_with(
        prefix: &str,
        ingest_nodes: usize,
        ingest: impl Fn(ServerBuilder) -> ServerBuilder,
    ) -> Option<CqlRegion> {
        let node = cql_node()?;
        let keyspace = fresh_keyspace(prefix);
        migrate_keyspace(&node, &keyspace);
        let cql = [
            "--cql-nodes",
            node.as_str(),
            "--cql-keyspace",
            keyspace.as_str(),
        ];
        let nats = Nats::start().await;
        let mut nodes = Vec::new();
        for _ in 0..ingest_nodes {
            let b = Server::role("ingest").nats(&nats.url).args(cql);
            nodes.push(ingest(b).start().await);
        }
        let reader = Server::role("reader")
            .nats(&nats.url)
            .args(cql)
            .start()
            .await;
        let fanout = Server::role("fanout").nats(&nats.url).start().await;
        Some(CqlRegion {
            nats,
            ingest: nodes,
            reader,
            fanout,
            keyspace,
        })
    }

    /// The ingest nodes' base URLs.
    pub fn ingest_bases(&self) -> Vec<String> {
        self.ingest.iter().map(|s| s.base.clone()).collect()
    }
}
