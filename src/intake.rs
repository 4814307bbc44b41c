//! Accepting an upload: validate the CSV, store every row in one transaction, wake the workers.

use sha2::{Digest, Sha256};

use crate::core::{Core, CreateOutcome, NewRequest};
use crate::csv_input::{parse_csv, CsvLimits};
use crate::domain::Owner;
use crate::domain::RequestId;
use crate::error::ApiError;

/// An upload as the HTTP layer received it.
pub struct Upload {
    pub owner: Owner,
    pub idempotency_key: Option<String>,
    pub csv: Vec<u8>,
    pub webhook_url: Option<String>,
}

pub async fn accept(core: &Core, limits: CsvLimits, upload: Upload) -> Result<RequestId, ApiError> {
    let Upload {
        owner,
        idempotency_key,
        csv,
        webhook_url,
    } = upload;
    let upload_digest = digest(&csv, webhook_url.as_deref());
    // Parsing a large CSV takes milliseconds of CPU: keep it off the async workers.
    let products = tokio::task::spawn_blocking(move || parse_csv(&csv, &limits))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("CSV parser stopped: {e}")))?
        .map_err(ApiError::InvalidCsv)?;
    let new = NewRequest {
        id: RequestId::new(),
        owner,
        idempotency_key,
        upload_digest,
        webhook_url,
        products,
    };
    match core.create_request(new).await? {
        CreateOutcome::Created(id) | CreateOutcome::Replayed(id) => Ok(id),
        CreateOutcome::KeyReused => Err(ApiError::Unprocessable(
            "Idempotency-Key was already used for a different upload".into(),
        )),
    }
}

/// Identifies an upload's content, so a retry with the same Idempotency-Key can be told apart
/// from a different upload that reuses the key by mistake.
fn digest(csv: &[u8], webhook_url: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(csv);
    h.update([0]);
    h.update(webhook_url.unwrap_or("").as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Validates a webhook target given with an upload.
pub fn parse_webhook_url(raw: &str, max_len: usize) -> Result<String, ApiError> {
    let raw = raw.trim();
    if raw.len() > max_len {
        return Err(ApiError::BadRequest(format!(
            "webhookUrl is longer than {max_len} bytes"
        )));
    }
    let url = url::Url::parse(raw)
        .map_err(|e| ApiError::BadRequest(format!("webhookUrl is not an absolute URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ApiError::BadRequest(
            "webhookUrl must be an absolute http or https URL".into(),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::BadRequest(
            "webhookUrl must not contain credentials".into(),
        ));
    }
    Ok(raw.to_string())
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
    fn digest_depends_on_csv_and_webhook() {
        assert_eq!(digest(b"a", None), digest(b"a", Some("")));
        assert_ne!(digest(b"a", None), digest(b"b", None));
        assert_ne!(digest(b"a", None), digest(b"a", Some("http://x")));
    }
}
