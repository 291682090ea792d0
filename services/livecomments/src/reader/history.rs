//! Per-region history sources and the merge across regions.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use livecomments_shared::wire::{self, SinceReply, SinceRequest};
use livecomments_shared::{
    Comment, CommentId, Entry, Position, Tombstone, comment::newest_first, entry,
};

use crate::metrics::METRICS;
use livecomments_store::Store;

/// One region's answer to a page query.
#[derive(Debug, Clone, Default)]
pub struct RegionPage {
    pub comments: Vec<Comment>,
    /// Oldest-first pages only: the deletions in the range answered (see `SinceReply`).
    pub deletions: Vec<Tombstone>,
    pub more: bool,
}

impl RegionPage {
    /// Where the next oldest-first page starts: after the greater of the last comment's and
    /// the last deletion's ids.
    fn last_id(&self) -> Option<&CommentId> {
        let c = self.comments.last().map(|c| &c.id);
        let d = self.deletions.last().map(|d| &d.id);
        c.max(d)
    }

    /// Comments and deletions in id order.
    fn into_entries(self) -> Vec<Entry> {
        entry::interleave(self.comments, self.deletions)
    }
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
    let failed = |e: livecomments_store::StoreError| {
        METRICS.store_errors.inc();
        HistoryError::Unavailable {
            region: region.to_string(),
            reason: e.to_string(),
        }
    };
    // One extra row tells whether more follow without a second query.
    if q.newest_first {
        let mut comments = store
            .newest(&q.post_id, q.before.as_ref(), limit + 1)
            .await
            .map_err(failed)?;
        let more = comments.len() > limit;
        comments.truncate(limit);
        return Ok(RegionPage {
            comments,
            deletions: Vec::new(),
            more,
        });
    }
    // Oldest first: comments and deletions of the range, `limit` events of both in id order.
    let (comments, deletions) = futures::join!(
        store.after(&q.post_id, q.after.as_ref(), limit + 1),
        store.deletions_after(&q.post_id, q.after.as_ref(), limit + 1),
    );
    let mut events = entry::interleave(comments.map_err(failed)?, deletions.map_err(failed)?);
    let more = events.len() > limit;
    events.truncate(limit);
    let (comments, deletions) = entry::split(events);
    Ok(RegionPage {
        comments,
        deletions,
        more,
    })
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
        let asked = std::time::Instant::now();
        let reply = self
            .rpc
            .request::<_, SinceReply>(wire::since_subject(&self.region), q, self.timeout)
            .await;
        METRICS.observe_since_query(&self.region, asked.elapsed());
        let reply = reply.map_err(|e| fail(e.to_string()))?;
        if let Some(err) = reply.error {
            return Err(fail(err));
        }
        // Never trust a reply blindly: keep only this post's events of that region.
        let ours = |post: &str, region: &str, id: &str| {
            post == q.post_id.as_str()
                && region == self.region
                && livecomments_shared::id::is_valid(id)
        };
        let comments = reply
            .comments
            .into_iter()
            .filter(|c| ours(&c.post_id, &c.region, &c.id))
            .collect();
        let deletions = reply
            .deletions
            .into_iter()
            .filter(|d| {
                ours(&d.post_id, &d.region, &d.id)
                    && livecomments_shared::id::is_valid(&d.comment_id)
            })
            .collect();
        Ok(RegionPage {
            comments,
            deletions,
            more: reply.more,
        })
    }
}

/// What a resuming viewer missed.
#[derive(Debug, Default)]
pub struct Replay {
    /// Comments and deletions, oldest first.
    pub entries: Vec<Entry>,
    /// More than `max` were missed; the rest was cut.
    pub truncated: bool,
    /// Regions whose history could not be read now.
    pub failed: Vec<String>,
}

