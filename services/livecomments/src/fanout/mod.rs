//! The fanout: Server-Sent-Events viewers grouped by post.
//!
//! - One bus subscription per post with viewers in this process ([`hub::Hub`]), taken when
//!   the first viewer arrives and released when the last leaves.
//! - Each event is serialised once ([`sse::Frame`]) and the hub writes the same bytes to
//!   every viewer's socket without waiting ([`conn::Conn`]); events that arrive together go
//!   out in one write.
//! - What a socket cannot take at once waits, bounded, in its connection (handles on the
//!   shared frames); a viewer further behind is cut off (it resumes with Last-Event-ID),
//!   never waited for.
//! - Resume: join the hub first (live frames start queueing), then replay from history,
//!   then render the queue skipping what the replay covered, then go live ([`viewer`]). A
//!   token this hub sent in its last 10 s is served from the hub's memory instead
//!   ([`recent`]): the cut-off viewers of a hot post come back without reading history.
//! - The fanout never opens a store: history comes from the reader ([`History`]).

pub mod conn;
pub mod expiry;
pub mod hub;
pub mod reactions;
mod recent;
pub mod sample;
pub mod sse;
pub mod viewer;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use livecomments_shared::Comment;
use parking_lot::Mutex;

use crate::bus::Bus;
use crate::metrics::METRICS;
use crate::moderation::ModState;
use crate::presence::ViewerCounts;
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
    /// Post settings as this process knows them (CONTRACT §9: the pinned comment), learned
    /// over the bus.
    pins: Arc<ModState>,
    /// Every fanout's viewer counts (CONTRACT §11), for `event: viewers`.
    pub(crate) counts: Arc<ViewerCounts>,
    /// The main runtime, where hubs run: a hub outlives the viewer whose request started it,
    /// and that request may be served on a connection thread's runtime (`server.rs`).
    pub(crate) background: tokio::runtime::Handle,
}

/// What a stream asked for beside its post (CONTRACT §11).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// `rate=R`: at most R comments a second ([`sample`]).
    pub rate: Option<sample::Rate>,
    /// `viewers=1`: `event: viewers` when the post's count changes.
    pub viewers: bool,
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
    /// A fanout that sends each post's pinned comment (from `pins`) first on every stream,
    /// and `event: pin` / `event: unpin` to the post's streams when it changes; viewer counts
    /// come from `counts`.
    pub fn start(
        bus: Arc<dyn Bus>,
        history: Arc<History>,
        cfg: FanoutConfig,
        pins: Arc<ModState>,
        counts: Arc<ViewerCounts>,
    ) -> Arc<Self> {
        let mut changes = pins.pin_changes();
        let fanout = Arc::new(Fanout {
            bus,
            history,
            cfg,
            hubs: Mutex::default(),
            per_ip: Mutex::default(),
            total: Default::default(),
            closing: tokio::sync::watch::channel(false).0,
            expiries: Arc::default(),
            background: tokio::runtime::Handle::current(),
            pins,
            counts,
        });
        fanout.expiries.start();
        let weak = Arc::downgrade(&fanout);
        tokio::spawn(async move {
            loop {
                let change = changes.recv().await;
                let Some(fanout) = weak.upgrade() else { return };
                match change {
                    Ok(c) => fanout.pin_changed(&c.post_id, c.pinned.as_ref()),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Changes were missed: every hub gets its post's pin as it is now.
                        let posts: Vec<String> = fanout.hubs.lock().keys().cloned().collect();
                        for post in posts {
                            let pinned = fanout.pinned(&post);
                            fanout.pin_changed(&post, pinned.as_ref());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        fanout
    }

    /// The post's pinned comment, if any.
    pub(crate) fn pinned(&self, post_id: &str) -> Option<Comment> {
        self.pins.settings(&post_id.into()).pinned
    }

    fn pin_changed(&self, post_id: &str, pinned: Option<&Comment>) {
        let hub = self.hubs.lock().get(post_id).cloned();
        if let Some(hub) = hub {
            hub.control(Arc::new(match pinned {
                Some(c) => sse::Frame::pin(c),
                None => sse::Frame::unpin(post_id),
            }));
        }
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

    /// The hub of `post_id` if this process has one.
    pub(crate) fn hub_of(&self, post_id: &str) -> Option<Arc<Hub>> {
        self.hubs.lock().get(post_id).cloned()
    }

    /// Open streams per post on this process (posts with at least one).
    pub fn viewer_counts(&self) -> Vec<(livecomments_shared::PostId, u32)> {
        let hubs: Vec<Arc<Hub>> = self.hubs.lock().values().cloned().collect();
        hubs.iter()
            .filter_map(|h| {
                let n = h.viewers();
                (n > 0).then(|| (livecomments_shared::PostId::trusted(h.post_id()), n as u32))
            })
            .collect()
    }

    pub fn active_posts(&self) -> usize {
        self.hubs.lock().len()
    }

    /// Shutdown: every viewer is told to reconnect (and its stream ends).
    pub fn close_all(&self) {
        // Stored even when no hub listens yet: a hub started after this sees it.
        self.closing.send_replace(true);
    }
}
