//! The Idempotency-Key protocol on CQL, which has no transactions: an LWT claim names the
//! comment, the comment is written, then the claim is marked `stored` while it still names
//! it. A retry that finds a claim never confirmed decides the first attempt's fate only once
//! that attempt's row can no longer change, and then adopts the row or moves the key to a
//! fresh id (docs/WRITE-PATH.md has why each rule exists and what broke without it).
//!
//! Step by step:
//! 1. `INSERT INTO idempotency ... VALUES (..., stored = false) IF NOT EXISTS USING TTL 86400`.
//! 2. Applied: write the comment (index rows, then the row), then `stored = true IF id = <it>`;
//!    only then is the item answered `Created`. A failed write releases the key (`DELETE ...
//!    IF id = <it> AND stored = false`), unless a retry adopted the comment meanwhile.
//! 3. Not applied, `stored = true`: answer `Existing` with the comment of the record.
//! 4. Not applied, `stored = false`: see [`CqlStore::finish_pending`] (with the ingest's
//!    policy; tools without one wait 0.5 s and finish the record's comment under its id).

use super::*;

/// A first attempt's comment lands within this long of its stamp or never: ingest starts the
/// write at most 3 s after the stamp (`visible_by_ms`), it ends within [`WRITE_TIMEOUT`]
/// (2 s, also Cassandra's coordinator `write_request_timeout`); 2 s more for clocks of two
/// nodes that disagree. A retry that finds the key unconfirmed decides only after it.
const KEY_SETTLED_MS: i64 = 7_000;
/// A write that succeeded this long after its stamp is certainly seen by a retry deciding at
/// [`KEY_SETTLED_MS`] (2 s of clock skew short of it).
const WRITTEN_IN_TIME_MS: i64 = 5_000;

pub(super) enum Claim {
    /// The key was free; it is ours now.
    Fresh,
    /// The key's comment is durable: answer `Existing`.
    Stored(Comment),
    /// The key's first attempt has not (yet) confirmed its comment.
    Pending(Comment),
}

/// What a conditional "stored = true while the key names this comment" did.
pub(super) enum Mark {
    Stored,
    /// The key names another comment now (a retry moved it) or is gone.
    Taken,
    /// The LWT timed out and could not be read back.
    Unknown(StoreError),
}

/// What releasing the key of a comment whose write failed found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum KeyFate {
    /// The key named the comment unconfirmed and is now free: the comment must go.
    Released,
    /// A retry adopted the comment (the key names it, stored): it stays.
    Adopted,
    /// The key is gone or names another comment: the comment must go.
    Elsewhere,
}

impl CqlStore {
    /// The comment a confirmed key names (see `Store::keyed`).
    pub(super) async fn confirmed_key(
        &self,
        user_id: &str,
        post_id: &str,
        key: &str,
    ) -> StoreResult<Option<Comment>> {
        let res = self
            .session
            .execute_unpaged(&self.st.read_key_comment, (user_id, post_id, key))
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        type KeyRow = (
            Option<String>,
            Option<String>,
            Option<CqlTimestamp>,
            Option<String>,
            Option<BTreeMap<String, String>>,
            Option<bool>,
        );
        let Some((id, text, created_at, region, metadata, stored)) =
            rows.maybe_first_row::<KeyRow>().map_err(unavailable)?
        else {
            return Ok(None);
        };
        let (Some(id), Some(true)) = (id, stored) else {
            return Ok(None);
        };
        let ms = created_at
            .map(|t| t.0)
            .or_else(|| id::millis_of(&id))
            .unwrap_or(0);
        Ok(Some(Comment {
            timestamp: time::format_millis(ms),
            id: id.into(),
            post_id: post_id.into(),
            user_id: user_id.to_string(),
            text: text.unwrap_or_default(),
            region: region.unwrap_or_default().into(),
            metadata: metadata.unwrap_or_default(),
        }))
    }

