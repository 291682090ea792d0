//! Process metrics in the Prometheus text format. Plain atomics: the hot paths (one delivery
//! per viewer per event) pay one relaxed add, and `/metrics` needs no registry crate.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub struct Counter(AtomicU64);
pub struct Gauge(AtomicI64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1)
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Gauge {
    const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Metrics {
    pub comments_created: Counter,
    pub comments_idempotent_replays: Counter,
    pub comments_deleted: Counter,
    pub requests_rejected: Counter,
    pub rate_limited: Counter,
    pub store_errors: Counter,
    pub write_queue_full: Counter,
    pub store_batches: Counter,
    pub bus_publish_errors: Counter,
    pub bus_decode_errors: Counter,
    pub bus_dropped: Counter,
    pub writers_lost: Counter,
    pub withdraw_failures: Counter,
    pub hub_repairs: Counter,
    pub sse_streams: Gauge,
    pub sse_posts: Gauge,
    pub sse_events_delivered: Counter,
    pub sse_slow_disconnects: Counter,
    pub sse_replayed: Counter,
    pub sse_refused: Counter,
    pub since_queries_served: Counter,
    pub remote_region_failures: Counter,
}

pub static METRICS: Metrics = Metrics {
    comments_created: Counter::new(),
    comments_idempotent_replays: Counter::new(),
    comments_deleted: Counter::new(),
    requests_rejected: Counter::new(),
    rate_limited: Counter::new(),
    store_errors: Counter::new(),
    write_queue_full: Counter::new(),
    store_batches: Counter::new(),
    bus_publish_errors: Counter::new(),
    bus_decode_errors: Counter::new(),
    bus_dropped: Counter::new(),
    writers_lost: Counter::new(),
    withdraw_failures: Counter::new(),
    hub_repairs: Counter::new(),
    sse_streams: Gauge::new(),
    sse_posts: Gauge::new(),
    sse_events_delivered: Counter::new(),
    sse_slow_disconnects: Counter::new(),
    sse_replayed: Counter::new(),
    sse_refused: Counter::new(),
    since_queries_served: Counter::new(),
    remote_region_failures: Counter::new(),
};

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP livecomments_{name} {help}\n# TYPE livecomments_{name} counter\nlivecomments_{name} {v}"
            );
        };
        counter(
            "comments_created_total",
            "Comments durably stored by this process.",
            self.comments_created.get(),
        );
        counter(
            "comments_idempotent_replays_total",
            "POSTs answered from an earlier Idempotency-Key.",
            self.comments_idempotent_replays.get(),
        );
        counter(
            "comments_deleted_total",
            "Comments deleted.",
            self.comments_deleted.get(),
        );
        counter(
            "requests_rejected_total",
            "Requests answered with a 4xx error.",
            self.requests_rejected.get(),
        );
        counter(
            "rate_limited_total",
            "POSTs refused by the per-user rate limit.",
            self.rate_limited.get(),
        );
        counter(
            "store_errors_total",
            "Store operations that failed.",
            self.store_errors.get(),
        );
        counter(
            "write_queue_full_total",
            "POSTs answered 503 because the writer's queue was full.",
            self.write_queue_full.get(),
        );
        counter(
            "store_batches_total",
            "Group-commit batches written.",
            self.store_batches.get(),
        );
        counter(
            "bus_publish_errors_total",
            "Live events that could not be published.",
            self.bus_publish_errors.get(),
        );
        counter(
            "bus_decode_errors_total",
            "Bus messages dropped as undecodable or inconsistent.",
            self.bus_decode_errors.get(),
        );
        counter(
            "bus_dropped_total",
            "Bus messages lost to a slow local consumer.",
            self.bus_dropped.get(),
        );
        counter(
            "writers_lost_total",
            "Ingest writers that fell silent (died or froze) as this fanout noticed them.",
            self.writers_lost.get(),
        );
        counter(
            "withdraw_failures_total",
            "Comments answered 503 that could not be withdrawn from the store (may appear in history unstreamed).",
            self.withdraw_failures.get(),
        );
        counter(
            "hub_repairs_total",
            "Comments a hub took from history because the bus did not bring them.",
            self.hub_repairs.get(),
        );
        counter(
            "sse_events_delivered_total",
            "Events queued to SSE viewers.",
            self.sse_events_delivered.get(),
        );
        counter(
            "sse_slow_disconnects_total",
            "Viewers cut off because their buffer was full.",
            self.sse_slow_disconnects.get(),
        );
        counter(
            "sse_replayed_total",
            "Comments replayed to resuming viewers.",
            self.sse_replayed.get(),
        );
        counter(
            "sse_refused_total",
            "Streams refused by connection limits.",
            self.sse_refused.get(),
        );
        counter(
            "since_queries_served_total",
            "Since-queries answered over NATS.",
            self.since_queries_served.get(),
        );
        counter(
            "remote_region_failures_total",
            "Remote region queries that failed or timed out.",
            self.remote_region_failures.get(),
        );
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(
                out,
                "# HELP livecomments_{name} {help}\n# TYPE livecomments_{name} gauge\nlivecomments_{name} {v}"
            );
        };
        gauge("sse_streams", "Open SSE streams.", self.sse_streams.get());
        gauge(
            "sse_posts",
            "Posts with at least one viewer on this process (one bus subscription each).",
            self.sse_posts.get(),
        );
        out
    }
}