/// A newest-first page merged from every region.
#[derive(Debug, Clone, Default)]
pub struct MergedPage {
    pub comments: Vec<Comment>,
    /// Oldest-first reads (`since=`): the deletions within the range the page covers
    /// (CONTRACT §10), oldest first.
    pub deleted: Vec<Tombstone>,
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

    /// One page of one region, as that region's source answers it.
    pub async fn region_page(
        &self,
        region: &str,
        q: &SinceRequest,
    ) -> Result<RegionPage, HistoryError> {
        match self.sources.iter().find(|s| s.region() == region) {
            Some(s) => s.page(q).await,
            None => Err(HistoryError::Unavailable {
                region: region.to_string(),
                reason: "not a region of this deployment".into(),
            }),
        }
    }

    /// One comment by id, from whichever region holds it (each region is asked for the
    /// first comment after the id's predecessor).
    pub async fn find(&self, post_id: &str, id: &str) -> Result<Option<Comment>, HistoryError> {
        let Some(pred) = livecomments_shared::id::predecessor(id) else {
            return Ok(None);
        };
        let q = SinceRequest {
            post_id: post_id.to_string().into(),
            after: Some(pred.into()),
            before: None,
            newest_first: false,
            limit: 1,
        };
        let answers = join_all(self.sources.iter().map(|s| s.page(&q))).await;
        let mut failed = None;
        for a in answers {
            match a {
                Ok(page) => {
                    if let Some(c) = page.comments.into_iter().find(|c| c.id.as_str() == id) {
                        return Ok(Some(c));
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        // Not found anywhere that answered: unknown, unless a region could not be asked.
        failed.map_or(Ok(None), Err)
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
            post_id: post_id.to_string().into(),
            after: None,
            before: before.map(CommentId::from),
            newest_first: true,
            limit: 0,
        };
        self.merge(q, want, skip, limit, true).await
    }

    /// Oldest first, ids above `after` (exclusive), skipping `skip` (bounded by the caller),
    /// `limit` rows.
    pub async fn after(
        &self,
        post_id: &str,
        after: Option<&str>,
        skip: usize,
        limit: usize,
    ) -> MergedPage {
        let q = SinceRequest {
            post_id: post_id.to_string().into(),
            after: after.map(CommentId::from),
            before: None,
            newest_first: false,
            limit: 0,
        };
        self.merge(q, skip + limit, skip, limit, false).await
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
                let mut deletions = Vec::new();
                let mut more;
                loop {
                    q.limit = (want - rows.len()).clamp(1, wire::SINCE_MAX_LIMIT as usize) as u32;
                    let page = src.page(&q).await?;
                    more = page.more;
                    if newest {
                        if let Some(last) = page.comments.last() {
                            q.before = Some(last.id.clone());
                        }
                    } else if let Some(last) = page.last_id() {
                        q.after = Some(last.clone());
                    }
                    let got = page.comments.len() + page.deletions.len();
                    rows.extend(page.comments);
                    deletions.extend(page.deletions);
                    if !more || got == 0 || rows.len() >= want {
                        break;
                    }
                }
                Ok::<_, HistoryError>((rows, deletions, more))
            }
        }))
        .await;
        let mut out = MergedPage::default();
        let mut all = Vec::new();
        let mut deletions = Vec::new();
        for (src, res) in self.sources.iter().zip(results) {
            match res {
                Ok((rows, dels, more)) => {
                    out.more |= more || rows.len() > want;
                    all.extend(rows);
                    deletions.extend(dels);
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
        if !newest {
            // The deletions up to the page's end: its last comment, or everything read when
            // nothing follows.
            let end = if out.more {
                out.comments.last().map(|c| c.id.clone())
            } else {
                None
            };
            deletions.sort_by(|a, b| a.id.cmp(&b.id));
            out.deleted = deletions
                .into_iter()
                .filter(|d| end.as_ref().is_none_or(|e| d.id <= *e))
                .collect();
        }
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
                        |e| !pos.covers(e.region(), e.id()),
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
                    out.entries.extend(rows);
                }
                Err(_) => out.failed.push(region),
            }
        }
        // Oldest first across regions too, so the stream reads naturally.
        out.entries.sort_by(|a, b| a.id().cmp(b.id()));
        if out.entries.len() > max {
            out.entries.truncate(max);
            out.truncated = true;
        }
        out
    }

    /// One region's events after `after`, oldest first, at most `max`: a hub repairing a gap.
    pub async fn region_after(
        &self,
        region: &str,
        post_id: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<Entry>, HistoryError> {
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
        keep: impl Fn(&Entry) -> bool,
    ) -> Result<(Vec<Entry>, bool), HistoryError> {
        /// 50,000 rows: a minute of a post at 800 comments/s, 500 pages.
        const SCAN_MAX: usize = 50_000;
        let src = self.source(region)?;
        let mut q = SinceRequest {
            post_id: post_id.to_string().into(),
            after: after.map(CommentId::from),
            before: None,
            newest_first: false,
            limit: wire::SINCE_MAX_LIMIT,
        };
        let mut rows = Vec::new();
        let mut scanned = 0;
        loop {
            let page = src.page(&q).await?;
            let more = page.more;
            if let Some(last) = page.last_id() {
                q.after = Some(last.clone());
            }
            let events = page.into_entries();
            let got = events.len();
            scanned += got;
            rows.extend(events.into_iter().filter(|e| keep(e)));
            if !more || got == 0 {
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
            post_id: post_id.to_string().into(),
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

#[cfg(test)]
mod tests {
    //! The merge over regions against in-memory regions that page as a reader does
    //! (`page_from_store`'s contract: at most `limit` rows, `more` when rows follow).

    use super::*;
    use livecomments_shared::id::IdGenerator;

    struct Region {
        name: String,
        /// Oldest first.
        rows: Vec<Comment>,
        down: bool,
        pages: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl RegionSource for Region {
        fn region(&self) -> &str {
            &self.name
        }
        async fn page(&self, q: &SinceRequest) -> Result<RegionPage, HistoryError> {
            self.pages
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.down {
                return Err(HistoryError::Unavailable {
                    region: self.name.clone(),
                    reason: "down".into(),
                });
            }
            let limit = q.limit.clamp(1, wire::SINCE_MAX_LIMIT) as usize;
            let mut rows: Vec<Comment> = self
                .rows
                .iter()
                .filter(|c| c.post_id == q.post_id)
                .filter(|c| q.after.as_ref().is_none_or(|a| &c.id > a))
                .filter(|c| q.before.as_ref().is_none_or(|b| &c.id < b))
                .cloned()
                .collect();
            if q.newest_first {
                rows.reverse();
            }
            let more = rows.len() > limit;
            rows.truncate(limit);
            Ok(RegionPage {
                comments: rows,
                deletions: Vec::new(),
                more,
            })
        }
    }

    fn comments_of(entries: &[Entry]) -> Vec<Comment> {
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Comment(c) => Some(c.clone()),
                Entry::Deleted(_) => None,
            })
            .collect()
    }

    /// `n` comments of post "p" in `region`, one a millisecond from `start_ms`, by one writer.
    fn region(name: &str, writer: u64, start_ms: i64, n: usize) -> Arc<Region> {
        let mut ids = IdGenerator::new(writer);
        let rows = (0..n)
            .map(|i| {
                let ms = start_ms + i as i64;
                Comment {
                    id: ids.next(ms, i as u128).to_string().into(),
                    post_id: "p".into(),
                    user_id: "u".into(),
                    text: format!("{name} {i}"),
                    timestamp: livecomments_shared::time::format_millis(ms),
                    region: name.into(),
                    metadata: Default::default(),
                }
            })
            .collect();
        Arc::new(Region {
            name: name.into(),
            rows,
            down: false,
            pages: Default::default(),
        })
    }

    fn down(name: &str) -> Arc<Region> {
        Arc::new(Region {
            down: true,
            ..Arc::into_inner(region(name, 9, 0, 0)).unwrap()
        })
    }

    fn history(regions: &[Arc<Region>]) -> History {
        History::new(
            regions
                .iter()
                .map(|r| r.clone() as Arc<dyn RegionSource>)
                .collect(),
        )
    }

    fn ids(cs: &[Comment]) -> Vec<&str> {
        cs.iter().map(|c| c.id.as_str()).collect()
    }

    #[tokio::test]
    async fn newest_interleaves_regions_newest_first_and_cuts_skip_and_limit() {
        // Both from ms 1000, one writer each: the merge interleaves them by id.
        let (eu, us) = (region("eu", 1, 1_000, 10), region("us", 2, 1_000, 10));
        let h = history(&[eu.clone(), us.clone()]);
        let mut all: Vec<Comment> = eu.rows.iter().chain(&us.rows).cloned().collect();
        all.sort_by(newest_first);

        let page = h.newest("p", None, 0, 5).await;
        assert_eq!(ids(&page.comments), ids(&all[..5]));
        assert!(page.more && page.missing.is_empty());

        let page = h.newest("p", None, 5, 5).await;
        assert_eq!(ids(&page.comments), ids(&all[5..10]));

        // Below a cursor: only older ids, and the last page says no more.
        let cursor = all[14].id.clone();
        let page = h.newest("p", Some(&cursor), 0, 10).await;
        assert_eq!(ids(&page.comments), ids(&all[15..]));
        assert!(!page.more, "5 rows left, 10 asked");
    }

    #[tokio::test]
    async fn a_region_with_more_than_one_page_is_read_in_pages() {
        let big = wire::SINCE_MAX_LIMIT as usize * 2 + 30;
        let eu = region("eu", 1, 1_000, big);
        let h = history(std::slice::from_ref(&eu));
        let page = h.after("p", None, 0, big).await;
        assert_eq!(ids(&page.comments), ids(&eu.rows));
        assert!(!page.more);
        assert_eq!(eu.pages.load(std::sync::atomic::Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_region_that_does_not_answer_is_named_and_the_others_still_serve() {
        let eu = region("eu", 1, 1_000, 4);
        let h = history(&[eu.clone(), down("us")]);
        let page = h.newest("p", None, 0, 10).await;
        assert_eq!(page.missing, vec!["us".to_string()]);
        let mut want = eu.rows.clone();
        want.reverse();
        assert_eq!(ids(&page.comments), ids(&want));
    }

    #[tokio::test]
    async fn replay_is_what_the_position_does_not_cover_oldest_first_over_regions() {
        let (eu, us) = (region("eu", 1, 1_000, 6), region("us", 2, 1_000, 6));
        let h = history(&[eu.clone(), us.clone()]);
        // Seen: eu up to its 3rd comment (floor), us up to its 2nd (one writer id).
        let mut pos = Position::new();
        pos.raise_floor("eu", &eu.rows[2].id);
        pos.advance("us", &us.rows[1].id);

        let r = h.replay("p", &pos, 100).await;
        let mut want: Vec<Comment> = eu.rows[3..].iter().chain(&us.rows[2..]).cloned().collect();
        want.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(ids(&comments_of(&r.entries)), ids(&want));
        assert!(!r.truncated && r.failed.is_empty());

        // Capped: the oldest `max` of them, marked truncated.
        let r = h.replay("p", &pos, 4).await;
        assert_eq!(ids(&comments_of(&r.entries)), ids(&want[..4]));
        assert!(r.truncated);

        // A region that does not answer is held apart, not skipped past.
        let h = history(&[eu.clone(), down("us")]);
        let r = h.replay("p", &pos, 100).await;
        assert_eq!(ids(&comments_of(&r.entries)), ids(&eu.rows[3..]));
        assert_eq!(r.failed, vec!["us".to_string()]);
    }
}
