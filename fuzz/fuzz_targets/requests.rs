#![no_main]
//! See `livecomments_fuzz::checks::requests` for what is checked.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| livecomments_fuzz::checks::requests(data));
