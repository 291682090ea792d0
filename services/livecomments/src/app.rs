//! Wiring: which store, bus, history and fanout each role gets, then serve until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::auth::Authenticator;
use crate::bus::{Bus, LocalBus, NatsBus};
use crate::config::{Role, Settings};
use crate::fanout::{Fanout, FanoutConfig};
use crate::http::{self, Common, FanoutState, IngestState, ReaderState, RemoteDeletes, Rooms};
use crate::ingest::reactions::Reactions;
use crate::ingest::{Pipeline, RateLimiter, SlowMode, UserLimit};
use crate::moderation::sync::Syncer;
use crate::moderation::{ModState, Moderator};
use crate::presence::ViewerCounts;
use crate::reader::history::{LocalSource, NatsSource};
use crate::reader::reactions::ReactionTotals;
use crate::reader::{History, RegionSource};
use livecomments_shared::Region;
use livecomments_store::Store;
use livecomments_store::coalesce::Coalesced;
use livecomments_store::cql::CqlStore;
use livecomments_store::embedded::EmbeddedStore;

/// How long a remote region may take to answer a read before the page goes out partial.
const REMOTE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Distinct identical-read groups in flight at once; beyond it reads go straight to the store.
const COALESCE_INFLIGHT: usize = 4096;
/// Pending connections the kernel queues for accept (capped by net.core.somaxconn).
const LISTEN_BACKLOG: u32 = 16_384;
/// How long shutdown waits for in-flight requests after telling streams to reconnect.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The regional store, and the CQL engine under it when there is one (the shared rate limit
/// lives there).
async fn open_store(s: &Settings) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<CqlStore>>)> {
    if s.cql.cql_nodes.is_empty() {
        let store = Arc::new(
            EmbeddedStore::open(&s.data_dir, s.store_cache_mb)
                .context("opening the embedded store")?,
        );
        let purger = store.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                if let Err(e) = purger.purge_expired_keys().await {
                    tracing::warn!(error = %e, "idempotency purge failed");
                }
            }
        });
        Ok((
            Arc::new(Coalesced::with_capacity(store, COALESCE_INFLIGHT)),
            None,
        ))
    } else {
        let opts = s.cql.options()?;
        let store = Arc::new(
            CqlStore::connect(&opts)
                .await
                .with_context(|| format!("connecting to the CQL store ({})", opts.keyspace))?,
        );
        Ok((
            Arc::new(Coalesced::with_capacity(store.clone(), COALESCE_INFLIGHT)),
            Some(store),
        ))
    }
}

