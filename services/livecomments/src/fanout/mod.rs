//! The fanout: Server-Sent-Events viewers grouped by post.
//!
//! - One bus subscription per post with viewers in this process ([`hub::Hub`]), taken when
//!   the first viewer arrives and released when the last leaves.
//! - Each event is serialised once ([`sse::Frame`]) and the hub writes the same bytes to
//!   every viewer's socket without waiting ([`conn::Conn`]); events that arrive together go
//!   out in one write.
//! - What a socket cannot take at once waits, bounded, in its connection; a viewer further
//!   behind is cut off (it resumes with Last-Event-ID), never waited for.
//! - Resume: join the hub first (live frames start queueing), then replay from history,
//!   then render the queue skipping what the replay covered, then go live ([`viewer`]).
//! - The fanout never opens a store: history comes from the reader ([`History`]).

pub mod conn;
pub mod expiry;
pub mod hub;
pub mod sse;
pub mod viewer;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::bus::Bus;
use crate::metrics::METRICS;
use crate::reader::History;
use hub::Hub;

#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub heartbeat: Duration,
    pub viewer_buffer: usize,
    pub max_streams: usize,
    pub max_streams_per_ip: usize,
    /// Most comments replayed to one resuming viewer.
    pub replay_max: usize,
}

pub struct Fanout {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) history: Arc<History>,
    pub(crate) cfg: FanoutConfig,
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: std::sync::atomic::AtomicUsize,
    /// Set on shutdown: hubs tell their viewers to reconnect elsewhere.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// Streams to close when their token expires (`--read-requires-token`).
    pub(crate) expiries: Arc<expiry::Expiries>,
}

/// Why a stream was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TooManyStreams,
    TooManyStreamsFromIp,
}

/// Holds a connection slot; released on drop.
pub struct Slot {
    fanout: Arc<Fanout>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.fanout
            .total
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let mut per_ip = self.fanout.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        METRICS.sse_streams.dec();
    }
}

impl Fanout {
    pub fn new(bus: Arc<dyn Bus>, history: Arc<History>, cfg: FanoutConfig) -> Arc<Self> {
        Arc::new(Fanout {
            bus,
            history,
            cfg,
            hubs: Mutex::default(),
            per_ip: Mutex::default(),
            total: Default::default(),
            closing: tokio::sync::watch::channel(false).0,
            expiries: Arc::default(),
        })
    }

    /// Takes a connection slot for `ip`, or says which limit refused it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        use std::sync::atomic::Ordering;
        let mut per_ip = self.per_ip.lock();
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.cfg.max_streams_per_ip {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            METRICS.sse_refused.inc();
            return Err(Refusal::TooManyStreamsFromIp);
        }
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_streams {
            self.total.fetch_sub(1, Ordering::Relaxed);
            if *n == 0 {
                per_ip.remove(&ip);
            }
            METRICS.sse_refused.inc();
            return Err(Refusal::TooManyStreams);
        }
        *n += 1;
        METRICS.sse_streams.inc();
        Ok(Slot {
            fanout: self.clone(),
            ip,
        })
    }

    /// The hub of `post_id`, created (and subscribed) if this is its first viewer.
    pub(crate) fn hub(self: &Arc<Self>, post_id: &str) -> Arc<Hub> {
        let mut hubs = self.hubs.lock();
        if let Some(h) = hubs.get(post_id)
            && !h.is_closed()
        {
            return h.clone();
        }
        let hub = Hub::start(self.clone(), post_id.to_string());
        hubs.insert(post_id.to_string(), hub.clone());
        METRICS.sse_posts.set(hubs.len() as i64);
        hub
    }

    /// Called by a hub that lost its last viewer: forget it if nobody rejoined meanwhile.
    pub(crate) fn retire(&self, post_id: &str, hub: &Arc<Hub>) -> bool {
        let mut hubs = self.hubs.lock();
        let same = hubs.get(post_id).is_some_and(|h| Arc::ptr_eq(h, hub));
        if same && hub.try_close() {
            hubs.remove(post_id);
            METRICS.sse_posts.set(hubs.len() as i64);
            return true;
        }
        false
    }

    /// Streams open on this process right now.
    pub fn open_streams(&self) -> usize {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn active_posts(&self) -> usize {
        self.hubs.lock().len()
    }

    /// Shutdown: every viewer is told to reconnect (and its stream ends).
    pub fn close_all(&self) {
        let _ = self.closing.send(true);
    }
}