    /// With the ingest's policy (`visible_by_ms`): `stored = true` only while the record
    /// still names this comment; a retry that moved the key to its own fresh id wins. A
    /// timed-out LWT may still apply: then the record is read back (linearizably).
    async fn mark_stored_if_ours(&self, c: &Comment, key: &str, ttl: i32) -> Mark {
        let mut last = StoreError::failed("the mark did not apply twice");
        for _ in 0..2 {
            let res = self
                .session
                .execute_unpaged(
                    &self.st.mark_stored_if,
                    (
                        ttl.max(1),
                        &c.user_id,
                        c.post_id.as_str(),
                        key,
                        c.id.as_str(),
                    ),
                )
                .await;
            match res.map_err(unavailable).and_then(lwt_outcome) {
                Ok((true, _)) => return Mark::Stored,
                Ok((false, _)) => return Mark::Taken,
                Err(e) => {
                    tracing::warn!(error = %e, id = %c.id, "marking a key stored: outcome unknown; reading it back");
                    match self
                        .read_key_owner(&c.user_id, c.post_id.as_str(), key)
                        .await
                    {
                        Ok(Some((id, true))) if id == c.id => return Mark::Stored,
                        Ok(Some((id, false))) if id == c.id => continue, // the mark did not apply
                        Ok(_) => return Mark::Taken,
                        Err(e) => last = e,
                    }
                }
            }
        }
        Mark::Unknown(last)
    }

    /// The outcome of an attempt that wrote its comment `c` (at `written_ms`) and then tried to
    /// mark its key. When the mark's outcome is unknown, the comment still counts as created
    /// if it was written early enough for every retry to find the row and adopt it
    /// ([`KEY_SETTLED_MS`]); the key cannot then move to another comment.
    fn settle(c: &Comment, mark: Mark, written_ms: i64) -> StoreResult<()> {
        match mark {
            Mark::Stored => Ok(()),
            Mark::Taken => Err(StoreError::failed(
                "a retry took this Idempotency-Key over; this attempt is withdrawn",
            )),
            Mark::Unknown(e) if written_ms <= created_ms(c) + WRITTEN_IN_TIME_MS => {
                tracing::warn!(error = %e, id = %c.id, "key mark unknown; the comment was written in time, so any retry adopts it");
                Ok(())
            }
            Mark::Unknown(e) => Err(StoreError::failed(format!(
                "could not mark the key of {} stored: {e}",
                c.id
            ))),
        }
    }

    /// After a failed write of `c` (claimed with `key`): free the key if it still names `c`
    /// unconfirmed, so the comment can be withdrawn and a retry claims afresh; or find that a
    /// retry adopted `c` meanwhile (it found the row), and then `c` stays.
    pub(super) async fn release_key(&self, c: &Withdrawal, key: &str) -> StoreResult<KeyFate> {
        let res = self
            .session
            .execute_unpaged(
                &self.st.release_key,
                (&c.user_id, c.post_id.as_str(), key, c.id.as_str()),
            )
            .await;
        let fate = |id: Option<&str>, stored: bool| match id {
            Some(id) if id == c.id && stored => KeyFate::Adopted,
            _ => KeyFate::Elsewhere,
        };
        match res.map_err(unavailable).and_then(lwt_outcome) {
            Ok((true, _)) => Ok(KeyFate::Released),
            Ok((false, row)) => Ok(fate(
                row.get("id").and_then(|v| v.as_text()).map(String::as_str),
                matches!(row.get("stored"), Some(CqlValue::Boolean(true))),
            )),
            Err(e) => {
                tracing::warn!(error = %e, id = %c.id, "releasing a key: outcome unknown; reading it back");
                match self
                    .read_key_owner(&c.user_id, c.post_id.as_str(), key)
                    .await?
                {
                    None => Ok(KeyFate::Released),
                    Some((id, false)) if id == c.id => {
                        Err(StoreError::failed("the key's release did not apply"))
                    }
                    Some((id, stored)) => Ok(fate(Some(&id), stored)),
                }
            }
        }
    }

