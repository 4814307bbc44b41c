//! Replays the CSV fuzzer's corpus (fuzz/corpus/csv), its hand-written seeds (tests/corpus/csv)
//! and any crash artifacts it left (fuzz/artifacts) through the parser with the default limits,
//! so plain `cargo test` in CI re-checks every input the fuzzer found interesting without
//! needing cargo-fuzz or a nightly toolchain. The JPEG fuzzer's corpus (fuzz/corpus/jpeg) and
//! artifacts (fuzz/artifacts/jpeg) go through the JPEG reader and writer the same way, and the
//! ICC fuzzer's (fuzz/corpus/icc) through the colour-profile judge.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use imgbatch::compress::judge_for_every_kind;
use imgbatch::csv_input::{parse_csv, CsvLimits, MAX_REPORTED_ERRORS};
use imgbatch::jpeg::{info, optimize_huffman, requantize, requantize_to, Effort, Target};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.is_file() && path.file_name().is_some_and(|n| n != "README.md") {
            out.push(path);
        }
    }
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("fuzz");
    let mut corpus = Vec::new();
    files_under(&root.join("corpus").join("csv"), &mut corpus);
    assert!(
        corpus.len() >= 10,
        "fuzz/corpus/csv is missing or nearly empty ({} files)",
        corpus.len()
    );
    let mut files = corpus;
    files_under(
        &manifest.join("tests").join("corpus").join("csv"),
        &mut files,
    );
    files_under(&root.join("artifacts"), &mut files);
    files.sort();

    let limits = CsvLimits::default();
    let mut panicked = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap();
        match catch_unwind(AssertUnwindSafe(|| parse_csv(&data, &limits))) {
            Ok(Ok(products)) => {
                let name = path.display();
                assert!(!products.is_empty(), "{name}: Ok without products");
                for p in &products {
                    assert!(!p.input_urls.is_empty(), "{name}: a product without URLs");
                    // The same invariants as the fuzz target: only fetchable URLs get through.
                    for u in &p.input_urls {
                        let url = url::Url::parse(u.as_str()).expect("an accepted URL parses");
                        assert!(
                            matches!(url.scheme(), "http" | "https"),
                            "{name}: {}",
                            u.as_str()
                        );
                        assert!(url.username().is_empty() && url.password().is_none());
                        assert!(u.as_str().len() <= limits.max_url_len);
                    }
                }
            }
            Ok(Err(errors)) => {
                assert!(
                    !errors.is_empty() && errors.len() <= MAX_REPORTED_ERRORS,
                    "{}: {} errors",
                    path.display(),
                    errors.len()
                );
            }
            Err(_) => panicked.push(path.display().to_string()),
        }
    }
    assert!(panicked.is_empty(), "parse_csv panicked on: {panicked:#?}");
    eprintln!("replayed {} inputs", files.len());
}

/// fuzz/fuzz_targets/jpeg.rs's pixel cap; see there.
const JPEG_MAX_PIXELS: u64 = 1 << 20;

/// The calls and checks of fuzz/fuzz_targets/jpeg.rs, for one input; keep the two in step.
/// Returns whether the reader accepted the input (so the writer's output was checked too).
fn check_jpeg(data: &[u8]) -> bool {
    let (quality, jpeg) = match data.split_first() {
        Some((&b, rest)) if b != 0xFF => (1 + b % 100, rest),
        _ => (50, data),
    };
    let Ok(head) = info(jpeg) else {
        assert!(
            optimize_huffman(jpeg).is_err(),
            "info failed, the reader did not"
        );
        return false;
    };
    if u64::from(head.width) * u64::from(head.height) > JPEG_MAX_PIXELS {
        return false;
    }
    let optimized = optimize_huffman(jpeg);
    let accepted = optimized.is_ok();
    if let Ok(out) = optimized {
        assert!(
            head.unsupported.is_none(),
            "accepted: {:?}",
            head.unsupported
        );
        check_jpeg_output(&out, head.width, head.height);
        // Same coefficients and tables: requantising it succeeds exactly when requantising
        // the input does (it may not: 4:4:4 chroma halved at step 1 can leave baseline range,
        // and the image then takes the pixel path).
        assert_eq!(
            requantize(&out, quality).is_ok(),
            requantize(jpeg, quality).is_ok(),
            "requantize of the re-encoded input differs"
        );
        let again = optimize_huffman(&out).expect("optimize_huffman of its own output");
        assert!(again == out, "optimize_huffman is not idempotent");
    }
    if let Ok(r) = requantize(jpeg, quality) {
        assert_eq!((r.width, r.height), (head.width, head.height));
        check_jpeg_output(&r.jpeg, r.width, r.height);
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
        check_jpeg_output(&rewritten, r.width, r.height);
    }
    accepted
}

