//! The livecomments server. `main.rs` parses the configuration and starts a role; everything
//! else lives here so that tests and benches can drive the same code.

// No request path may panic on input: outside tests, no unwrap or expect.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod app;
pub mod auth;
pub mod bus;
pub mod config;
pub mod fanout;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod moderation;
pub mod presence;
pub mod reader;
pub mod server;
pub mod trace;