    /// The record's comment id and `stored` flag (LOCAL_SERIAL).
    async fn read_key_owner(
        &self,
        user_id: &str,
        post_id: &str,
        key: &str,
    ) -> StoreResult<Option<(String, bool)>> {
        let res = self
            .session
            .execute_unpaged(&self.st.read_key_id, (user_id, post_id, key))
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        Ok(rows
            .maybe_first_row::<(Option<String>, Option<bool>)>()
            .map_err(unavailable)?
            .and_then(|(id, stored)| Some((id?, stored.unwrap_or(false)))))
    }

    pub(super) async fn mark_stored(&self, c: &Comment, key: &str, ttl: i32) -> StoreResult<()> {
        self.session
            .execute_unpaged(
                &self.st.mark_stored,
                (ttl.max(1), &c.user_id, c.post_id.as_str(), key),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Step 1 of an idempotent insert: the LWT claim.
    pub(super) async fn claim(&self, c: &Comment, key: &str) -> StoreResult<Claim> {
        let res = self
            .session
            .execute_unpaged(
                &self.st.claim_key,
                (
                    &c.user_id,
                    c.post_id.as_str(),
                    key,
                    c.id.as_str(),
                    &c.text,
                    CqlTimestamp(created_ms(c)),
                    c.region.as_str(),
                    &c.metadata,
                ),
            )
            .await
            .map_err(unavailable)?;
        let (applied, mut row) = lwt_outcome(res)?;
        if applied {
            return Ok(Claim::Fresh);
        }
        let text = |row: &mut HashMap<String, CqlValue>, k: &str| {
            row.remove(k).and_then(|v| v.into_string())
        };
        let Some(id) = text(&mut row, "id") else {
            // A record without a comment (expiring this very second): treat it as absent.
            return Ok(Claim::Fresh);
        };
        let ms = row
            .get("created_at")
            .and_then(|v| v.as_cql_timestamp())
            .map(|t| t.0);
        let metadata = match row.remove("metadata") {
            Some(CqlValue::Map(pairs)) => pairs
                .into_iter()
                .filter_map(|(k, v)| Some((k.into_string()?, v.into_string()?)))
                .collect(),
            _ => BTreeMap::new(),
        };
        let prev = Comment {
            timestamp: time::format_millis(ms.or_else(|| id::millis_of(&id)).unwrap_or(0)),
            id: id.into(),
            post_id: c.post_id.clone(),
            user_id: c.user_id.clone(),
            text: text(&mut row, "text").unwrap_or_default(),
            region: text(&mut row, "region").unwrap_or_default().into(),
            metadata,
        };
        let stored = matches!(row.get("stored"), Some(CqlValue::Boolean(true)));
        Ok(if stored {
            Claim::Stored(prev)
        } else {
            Claim::Pending(prev)
        })
    }

    /// Step 4: the record exists but its comment was never confirmed. `fresh`: this retry's
    /// own item (its id is stamped now, by this node).
    pub(super) async fn finish_pending(
        &self,
        prev: Comment,
        key: &str,
        fresh: &NewComment,
    ) -> StoreResult<Inserted> {
        if fresh.visible_by_ms.is_none() {
            return self.finish_pending_without_policy(prev, key).await;
        }
        // The first attempt's row may still appear (its node may be frozen mid-write) until
        // KEY_SETTLED_MS after its stamp. Deciding earlier either withdraws a comment a fanout
        // may already have streamed (its writer's stream reached it) or adopts a row that is
        // not there yet. The client comes back after Retry-After; nothing changed.
        let settled_at = created_ms(&prev).saturating_add(KEY_SETTLED_MS);
        let now = time::now_millis();
        if now < settled_at {
            return Err(StoreError::KeyInProgress(Duration::from_millis(
                (settled_at - now) as u64,
            )));
        }
        let ttl = IDEMPOTENCY_TTL_SECS - 1;
        // Read at the store's quorum: a row any quorum write left is found (and, read-repaired,
        // stays); a row not found now can only arrive later under the tombstone below.
        if let Some(row) = self.get(&prev.post_id, &prev.id).await? {
            // Written in time by the first attempt: it is in its writer's stream, streamed
            // by that writer or (the writer gone) by every fanout's repair. Adopt it.
            return match self.mark_stored_if_ours(&row, key, ttl).await {
                Mark::Stored => Ok(Inserted::Existing(row)),
                Mark::Taken => Err(StoreError::failed(
                    "the Idempotency-Key changed hands meanwhile; retry",
                )),
                Mark::Unknown(e) => Err(e),
            };
        }
        // Never written (or not in time): the comment must not appear under the old id, whose
        // place in its writer's stream every fanout has passed. The claim moves to this
        // retry's fresh id, and the old id is withdrawn (a delete that shadows any copy still
        // on its way: rows carry their stamp's time as write timestamp).
        let res = self
            .session
            .execute_unpaged(
                &self.st.restamp_key,
                (
                    fresh.comment.id.as_str(),
                    CqlTimestamp(created_ms(&fresh.comment)),
                    &prev.user_id,
                    prev.post_id.as_str(),
                    key,
                    prev.id.as_str(),
                ),
            )
            .await
            .map_err(unavailable)?;
        let (applied, _) = lwt_outcome(res)?;
        if !applied {
            return Err(StoreError::failed(
                "another attempt with this Idempotency-Key is finishing it; retry",
            ));
        }
        let comment = Comment {
            id: fresh.comment.id.clone(),
            timestamp: fresh.comment.timestamp.clone(),
            region: fresh.comment.region.clone(),
            ..prev.clone()
        };
        self.delete_rows(&[(prev.post_id.as_str(), prev.id.as_str())])
            .await?;
        if !fresh.still_in_time() {
            return Err(StoreError::failed("retry not written in time; retry again"));
        }
        self.write_placed(&comment).await?;
        let written_ms = time::now_millis();
        let mark = self.mark_stored_if_ours(&comment, key, ttl).await;
        Self::settle(&comment, mark, written_ms)?;
        Ok(Inserted::Created(comment))
    }

    /// Step 4 for tools and engine tests (no visibility bound): wait up to 0.5 s for the first
    /// attempt, then finish the record's comment under its own id (an overwrite, never a
    /// second comment).
    async fn finish_pending_without_policy(
        &self,
        prev: Comment,
        key: &str,
    ) -> StoreResult<Inserted> {
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut ttl = IDEMPOTENCY_TTL_SECS;
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let res = self
                .session
                .execute_unpaged(
                    &self.st.read_key,
                    (&prev.user_id, prev.post_id.as_str(), key),
                )
                .await
                .map_err(unavailable)?;
            let rows = res.into_rows_result().map_err(unavailable)?;
            match rows
                .maybe_first_row::<(Option<bool>, Option<i32>)>()
                .map_err(unavailable)?
            {
                Some((Some(true), _)) => {
                    return match self.claim(&prev, key).await? {
                        Claim::Stored(c) => Ok(Inserted::Existing(c)),
                        _ => Err(StoreError::failed(
                            "the Idempotency-Key changed hands while waiting; retry",
                        )),
                    };
                }
                Some((_, remaining)) => ttl = remaining.unwrap_or(ttl),
                None => break, // expired meanwhile: finish anyway, the write is an overwrite
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        self.write_placed(&prev).await?;
        self.mark_stored(&prev, key, ttl).await?;
        Ok(Inserted::Created(prev))
    }

    /// A claimed item of a batch (found in time): the comment, then its key marked. When
    /// the write fails, the key is released at once, unless a retry on another node adopted
    /// the row meanwhile: the comment is then stored, acknowledged there, and this writer
    /// publishes it in its own stream as any other.
    pub(super) async fn write_claimed(
        &self,
        item: &NewComment,
        key: &str,
        part: Part,
    ) -> StoreResult<()> {
        let ttl = IDEMPOTENCY_TTL_SECS - 1;
        match self.write_comment_in(&item.comment, part).await {
            Ok(()) => {
                let written_ms = time::now_millis();
                let mark = self.mark_stored_if_ours(&item.comment, key, ttl).await;
                Self::settle(&item.comment, mark, written_ms)
            }
            Err(e) => match self.release_key(&Withdrawal::of(item), key).await {
                Ok(KeyFate::Adopted) => Ok(()),
                _ => Err(e),
            },
        }
    }
}
