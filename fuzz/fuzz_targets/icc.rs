//! Arbitrary bytes as an embedded ICC profile: judged for every kind of pixel data, with a
//! probe conversion through every transform made. Must never panic; the service wraps the same
//! call in a guard, so a panic found here would cost a profile, not an image, but is a bug.
//!
//! `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run icc -O -- -max_total_time=300`
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imgbatch::compress::judge_for_every_kind(data);
});
