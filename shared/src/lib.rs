//! Everything the livecomments roles must agree on: the comment, the rules for valid input,
//! resume positions, and the MessagePack messages on NATS.
//!
//! Nothing in this crate does I/O, so every role (and every client in another language that
//! reads `docs/NATS.md`) sees the same definitions, and all of it is unit-testable.

// No request path may panic on input: outside tests, no unwrap or expect.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod cidr;
pub mod comment;
pub mod entry;
pub mod error;
pub mod id;
pub mod moderation;
pub mod names;
pub mod position;
pub mod reaction;
pub mod time;
pub mod validate;
pub mod wire;

pub use cidr::Cidr;
pub use comment::{Comment, CommentInput};
pub use entry::{Entry, Tombstone};
pub use error::{ErrorCode, Rejection};
pub use names::{CommentId, PostId, Region};
pub use position::Position;
pub use reaction::{Counts, ReactionKind};
