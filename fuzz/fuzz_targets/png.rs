//! Arbitrary bytes through the PNG decoder (`imgbatch::png`), which the service runs on every
//! downloaded 8-bit PNG: it must never panic, and whenever the `png` crate decodes a file it
//! takes, it must decode it too, to the same pixels.
//!
//! Seeds: `python3 fuzz/make_png_seeds.py`. Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run
//! png -O -- -max_total_time=300`. `cargo test --test fuzz_corpus` replays fuzz/corpus/png.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Keeps the fuzzer from zero-filling buffers for headers that claim huge images.
const MAX_PIXELS: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    imgbatch::png::check_against_png_crate(data, MAX_PIXELS);
});
