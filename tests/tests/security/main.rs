//! Hostile input over the network (issue 5): JWTs with asymmetric keys and algorithm
//! confusion, values that would change a NATS subject, forged resume tokens, oversized
//! headers, slowloris, a client opening thousands of streams, a malicious publisher on the
//! bus, garbage since-queries, and what the logs and error bodies must never contain.
//! Each test runs the real binary (and a real nats-server where the bus is involved); one
//! module per kind of attack.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use livecomments_shared::wire::{self, SinceReply};
use livecomments_tests::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(10);

mod bus;
mod connections;
mod jwt;
mod leaks;
mod resume;
mod subjects;
