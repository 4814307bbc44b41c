//! Replays the CSV fuzzer's corpus (fuzz/corpus/csv), its hand-written seeds (tests/corpus/csv)
//! and any crash artifacts it left (fuzz/artifacts) through the parser with the default limits,
//! so plain `cargo test` in CI re-checks every input the fuzzer found interesting without
//! needing cargo-fuzz or a nightly toolchain.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use imgbatch::csv_input::{parse_csv, CsvLimits, MAX_REPORTED_ERRORS};

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
