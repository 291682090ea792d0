//! `delete_comments: true` on a ban (CONTRACT §8): every comment of the user on the post is
//! deleted as DELETE deletes it (the same functions of `delete.rs`, so every stream gets
//! `event: delete`), in this region and, through the forwarding path, in the others.
//!
//! Bounded: the newest [`SCAN_MAX`] comments of the post in each region are looked at (as
//! Twitch's and YouTube's "remove this user's messages" reach back over the recent chat, not
//! years of it); older comments of the user stay until deleted one by one.

use livecomments_shared::wire::{DeleteRequest, SinceRequest};
use livecomments_shared::{CommentId, PostId, wire};

use super::delete::{self, Outcome};
use crate::http::IngestState;

/// Comments of the post read per region (100 pages of 100).
pub const SCAN_MAX: usize = 10_000;

/// Deletes `user`'s comments on `post` (as moderator `by`); returns how many were deleted.
pub async fn purge(st: &IngestState, user: &str, post: &PostId, by: &str) -> usize {
    let mut deleted = 0;
    let regions: Vec<String> = st.history.regions().map(str::to_string).collect();
    for region in regions {
        let mut before: Option<CommentId> = None;
        let mut scanned = 0;
        let mut theirs = Vec::new();
        while scanned < SCAN_MAX {
            let q = SinceRequest {
                post_id: post.clone(),
                after: None,
                before: before.clone(),
                newest_first: true,
                limit: wire::SINCE_MAX_LIMIT,
            };
            let Ok(page) = st.history.region_page(&region, &q).await else {
                tracing::warn!(%region, post_id = %post, "purge: region unreachable; its comments stay");
                break;
            };
            scanned += page.comments.len();
            before = page.comments.last().map(|c| c.id.clone());
            theirs.extend(page.comments.into_iter().filter(|c| c.user_id == user));
            if !page.more || before.is_none() {
                break;
            }
        }
        for c in theirs {
            let req = DeleteRequest {
                post_id: post.clone(),
                id: c.id.clone(),
                user_id: by.to_string(),
                moderator: true,
            };
            if delete_one(st, &region, &req).await == Outcome::Deleted {
                deleted += 1;
                st.moderation.forget_comment(post, &c.id).await;
            }
        }
    }
    deleted
}

/// The one place a purge calls into `delete.rs`: locally when the comment is this
/// region's, else through the forwarding path to its region.
async fn delete_one(st: &IngestState, region: &str, req: &DeleteRequest) -> Outcome {
    let c = &st.common;
    if region == c.region {
        return delete::delete_local(st.store.as_ref(), &st.pipeline, req).await;
    }
    match &st.remote_deletes {
        Some(remote) => delete::delete_remote(&remote.rpc, &[region.to_string()], req).await,
        None => Outcome::Error,
    }
}
