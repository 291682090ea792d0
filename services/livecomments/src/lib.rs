//! The livecomments server. `main.rs` parses the configuration and starts a role; everything
//! else lives here so that tests and benches can drive the same code.

pub mod config;
pub mod store;
