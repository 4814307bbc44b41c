//! The URL cell: splitting it into URLs, and the rules every accepted URL follows.

use url::Url;

use super::header::{Column, Columns};
use super::records::{Field, Row};
use super::{show, CsvError, CsvLimits, Errors};
use crate::domain::ImageUrl;

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

/// Why a URL is refused. The text is the CSV's message, quoting (a shortened copy of) the
/// URL; other callers, such as the webhook URL's, word their own from the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL is too long: {len} bytes, at most {max} are allowed: {shown}")]
    TooLong {
        len: usize,
        max: usize,
        shown: String,
    },
    #[error("the URL contains a control character: {shown}")]
    ControlCharacter { shown: String },
    #[error("not an absolute URL (it must start with http:// or https://): {shown}")]
    NotAbsolute { shown: String },
    #[error("not a valid URL ({error}): {shown}")]
    Invalid {
        error: url::ParseError,
        shown: String,
    },
    #[error("the URL scheme \"{scheme}\" is not allowed, only http and https are: {shown}")]
    Scheme { scheme: String, shown: String },
    #[error("the URL has no host: {shown}")]
    NoHost { shown: String },
    /// `shown` is the URL without its credentials: the message may be shown and logged.
    #[error("credentials in URLs are not allowed (remove the user:password@ part): {shown}")]
    Credentials { shown: String },
}

/// The rules of every URL the service accepts from a client, image or webhook: an absolute
/// http or https URL with a host, no credentials, no control characters, at most `max_len`
/// bytes. The URL is kept as written, so it must not hold controls, which a URL parser would
/// silently drop or escape: what is fetched later would not be what was checked.
pub fn check_url(url: &str, max_len: usize) -> Result<(), UrlError> {
    // Checked first, so that an enormous URL costs no parsing.
    if url.len() > max_len {
        return Err(UrlError::TooLong {
            len: url.len(),
            max: max_len,
            shown: show(url),
        });
    }
    if url.chars().any(char::is_control) {
        return Err(UrlError::ControlCharacter { shown: show(url) });
    }
    if is_plain_http_url(url) {
        return Ok(());
    }
    check_url_fully(url)
}

/// The checks of [`check_url`] that need the URL parsed.
fn check_url_fully(token: &str) -> Result<(), UrlError> {
    let url = match Url::parse(token) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Err(UrlError::NotAbsolute { shown: show(token) })
        }
        Err(error) => {
            return Err(UrlError::Invalid {
                error,
                shown: show(token),
            })
        }
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme {
            scheme: url.scheme().to_owned(),
            shown: show(token),
        });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost { shown: show(token) });
    }
    if !url.username().is_empty() || url.password().is_some() {
        let mut redacted = url;
        // Cannot fail: the URL has a host (checked above).
        let _ = redacted.set_username("");
        let _ = redacted.set_password(None);
        return Err(UrlError::Credentials {
            shown: show(redacted.as_str()),
        });
    }
    Ok(())
}

/// True for an http(s) URL of the plainest form, which [`check_url_fully`] would accept: a
/// lower-case scheme, a host of lower-case letters, digits and hyphens (or a dotted-quad IPv4
/// address), an optional port, then nothing or a path, query or fragment, which never fail to
/// parse. Parsing costs several thousand instructions a URL, half of them in host processing
/// (IDNA), and was most of the time of validating a large file; nearly every URL of a real file
/// takes this path. Anything unusual (upper case, punycode, credentials, other IPv4 forms, ...)
/// gets the full parse, so this decides nothing the parser would decide differently.
fn is_plain_http_url(token: &str) -> bool {
    let Some(rest) = token
        .strip_prefix("http://")
        .or_else(|| token.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if let Some(port) = port {
        let digits =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !digits || !port.parse::<u32>().is_ok_and(|p| p <= 65535) {
            return false;
        }
    }
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'))
        || host
            .split('.')
            .any(|l| l.is_empty() || l.starts_with("xn--"))
    {
        return false;
    }
    // A host whose last label is a number is an IPv4 address to the parser (decimal, octal or
    // hex parts, fewer than four, ...); only the plain dotted quad is taken here.
    let last = host.rsplit('.').next().unwrap_or_default();
    if !(last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x")) {
        return true;
    }
    host.split('.').count() == 4
        && host.split('.').all(|part| {
            part.len() <= 3
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'))
                && part.parse::<u8>().is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn plain_urls_skip_the_full_parse_only_when_it_would_accept_them() {
        for url in [
            "https://cdn.example.com/a/b.jpg?w=1&h=2#x",
            "http://127.0.0.1:45678/x.jpg?u=7",
            "http://0.0.0.0",
            "http://a-b.c9:65535",
            "https://images.example.com/%7Euser/[1]|{2}^`\\\"<'>é.jpg",
            "http://localhost?q",
        ] {
            assert!(is_plain_http_url(url), "{url}");
            assert_eq!(check_url_fully(url), Ok(()), "{url}");
        }
        // Left to the full parse, whatever it decides.
        for url in [
            "HTTP://a.example/1.jpg",
            "https://A.example/",
            "https://xn--nxasmq6b.example/",
            "https://bob:pw@a.example/",
            "https://a.example:65536/",
            "https://a.example:/",
            "https://a..example/",
            "https://a.example./",
            "http://1.2.3/",
            "http://1.2.3.4.5/",
            "http://01.2.3.4/",
            "http://256.1.1.1/",
            "http://1.2.3.0x1f/",
            "http://a.0x/",
            "http://a\\b/",
            "http:///a",
            "https://",
            "ftp://a.example/",
        ] {
            assert!(!is_plain_http_url(url), "{url}");
        }
        // Every URL this path accepts, the parser accepts too, over a space of near misses.
        let pieces = [
            "", "a", "0", "1", "9", "255", "256", "00", "0x", "0x1", "-", "xn--a", ".", ":", ":80",
            ":99999", "@", "/", "?", "#", "\\", "%", "[", "]",
        ];
        for scheme in ["http://", "https://"] {
            for a in pieces {
                for b in pieces {
                    for c in pieces {
                        for d in ["", ".", "/p", ":1/p"] {
                            let url = format!("{scheme}{a}{b}.{c}{d}");
                            if is_plain_http_url(&url) {
                                assert_eq!(check_url_fully(&url), Ok(()), "{url}");
                            }
                        }
                    }
                }
            }
        }
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
