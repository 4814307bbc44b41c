//! Helpers shared by the parser's tests.

pub(super) use super::{parse_csv, CsvError, CsvLimits, ParsedProduct};
pub(super) use crate::domain::{ImageUrl, ProductName, SerialNumber};

pub(super) const HEADER: &str = "S. No.,Product Name,Input Image Urls\n";

pub(super) fn parse(input: &str) -> Result<Vec<ParsedProduct>, Vec<CsvError>> {
    parse_csv(input.as_bytes(), &CsvLimits::default())
}

pub(super) fn ok(input: &str) -> Vec<ParsedProduct> {
    parse(input).unwrap_or_else(|e| panic!("expected success, got {e:#?}"))
}

pub(super) fn errs(input: &str) -> Vec<CsvError> {
    match parse(input) {
        Ok(products) => panic!("expected errors, got {products:#?}"),
        Err(errors) => errors,
    }
}

pub(super) fn errs_bytes(input: &[u8], limits: &CsvLimits) -> Vec<CsvError> {
    match parse_csv(input, limits) {
        Ok(products) => panic!("expected errors, got {products:#?}"),
        Err(errors) => errors,
    }
}

pub(super) fn urls(product: &ParsedProduct) -> Vec<&str> {
    product.input_urls.iter().map(ImageUrl::as_str).collect()
}

/// (line, column) of each error, for compact assertions.
pub(super) fn places(errors: &[CsvError]) -> Vec<(u64, Option<&str>)> {
    errors
        .iter()
        .map(|e| (e.line, e.column.as_deref()))
        .collect()
}

pub(super) fn single(errors: Vec<CsvError>) -> CsvError {
    assert_eq!(errors.len(), 1, "expected exactly one error: {errors:#?}");
    errors.into_iter().next().unwrap()
}

pub(super) const S: Option<&str> = Some("S. No.");
pub(super) const N: Option<&str> = Some("Product Name");
pub(super) const U: Option<&str> = Some("Input Image Urls");
