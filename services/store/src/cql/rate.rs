//! The per-user rate limit shared by every ingest node of a region: a sliding window of
//! accepted requests per user in `user_rate` (LOCAL_QUORUM reads and writes).

use super::*;

fn window_millis(window: Duration) -> i64 {
    i64::try_from(window.as_millis())
        .unwrap_or(i64::MAX / 2)
        .max(1)
}

impl CqlStore {
    /// The per-user rate limit across every ingest node of the region: a sliding window of
    /// `limit` accepted requests per `window`. Says whether `user` may post now, or how long
    /// until the oldest request in the window expires. The caller records an accepted request
    /// with [`CqlStore::record_rate`] before it answers, so the user's next request sees it.
    pub async fn check_rate(
        &self,
        user: &str,
        limit: u32,
        window: Duration,
    ) -> StoreResult<Result<(), Duration>> {
        let now = time::now_millis();
        let window_ms = window_millis(window);
        let limit = limit.clamp(1, i32::MAX as u32);
        let res = self
            .session
            .execute_unpaged(
                &self.st.rate_recent,
                (user, CqlTimestamp(now - window_ms), limit as i32),
            )
            .await
            .map_err(unavailable)?;
        let rows = res.into_rows_result().map_err(unavailable)?;
        let ats: Vec<i64> = rows
            .rows::<(CqlTimestamp,)>()
            .map_err(unavailable)?
            .filter_map(|r| r.ok().map(|(t,)| t.0))
            .collect();
        if ats.len() >= limit as usize {
            let oldest = ats.iter().copied().min().unwrap_or(now);
            let wait = (oldest + window_ms - now).max(1);
            return Ok(Err(Duration::from_millis(wait as u64)));
        }
        Ok(Ok(()))
    }

    /// Records one accepted request of `user` in the rate-limit window.
    pub async fn record_rate(&self, user: &str, window: Duration) -> StoreResult<()> {
        let window_ms = window_millis(window);
        let ttl = i32::try_from(window_ms / 1000 + 1).unwrap_or(i32::MAX);
        self.session
            .execute_unpaged(
                &self.st.rate_take,
                (
                    user,
                    CqlTimestamp(time::now_millis()),
                    rand::random::<i64>(),
                    ttl,
                ),
            )
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
