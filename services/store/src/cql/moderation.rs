//! Moderation records (bans, their removals, post settings) in `moderation` (the winner of
//! each key) and `moderation_log` (every write by day, for "what changed since t"); schema
//! and reasoning in `cql/0005_moderation.cql`.
//!
//! Last writer wins without a read: every write carries `USING TIMESTAMP` = the record's time
//! in microseconds, so Cassandra keeps the newest whichever node writes it last (a region
//! replays what it learned from another; two ingest nodes apply the same NATS change).

use futures::TryStreamExt;
use livecomments_shared::moderation::Record;
use livecomments_shared::wire;

use super::*;

/// Width of a `moderation_log` partition: one day.
const LOG_DAY_MS: i64 = 86_400_000;
/// Rows of `moderation_log` kept (its table TTL says the same): 31 days.
const LOG_TTL_SECS: i32 = 2_678_400;

pub(super) struct ModStatements {
    put: PreparedStatement,
    log: PreparedStatement,
    all: PreparedStatement,
    since: PreparedStatement,
}

impl ModStatements {
    pub(super) async fn prepare(session: &Session, ks: &str) -> Result<ModStatements, SetupError> {
        let prep = |cql: String| async move {
            let mut p = session
                .prepare(cql.as_str())
                .await
                .doing(|| format!("preparing {cql}"))?;
            // Upserts and reads only: a retry writes the same cell with the same timestamp.
            p.set_is_idempotent(true);
            p.set_request_timeout(Some(WRITE_TIMEOUT));
            Ok::<_, SetupError>(p)
        };
        Ok(ModStatements {
            put: prep(format!(
                "INSERT INTO {ks}.moderation (part, key, record, updated_at) VALUES (0, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            log: prep(format!(
                "INSERT INTO {ks}.moderation_log (day, updated_at, key, record) VALUES (?, ?, ?, ?) USING TTL {LOG_TTL_SECS}"
            ))
            .await?,
            all: prep(format!("SELECT record FROM {ks}.moderation WHERE part = 0")).await?,
            since: prep(format!(
                "SELECT record FROM {ks}.moderation_log WHERE day = ? AND updated_at > ? LIMIT ?"
            ))
            .await?,
        })
    }
}

fn decode(bytes: &[u8]) -> Option<Record> {
    match wire::decode::<Record>(bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            // One bad row must not hide every other ban: skipped and logged.
            tracing::warn!(error = %e, "skipping an undecodable moderation row");
            None
        }
    }
}

impl CqlStore {
    pub(super) async fn put_records(&self, records: &[Record]) -> StoreResult<()> {
        let m = &self.moderation;
        for r in records {
            let bytes = wire::encode(r).map_err(unavailable)?;
            let key = r.key();
            let at = CqlTimestamp(r.updated_at_ms);
            // Log first: a reader of the log that sees the row finds the state written too
            // (or about to be), and a node that starts reads the state itself.
            self.session
                .execute_unpaged(
                    &m.log,
                    (
                        i32::try_from(r.updated_at_ms.div_euclid(LOG_DAY_MS)).unwrap_or(i32::MAX),
                        at,
                        &key,
                        &bytes,
                    ),
                )
                .await
                .map_err(unavailable)?;
            self.session
                .execute_unpaged(
                    &m.put,
                    (&key, &bytes, at, r.updated_at_ms.saturating_mul(1000)),
                )
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    pub(super) async fn all_records(&self, limit: usize) -> StoreResult<Vec<Record>> {
        let pager = self
            .session
            .execute_iter(self.moderation.all.clone(), ())
            .await
            .map_err(unavailable)?;
        let mut rows = pager.rows_stream::<(Vec<u8>,)>().map_err(unavailable)?;
        let mut out = Vec::new();
        while out.len() < limit
            && let Some((bytes,)) = rows.try_next().await.map_err(unavailable)?
        {
            out.extend(decode(&bytes));
        }
        Ok(out)
    }

    pub(super) async fn records_since(
        &self,
        after_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Record>> {
        let now = time::now_millis();
        let first = after_ms
            .max(now - LOG_TTL_SECS as i64 * 1000)
            .div_euclid(LOG_DAY_MS);
        let last = now.div_euclid(LOG_DAY_MS) + 1; // a writer's clock a little ahead
        let mut out = Vec::new();
        for day in first..=last {
            if out.len() >= limit {
                break;
            }
            let want = i32::try_from(limit - out.len()).unwrap_or(i32::MAX);
            let res = self
                .session
                .execute_unpaged(
                    &self.moderation.since,
                    (
                        i32::try_from(day).unwrap_or(i32::MAX),
                        CqlTimestamp(after_ms),
                        want,
                    ),
                )
                .await
                .map_err(unavailable)?;
            let rows = res.into_rows_result().map_err(unavailable)?;
            for row in rows.rows::<(Vec<u8>,)>().map_err(unavailable)? {
                let (bytes,) = row.map_err(unavailable)?;
                out.extend(decode(&bytes));
            }
        }
        Ok(out)
    }
}
