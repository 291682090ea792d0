//! Reading a post's comments in order across its partitions, through the index
//! (`comment_spans`; per span `comment_buckets` for 1-second partitions and `comment_parts`
//! for 60 s and 3,600 s ones): never an empty partition, never OFFSET.
//!
//! Partitions of different widths overlap in time (a post that slowed down, two ingest nodes
//! that saw different rates), so the walk is a merge: partitions come in the order of the
//! bound that matters for the direction (newest first: by end, descending, a wide
//! partition's end being the `until` its writers recorded when that is earlier; oldest first:
//! by start, ascending), and a row read is handed out only once no partition still unread can
//! hold a row before it (its time is at or past the next partition's end, resp. before its
//! start). Spans never overlap (every width divides 6 h), so the merge is per span.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;

use super::tier::Part;
use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// Newest first.
    Desc,
    /// Oldest first.
    Asc,
}

/// Rows of one span's `comment_parts` read at once: 360 minute and 6 hour partitions at most
/// by construction; rows of widths this binary does not know are skipped.
const PARTS_PER_SPAN: i32 = 512;

/// A partition as the walk lists it: its rows' times lie in `[part.start_ms(), end_ms)`, where
/// `end_ms` is the partition's own end or, for a wide one, the `until` its writers recorded
/// (0007), whichever is first: the hour of a post that turned hot ends where its quiet
/// comments do, so the newest page past it does not read it.
#[derive(Clone, Copy, Debug)]
struct Listed {
    part: Part,
    end_ms: i64,
}

impl Listed {
    fn whole(part: Part) -> Self {
        Listed {
            part,
            end_ms: part.end_ms(),
        }
    }
}

