//! Process metrics, kept in a `prometheus-client` registry and rendered as Prometheus text
//! (version 0.0.4) at `GET /metrics`.
//!
//! Counters and gauges are the library's: one `Arc`'d atomic each, so a hot path (the hub's
//! walk over its viewers) still pays one relaxed add per flush. Histograms take a short lock
//! per observation, so they are observed once per request, batch, hub dispatch, remote
//! query or resume: never once per viewer delivery.
//!
//! Names are the ones the hand-written exporter had (`livecomments_*`): the registry adds
//! the prefix, and a counter registered as `x` is exported as `x_total`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The label set of a per-region series.
pub type RegionLabel = [(&'static str, String); 1];

pub struct Metrics {
    pub comments_created: Counter,
    pub comments_idempotent_replays: Counter,
    pub comments_deleted: Counter,
    pub requests_rejected: Counter,
    pub rate_limited: Counter,
    pub reactions_accepted: Counter,
    pub moderation_refused: Counter,
    pub reactions_lost: Counter,
    pub store_errors: Counter,
    pub write_queue_full: Counter,
    pub store_batches: Counter,
    pub bus_publish_errors: Counter,
    pub bus_decode_errors: Counter,
    pub bus_dropped: Counter,
    pub writers_lost: Counter,
    pub withdraw_failures: Counter,
    pub withdrawals_retracted: Counter,
    pub hub_repairs: Counter,
    pub sse_streams: Gauge,
    pub sse_posts: Gauge,
    pub sse_events_delivered: Counter,
    pub sse_slow_disconnects: Counter,
    /// Streams closed because their token expired (CONTRACT §12).
    pub sse_token_expired: Counter,
    pub sse_replayed: Counter,
    /// Resumes served from the hub's recent events instead of from history.
    pub sse_resumes_from_memory: Counter,
    pub sse_refused: Counter,
    pub since_queries_served: Counter,
    pub remote_region_failures: Counter,
    /// `POST /comment` from the handler's start to its 201 (store commit included).
    pub post_seconds: Histogram,
    /// One group-commit batch's `insert_batch`.
    pub store_commit_seconds: Histogram,
    /// A comment's id time (the writer stamps it just before the commit) to a hub having
    /// queued it to all its viewers: once per comment per hub.
    pub publish_to_sse_seconds: Histogram,
    /// One since-query to another region over NATS, answered or not, by `region`.
    pub since_query_seconds: Family<RegionLabel, Histogram, fn() -> Histogram>,
    /// Comments replayed to one resuming viewer (Last-Event-ID).
    pub sse_replay_length: Histogram,
    registry: Registry,
}

/// POST and store commit, in seconds. The benchmarks measure a POST at p50 1.8 ms / p99
/// 3.4 ms on the embedded store (docs/BENCHMARKS.md) and the target is p99 ≤ 20 ms, so the
/// buckets are dense from 0.5 ms to 50 ms; 0.1-5 s show a stalled or retrying store, and
/// beyond 5 s is the implicit +Inf.
const WRITE_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Publish → SSE write, in seconds. The id time has millisecond resolution, so nothing below
/// 1 ms; the benchmarks' end-to-end targets are p99 ≤ 5 ms (many small posts), ≤ 10 ms
/// (1,000 viewers at 100/s) and ≤ 200 ms (10k viewers on one hot post), so those are bucket
/// edges; 1-30 s is a comment that came by history repair after the bus lost it (a hub
/// retries its repairs every second).
const DELIVERY_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// A since-query round trip, in seconds: a NATS request-reply in one site is ~1 ms, across
/// regions tens to a couple of hundred ms; the request gives up at 1.5 s (`REMOTE_TIMEOUT`
/// in app.rs), so the 1.5 s bucket holds the timeouts and the buckets end there.
const SINCE_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 1.5,
];

/// Comments per replay: 0 (a resume that missed nothing) is the common case and gets its own
/// bucket; the replay is cut at `replay_max` (10,000 by default), the last edge.
const REPLAY_BUCKETS: [f64; 12] = [
    0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0,
];

fn since_histogram() -> Histogram {
    Histogram::new(SINCE_BUCKETS)
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            comments_created: Counter::default(),
            comments_idempotent_replays: Counter::default(),
            comments_deleted: Counter::default(),
            requests_rejected: Counter::default(),
            rate_limited: Counter::default(),
            reactions_accepted: Counter::default(),
            moderation_refused: Counter::default(),
            reactions_lost: Counter::default(),
            store_errors: Counter::default(),
            write_queue_full: Counter::default(),
            store_batches: Counter::default(),
            bus_publish_errors: Counter::default(),
            bus_decode_errors: Counter::default(),
            bus_dropped: Counter::default(),
            writers_lost: Counter::default(),
            withdraw_failures: Counter::default(),
            withdrawals_retracted: Counter::default(),
            hub_repairs: Counter::default(),
            sse_streams: Gauge::default(),
            sse_posts: Gauge::default(),
            sse_events_delivered: Counter::default(),
            sse_slow_disconnects: Counter::default(),
            sse_token_expired: Counter::default(),
            sse_replayed: Counter::default(),
            sse_resumes_from_memory: Counter::default(),
            sse_refused: Counter::default(),
            since_queries_served: Counter::default(),
            remote_region_failures: Counter::default(),
            post_seconds: Histogram::new(WRITE_BUCKETS),
            store_commit_seconds: Histogram::new(WRITE_BUCKETS),
            publish_to_sse_seconds: Histogram::new(DELIVERY_BUCKETS),
            since_query_seconds: Family::new_with_constructor(since_histogram),
            sse_replay_length: Histogram::new(REPLAY_BUCKETS),
            registry: Registry::with_prefix("livecomments"),
        };
        m.registered()
    }

    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        // The registry ends each help text with a period.
        let counters = [
            (
                "comments_created",
                "Comments durably stored by this process",
                &self.comments_created,
            ),
            (
                "comments_idempotent_replays",
                "POSTs answered from an earlier Idempotency-Key",
                &self.comments_idempotent_replays,
            ),
            (
                "comments_deleted",
                "Comments deleted",
                &self.comments_deleted,
            ),
            (
                "requests_rejected",
                "Requests answered with a 4xx error",
                &self.requests_rejected,
            ),
            (
                "rate_limited",
                "POSTs refused by the per-user rate limit",
                &self.rate_limited,
            ),
            (
                "moderation_refused",
                "POSTs refused by moderation: a ban, a closed post or slow mode (CONTRACT §8, §9)",
                &self.moderation_refused,
            ),
            (
                "reactions_accepted",
                "Reactions counted (202)",
                &self.reactions_accepted,
            ),
            (
                "reactions_lost",
                "Reactions counted but not added to the durable totals (a failed write, never retried)",
                &self.reactions_lost,
            ),
            (
                "store_errors",
                "Store operations that failed",
                &self.store_errors,
            ),
            (
                "write_queue_full",
                "POSTs answered 503 because the writer's queue was full",
                &self.write_queue_full,
            ),
            (
                "store_batches",
                "Group-commit batches written",
                &self.store_batches,
            ),
            (
                "bus_publish_errors",
                "Live events that could not be published",
                &self.bus_publish_errors,
            ),
            (
                "bus_decode_errors",
                "Bus messages dropped as undecodable or inconsistent",
                &self.bus_decode_errors,
            ),
            (
                "bus_dropped",
                "Bus messages lost to a slow local consumer",
                &self.bus_dropped,
            ),
            (
                "writers_lost",
                "Ingest writers that fell silent (died or froze) as this fanout noticed them",
                &self.writers_lost,
            ),
            (
                "withdraw_failures",
                "Comments answered 503 that could not be withdrawn from the store (may appear in history unstreamed)",
                &self.withdraw_failures,
            ),
            (
                "withdrawals_retracted",
                "Comments answered 503 whose write landed anyway, removed and retracted in the stream with a deletion",
                &self.withdrawals_retracted,
            ),
            (
                "hub_repairs",
                "Comments a hub took from history because the bus did not bring them",
                &self.hub_repairs,
            ),
            (
                "sse_events_delivered",
                "Events queued to SSE viewers",
                &self.sse_events_delivered,
            ),
            (
                "sse_slow_disconnects",
                "Viewers cut off because their buffer was full",
                &self.sse_slow_disconnects,
            ),
            (
                "sse_token_expired",
                "Streams closed with event: reconnect because their token expired",
                &self.sse_token_expired,
            ),
            (
                "sse_replayed",
                "Comments replayed to resuming viewers",
                &self.sse_replayed,
            ),
            (
                "sse_resumes_from_memory",
                "Resumes served from the hub's last seconds of events, without reading history",
                &self.sse_resumes_from_memory,
            ),
            (
                "sse_refused",
                "Streams refused by connection limits",
                &self.sse_refused,
            ),
            (
                "since_queries_served",
                "Since-queries answered over NATS",
                &self.since_queries_served,
            ),
            (
                "remote_region_failures",
                "Remote region queries that failed or timed out",
                &self.remote_region_failures,
            ),
        ];
        for (name, help, c) in counters {
            r.register(name, help, c.clone());
        }
        r.register("sse_streams", "Open SSE streams", self.sse_streams.clone());
        r.register(
            "sse_posts",
            "Posts with at least one viewer on this process (one bus subscription each)",
            self.sse_posts.clone(),
        );
        r.register(
            "post_seconds",
            "POST /comment from accepting the request to its 201, in seconds",
            self.post_seconds.clone(),
        );
        r.register(
            "store_commit_seconds",
            "One group-commit batch written to the store, in seconds",
            self.store_commit_seconds.clone(),
        );
        r.register(
            "publish_to_sse_seconds",
            "A comment's id time to a hub having queued it to all its viewers (once per comment per hub), in seconds",
            self.publish_to_sse_seconds.clone(),
        );
        r.register(
            "since_query_seconds",
            "One since-query to another region over NATS, answered or failed, in seconds",
            self.since_query_seconds.clone(),
        );
        r.register(
            "sse_replay_length",
            "Comments replayed to one resuming viewer (Last-Event-ID)",
            self.sse_replay_length.clone(),
        );
        self
    }

    /// Starts the `region` since-query series at zero, so a dashboard's rate of it exists
    /// before the first query (and a scrape shows which regions this process asks).
    pub fn since_query_region(&self, region: &str) {
        let _ = self
            .since_query_seconds
            .get_or_create(&[("region", region.to_string())]);
    }

    pub fn observe_since_query(&self, region: &str, took: Duration) {
        self.since_query_seconds
            .get_or_create(&[("region", region.to_string())])
            .observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail; the library's only other error is a native-only
        // histogram, which this registry has none of.
        if let Err(e) = prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding /metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_types_and_values_are_the_prometheus_text_ones() {
        let m = Metrics::new();
        m.comments_created.inc();
        m.sse_streams.set(3);
        m.post_seconds.observe(0.004);
        m.observe_since_query("eu", Duration::from_millis(3));
        let text = m.render();
        for line in [
            "# TYPE livecomments_comments_created_total counter",
            "livecomments_comments_created_total 1",
            "# HELP livecomments_comments_created_total Comments durably stored by this process.",
            "# TYPE livecomments_sse_streams gauge",
            "livecomments_sse_streams 3",
            "# TYPE livecomments_post_seconds histogram",
            "livecomments_post_seconds_count 1",
            // 4 ms falls in the 5 ms bucket, not in the 3 ms one.
            "livecomments_post_seconds_bucket{le=\"0.003\"} 0",
            "livecomments_post_seconds_bucket{le=\"0.005\"} 1",
            "livecomments_since_query_seconds_count{region=\"eu\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
