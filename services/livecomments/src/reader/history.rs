//! Per-region history sources and the merge across regions.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use livecomments_shared::wire::{self, SinceReply, SinceRequest};
use livecomments_shared::{Comment, Position, comment::newest_first};

use crate::metrics::METRICS;
use crate::store::Store;

/// One region's answer to a page query.
#[derive(Debug, Clone, Default)]
pub struct RegionPage {
    pub comments: Vec<Comment>,
    pub more: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("region {region} unavailable: {reason}")]
    Unavailable { region: String, reason: String },
}

/// Where one region's comments come from.
#[async_trait]
pub trait RegionSource: Send + Sync + 'static {
    fn region(&self) -> &str;
    async fn page(&self, q: &SinceRequest) -> Result<RegionPage, HistoryError>;
}

/// The regional store of this process.
pub struct LocalSource {
    pub region: String,
    pub store: Arc<dyn Store>,
}

/// Answers a page query from a store: shared by [`LocalSource`] and the NATS responder.
pub async fn page_from_store(
    store: &dyn Store,
    region: &str,
    q: &SinceRequest,
) -> Result<RegionPage, HistoryError> {
    let limit = q.limit.clamp(1, wire::SINCE_MAX_LIMIT) as usize;
    // One extra row tells whether more follow without a second query.
    let res = if q.newest_first {
        store
            .newest(&q.post_id, q.before.as_deref(), limit + 1)
            .await
    } else {
        store.after(&q.post_id, q.after.as_deref(), limit + 1).await
    };
    match res {
        Ok(mut comments) => {
            let more = comments.len() > limit;
            comments.truncate(limit);
            Ok(RegionPage { comments, more })
        }
        Err(e) => {
            METRICS.store_errors.inc();
            Err(HistoryError::Unavailable {
                region: region.to_string(),
                reason: e.to_string(),
            })
        }
    }
}

#[async_trait]
impl RegionSource for LocalSource {
    fn region(&self) -> &str {
        &self.region
    }
    async fn page(&self, q: &SinceRequest) -> Result<RegionPage, HistoryError> {
        page_from_store(self.store.as_ref(), &self.region, q).await
    }
}

/// A region reached through its readers on `comments.since.<region>`.
pub struct NatsSource {
    pub region: String,
    pub rpc: crate::bus::Rpc,
    pub timeout: Duration,
}

#[async_trait]
impl RegionSource for NatsSource {
    fn region(&self) -> &str {
        &self.region
    }
    async fn page(&self, q: &SinceRequest) -> Result<RegionPage, HistoryError> {
        let fail = |reason: String| {
            METRICS.remote_region_failures.inc();
            HistoryError::Unavailable {
                region: self.region.clone(),
                reason,
            }
        };
        let reply: SinceReply = self
            .rpc
            .request(wire::since_subject(&self.region), q, self.timeout)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if let Some(err) = reply.error {
            return Err(fail(err));
        }
        // Never trust a reply blindly: keep only this post's comments of that region.
        let comments = reply
            .comments
            .into_iter()
            .filter(|c| {
                c.post_id == q.post_id
                    && c.region == self.region
                    && livecomments_shared::id::is_valid(&c.id)
            })
            .collect();
        Ok(RegionPage {
            comments,
            more: reply.more,
        })
    }
}

/// What a resuming viewer missed.
#[derive(Debug, Default)]
pub struct Replay {
    pub comments: Vec<Comment>,
    /// More than `max` were missed; the rest was cut.
    pub truncated: bool,
    /// Regions whose history could not be read now.
    pub failed: Vec<String>,
}

/// A newest-first page merged from every region.
#[derive(Debug, Clone, Default)]
pub struct MergedPage {
    pub comments: Vec<Comment>,
    /// More older comments exist (in some region).
    pub more: bool,
    /// Regions that did not answer; the page is partial without them.
    pub missing: Vec<String>,
}

/// History of every region of the deployment.
pub struct History {
    sources: Vec<Arc<dyn RegionSource>>,
}

