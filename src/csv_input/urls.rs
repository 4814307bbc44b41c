//! The URL cell: splitting it into URLs, and the rules every accepted URL follows.

use super::header::{Column, Columns};
use super::records::{Field, Row};
use super::{CsvError, CsvLimits, Errors};
use crate::domain::{check_url, ImageUrl};

/// The URLs of a row, or `None` if it has none, too many, or a refused one (all reported to
/// `errors`). With `keep` false the row is refused already: its URLs are still checked, so
/// that the client learns of every problem at once, but not copied (there may be many).
pub(super) fn check_cells(
    line: u64,
    row: Row<'_>,
    columns: &Columns,
    limits: &CsvLimits,
    keep: bool,
    errors: &mut Errors,
) -> Option<Vec<ImageUrl>> {
    let mut ok = keep;
    let url_cells = if columns.urls_take_extra_fields {
        usize::MAX
    } else {
        1
    };
    let tokens = || {
        row.fields()
            .skip(columns.urls)
            .take(url_cells)
            .filter_map(|f| match f {
                Field::Text(s) => Some(s),
                Field::Binary(_) => None,
            })
            .flat_map(|s| s.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|t| !t.is_empty())
    };
    let count = tokens().count();
    if count == 0 {
        ok = false;
        errors.push(CsvError::cell(
            line,
            Column::Urls,
            "no image URL: at least one http or https URL is required".to_owned(),
        ));
    } else if count > limits.max_urls_per_product {
        ok = false;
        errors.push(CsvError::cell(
            line,
            Column::Urls,
            format!(
                "too many image URLs: {count}; a product may have at most {}",
                limits.max_urls_per_product
            ),
        ));
    }
    let mut urls = Vec::new();
    for token in tokens() {
        if errors.is_full() {
            return None;
        }
        let checked = if ok {
            ImageUrl::parse(token, limits.max_url_len).map(|url| urls.push(url))
        } else {
            check_url(token, limits.max_url_len)
        };
        if let Err(error) = checked {
            ok = false;
            urls = Vec::new();
            errors.push(CsvError::cell(line, Column::Urls, error.to_string()));
        }
    }
    ok.then_some(urls)
}

#[cfg(test)]
mod tests {
    use crate::csv_input::test_support::*;

    #[test]
    fn quoted_url_cell_with_commas() {
        let products = ok(&format!(
            "{HEADER}1,SKU1,\"https://a.example/1.jpg,https://a.example/2.jpg, https://a.example/3.jpg ,\"\n"
        ));
        assert_eq!(
            urls(&products[0]),
            [
                "https://a.example/1.jpg",
                "https://a.example/2.jpg",
                "https://a.example/3.jpg"
            ]
        );
    }

    #[test]
    fn white_space_separated_urls() {
        let products = ok(&format!(
            "{HEADER}1,SKU1,https://a.example/1.jpg  https://a.example/2.jpg\thttps://a.example/3.jpg\n\
             2,SKU2,\"https://a.example/4.jpg\nhttps://a.example/5.jpg\r\nhttps://a.example/6.jpg\"\n"
        ));
        assert_eq!(
            urls(&products[0]),
            [
                "https://a.example/1.jpg",
                "https://a.example/2.jpg",
                "https://a.example/3.jpg"
            ]
        );
        assert_eq!(
            urls(&products[1]),
            [
                "https://a.example/4.jpg",
                "https://a.example/5.jpg",
                "https://a.example/6.jpg"
            ]
        );
    }

    #[test]
    fn unquoted_urls_spill_into_extra_fields() {
        let products = ok(&format!(
            "{HEADER}1,SKU1,https://a/1.jpg,https://a/2.jpg,https://a/3.jpg\n2,SKU2,https://a/4.jpg\n"
        ));
        assert_eq!(
            urls(&products[0]),
            ["https://a/1.jpg", "https://a/2.jpg", "https://a/3.jpg"]
        );
        assert_eq!(urls(&products[1]), ["https://a/4.jpg"]);
    }

