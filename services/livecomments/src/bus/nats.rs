//! The NATS bus: `comments.live.<region>.<post_id>` with MessagePack payloads (CONTRACT §5).
//! Subscriptions use `comments.live.*.<post_id>` so one subscription per post carries every
//! region's events; across a supercluster, gateways forward them because of that interest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use livecomments_shared::moderation::{self, ModChange};
use livecomments_shared::validate;
use livecomments_shared::wire::{self, LiveEvent, ReactionBeat, ViewerBeat, WriterBeat};
use tokio::sync::broadcast;

use super::{Beats, Bus, BusError, Delivery, LostWriter, ModSubscription, Subscription};
use crate::metrics::METRICS;
use crate::trace::{self, RequestId};

/// A publish that cannot be handed to the client within this bound (NATS down and the
/// client's buffer full) is given up: the comment is already durable and viewers repair.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(200);

/// Writers a fanout keeps track of; past it the oldest are forgotten (a region runs a few).
const MAX_TRACKED_WRITERS: usize = 4096;
/// Lost-writer notices buffered per receiver; one that lags sweeps every region instead.
const LOST_CAPACITY: usize = 256;

pub struct NatsBus {
    client: async_nats::Client,
    connected: Arc<AtomicBool>,
    reconnects: tokio::sync::watch::Receiver<u64>,
    lost: broadcast::Sender<LostWriter>,
    /// The writer monitor starts with the first caller of `lost_writers` (fanouts only);
    /// writers heard of through their comments reach it here.
    monitor: OnceLock<tokio::sync::mpsc::Sender<(String, String)>>,
}