pub async fn run(role: Role, s: Settings) -> anyhow::Result<()> {
    if role == Role::Migrate {
        let opts = s.cql.options()?;
        return livecomments_store::cql::migrate(&opts)
            .await
            .with_context(|| format!("migrating keyspace {}", opts.keyspace));
    }
    let has_store = matches!(role, Role::Standalone | Role::Ingest | Role::Reader);
    let (store, cql) = if has_store {
        let (store, cql) = open_store(&s).await?;
        (Some(store), cql)
    } else {
        (None, None)
    };

    let nats = match &s.nats_url {
        Some(url) => Some(NatsBus::connect(url).await?),
        None => None,
    };
    let rpc = nats.as_ref().map(NatsBus::rpc);
    let bus: Arc<dyn Bus> = match nats {
        Some(n) => Arc::new(n),
        None => Arc::new(LocalBus::new()),
    };

    // History: this region from the store when we hold it, else over NATS; others over NATS.
    let mut sources: Vec<Arc<dyn RegionSource>> = Vec::new();
    for region in &s.regions {
        if *region == s.region && store.is_some() {
            sources.push(Arc::new(LocalSource {
                region: region.clone(),
                store: store.clone().context("store")?,
            }));
        } else if let Some(rpc) = &rpc {
            crate::metrics::METRICS.since_query_region(region);
            sources.push(Arc::new(NatsSource {
                region: region.clone(),
                rpc: rpc.clone(),
                timeout: REMOTE_TIMEOUT,
            }));
        } else {
            anyhow::bail!("--regions lists {region:?} but there is no --nats-url to reach it");
        }
    }
    let history = Arc::new(History::new(sources));

    // Readers (and standalone with NATS) answer other regions' since-queries and reaction
    // totals queries (CONTRACT §11).
    if let (Some(rpc), Some(store), true) = (
        &rpc,
        &store,
        matches!(role, Role::Standalone | Role::Reader),
    ) {
        keep_serving(
            "since-query",
            crate::reader::responder::serve(rpc.clone(), s.region.clone(), store.clone()),
        );
        keep_serving(
            "reaction totals",
            crate::reader::reactions::serve(rpc.clone(), s.region.clone(), store.clone()),
        );
    }

    // Viewer counts of every fanout (CONTRACT §11): readers answer GET .../viewers with them,
    // fanouts send `event: viewers`.
    let viewer_counts = matches!(role, Role::Standalone | Role::Reader | Role::Fanout)
        .then(|| ViewerCounts::listen(bus.clone(), &Region::trusted(s.region.clone())));

    // The writer of this process (ingest roles): comments and deletions.
    let pipeline = match (&store, role) {
        (Some(store), Role::Standalone | Role::Ingest) => Some(Pipeline::start(
            s.region.clone(),
            store.clone(),
            bus.clone(),
        )),
        _ => None,
    };

    // Writers answer deletions forwarded by other regions.
    if let (Some(rpc), Some(store), Some(pipeline)) = (&rpc, &store, &pipeline) {
        keep_serving(
            "deletion",
            crate::ingest::delete::serve(
                rpc.clone(),
                s.region.clone(),
                store.clone(),
                pipeline.clone(),
            ),
        );
    }

    // Bans and post settings (CONTRACT §8, §9): every role keeps them in memory; a node with
    // the store loads them before it serves, so it never admits a banned user's POST.
    let moderation = ModState::new();
    if let Some(store) = &store {
        crate::moderation::sync::load(&moderation, store.as_ref()).await?;
    }
    Syncer {
        state: moderation.clone(),
        store: store.clone(),
        bus: bus.clone(),
        rpc: rpc.clone(),
        region: s.region.clone(),
        // Without a store (a fanout) the node asks its own region too.
        remote: s
            .regions
            .iter()
            .filter(|r| store.is_none() || **r != s.region)
            .cloned()
            .collect(),
    }
    .spawn();

    let auth = Authenticator::from_args(&s.auth, role == Role::Standalone)?.map(Arc::new);
    if let Some(a) = &auth
        && let Some((token, _)) = a.dev_token("demo", 24 * 3600)
    {
        tracing::info!(user_id = "demo", token = %token, "no JWT key configured: generated a dev secret; GET /dev/token?user_id=<id> for more tokens");
    }
    let common = Arc::new(Common {
        region: s.region.clone(),
        auth,
        read_requires_token: s.auth.read_requires_token,
        bus: bus.clone(),
        store: store.clone(),
        trusted_proxies: s.limits.trusted_proxies.clone(),
        demo_page: role == Role::Standalone,
    });
    // The deployment's other regions: where deletions are forwarded and reaction totals asked.
    let others: Vec<String> = s
        .regions
        .iter()
        .filter(|r| **r != s.region)
        .cloned()
        .collect();
    let ingest = match (&store, pipeline) {
        (Some(store), Some(pipeline)) => Some(Arc::new(IngestState {
            common: common.clone(),
            pipeline,
            store: store.clone(),
            moderation: Arc::new(Moderator {
                state: moderation.clone(),
                store: store.clone(),
                bus: bus.clone(),
                region: s.region.clone(),
            }),
            slow: match &cql {
                Some(store) => SlowMode::Shared(store.clone()),
                None => SlowMode::local(),
            },
            history: history.clone(),
            rate: Arc::new(match cql.clone() {
                Some(store) => UserLimit::Shared {
                    store,
                    limit: s.limits.rate_limit,
                    window: Duration::from_secs(s.limits.rate_window_secs),
                    namespace: "",
                },
                None => UserLimit::Local(RateLimiter::new(
                    s.limits.rate_limit,
                    Duration::from_secs(s.limits.rate_window_secs),
                )),
            }),
            reactions: Reactions::start(
                Region::trusted(s.region.clone()),
                store.clone(),
                bus.clone(),
                match &cql {
                    Some(store) => UserLimit::Shared {
                        store: store.clone(),
                        limit: s.limits.reaction_limit,
                        window: Duration::from_secs(1),
                        // Reactions do not eat into the comment limit.
                        namespace: "\u{1}reaction\u{1}",
                    },
                    None => UserLimit::Local(RateLimiter::new(
                        s.limits.reaction_limit,
                        Duration::from_secs(1),
                    )),
                },
            ),
            remote_deletes: rpc
                .clone()
                .filter(|_| !others.is_empty())
                .map(|rpc| RemoteDeletes {
                    rpc,
                    regions: others.clone(),
                }),
        })),
        _ => None,
    };
    let reader = match (&store, &viewer_counts, role) {
        (Some(store), Some(viewers), Role::Standalone | Role::Reader) => {
            Some(Arc::new(ReaderState {
                common: common.clone(),
                history: history.clone(),
                viewers: viewers.clone(),
                reactions: ReactionTotals {
                    store: store.clone(),
                    remote: rpc
                        .clone()
                        .filter(|_| !others.is_empty())
                        .map(|rpc| (rpc, others)),
                    timeout: REMOTE_TIMEOUT,
                },
            }))
        }
        _ => None,
    };
    let fanout = match (&viewer_counts, role) {
        (Some(counts), Role::Standalone | Role::Fanout) => Some(Arc::new(FanoutState {
            common: common.clone(),
            fanout: Fanout::start(
                bus.clone(),
                history.clone(),
                FanoutConfig {
                    heartbeat: Duration::from_secs(s.limits.heartbeat_secs),
                    viewer_buffer: s.limits.viewer_buffer,
                    max_streams: s.limits.max_streams,
                    max_streams_per_ip: s.limits.max_streams_per_ip,
                    replay_max: 10_000,
                },
                moderation.clone(),
                counts.clone(),
            ),
        })),
        _ => None,
    };
    if let Some(f) = &fanout {
        crate::presence::report(
            Arc::downgrade(&f.fanout),
            bus.clone(),
            Region::trusted(s.region.clone()),
            &f.fanout.counts,
        );
        crate::fanout::reactions::relay(Arc::downgrade(&f.fanout), bus.clone());
    }
    let rooms = Rooms {
        common,
        ingest,
        reader,
        fanout,
    };
    let lean = crate::server::Lean {
        streams: rooms.fanout.clone(),
        posts: rooms.ingest.clone(),
    };
    let router = http::router(&rooms);
    let listener = bind(s.listen).with_context(|| format!("binding --listen {}", s.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(role = ?role, listen = %local, region = %s.region, "serving");
    let fanout_for_shutdown = rooms.fanout.as_ref().map(|f| f.fanout.clone());
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("shutting down: refusing new connections, telling streams to reconnect");
        if let Some(f) = fanout_for_shutdown {
            f.close_all();
        }
    };
    let threads = s
        .http_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    crate::server::serve(listener, router, lean, shutdown, SHUTDOWN_GRACE, threads)
        .await
        .context("starting the connection threads")?;
    tracing::info!("stopped");
    Ok(())
}

/// Runs a responder for the life of the process; one that stops is logged.
fn keep_serving(
    what: &'static str,
    responder: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(e) = responder.await {
            tracing::error!(error = %e, "{what} responder stopped");
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// A deep accept backlog: after a deploy or a fanout loss thousands of viewers reconnect at
/// once, and a SYN dropped from a full backlog costs its viewer a 1 s retransmit.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
