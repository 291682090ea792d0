//! Reading a post's comments in order across its 1-second bucket partitions, through the
//! bucket index (`comment_spans`, `comment_buckets`): never an empty bucket, never OFFSET.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// Newest first.
    Desc,
    /// Oldest first.
    Asc,
}

impl CqlStore {
    async fn query_bucket(
        &self,
        dir: Dir,
        post_id: &PostId,
        bucket: i64,
        bound: &str,
        limit: usize,
    ) -> StoreResult<Vec<Comment>> {
        let st = match dir {
            Dir::Desc => &self.st.newest,
            Dir::Asc => &self.st.after,
        };
        let res = self
            .session
            .execute_unpaged(
                st,
                (
                    post_id.as_str(),
                    bucket,
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

    /// A page in `dir` order: walks the post's non-empty buckets through the index, reading
    /// them in waves of 1, 2, 4, ... (at most [`MAX_WAVE`]) partitions in parallel until
    /// `limit` comments are found or the buckets run out.
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
        // Exclusive id bound, applied in every bucket.
        let bound = match (dir, cursor) {
            (_, Some(c)) => c.to_string(),
            (Dir::Desc, None) => char::MAX.to_string(),
            (Dir::Asc, None) => String::new(),
        };
        let start = cursor.and_then(|c| bucket_of_cursor(c));
        let mut buckets = BucketWalk::new(self, dir, post_id, start);
        let mut wave = 1;
        while out.len() < limit {
            let mut batch = Vec::with_capacity(wave);
            while batch.len() < wave {
                match buckets.next().await? {
                    Some(b) => batch.push(b),
                    None => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            let need = limit - out.len();
            let pages: Vec<_> = batch
                .into_iter()
                .map(|b| self.query_bucket(dir, post_id, b, &bound, need))
                .collect();
            let pages = stream::iter(pages)
                .buffered(MAX_WAVE)
                .collect::<Vec<_>>()
                .await;
            for page in pages {
                out.extend(page?);
            }
            out.truncate(limit);
            wave = (wave * 2).min(MAX_WAVE);
        }
        Ok(out)
    }
}

/// Lazily lists a post's non-empty buckets in `dir` order from the two index tables, a page
/// of [`INDEX_PAGE`] rows at a time.
struct BucketWalk<'a> {
    store: &'a CqlStore,
    dir: Dir,
    post_id: &'a str,
    /// Inclusive bound of the next span query; `None` once the spans are exhausted.
    next_span: Option<i64>,
    spans: std::collections::VecDeque<i64>,
    /// The span being read and the inclusive bound of its next bucket query.
    current: Option<(i64, i64)>,
    buckets: std::collections::VecDeque<i64>,
    /// Bucket bound in the first span (the cursor's bucket).
    start_bucket: Option<i64>,
}

impl<'a> BucketWalk<'a> {
    fn new(store: &'a CqlStore, dir: Dir, post_id: &'a str, start_bucket: Option<i64>) -> Self {
        let next_span = Some(match (dir, start_bucket) {
            (_, Some(b)) => span_of_bucket(b),
            (Dir::Desc, None) => i64::MAX,
            (Dir::Asc, None) => i64::MIN,
        });
        BucketWalk {
            store,
            dir,
            post_id,
            next_span,
            spans: Default::default(),
            current: None,
            buckets: Default::default(),
            start_bucket,
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

    async fn index_page(
        &self,
        st: &PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
    ) -> StoreResult<Vec<i64>> {
        let res = self
            .store
            .session
            .execute_unpaged(st, values)
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.rows_num());
        for r in rows.rows::<(i64,)>().map_err(unavailable)? {
            out.push(r.map_err(unavailable)?.0);
        }
        Ok(out)
    }

    async fn next(&mut self) -> StoreResult<Option<i64>> {
        loop {
            if let Some(b) = self.buckets.pop_front() {
                return Ok(Some(b));
            }
            if let Some((span, bound)) = self.current {
                let st = match self.dir {
                    Dir::Desc => &self.store.st.buckets_desc,
                    Dir::Asc => &self.store.st.buckets_asc,
                };
                let page = self
                    .index_page(st, (self.post_id, span, bound, INDEX_PAGE))
                    .await?;
                let full = page.len() == INDEX_PAGE as usize;
                self.current = match (full, page.last().and_then(|&l| self.step_past(l))) {
                    (true, Some(next)) => Some((span, next)),
                    _ => None,
                };
                self.buckets.extend(page);
                continue;
            }
            if self.spans.is_empty() {
                let Some(bound) = self.next_span else {
                    return Ok(None);
                };
                let st = match self.dir {
                    Dir::Desc => &self.store.st.spans_desc,
                    Dir::Asc => &self.store.st.spans_asc,
                };
                let page = self.index_page(st, (self.post_id, bound, 16i32)).await?;
                self.next_span = match (
                    page.len() == 16,
                    page.last().and_then(|&l| self.step_past(l)),
                ) {
                    (true, Some(next)) => Some(next),
                    _ => None,
                };
                if page.is_empty() {
                    return Ok(None);
                }
                self.spans.extend(page);
            }
            let Some(span) = self.spans.pop_front() else {
                return Ok(None);
            };
            let bound = match self.start_bucket {
                Some(b) if span_of_bucket(b) == span => b,
                _ => self.extreme(),
            };
            self.current = Some((span, bound));
        }
    }
}
