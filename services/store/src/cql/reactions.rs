//! Reaction totals (CONTRACT §11) in `reactions` (`cql/0006_reactions.cql`): one counter
//! per post and kind, added to once a second by each ingest node, never retried.

use livecomments_shared::{Counts, PostId, ReactionKind};
use scylla::statement::batch::{Batch, BatchType};

use super::*;

/// Posts whose counts are written at once: one counter batch each.
const CONCURRENT_POSTS: usize = 32;

pub(super) struct ReactionStatements {
    add: PreparedStatement,
    totals: PreparedStatement,
}

impl ReactionStatements {
    pub(super) async fn prepare(
        session: &Session,
        ks: &str,
    ) -> Result<ReactionStatements, SetupError> {
        let mut add = session
            .prepare(format!(
                "UPDATE {ks}.reactions SET n = n + ? WHERE post_id = ? AND kind = ?"
            ))
            .await
            .doing(|| "preparing the reaction counter update".into())?;
        // A counter update applied twice counts twice: never retried by the driver.
        add.set_is_idempotent(false);
        add.set_request_timeout(Some(WRITE_TIMEOUT));
        let mut totals = session
            .prepare(format!(
                "SELECT kind, n FROM {ks}.reactions WHERE post_id = ?"
            ))
            .await
            .doing(|| "preparing the reaction totals read".into())?;
        totals.set_is_idempotent(true);
        Ok(ReactionStatements { add, totals })
    }
}

impl CqlStore {
    pub(super) async fn add_counts(&self, counts: &[(PostId, Counts)]) -> StoreResult<()> {
        let mut result = Ok(());
        for chunk in counts.chunks(CONCURRENT_POSTS) {
            let done = futures::future::join_all(
                chunk.iter().map(|(post, c)| self.add_post_counts(post, c)),
            )
            .await;
            // Every post is tried once; the first failure is the answer.
            for r in done {
                if result.is_ok() {
                    result = r;
                }
            }
        }
        result
    }

    async fn add_post_counts(&self, post: &PostId, c: &Counts) -> StoreResult<()> {
        let mut batch = Batch::new(BatchType::Counter);
        let mut values = Vec::new();
        for kind in ReactionKind::ALL {
            let n = c.get(kind);
            if n > 0 {
                batch.append_statement(self.reactions.add.clone());
                values.push((
                    scylla::value::Counter(i64::try_from(n).unwrap_or(i64::MAX)),
                    post.as_str(),
                    kind.as_str(),
                ));
            }
        }
        if values.is_empty() {
            return Ok(());
        }
        batch.set_is_idempotent(false);
        batch.set_request_timeout(Some(WRITE_TIMEOUT));
        self.session
            .batch(&batch, values)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    pub(super) async fn totals(&self, post: &PostId) -> StoreResult<Counts> {
        let res = self
            .session
            .execute_unpaged(&self.reactions.totals, (post.as_str(),))
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        let mut out = Counts::default();
        for row in rows
            .rows::<(String, scylla::value::Counter)>()
            .map_err(unavailable)?
        {
            let (kind, n) = row.map_err(unavailable)?;
            if let Some(k) = ReactionKind::parse(&kind) {
                out.add(k, u64::try_from(n.0).unwrap_or(0));
            }
        }
        Ok(out)
    }
}
