//! The CSV parser sees every byte an uploader sends: it must never panic, whatever the input,
//! and what it returns must keep its documented shape.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run csv -- -max_total_time=300` (from the repository
//! root). `cargo test --test fuzz_corpus` replays fuzz/corpus/csv without the fuzzer.
#![no_main]

use imgbatch::csv_input::{parse_csv, CsvLimits, MAX_REPORTED_ERRORS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = CsvLimits::default();
    match parse_csv(data, &limits) {
        Ok(products) => {
            assert!(!products.is_empty(), "Ok with no products");
            assert!(products.len() <= limits.max_rows);
            let mut last_line = 0;
            for p in &products {
                assert!(p.line > last_line, "products out of file order");
                last_line = p.line;
                assert!(p.serial_number.get() > 0, "serials are positive");
                assert!(!p.product_name.as_str().trim().is_empty(), "a blank name");
                assert!(!p.input_urls.is_empty(), "a product without URLs");
                assert!(p.input_urls.len() <= limits.max_urls_per_product);
                for u in &p.input_urls {
                    // Only what the fetcher may be given: absolute http(s), a host, no
                    // credentials, no control characters, within the length limit.
                    let s = u.as_str();
                    assert!(s.len() <= limits.max_url_len, "URL over the limit");
                    assert!(
                        !s.chars().any(char::is_control),
                        "control character in {s:?}"
                    );
                    let url = url::Url::parse(s).expect("an accepted URL parses");
                    assert!(matches!(url.scheme(), "http" | "https"), "scheme of {s:?}");
                    assert!(
                        url.host_str().is_some_and(|h| !h.is_empty()),
                        "host of {s:?}"
                    );
                    assert!(url.username().is_empty() && url.password().is_none());
                }
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "Err with no errors");
            assert!(errors.len() <= MAX_REPORTED_ERRORS);
            for e in &errors {
                assert!(e.line >= 1, "line numbers are 1-based");
            }
        }
    }
});
