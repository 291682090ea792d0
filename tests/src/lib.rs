//! Shared helpers for the end-to-end tests: start the real `livecomments` binary and a real
//! `nats-server` on loopback ports, mint tokens, and talk HTTP and SSE as a client would.
//! Every test file uses these; none starts processes or parses SSE on its own.
//!
//! One module per concern, all re-exported here (`use livecomments_tests::*`).

mod auth;
mod cql;
mod http;
mod link;
mod load;
mod moderation;
mod nats;
mod nats_cluster;
mod proc;
mod raw_nats;
mod region;
mod server;
mod sse;
mod supercluster;
mod util;

pub use auth::*;
pub use cql::*;
pub use http::*;
pub use link::*;
pub use load::*;
pub use moderation::*;
pub use nats::*;
pub use nats_cluster::*;
pub use proc::*;
pub use raw_nats::*;
pub use region::*;
pub use server::*;
pub use sse::*;
pub use supercluster::*;
pub use util::*;