impl History {
    pub fn new(sources: Vec<Arc<dyn RegionSource>>) -> Self {
        History { sources }
    }

    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.region())
    }

    /// Newest first, ids below `before`, skipping `skip` (bounded by the caller), `limit` rows.
    pub async fn newest(
        &self,
        post_id: &str,
        before: Option<&str>,
        skip: usize,
        limit: usize,
    ) -> MergedPage {
        let want = skip + limit;
        let q = SinceRequest {
            post_id: post_id.to_string(),
            after: None,
            before: before.map(str::to_string),
            newest_first: true,
            limit: 0,
        };
        self.merge(q, want, skip, limit, true).await
    }

    /// Oldest first, ids above `after` (exclusive), `limit` rows.
    pub async fn after(&self, post_id: &str, after: Option<&str>, limit: usize) -> MergedPage {
        let q = SinceRequest {
            post_id: post_id.to_string(),
            after: after.map(str::to_string),
            before: None,
            newest_first: false,
            limit: 0,
        };
        self.merge(q, limit, 0, limit, false).await
    }

    /// Asks every region concurrently for `want` rows (in pages of at most SINCE_MAX_LIMIT),
    /// merges, and cuts `skip..skip+limit`.
    async fn merge(
        &self,
        q: SinceRequest,
        want: usize,
        skip: usize,
        limit: usize,
        newest: bool,
    ) -> MergedPage {
        let results = join_all(self.sources.iter().map(|src| {
            let mut q = q.clone();
            async move {
                let mut rows = Vec::new();
                let mut more;
                loop {
                    q.limit = (want - rows.len()).clamp(1, wire::SINCE_MAX_LIMIT as usize) as u32;
                    let page = src.page(&q).await?;
                    more = page.more;
                    if let Some(last) = page.comments.last() {
                        if newest {
                            q.before = Some(last.id.clone());
                        } else {
                            q.after = Some(last.id.clone());
                        }
                    }
                    let got = page.comments.len();
                    rows.extend(page.comments);
                    if !more || got == 0 || rows.len() >= want {
                        break;
                    }
                }
                Ok::<_, HistoryError>((rows, more))
            }
        }))
        .await;
        let mut out = MergedPage::default();
        let mut all = Vec::new();
        for (src, res) in self.sources.iter().zip(results) {
            match res {
                Ok((rows, more)) => {
                    out.more |= more || rows.len() > want;
                    all.extend(rows);
                }
                Err(e) => {
                    tracing::warn!(region = src.region(), error = %e, "region missing from read");
                    out.missing.push(src.region().to_string());
                }
            }
        }
        if newest {
            all.sort_by(newest_first);
        } else {
            all.sort_by(|a, b| a.id.cmp(&b.id));
        }
        // Another region's rows past our cut mean more exist too.
        out.more |= all.len() > want;
        out.comments = all.into_iter().skip(skip).take(limit).collect();
        out
    }

    /// Every comment `pos` does not cover (per region, read after its floor; a region
    /// absent from `pos` from the start), oldest first, at most `max` in all. Regions that did
    /// not answer are listed apart, so the caller can hold them back instead of skipping past
    /// what they hold.
    pub async fn replay(&self, post_id: &str, pos: &Position, max: usize) -> Replay {
        let results = join_all(self.sources.iter().map(|src| {
            let after = pos.floor(src.region()).map(str::to_string);
            async move {
                (
                    src.region().to_string(),
                    self.region_after_where(
                        src.region(),
                        post_id,
                        after.as_deref(),
                        max + 1,
                        |c| !pos.covers(&c.region, &c.id),
                    )
                    .await,
                )
            }
        }))
        .await;
        let mut out = Replay::default();
        for (region, r) in results {
            match r {
                Ok((rows, cut)) => {
                    out.truncated |= cut && rows.len() <= max;
                    out.comments.extend(rows);
                }
                Err(_) => out.failed.push(region),
            }
        }
        // Oldest first across regions too, so the stream reads naturally.
        out.comments.sort_by(|a, b| a.id.cmp(&b.id));
        if out.comments.len() > max {
            out.comments.truncate(max);
            out.truncated = true;
        }
        out
    }

    /// One region's comments after `after`, oldest first, at most `max`: a hub repairing a gap.
    pub async fn region_after(
        &self,
        region: &str,
        post_id: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<Comment>, HistoryError> {
        let (rows, _) = self
            .region_after_where(region, post_id, after, max, |_| true)
            .await?;
        Ok(rows)
    }

    /// Like [`History::region_after`], keeping only the comments `keep` accepts: `max` counts
    /// kept ones. A resume reads from its position's floor and most of what lies above the
    /// floor is covered by its writers' ids; at most `SCAN_MAX` rows are read in all. True
    /// when the answer was cut short (by `max` or `SCAN_MAX`) while more rows followed.
    pub async fn region_after_where(
        &self,
        region: &str,
        post_id: &str,
        after: Option<&str>,
        max: usize,
        keep: impl Fn(&Comment) -> bool,
    ) -> Result<(Vec<Comment>, bool), HistoryError> {
        /// 50,000 rows: a minute of a post at 800 comments/s, 500 pages.
        const SCAN_MAX: usize = 50_000;
        let src = self.source(region)?;
        let mut q = SinceRequest {
            post_id: post_id.to_string(),
            after: after.map(str::to_string),
            before: None,
            newest_first: false,
            limit: wire::SINCE_MAX_LIMIT,
        };
        let mut rows = Vec::new();
        let mut scanned = 0;
        loop {
            let page = src.page(&q).await?;
            let got = page.comments.len();
            scanned += got;
            if let Some(last) = page.comments.last() {
                q.after = Some(last.id.clone());
            }
            rows.extend(page.comments.into_iter().filter(|c| keep(c)));
            if !page.more || got == 0 {
                let cut = rows.len() > max;
                rows.truncate(max);
                return Ok((rows, cut));
            }
            if rows.len() >= max || scanned >= SCAN_MAX {
                rows.truncate(max);
                return Ok((rows, true));
            }
        }
    }

    /// One region's comments with an id above `floor`, newest first, at most `max`; true
    /// when `max` cut it short. Where a fresh hub learns which writers were active lately.
    pub async fn region_newest_above(
        &self,
        region: &str,
        post_id: &str,
        floor: &str,
        max: usize,
    ) -> Result<(Vec<Comment>, bool), HistoryError> {
        let src = self.source(region)?;
        let mut q = SinceRequest {
            post_id: post_id.to_string(),
            after: None,
            before: None,
            newest_first: true,
            limit: wire::SINCE_MAX_LIMIT,
        };
        let mut rows = Vec::new();
        loop {
            let page = src.page(&q).await?;
            let got = page.comments.len();
            if let Some(last) = page.comments.last() {
                q.before = Some(last.id.clone());
            }
            for c in page.comments {
                if c.id.as_str() <= floor {
                    return Ok((rows, false));
                }
                rows.push(c);
                if rows.len() >= max {
                    return Ok((rows, true));
                }
            }
            if !page.more || got == 0 {
                return Ok((rows, false));
            }
        }
    }

    fn source(&self, region: &str) -> Result<&Arc<dyn RegionSource>, HistoryError> {
        self.sources
            .iter()
            .find(|s| s.region() == region)
            .ok_or_else(|| HistoryError::Unavailable {
                region: region.to_string(),
                reason: "not one of --regions".into(),
            })
    }
}
