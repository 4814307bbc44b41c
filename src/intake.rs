//! Accepting an upload: validate the CSV, store every row in one transaction, wake the workers.

use sha2::{Digest, Sha256};

use crate::core::{Core, CreateOutcome, NewRequest, StoreError};
use crate::csv_input::{parse_csv, CsvError, CsvLimits};
use crate::domain::RequestId;
use crate::domain::{check_url, ImageOptions, Owner, UrlError};

/// Why an upload was not accepted. The HTTP layer turns each into its answer (see
/// `impl From<IntakeError> for ApiError`); the core knows nothing of status codes.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// Every problem found in the file, in file order.
    #[error("Invalid CSV format")]
    InvalidCsv(Vec<CsvError>),
    #[error(transparent)]
    InvalidWebhookUrl(#[from] WebhookUrlError),
    /// The Idempotency-Key names an earlier upload of different content.
    #[error("Idempotency-Key was already used for a different upload")]
    KeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Internal(anyhow::Error),
}

/// A refused webhook URL, worded for the `webhookUrl` form field (and the setting of the same
/// meaning): the client wrote the value itself, so the message does not quote it back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", webhook_message(.0))]
pub struct WebhookUrlError(pub UrlError);

fn webhook_message(error: &UrlError) -> String {
    match error {
        UrlError::TooLong { max, .. } => format!("webhookUrl is longer than {max} bytes"),
        UrlError::ControlCharacter { .. } => {
            "webhookUrl must not contain control characters".to_owned()
        }
        UrlError::NotAbsolute { .. } => format!(
            "webhookUrl is not an absolute URL: {}",
            url::ParseError::RelativeUrlWithoutBase
        ),
        UrlError::Invalid { error, .. } => format!("webhookUrl is not an absolute URL: {error}"),
        UrlError::Scheme { .. } | UrlError::NoHost { .. } => {
            "webhookUrl must be an absolute http or https URL".to_owned()
        }
        UrlError::Credentials { .. } => "webhookUrl must not contain credentials".to_owned(),
    }
}

/// An upload as the HTTP layer received it.
pub struct Upload {
    pub owner: Owner,
    pub idempotency_key: Option<String>,
    pub csv: Vec<u8>,
    pub webhook_url: Option<String>,
    /// Checked by the caller (they are the form's fields, the query's and the settings').
    pub options: ImageOptions,
}

pub async fn accept(
    core: &Core,
    limits: CsvLimits,
    upload: Upload,
) -> Result<RequestId, IntakeError> {
    let Upload {
        owner,
        idempotency_key,
        csv,
        webhook_url,
        options,
    } = upload;
    let upload_digest = digest(&csv, webhook_url.as_deref(), &options);
    // Parsing a large CSV takes milliseconds of CPU: keep it off the async workers.
    let (products, csv) = tokio::task::spawn_blocking(move || {
        let products = parse_csv(&csv, &limits)?;
        Ok((products, csv_text(csv)))
    })
    .await
    .map_err(|e| IntakeError::Internal(anyhow::anyhow!("CSV parser stopped: {e}")))?
    .map_err(IntakeError::InvalidCsv)?;
    let new = NewRequest {
        id: RequestId::new(),
        owner,
        idempotency_key,
        upload_digest,
        webhook_url,
        options,
        csv,
        products,
    };
    match core.create_request(new).await? {
        CreateOutcome::Created(id) | CreateOutcome::Replayed(id) => Ok(id),
        CreateOutcome::KeyReused => Err(IntakeError::KeyReused),
    }
}

/// The CSV as text, for keeping: every cell of an accepted file is UTF-8, so this moves the
/// bytes without a copy unless a stray byte sits outside the cells.
fn csv_text(mut csv: Vec<u8>) -> String {
    if csv.starts_with(b"\xEF\xBB\xBF") {
        csv.drain(..3);
    }
    String::from_utf8(csv).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Identifies an upload's content, so a retry with the same Idempotency-Key can be told apart
/// from a different upload that reuses the key by mistake.
/// The options count as they were resolved (defaults filled in), so the same file sent once
/// with `quality=50` and once relying on a default of 50 is the same upload.
fn digest(csv: &[u8], webhook_url: Option<&str>, options: &ImageOptions) -> String {
    let mut h = Sha256::new();
    h.update(csv);
    h.update([0]);
    h.update(webhook_url.unwrap_or("").as_bytes());
    h.update([0]);
    h.update(options.to_json().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Validates a webhook target given with an upload, by the rules of every client URL
/// ([`check_url`]); returns it trimmed, otherwise as written.
pub fn parse_webhook_url(raw: &str, max_len: usize) -> Result<String, WebhookUrlError> {
    let raw = raw.trim();
    check_url(raw, max_len).map_err(WebhookUrlError)?;
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_checked() {
        assert!(parse_webhook_url(" https://hooks.example.com/x ", 100).is_ok());
        assert!(parse_webhook_url("ftp://example.com/x", 100).is_err());
        assert!(parse_webhook_url("/relative", 100).is_err());
        assert!(parse_webhook_url("https://u:p@example.com/", 100).is_err());
        assert!(parse_webhook_url(&format!("https://e.com/{}", "a".repeat(200)), 100).is_err());
    }

    #[test]
    fn webhook_messages_name_the_field() {
        let message = |raw: &str| parse_webhook_url(raw, 40).unwrap_err().to_string();
        let cases = [
            (
                "ftp://e.com/",
                "webhookUrl must be an absolute http or https URL",
            ),
            (
                "/relative",
                "webhookUrl is not an absolute URL: relative URL without a base",
            ),
            (
                "http://[::1/",
                "webhookUrl is not an absolute URL: invalid IPv6 address",
            ),
            (
                "https://u:p@e.com/",
                "webhookUrl must not contain credentials",
            ),
            (
                "https://e.com/\u{1}",
                "webhookUrl must not contain control characters",
            ),
        ];
        for (raw, expected) in cases {
            assert_eq!(message(raw), expected, "{raw}");
        }
        let long = format!("https://e.com/{}", "a".repeat(40));
        assert_eq!(message(&long), "webhookUrl is longer than 40 bytes");
        // Trimmed, otherwise kept as written (no normalisation by the URL parser).
        assert_eq!(
            parse_webhook_url(" HTTPS://E.com/a/../b ", 40).unwrap(),
            "HTTPS://E.com/a/../b"
        );
    }

    #[test]
    fn digest_depends_on_csv_webhook_and_options() {
        use crate::domain::FormatChoice;
        let o = ImageOptions::new(50, None, None, FormatChoice::Jpeg).unwrap();
        assert_eq!(digest(b"a", None, &o), digest(b"a", Some(""), &o));
        assert_ne!(digest(b"a", None, &o), digest(b"b", None, &o));
        assert_ne!(digest(b"a", None, &o), digest(b"a", Some("http://x"), &o));
        for other in [
            ImageOptions::new(51, None, None, FormatChoice::Jpeg),
            ImageOptions::new(50, Some(10), None, FormatChoice::Jpeg),
            ImageOptions::new(50, None, Some(10), FormatChoice::Jpeg),
            ImageOptions::new(50, None, None, FormatChoice::Auto),
        ] {
            assert_ne!(digest(b"a", None, &o), digest(b"a", None, &other.unwrap()));
        }
    }
}
