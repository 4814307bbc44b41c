//! Parsing and validation of the uploaded products CSV.
//!
//! The whole file is validated before anything is accepted: one bad row rejects the upload, and
//! the client gets every problem found (up to [`MAX_REPORTED_ERRORS`]) in one response instead
//! of fixing them one round trip at a time.
//!
//! Accepted format:
//! - UTF-8, with or without a byte-order mark; LF, CRLF or (old Mac) CR line endings.
//! - The first non-blank line is the header. Columns are found by name, ignoring case, white
//!   space, dots, underscores and hyphens, and may come in any order; unknown columns are ignored.
//! - Fields are separated by commas, semicolons (Excel in many locales) or tabs: the delimiter
//!   is the first of those with which the header names every required column (only the header
//!   row is read to find it). A header no delimiter fits is one error on its line, unless one
//!   delimiter names some of the columns: then that header's missing or repeated columns are
//!   reported as for a comma file.
//! - Then one product a line. Blank lines, and lines holding only delimiters and white space,
//!   are skipped.
//! - The URL cell holds one or more URLs separated by commas or white space, whatever the
//!   delimiter. A URL containing a comma therefore cannot be expressed (percent-encode it as
//!   `%2C`). When the URL column is the last named column, fields past it (an unquoted cell
//!   whose delimiters split it into several fields) belong to it too.
//!
//! Line numbers in errors are 1-based physical lines of the file (the header is normally line
//! 1); a product whose quoted cells span several lines is reported at the line it starts on.

mod header;
mod layout;
mod records;
mod rows;
#[cfg(test)]
mod test_support;
mod urls;

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

pub use crate::domain::{check_url, ProductNameError, SerialNumberError, UrlError};
pub(crate) use crate::domain::{show, MAX_SHOWN_CHARS};
use crate::domain::{ImageUrl, ProductName, SerialNumber};
use header::{Column, Columns, HeaderFit};
pub use layout::{layout, CsvLayout, OUTPUT_COLUMN};
use records::{Records, DELIMITERS};
use rows::check_row;

/// Errors beyond this many are not collected: the client gets enough to see the pattern, and a
/// hostile or badly broken file cannot make us build (and send) a huge error list.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// Limits on one upload, from the settings.
#[derive(Debug, Clone)]
pub struct CsvLimits {
    /// Most products (non-blank data rows) a file may hold.
    pub max_rows: usize,
    /// Most input image URLs one product may have.
    pub max_urls_per_product: usize,
    /// Longest accepted URL, in bytes.
    pub max_url_len: usize,
}

impl Default for CsvLimits {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            max_urls_per_product: 20,
            max_url_len: 2048,
        }
    }
}

/// One valid product row.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedProduct {
    /// The 1-based line of the file the row starts on.
    pub line: u64,
    pub serial_number: SerialNumber,
    pub product_name: ProductName,
    /// In the order the client wrote them; never empty.
    pub input_urls: Vec<ImageUrl>,
}

/// One problem with the uploaded file.
///
/// Serializes as `{"line":3,"column":"Input Image Urls","message":"..."}`, with `column` null
/// for problems with a whole row or the whole file.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CsvError {
    /// The 1-based physical line of the file. File-level problems use line 1 (an empty file) or
    /// the line after the header (a file without products).
    pub line: u64,
    /// The canonical name of the column ("S. No.", "Product Name" or "Input Image Urls"), or
    /// `None` when the problem is not in one of those cells.
    pub column: Option<String>,
    /// A human-readable description, quoting (a truncated copy of) the offending value.
    pub message: String,
}

impl CsvError {
    fn row(line: u64, message: String) -> Self {
        Self {
            line,
            column: None,
            message,
        }
    }

