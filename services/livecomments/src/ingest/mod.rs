//! The write path: validate, rate-limit, make durable (group commit), then publish.

pub mod delete;
pub mod pipeline;
pub mod ratelimit;

pub use pipeline::Pipeline;
pub use ratelimit::{RateLimiter, UserLimit};