impl NatsBus {
    /// Connects (retrying in the background if the server is not up yet).
    /// `url` may list several servers of the region's cluster, comma separated.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        use anyhow::Context;
        let addrs = url
            .split(',')
            .map(|u| {
                u.trim()
                    .parse::<async_nats::ServerAddr>()
                    .with_context(|| format!("--nats-url: {u:?} is not a NATS URL"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let connected = Arc::new(AtomicBool::new(false));
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let flag = connected.clone();
        let tx = Arc::new(tx);
        let client = async_nats::ConnectOptions::new()
            .name("livecomments")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(2)))
            .subscription_capacity(8192)
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((attempt as u64 * 100).min(1000))
            })
            .event_callback(move |event| {
                let flag = flag.clone();
                let tx = tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            let was = flag.swap(true, Ordering::SeqCst);
                            if !was {
                                tx.send_modify(|n| *n += 1);
                                tracing::info!("nats connected");
                            }
                        }
                        async_nats::Event::Disconnected => {
                            flag.store(false, Ordering::SeqCst);
                            tracing::warn!("nats disconnected");
                        }
                        async_nats::Event::SlowConsumer(_) => {
                            // Messages were dropped for this client: the same repair as after
                            // a reconnect (hubs fetch from history what they may have lost).
                            METRICS.bus_dropped.inc();
                            tx.send_modify(|n| *n += 1);
                        }
                        other => tracing::info!(event = %other, "nats event"),
                    }
                }
            })
            .connect(addrs)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        if client.connection_state() == async_nats::connection::State::Connected {
            connected.store(true, Ordering::SeqCst);
        }
        Ok(NatsBus {
            client,
            connected,
            reconnects: rx,
            lost: broadcast::channel(LOST_CAPACITY).0,
            monitor: OnceLock::new(),
        })
    }

    fn monitor(&self) -> &tokio::sync::mpsc::Sender<(String, String)> {
        self.monitor.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(1024);
            tokio::spawn(Self::watch_writers(
                self.client.clone(),
                self.lost.clone(),
                rx,
            ));
            tx
        })
    }

    /// Follows `comments.writers.*` (and the writers hubs heard of through their comments)
    /// and reports each writer silent for `WRITER_LOST_MS`.
    async fn watch_writers(
        client: async_nats::Client,
        lost: broadcast::Sender<LostWriter>,
        mut heard: tokio::sync::mpsc::Receiver<(String, String)>,
    ) {
        let mut sub = loop {
            match client.subscribe(wire::WRITERS_SUBJECT_ALL).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "writer monitor: subscribe failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let mut seen: HashMap<(String, String), Instant> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let silent = Duration::from_millis(wire::WRITER_LOST_MS);
        loop {
            tokio::select! {
                Some(key) = heard.recv() => {
                    if seen.len() < MAX_TRACKED_WRITERS {
                        seen.entry(key).or_insert_with(Instant::now);
                    }
                }
                msg = sub.next() => {
                    let Some(msg) = msg else { return };
                    let Ok(beat) = wire::decode::<WriterBeat>(&msg.payload) else {
                        METRICS.bus_decode_errors.inc();
                        continue;
                    };
                    if !beat_is_sane(&beat, &msg.subject) {
                        METRICS.bus_decode_errors.inc();
                        continue;
                    }
                    if seen.len() >= MAX_TRACKED_WRITERS
                        && let Some(oldest) = seen.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone()) {
                            seen.remove(&oldest);
                        }
                    seen.insert((beat.region.to_string(), beat.writer), Instant::now());
                }
                _ = tick.tick() => {
                    let gone: Vec<_> = seen
                        .iter()
                        .filter(|(_, at)| at.elapsed() > silent)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for (region, writer) in gone {
                        seen.remove(&(region.clone(), writer.clone()));
                        tracing::info!(%region, %writer, "writer fell silent: fetching what it may not have published");
                        METRICS.writers_lost.inc();
                        let _ = lost.send(LostWriter { region, writer });
                    }
                }
            }
        }
    }

    /// Request/reply on the same connection.
    pub fn rpc(&self) -> super::Rpc {
        super::Rpc::new(self.client.clone())
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(
        &self,
        region: &str,
        event: &LiveEvent,
        request_id: Option<&RequestId>,
    ) -> Result<(), BusError> {
        let bytes = wire::encode(event).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let subject = wire::live_subject(region, event.post_id());
        let send = async {
            match request_id {
                Some(id) => {
                    self.client
                        .publish_with_headers(subject, headers_of(id), bytes.into())
                        .await
                }
                None => self.client.publish(subject, bytes.into()).await,
            }
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable("publish timed out".into())),
        }
    }

    async fn subscribe(&self, post_id: &str) -> Result<Subscription, BusError> {
        let sub = self
            .client
            .subscribe(wire::live_subject_all_regions(post_id))
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let post = post_id.to_string();
        Ok(sub
            .filter_map(move |msg| {
                // The request id is only for the fanout's trace line: not read (no allocation
                // per event) while that line is off.
                let traced = tracing::enabled!(target: trace::TARGET, tracing::Level::DEBUG);
                // A foreign or malicious publisher must not crash or wedge a fanout: anything
                // that does not decode, claims another post, or a comment claiming another region
                // than its subject names, is dropped and counted. (With per-subject NATS
                // permissions, a publisher allowed on one region's subjects cannot then forge
                // another region's comments.)
                let ev = match wire::decode::<LiveEvent>(&msg.payload) {
                    Ok(event)
                        if *event.post_id() == post
                            && event_is_sane(&event)
                            && region_matches_subject(&event, &msg.subject) =>
                    {
                        Some(Delivery {
                            event,
                            request_id: traced.then(|| request_id_of(&msg)).flatten(),
                        })
                    }
                    _ => {
                        METRICS.bus_decode_errors.inc();
                        None
                    }
                };
                async move { ev }
            })
            .boxed())
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
            || self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn reconnects(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reconnects.clone()
    }

    async fn announce_writer(&self, beat: &WriterBeat) -> Result<(), BusError> {
        let bytes = wire::encode(beat).map_err(|e| BusError::Unavailable(e.to_string()))?;
        match tokio::time::timeout(
            PUBLISH_TIMEOUT,
            self.client
                .publish(wire::writers_subject(&beat.region), bytes.into()),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable("publish timed out".into())),
        }
    }

    fn lost_writers(&self) -> broadcast::Receiver<LostWriter> {
        let rx = self.lost.subscribe();
        self.monitor();
        rx
    }

    async fn publish_moderation(&self, region: &str, change: &ModChange) -> Result<(), BusError> {
        let bytes = wire::encode(change).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let subject = moderation::changes_subject(region);
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.client.publish(subject, bytes.into()))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable("publish timed out".into())),
        }
    }

    async fn subscribe_moderation(&self) -> Result<ModSubscription, BusError> {
        let sub = self
            .client
            .subscribe(moderation::CHANGES_SUBJECT_ALL)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(sub
            .filter_map(|msg| {
                // Foreign input: a record that does not decode, breaks a rule, or claims
                // another region than its subject's is dropped and counted.
                let region = msg.subject.split('.').nth(2).unwrap_or("").to_string();
                let change = match wire::decode::<ModChange>(&msg.payload) {
                    Ok(mut c) => {
                        let before = c.records.len();
                        c.records
                            .retain(|r| r.is_sane() && r.origin.as_str() == region);
                        if c.records.len() < before {
                            METRICS.bus_decode_errors.inc();
                        }
                        Some(c)
                    }
                    Err(_) => {
                        METRICS.bus_decode_errors.inc();
                        None
                    }
                };
                async move { change }
            })
            .boxed())
    }

    async fn publish_viewers(&self, beat: &ViewerBeat) -> Result<(), BusError> {
        self.publish_plain(wire::viewers_subject(&beat.region), beat)
            .await
    }

    async fn subscribe_viewers(&self) -> Result<Beats<ViewerBeat>, BusError> {
        self.subscribe_checked(wire::VIEWERS_SUBJECT_ALL, |b: &ViewerBeat, region| {
            beat_is_from(
                region,
                &b.region,
                &b.node,
                &b.posts,
                wire::VIEWER_BEAT_MAX_POSTS,
            )
        })
        .await
    }

    async fn publish_reactions(&self, beat: &ReactionBeat) -> Result<(), BusError> {
        self.publish_plain(wire::reactions_subject(&beat.region), beat)
            .await
    }

    async fn subscribe_reactions(&self) -> Result<Beats<ReactionBeat>, BusError> {
        self.subscribe_checked(wire::REACTIONS_SUBJECT_ALL, |b: &ReactionBeat, region| {
            beat_is_from(
                region,
                &b.region,
                &b.node,
                &b.posts,
                wire::REACTION_BEAT_MAX_POSTS,
            )
        })
        .await
    }

    fn heard_writer(&self, region: &str, writer: &str) {
        // Bounded: when the monitor is behind, the writer's own announcements still count.
        let _ = self
            .monitor()
            .try_send((region.to_string(), writer.to_string()));
    }
}