    fn cell(line: u64, column: Column, message: String) -> Self {
        Self {
            line,
            column: Some(column.canonical_name().to_owned()),
            message,
        }
    }
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "line {}, {}: {}", self.line, column, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

/// Parses and validates an uploaded CSV.
///
/// Returns the products in file order, or every problem found (at most
/// [`MAX_REPORTED_ERRORS`], in file order) if there is any problem at all. Never panics, and
/// runs in time and memory linear in the input.
///
/// # Errors
///
/// Any problem rejects the whole file. Most errors name the line of the offending row and the
/// column of the offending cell. File-level errors: "the file is empty" (nothing but blank
/// lines, or no bytes at all) is reported on line 1, where the header was expected; "the CSV
/// has no products" on the line after the header. A header with which no delimiter names any
/// required column ("no delimiter (comma, semicolon, tab) gives the header columns ...; the
/// header row is: ...") and a missing or repeated required column are reported on the header's
/// line, and parsing stops there. Parsing also stops at the first row
/// past [`CsvLimits::max_rows`] and at a line with an absurd number of fields.
pub fn parse_csv(bytes: &[u8], limits: &CsvLimits) -> Result<Vec<ParsedProduct>, Vec<CsvError>> {
    // csv-core happens to skip a leading BOM too; stripping it here keeps the contract from
    // depending on that, and keeps byte offsets (used for line numbers) consistent.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut errors = Errors::default();
    let (mut records, header_line) = find_header(bytes, &mut errors)?;
    let Some(columns) =
        Columns::from_header(records.row(), header_line, records.delimiter(), &mut errors)
    else {
        return Err(errors.0);
    };

    let mut products = Vec::new();
    let mut seen_serials = HashMap::new();
    let mut rows = 0usize;
    while !errors.is_full() {
        let Some(line) = records.next_non_blank(&mut errors) else {
            break;
        };
        rows += 1;
        if rows > limits.max_rows {
            errors.push(CsvError::row(
                line,
                format!(
                    "too many products: a file may hold at most {} products",
                    limits.max_rows
                ),
            ));
            break;
        }
        let product = check_row(
            line,
            records.row(),
            &columns,
            limits,
            &mut seen_serials,
            &mut errors,
        );
        // Once the file is known to be rejected, valid rows are no longer worth keeping.
        match product {
            Some(product) if errors.0.is_empty() => products.push(product),
            _ => products = Vec::new(),
        }
    }

    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    if products.is_empty() {
        return Err(vec![CsvError::row(
            header_line + 1,
            "the CSV has no products".to_owned(),
        )]);
    }
    Ok(products)
}

/// Finds the header row and the delimiter: the first of [`DELIMITERS`] with which the header
/// names every required column once. Only the header row is read with each delimiter tried,
/// and a comma file is read once.
///
/// Without such a delimiter, the one naming the most required columns is kept, so that its
/// header's problems (a missing or repeated column) are reported as usual; when none names any,
/// the file gets one error on the header's line, showing the header row.
fn find_header<'a>(
    bytes: &'a [u8],
    errors: &mut Errors,
) -> Result<(Records<'a>, u64), Vec<CsvError>> {
    let mut best: Option<(HeaderFit, Records<'a>, u64)> = None;
    for delimiter in DELIMITERS {
        let mut records = Records::new(bytes, delimiter);
        let mut read_errors = Errors::default();
        let Some(line) = records.next_header(&mut read_errors) else {
            // Blank or unreadable with one delimiter: with the first (comma, whose reader
            // refuses a line of absurdly many fields) that is the file's answer.
            if best.is_none() {
                errors.0 = read_errors.0;
                if errors.0.is_empty() {
                    errors.push(CsvError::row(1, "the file is empty".to_owned()));
                }
                return Err(std::mem::take(&mut errors.0));
            }
            continue;
        };
        let fit = HeaderFit::of(records.row());
        if fit.usable {
            return Ok((records, line));
        }
        if best.as_ref().is_none_or(|(b, _, _)| fit.known > b.known) {
            best = Some((fit, records, line));
        }
    }
    let Some((fit, records, line)) = best else {
        unreachable!("the comma reader either found a header or returned");
    };
    if fit.known > 0 {
        return Ok((records, line));
    }
    let names = Column::ALL.map(|c| format!("\"{}\"", c.canonical_name()));
    Err(vec![CsvError::row(
        line,
        format!(
            "no delimiter ({}) gives the header columns {}; the header row is: {}",
            DELIMITERS.map(|d| d.name()).join(", "),
            names.join(", "),
            show(&String::from_utf8_lossy(
                records.first_line_of_row(MAX_SHOWN_CHARS * 4 + 4)
            ))
        ),
    )])
}

/// Collects errors, dropping any beyond [`MAX_REPORTED_ERRORS`].
#[derive(Debug, Default)]
struct Errors(Vec<CsvError>);

impl Errors {
    fn push(&mut self, error: CsvError) {
        if !self.is_full() {
            self.0.push(error);
        }
    }

    fn is_full(&self) -> bool {
        self.0.len() >= MAX_REPORTED_ERRORS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_input::test_support::*;

    #[test]
    fn parses_a_simple_file_in_order() {
        let products = ok(&format!(
            "{HEADER}1,SKU1,https://a.example/1.jpg\n2,SKU2,http://b.example/2.png\n"
        ));
        assert_eq!(
            products,
            vec![
                ParsedProduct {
                    line: 2,
                    serial_number: SerialNumber::new(1).unwrap(),
                    product_name: ProductName::parse("SKU1").unwrap(),
                    input_urls: vec![
                        ImageUrl::parse("https://a.example/1.jpg", usize::MAX).unwrap()
                    ],
                },
                ParsedProduct {
                    line: 3,
                    serial_number: SerialNumber::new(2).unwrap(),
                    product_name: ProductName::parse("SKU2").unwrap(),
                    input_urls: vec![ImageUrl::parse("http://b.example/2.png", usize::MAX).unwrap()],
                },
            ]
        );
    }

    #[test]
    fn byte_order_mark_is_stripped() {
        let products = ok(&format!("\u{feff}{HEADER}1,SKU1,https://a/1.jpg\n"));
        assert_eq!(products[0].serial_number, SerialNumber::new(1).unwrap());
        assert_eq!(products[0].line, 2);

        // Left in place, the mark would make a quoted first cell unquoted (BOM and quotes
        // included), and the serial column would not be found.
        let products = ok(
            "\u{feff}\"S. No.\",\"Product Name\",\"Input Image Urls\"\r\n1,SKU1,https://a/1.jpg\r\n",
        );
        assert_eq!(products[0].serial_number, SerialNumber::new(1).unwrap());
    }

    #[test]
    fn many_products() {
        let mut input = String::from(HEADER);
        for i in 1..=10_000 {
            input.push_str(&format!("{i},SKU{i},https://a.example/{i}.jpg\n"));
        }
        let products = ok(&input);
        assert_eq!(products.len(), 10_000);
        assert_eq!(products[9_999].line, 10_001);
        assert_eq!(
            products[9_999].serial_number,
            SerialNumber::new(10_000).unwrap()
        );
    }

    #[test]
    fn too_many_rows_stops_parsing() {
        let limits = CsvLimits {
            max_rows: 3,
            ..CsvLimits::default()
        };
        let input = format!(
            "{HEADER}1,A,https://a/1\n2,B,https://a/2\n\n3,C,https://a/3\n4,D,https://a/4\n5,,\n"
        );
        let error = single(errs_bytes(input.as_bytes(), &limits));
        assert_eq!((error.line, error.column.as_deref()), (6, None));
        assert!(error.message.contains("at most 3"), "{}", error.message);

        // Exactly at the limit is fine.
        let input = format!("{HEADER}1,A,https://a/1\n2,B,https://a/2\n3,C,https://a/3\n\n");
        assert_eq!(parse_csv(input.as_bytes(), &limits).unwrap().len(), 3);

        // Earlier errors are kept.
        let input =
            format!("{HEADER}0,A,https://a/1\n2,B,https://a/2\n3,C,https://a/3\n4,D,https://a/4\n");
        let errors = errs_bytes(input.as_bytes(), &limits);
        assert_eq!(places(&errors), [(2, S), (5, None)]);
    }

    #[test]
    fn empty_file() {
        for input in ["", "\u{feff}", "\n\n\r\n", " \n , ,\n\t\n"] {
            let error = single(errs(input));
            assert_eq!(
                error,
                CsvError {
                    line: 1,
                    column: None,
                    message: "the file is empty".into()
                },
                "{input:?}"
            );
        }
    }

    #[test]
    fn header_only() {
        for input in [
            "S. No.,Product Name,Input Image Urls",
            "S. No.,Product Name,Input Image Urls\n",
            "S. No.,Product Name,Input Image Urls\r\n\r\n,,\r\n",
        ] {
            let error = single(errs(input));
            assert_eq!(
                error,
                CsvError {
                    line: 2,
                    column: None,
                    message: "the CSV has no products".into()
                },
                "{input:?}"
            );
        }
    }

    #[test]
    fn all_errors_are_reported_in_order() {
        let errors = errs(&format!(
            "{HEADER}x,,ftp://a/1\n2,B,https://a/2\n2,C,/rel https://a/3 javascript:x\n"
        ));
        assert_eq!(
            places(&errors),
            [(2, S), (2, N), (2, U), (4, S), (4, U), (4, U)]
        );
    }

    #[test]
    fn errors_are_capped() {
        let mut input = String::from(HEADER);
        for i in 1..=150 {
            input.push_str(&format!("{i},,https://a/{i}\n"));
        }
        let errors = errs(&input);
        assert_eq!(errors.len(), MAX_REPORTED_ERRORS);
        assert_eq!(errors[0].line, 2);
        assert_eq!(errors[99].line, 101);

        // Many errors within one row stop at the cap too.
        let mut input = String::from(HEADER);
        input.push_str("1,A,");
        input.push_str(&"/rel ".repeat(500));
        input.push('\n');
        let errors = errs(&input);
        assert_eq!(errors.len(), MAX_REPORTED_ERRORS);
        assert!(errors[0].message.contains("too many image URLs: 500"));
    }

    #[test]
    fn long_values_are_truncated_in_messages() {
        let name = "é".repeat(1000);
        let input = format!("{HEADER}{name},A,https://a/1\n");
        let error = single(errs(&input));
        assert!(error.message.chars().count() < 250, "{}", error.message);
        assert!(error.message.contains("...\""), "{}", error.message);
    }

    #[test]
    fn binary_garbage_never_panics() {
        // A small deterministic generator (xorshift), so failures are reproducible.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let len = (next() % 4096) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Half the time behind a valid header, so the row checks get exercised too.
            if round % 2 == 0 {
                let mut with_header = HEADER.as_bytes().to_vec();
                with_header.append(&mut bytes);
                bytes = with_header;
            }
            match parse_csv(&bytes, &CsvLimits::default()) {
                Ok(products) => assert!(!products.is_empty()),
                Err(errors) => {
                    assert!(!errors.is_empty() && errors.len() <= MAX_REPORTED_ERRORS);
                }
            }
        }
        // Structured garbage: quotes, delimiters and line breaks only.
        for round in 0..200 {
            let len = (next() % 512) as usize;
            let mut bytes = HEADER.as_bytes().to_vec();
            bytes.extend((0..len).map(|_| b"\"\r\n,1a. \xff"[(next() % 9) as usize]));
            let _ = parse_csv(&bytes, &CsvLimits::default());
            let _ = round;
        }
        // Degenerate limits.
        let zero = CsvLimits {
            max_rows: 0,
            max_urls_per_product: 0,
            max_url_len: 0,
        };
        let error = single(errs_bytes(
            format!("{HEADER}1,A,https://a/1\n").as_bytes(),
            &zero,
        ));
        assert!(error.message.contains("at most 0"));
    }

    #[test]
    fn error_serializes_to_the_documented_json() {
        let error = CsvError {
            line: 3,
            column: Some("Input Image Urls".into()),
            message: "bad".into(),
        };
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"line":3,"column":"Input Image Urls","message":"bad"}"#
        );
        let error = CsvError {
            line: 1,
            column: None,
            message: "the file is empty".into(),
        };
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"line":1,"column":null,"message":"the file is empty"}"#
        );
        assert_eq!(error.to_string(), "line 1: the file is empty");
    }

    #[test]
    fn default_limits() {
        let limits = CsvLimits::default();
        assert_eq!(
            (
                limits.max_rows,
                limits.max_urls_per_product,
                limits.max_url_len
            ),
            (10_000, 20, 2048)
        );
    }
}
