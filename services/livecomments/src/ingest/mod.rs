//! The write path: validate, rate-limit, make durable (group commit), then publish.

pub mod delete;
pub mod pipeline;
pub mod purge;
pub mod ratelimit;
pub mod reactions;
pub mod slowmode;

pub use pipeline::Pipeline;
pub use ratelimit::{RateLimiter, UserLimit};
pub use slowmode::SlowMode;