impl NatsBus {
    /// Publishes `msg` (MessagePack) on `subject` with no headers, within `PUBLISH_TIMEOUT`.
    async fn publish_plain<T: serde::Serialize>(
        &self,
        subject: String,
        msg: &T,
    ) -> Result<(), BusError> {
        let bytes = wire::encode(msg).map_err(|e| BusError::Unavailable(e.to_string()))?;
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.client.publish(subject, bytes.into()))
            .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BusError::Unavailable(e.to_string())),
            Err(_) => Err(BusError::Unavailable("publish timed out".into())),
        }
    }

    /// Subscribes to `subject` (`comments.<kind>.*`): what decodes and passes `sane` (given
    /// the region of the message's subject) comes through; the rest is dropped and counted.
    async fn subscribe_checked<T, F>(
        &self,
        subject: &'static str,
        sane: F,
    ) -> Result<Beats<T>, BusError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
        F: Fn(&T, &str) -> bool + Send + Sync + 'static,
    {
        let sub = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        Ok(sub
            .filter_map(move |msg| {
                let region = msg.subject.split('.').nth(2).unwrap_or("");
                let beat = match wire::decode::<T>(&msg.payload) {
                    Ok(b) if sane(&b, region) => Some(b),
                    _ => {
                        METRICS.bus_decode_errors.inc();
                        None
                    }
                };
                async move { beat }
            })
            .boxed())
    }
}

/// A count beat (viewers, reactions) names the region of its subject, a node of 1..=64
/// visible ASCII characters, and at most `max_posts` valid post ids.
fn beat_is_from<T>(
    subject_region: &str,
    region: &str,
    node: &str,
    posts: &[(livecomments_shared::PostId, T)],
    max_posts: usize,
) -> bool {
    region == subject_region
        && (1..=64).contains(&node.len())
        && node.bytes().all(|b| b.is_ascii_graphic())
        && posts.len() <= max_posts
        && posts.iter().all(|(p, _)| validate::post_id(p).is_ok())
}

/// The NATS headers carrying `id`.
pub(super) fn headers_of(id: &RequestId) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        async_nats::HeaderName::from_static(trace::BUS_HEADER),
        id.as_str(),
    );
    h
}

/// The request id a message carries, when it is a valid one (foreign input: an invalid one
/// is ignored, the message itself still counts).
pub(super) fn request_id_of(msg: &async_nats::Message) -> Option<RequestId> {
    let h = msg.headers.as_ref()?;
    let v = h.get(async_nats::HeaderName::from_static(trace::BUS_HEADER))?;
    RequestId::parse(v.as_str())
}

/// An announcement names a valid region (the one of its subject) and a writer part.
fn beat_is_sane(beat: &WriterBeat, subject: &str) -> bool {
    livecomments_shared::validate::is_region(&beat.region)
        && subject.split('.').nth(2) == Some(beat.region.as_str())
        && beat.writer.len() == 8
        && beat
            .writer
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// A comment is published on `comments.live.<its region>.<post>`, and so is a deletion (by
/// the writer of the region that stored the comment): its tombstone moves positions of that
/// region, which no other region's publisher may do.
fn region_matches_subject(ev: &LiveEvent, subject: &str) -> bool {
    let region = match ev {
        LiveEvent::Comment(lc) => &lc.comment.region,
        LiveEvent::Delete(d) => &d.region,
    };
    subject.split('.').nth(2) == Some(region.as_str())
}

/// Checks what a well-behaved publisher guarantees, so that bad ids or regions never reach
/// positions or SSE frames.
pub fn event_is_sane(ev: &LiveEvent) -> bool {
    use livecomments_shared::{id, validate};
    match ev {
        LiveEvent::Comment(lc) => {
            let c = &lc.comment;
            lc.prev.as_deref().is_none_or(id::is_valid)
                && id::is_valid(&c.id)
                && validate::is_region(&c.region)
                && validate::post_id(&c.post_id).is_ok()
                && c.text.len() <= 4 * validate::TEXT_MAX_CHARS
        }
        LiveEvent::Delete(d) => {
            id::is_valid(&d.id)
                && d.event_id.as_deref().is_none_or(id::is_valid)
                && d.prev.as_deref().is_none_or(id::is_valid)
                && validate::is_region(&d.region)
                && validate::post_id(&d.post_id).is_ok()
        }
    }
}