fn check_jpeg_output(out: &[u8], width: u16, height: u16) {
    let i = info(out).expect("info of our own output");
    assert_eq!((i.width, i.height), (width, height), "dimensions changed");
    assert!(
        i.unsupported.is_none(),
        "own output unsupported: {:?}",
        i.unsupported
    );
    assert!(!i.progressive, "output is not baseline");
}

#[test]
fn jpeg_fuzz_corpus_replays_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    files_under(&root.join("corpus").join("jpeg"), &mut files);
    assert!(
        files.len() >= 10,
        "fuzz/corpus/jpeg is missing or nearly empty ({} files)",
        files.len()
    );
    files_under(&root.join("artifacts").join("jpeg"), &mut files);
    files.sort();

    let mut failed = Vec::new();
    let mut accepted = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap();
        match catch_unwind(AssertUnwindSafe(|| check_jpeg(&data))) {
            Ok(ok) => accepted += usize::from(ok),
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(failed.is_empty(), "the JPEG checks failed on: {failed:#?}");
    eprintln!(
        "replayed {} JPEG inputs ({accepted} accepted by the reader)",
        files.len()
    );
}

/// The ICC fuzzer's corpus (fuzz/corpus/icc: real profiles, broken and mutated ones) through
/// the profile judge for every kind of pixel data, unguarded: a panic fails this test.
#[test]
fn icc_fuzz_corpus_replays_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    files_under(&root.join("corpus").join("icc"), &mut files);
    assert!(
        files.len() >= 10,
        "fuzz/corpus/icc is missing ({} files)",
        files.len()
    );
    files_under(&root.join("artifacts").join("icc"), &mut files);
    files.sort();
    let mut failed = Vec::new();
    let mut converted = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap();
        match catch_unwind(AssertUnwindSafe(|| judge_for_every_kind(&data))) {
            Ok(verdicts) => {
                converted += verdicts
                    .iter()
                    .filter(|v| v.as_str() == Some("converted"))
                    .count()
            }
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(
        failed.is_empty(),
        "the profile judge panicked on: {failed:#?}"
    );
    // The real wide-gamut profiles among the seeds must still convert.
    assert!(converted >= 3, "only {converted} conversions");
    eprintln!(
        "replayed {} ICC profiles ({converted} conversions)",
        files.len()
    );
}

/// fuzz/fuzz_targets/png.rs's pixel cap.
const PNG_MAX_PIXELS: u64 = 1 << 20;

/// The PNG fuzzer's corpus (fuzz/corpus/png: the seeds of fuzz/make_png_seeds.py and what the
/// fuzzer kept) through the same differential check as the fuzzer: our decoder must not panic,
/// and must decode every file the `png` crate decodes, to the same pixels.
#[test]
fn png_fuzz_corpus_replays_against_the_png_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    files_under(&root.join("corpus").join("png"), &mut files);
    assert!(
        files.len() >= 50,
        "fuzz/corpus/png is missing ({} files)",
        files.len()
    );
    files_under(&root.join("artifacts").join("png"), &mut files);
    files.sort();
    let mut failed = Vec::new();
    let mut taken = 0;
    for path in &files {
        let data = std::fs::read(path).unwrap();
        match catch_unwind(AssertUnwindSafe(|| {
            imgbatch::png::check_against_png_crate(&data, PNG_MAX_PIXELS)
        })) {
            Ok(took) => taken += took,
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(failed.is_empty(), "the PNG check failed on: {failed:#?}");
    // The seeds alone are 80 files the decoder takes, each checked as is and with its
    // checksums made right.
    assert!(taken >= 160, "only {taken} files taken");
    eprintln!("replayed {} PNG inputs ({taken} taken)", files.len());
}
