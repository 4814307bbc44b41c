//! The rules of the values a client sends, behind the newtypes' parsers: URLs (of images and
//! webhooks alike), serial numbers and product names. Their error texts are the messages the
//! client reads, quoting (a shortened copy of) the value.

use url::Url;

/// How much of an offending value an error message quotes, in characters.
pub(crate) const MAX_SHOWN_CHARS: usize = 100;

/// A value quoted for an error message: cut to [`MAX_SHOWN_CHARS`] characters, with control and
/// bidirectional-override characters escaped so that the message displays what was really there.
pub(crate) fn show(value: &str) -> String {
    let mut shown = String::from("\"");
    let mut chars = value.chars();
    for c in chars.by_ref().take(MAX_SHOWN_CHARS) {
        if c.is_control()
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
        {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    if chars.next().is_some() {
        shown.push_str("...");
    }
    shown.push('"');
    shown
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

/// Why a serial number is refused; the text is the client's message, quoting the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialNumberError {
    #[error("the serial number is missing")]
    Missing,
    #[error("the serial number must be a positive whole number, not {shown}")]
    NotAWholeNumber { shown: String },
    #[error("the serial number must be positive (1 or more), not {shown}")]
    Zero { shown: String },
    #[error("the serial number is too large (at most {}): {shown}", i64::MAX)]
    TooLarge { shown: String },
}

/// The rule behind [`SerialNumber::parse`]: a positive integer that fits an `i64`, surrounded
/// by optional white space and followed by an optional dot (spreadsheets often number rows
/// `1.`, `2.`, ...).
pub(crate) fn parse_serial(raw: &str) -> Result<i64, SerialNumberError> {
    let value = raw.trim();
    if value.is_empty() {
        return Err(SerialNumberError::Missing);
    }
    let digits = value.strip_suffix('.').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SerialNumberError::NotAWholeNumber { shown: show(value) });
    }
    match digits.parse::<i64>() {
        Ok(0) => Err(SerialNumberError::Zero { shown: show(value) }),
        Ok(serial) => Ok(serial),
        // Only digits, so the one possible failure is overflow.
        Err(_) => Err(SerialNumberError::TooLarge { shown: show(value) }),
    }
}

/// Why a product name is refused; the text is the client's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductNameError {
    #[error("the product name is empty")]
    Empty,
    #[error("the product name contains a control character: {shown}")]
    ControlCharacter { shown: String },
}

/// The rule behind [`ProductName::parse`]: a trimmed, non-blank name.
///
/// Control characters other than line breaks and tabs are rejected: they are never intended,
/// they are a sign of a binary or mis-encoded file, and NUL cannot be stored in a PostgreSQL
/// text column at all.
pub(crate) fn check_name(raw: &str) -> Result<&str, ProductNameError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(ProductNameError::Empty);
    }
    if name.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return Err(ProductNameError::ControlCharacter { shown: show(name) });
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
