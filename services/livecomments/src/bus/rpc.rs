//! Request/reply between regions over NATS: since-queries (`comments.since.<region>`) and
//! forwarded deletions (`comments.delete.<region>`). It exists so that the roles speak in
//! typed requests and replies while only the `bus` module knows NATS: one client loop for
//! asking, one responder loop (queue group, bounded concurrency) for answering, instead of a
//! copy per use.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use livecomments_shared::wire;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::trace::{self, RequestId};

/// Why a request got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Transport(String),
    #[error("bad reply: {0}")]
    BadReply(String),
}

/// The NATS client's request/reply side (a clone shares the connection).
#[derive(Clone)]
pub struct Rpc {
    client: async_nats::Client,
}

impl Rpc {
    pub(super) fn new(client: async_nats::Client) -> Rpc {
        Rpc { client }
    }

    /// Sends `request` (MessagePack) on `subject`; the first reply, decoded, within `timeout`.
    pub async fn request<Q: Serialize, R: DeserializeOwned>(
        &self,
        subject: String,
        request: &Q,
        timeout: Duration,
    ) -> Result<R, RpcError> {
        let payload = wire::encode(request).map_err(|e| RpcError::Transport(e.to_string()))?;
        // The request being served (if any) travels with the question.
        let ask = async {
            match trace::current() {
                Some(id) => {
                    self.client
                        .request_with_headers(subject, super::nats::headers_of(&id), payload.into())
                        .await
                }
                None => self.client.request(subject, payload.into()).await,
            }
        };
        let msg = tokio::time::timeout(timeout, ask)
            .await
            .map_err(|_| RpcError::Timeout)?
            .map_err(|e| RpcError::Transport(e.to_string()))?;
        wire::decode(&msg.payload).map_err(|e| RpcError::BadReply(e.to_string()))
    }

    /// Answers requests on `subject` in queue group `queue` (each request served by one member)
    /// until the subscription ends: at most `max_in_flight` at once, more wait in the
    /// subscription's bounded buffer. `answer` gets the decoded request, or `None` when it
    /// was not one (a malformed request gets an answer too, never a crash).
    pub async fn serve<Q, R, F, Fut>(
        &self,
        subject: String,
        queue: &'static str,
        max_in_flight: usize,
        answer: F,
    ) -> anyhow::Result<()>
    where
        Q: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Option<Q>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let mut sub = self
            .client
            .queue_subscribe(subject.clone(), queue.to_string())
            .await
            .map_err(|e| anyhow::anyhow!("subscribing to {subject}: {e}"))?;
        let permits = Arc::new(Semaphore::new(max_in_flight));
        let answer = Arc::new(answer);
        tracing::info!(%subject, "answering requests");
        while let Some(msg) = sub.next().await {
            let Some(reply_to) = msg.reply.clone() else {
                continue;
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (client, answer) = (self.client.clone(), answer.clone());
            let request_id = super::nats::request_id_of(&msg);
            let subject = subject.clone();
            tokio::spawn(async move {
                let q = wire::decode::<Q>(&msg.payload).ok();
                let reply = match &request_id {
                    // The asker's request id is this task's while it answers (so a deletion
                    // it publishes carries it on).
                    Some(id) => trace::scope(id.clone(), answer(q)).await,
                    None => answer(q).await,
                };
                tracing::debug!(
                    target: trace::TARGET,
                    request_id = request_id.as_ref().map(RequestId::as_str),
                    %subject,
                    "answered a bus request"
                );
                if let Ok(bytes) = wire::encode(&reply) {
                    let _ = client.publish(reply_to, bytes.into()).await;
                }
                drop(permit);
            });
        }
        Ok(())
    }
}
