//! The global reader: history of a post from every region, merged. The local region is read
//! from the store (when this process has one) and the others over NATS request/reply on
//! `comments.since.<region>`. Fanouts replay through the same [`History`], so they never open
//! a store.

pub mod history;
pub mod reactions;
pub mod responder;

pub use history::{History, MergedPage, RegionSource};