impl CqlStore {
    async fn query_part(
        &self,
        dir: Dir,
        post_id: &PostId,
        part: Part,
        bound: &str,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        let st = match dir {
            Dir::Desc => &self.st.newest,
            Dir::Asc => &self.st.after,
        };
        self.reads.partitions.fetch_add(1, Ordering::Relaxed);
        let res = self
            .session
            .execute_unpaged(
                st,
                (
                    post_id.as_str(),
                    part.bucket(),
                    bound,
                    limit.min(i32::MAX as usize) as i32,
                ),
            )
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.rows_num());
        for r in rows.rows::<CommentRow>().map_err(unavailable)? {
            if let Some(c) = comment_from_row(post_id, r.map_err(unavailable)?) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// A page in `dir` order: walks the post's non-empty partitions through the index, reading
    /// them in waves of 1, 2, 4, ... (at most [`MAX_WAVE`]) partitions in parallel until
    /// `limit` comments are certain or the partitions run out.
    pub(super) async fn walk(
        &self,
        dir: Dir,
        post_id: &PostId,
        cursor: Option<&CommentId>,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        // Exclusive id bound, applied in every partition.
        let bound = match (dir, cursor) {
            (_, Some(c)) => c.to_string(),
            (Dir::Desc, None) => char::MAX.to_string(),
            (Dir::Asc, None) => String::new(),
        };
        let start = cursor.and_then(|c| bucket_of_cursor(c));
        let mut parts = PartWalk::new(self, dir, post_id, start);
        // Rows read but not yet certain, by id (a comment rewritten under its id by another
        // writer may sit in two partitions: it is handed out once). Never more than `limit`
        // after a wave plus one wave's rows.
        let mut pending: BTreeMap<String, Comment> = BTreeMap::new();
        let mut wave = 1;
        while out.len() < limit {
            let need = limit - out.len();
            let mut batch = Vec::with_capacity(wave);
            while batch.len() < wave {
                match parts.next().await? {
                    Some(p) => batch.push(p),
                    None => break,
                }
            }
            // A wide partition read alone is rarely enough: its rows wait for the partitions
            // its time overlaps (a burst's first comments sit in the hour's partition, the
            // rest in seconds), or it holds fewer rows than a page (60 an hour at one comment a
            // minute). So the wave also takes the next partition after a wide one, and keeps
            // going down to narrower ones (hour, minute, second): at most 2 more, still one
            // round trip. A dense post's page is then 2 partitions in one wave, not 3 in two.
            let mut extra = 0;
            while extra < 2 {
                let Some(&last) = batch.last() else { break };
                if last.part.width_s == 1 {
                    break;
                }
                match parts.peek().await? {
                    Some(n) if extra == 0 || n.part.width_s < last.part.width_s => {
                        batch.extend(parts.next().await?);
                        extra += 1;
                    }
                    _ => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            // Every partition is asked for `need`: the page's rest is within the first `need`
            // rows of each partition (rows already certain are above all of them).
            let pages: Vec<_> = batch
                .into_iter()
                .map(|p| self.query_part(dir, post_id, p.part, &bound, need))
                .collect();
            let pages = stream::iter(pages)
                .buffered(MAX_WAVE)
                .collect::<Vec<_>>()
                .await;
            for page in pages {
                for c in page? {
                    // A copy of a row already handed out (its twin in another partition).
                    let done = out.last().is_some_and(|l: &Comment| match dir {
                        Dir::Desc => c.id.as_str() >= l.id.as_str(),
                        Dir::Asc => c.id.as_str() <= l.id.as_str(),
                    });
                    if !done {
                        pending.insert(c.id.to_string(), c);
                    }
                }
            }
            // Only the first `need` pending rows can still make the page.
            while pending.len() > need {
                match dir {
                    Dir::Desc => pending.pop_first(),
                    Dir::Asc => pending.pop_last(),
                };
            }
            // The bound no unread partition passes: rows at or beyond it are certain.
            let frontier = parts.peek().await?.map(|p| match dir {
                Dir::Desc => p.end_ms,
                Dir::Asc => p.part.start_ms(),
            });
            while out.len() < limit {
                let head = match dir {
                    Dir::Desc => pending.last_key_value(),
                    Dir::Asc => pending.first_key_value(),
                };
                let Some((id, _)) = head else { break };
                // Ids the store wrote are ULIDs; one that is not has no time to place it by
                // and goes in id order.
                let certain = match (frontier, id::millis_of(id)) {
                    (None, _) | (_, None) => true,
                    (Some(f), Some(ms)) => match dir {
                        Dir::Desc => ms >= f,
                        Dir::Asc => ms < f,
                    },
                };
                if !certain {
                    break;
                }
                let next = match dir {
                    Dir::Desc => pending.pop_last(),
                    Dir::Asc => pending.pop_first(),
                };
                if let Some((_, c)) = next {
                    out.push(c);
                }
            }
            wave = (wave * 2).min(MAX_WAVE);
        }
        // The partitions ran out: every pending row is certain.
        while out.len() < limit {
            let next = match dir {
                Dir::Desc => pending.pop_last(),
                Dir::Asc => pending.pop_first(),
            };
            let Some((_, c)) = next else { break };
            out.push(c);
        }
        Ok(out)
    }
}

/// Lazily lists a post's non-empty partitions in walk order from the index tables: spans a
/// page of 16 at a time, a span's 1-second buckets a page of [`INDEX_PAGE`] at a time, its
/// wider partitions whole (at most [`PARTS_PER_SPAN`]).
struct PartWalk<'a> {
    store: &'a CqlStore,
    dir: Dir,
    post_id: &'a str,
    /// Inclusive bound of the next span query; `None` once the spans are exhausted.
    next_span: Option<i64>,
    spans: VecDeque<i64>,
    /// The span being read and the inclusive bound of its next 1-second bucket query
    /// (`None`: its buckets are all listed).
    current: Option<(i64, Option<i64>)>,
    seconds: VecDeque<Listed>,
    /// The current span's wider partitions, in walk order.
    wide: VecDeque<Listed>,
    /// Bucket (second) of the cursor: where the first span's walk starts.
    start_bucket: Option<i64>,
    peeked: Option<Listed>,
}

impl<'a> PartWalk<'a> {
    fn new(store: &'a CqlStore, dir: Dir, post_id: &'a str, start_bucket: Option<i64>) -> Self {
        let next_span = Some(match (dir, start_bucket) {
            (_, Some(b)) => span_of_bucket(b),
            (Dir::Desc, None) => i64::MAX,
            (Dir::Asc, None) => i64::MIN,
        });
        PartWalk {
            store,
            dir,
            post_id,
            next_span,
            spans: Default::default(),
            current: None,
            seconds: Default::default(),
            wide: Default::default(),
            start_bucket,
            peeked: None,
        }
    }

    fn extreme(&self) -> i64 {
        match self.dir {
            Dir::Desc => i64::MAX,
            Dir::Asc => i64::MIN,
        }
    }

    fn step_past(&self, v: i64) -> Option<i64> {
        match self.dir {
            Dir::Desc => v.checked_sub(1),
            Dir::Asc => v.checked_add(1),
        }
    }

    /// Whether `a` comes before `b` in walk order.
    fn first(&self, a: &Listed, b: &Listed) -> bool {
        match self.dir {
            Dir::Desc => a.end_ms >= b.end_ms,
            Dir::Asc => a.part.start_ms() <= b.part.start_ms(),
        }
    }

    async fn index_page<T>(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<Vec<T>>
    where
        T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
    {
        self.store.reads.index.fetch_add(1, Ordering::Relaxed);
        let res = self
            .store
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.rows_num());
        for r in rows.rows::<T>().map_err(unavailable)? {
            out.push(r.map_err(unavailable)?);
        }
        Ok(out)
    }

    /// The next page of the current span's 1-second buckets.
    async fn seconds_page(&self, span: i64, bound: i64) -> StoreResult<(Vec<Listed>, Option<i64>)> {
        let st = match self.dir {
            Dir::Desc => &self.store.st.buckets_desc,
            Dir::Asc => &self.store.st.buckets_asc,
        };
        let page: Vec<(i64,)> = self
            .index_page(st, (self.post_id, span, bound, INDEX_PAGE))
            .await?;
        let full = page.len() == INDEX_PAGE as usize;
        let next = match (full, page.last().and_then(|l| self.step_past(l.0))) {
            (true, Some(next)) => Some(next),
            _ => None,
        };
        Ok((
            page.into_iter()
                .map(|(b,)| Listed::whole(Part::at(b * 1_000, 1)))
                .collect(),
            next,
        ))
    }

    /// The span's wider partitions in walk order, past the cursor.
    async fn wide_parts(&self, span: i64) -> StoreResult<VecDeque<Listed>> {
        let rows: Vec<(i64, i32, Option<i64>)> = self
            .index_page(
                &self.store.st.parts_of_span,
                (self.post_id, span, PARTS_PER_SPAN),
            )
            .await?;
        let cursor_ms = self.start_bucket.map(|b| b.saturating_mul(1_000));
        let mut parts: Vec<Listed> = rows
            .into_iter()
            .filter_map(|(start, width, until)| {
                let part = Part::from_index(start, i64::from(width))?;
                Some(Listed {
                    part,
                    // A row without `until` bounds nothing: the partition's own end.
                    end_ms: until.map_or(part.end_ms(), |u| u.min(part.end_ms())),
                })
            })
            .filter(|Listed { part: p, .. }| match (self.dir, cursor_ms) {
                (_, None) => true,
                // Rows before the cursor: a partition that starts after its second has none.
                (Dir::Desc, Some(c)) => p.start_ms() <= c,
                // Rows after it: a partition that ends before its second has none.
                (Dir::Asc, Some(c)) => p.end_ms() > c,
            })
            .collect();
        match self.dir {
            Dir::Desc => parts.sort_by_key(|p| std::cmp::Reverse(p.end_ms)),
            Dir::Asc => parts.sort_by_key(|p| p.part.start_ms()),
        }
        Ok(parts.into())
    }

    /// The next partition without taking it.
    async fn peek(&mut self) -> StoreResult<Option<Listed>> {
        if self.peeked.is_none() {
            self.peeked = self.next().await?;
        }
        Ok(self.peeked)
    }

    async fn next(&mut self) -> StoreResult<Option<Listed>> {
        if let Some(p) = self.peeked.take() {
            return Ok(Some(p));
        }
        loop {
            if let Some((span, bound)) = self.current {
                if self.seconds.is_empty()
                    && let Some(b) = bound
                {
                    let (page, next) = self.seconds_page(span, b).await?;
                    self.seconds.extend(page);
                    self.current = Some((span, next));
                }
                let take_wide = match (self.seconds.front(), self.wide.front()) {
                    (None, None) => {
                        self.current = None;
                        continue;
                    }
                    (Some(_), None) => false,
                    (None, Some(_)) => true,
                    (Some(s), Some(w)) => !self.first(s, w),
                };
                let next = if take_wide {
                    self.wide.pop_front()
                } else {
                    self.seconds.pop_front()
                };
                return Ok(next);
            }
            if self.spans.is_empty() {
                let Some(bound) = self.next_span else {
                    return Ok(None);
                };
                let st = match self.dir {
                    Dir::Desc => &self.store.st.spans_desc,
                    Dir::Asc => &self.store.st.spans_asc,
                };
                let page: Vec<(i64,)> = self.index_page(st, (self.post_id, bound, 16i32)).await?;
                self.next_span = match (
                    page.len() == 16,
                    page.last().and_then(|l| self.step_past(l.0)),
                ) {
                    (true, Some(next)) => Some(next),
                    _ => None,
                };
                if page.is_empty() {
                    return Ok(None);
                }
                self.spans.extend(page.into_iter().map(|(s,)| s));
            }
            let Some(span) = self.spans.pop_front() else {
                return Ok(None);
            };
            let bound = match self.start_bucket {
                Some(b) if span_of_bucket(b) == span => b,
                _ => self.extreme(),
            };
            // Both lists of the span in one round trip.
            let (seconds, wide) =
                futures::try_join!(self.seconds_page(span, bound), self.wide_parts(span))?;
            self.seconds = seconds.0.into();
            self.wide = wide;
            self.current = Some((span, seconds.1));
        }
    }
}