    #[test]
    fn missing_urls() {
        let errors = errs(&format!("{HEADER}1,A,\n2,B, , ,\n3,C\n4,D,\"\"\n"));
        assert_eq!(places(&errors), [(2, U), (3, U), (4, U), (5, U)]);
        assert!(
            errors[0].message.contains("at least one"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn relative_and_non_http_urls_are_rejected() {
        let cases = [
            ("/images/1.jpg", "absolute"),
            ("images/1.jpg", "absolute"),
            ("//a.example/1.jpg", "absolute"),
            ("ftp://a.example/1.jpg", "\"ftp\""),
            ("javascript:alert(1)", "\"javascript\""),
            ("file:///etc/passwd", "\"file\""),
            ("data:image/png;base64;iVBORw0KGgo=", "\"data\""),
            ("mailto:someone@a.example", "\"mailto\""),
            ("HTTPX://a.example/1.jpg", "\"httpx\""),
            ("http://", "not a valid URL"),
            ("https://exa mple.com", "absolute"),
            ("http://[::1/", "not a valid URL"),
        ];
        for (url, expected) in cases {
            let input = format!("{HEADER}1,A,https://ok.example/1.jpg\n2,B,\"{url}\"\n");
            let errors = errs(&input);
            assert!(!errors.is_empty(), "{url}");
            assert_eq!(errors[0].line, 3, "{url}");
            assert_eq!(errors[0].column.as_deref(), U, "{url}");
            assert!(
                errors[0].message.contains(expected),
                "{url}: {}",
                errors[0].message
            );
        }
    }

    #[test]
    fn urls_with_credentials_are_rejected_without_echoing_them() {
        let error = single(errs(&format!(
            "{HEADER}1,A,https://bob:hunter2@a.example/1.jpg\n"
        )));
        assert_eq!((error.line, error.column.as_deref()), (2, U));
        assert!(error
            .message
            .contains("credentials in URLs are not allowed"));
        assert!(!error.message.contains("hunter2"), "{}", error.message);
        assert!(
            error.message.contains("a.example/1.jpg"),
            "{}",
            error.message
        );

        let error = single(errs(&format!("{HEADER}1,A,http://bob@a.example/1.jpg\n")));
        assert!(error.message.contains("credentials"), "{}", error.message);
    }

    #[test]
    fn url_control_characters_are_rejected() {
        let error = single(errs(&format!(
            "{HEADER}1,A,\"https://a.example/\x01.jpg\"\n"
        )));
        assert_eq!((error.line, error.column.as_deref()), (2, U));
        assert!(
            error.message.contains("control character"),
            "{}",
            error.message
        );
    }

    #[test]
    fn url_length_limit() {
        let limits = CsvLimits {
            max_url_len: 40,
            ..CsvLimits::default()
        };
        let prefix = "https://a.example/";
        let exact = format!("{prefix}{}", "x".repeat(40 - prefix.len()));
        let over = format!("{exact}y");
        let input = format!("{HEADER}1,A,{exact}\n");
        assert!(parse_csv(input.as_bytes(), &limits).is_ok());

        let input = format!("{HEADER}1,A,{exact}\n2,B,{over}\n");
        let error = single(errs_bytes(input.as_bytes(), &limits));
        assert_eq!((error.line, error.column.as_deref()), (3, U));
        assert!(error.message.contains("too long"), "{}", error.message);
        assert!(error.message.contains("41"), "{}", error.message);
    }

    #[test]
    fn url_count_limit() {
        let limits = CsvLimits {
            max_urls_per_product: 3,
            ..CsvLimits::default()
        };
        let input = format!("{HEADER}1,A,https://a/1 https://a/2 https://a/3\n");
        assert!(parse_csv(input.as_bytes(), &limits).is_ok());

        let input = format!(
            "{HEADER}1,A,https://a/1 https://a/2 https://a/3\n2,B,https://a/1,https://a/2,https://a/3,https://a/4\n"
        );
        let error = single(errs_bytes(input.as_bytes(), &limits));
        assert_eq!((error.line, error.column.as_deref()), (3, U));
        assert!(
            error.message.contains('4') && error.message.contains('3'),
            "{}",
            error.message
        );
    }
}
