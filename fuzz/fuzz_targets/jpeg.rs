//! The JPEG coefficient reader (`imgbatch::jpeg`) sees every byte of every downloaded JPEG
//! before the pixel decoder does: it must never panic, and whatever it writes must be a JPEG it
//! can read again, since that output is what the service stores and serves.
//!
//! Input: a JPEG, or one byte choosing the quality followed by a JPEG. An input starting with
//! 0xFF is all JPEG and is requantised at 50 (the service's default); any other first byte `b`
//! means quality `1 + b % 100` for the rest.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run jpeg -- -jobs=1 -max_total_time=420` (from `fuzz/`).
//! `cargo test --test fuzz_corpus` replays fuzz/corpus/jpeg without the fuzzer; its
//! `check_jpeg` makes the same calls and checks and must be kept in step with this file.
#![no_main]

use imgbatch::jpeg::{info, optimize_huffman, requantize, requantize_to, Effort, Target};
use libfuzzer_sys::fuzz_target;

/// The service refuses anything larger than IMGBATCH_MAX_IMAGE_PIXELS from the header before
/// the reader runs; a lower cap here keeps the fuzzer from spending its time zero-filling
/// coefficient buffers for headers that claim huge frames, while still allowing a 65535-pixel
/// side.
const MAX_PIXELS: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let (quality, jpeg) = match data.split_first() {
        Some((&b, rest)) if b != 0xFF => (1 + b % 100, rest),
        _ => (50, data),
    };
    let Ok(head) = info(jpeg) else {
        // The full reader walks the same headers first, so it must refuse too.
        assert!(
            optimize_huffman(jpeg).is_err(),
            "info failed, the reader did not"
        );
        return;
    };
    if u64::from(head.width) * u64::from(head.height) > MAX_PIXELS {
        return;
    }
    if let Ok(out) = optimize_huffman(jpeg) {
        assert!(
            head.unsupported.is_none(),
            "accepted: {:?}",
            head.unsupported
        );
        check_output(&out, head.width, head.height);
        // Same coefficients and tables: requantising it succeeds exactly when requantising
        // the input does (it may not: 4:4:4 chroma halved at step 1 can leave baseline range,
        // and the image then takes the pixel path).
        assert_eq!(
            requantize(&out, quality).is_ok(),
            requantize(jpeg, quality).is_ok(),
            "requantize of the re-encoded input differs"
        );
        // Same coefficients, same statistics, same tables: a second pass is a fixed point.
        let again = optimize_huffman(&out).expect("optimize_huffman of its own output");
        assert!(again == out, "optimize_huffman is not idempotent");
    }
    if let Ok(r) = requantize(jpeg, quality) {
        assert_eq!((r.width, r.height), (head.width, head.height));
        check_output(&r.jpeg, r.width, r.height);
        // Every step is already at least the target's, so nothing changes a second time.
        let again = requantize(&r.jpeg, quality).expect("requantize of its own output");
        assert!(
            again.jpeg == r.jpeg,
            "requantize is not idempotent at q{quality}"
        );
    }

    // The highest effort (trellis, progressive where smaller): a readable frame of the same
    // size, which reads back through the Huffman pass (progressive scans included).
    let highest = Target::new(
        quality,
        Effort::new(Effort::MAX).expect("the highest effort"),
    );
    if let Ok(r) = requantize_to(jpeg, highest) {
        assert_eq!((r.width, r.height), (head.width, head.height));
        let i = info(&r.jpeg).expect("info of the highest effort's output");
        assert!(i.unsupported.is_none(), "unsupported: {:?}", i.unsupported);
        let rewritten = optimize_huffman(&r.jpeg).expect("the highest effort's output reads back");
        check_output(&rewritten, r.width, r.height);
    }
});

/// What the writer produced must read back as a supported frame of the same size, and be
/// accepted by the reader again.
fn check_output(out: &[u8], width: u16, height: u16) {
    let i = info(out).expect("info of our own output");
    assert_eq!((i.width, i.height), (width, height), "dimensions changed");
    assert!(
        i.unsupported.is_none(),
        "own output unsupported: {:?}",
        i.unsupported
    );
    assert!(!i.progressive, "output is not baseline");
}
