//! Domain newtypes: values that have been validated once, at the edge, so the rest of the code
//! never re-checks or confuses them with other strings.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod options;
mod values;

pub use options::{FormatChoice, ImageOptions, OptionError, OptionsInput, MAX_BOX_SIDE};

pub(crate) use values::{check_name, parse_serial, show, MAX_SHOWN_CHARS};
pub use values::{check_url, ProductNameError, SerialNumberError, UrlError};

/// The ID a client receives for one upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
// pub(crate) only until the store uses `as_uuid`/`from_uuid`; any UUID is a valid ID anyway.
pub struct RequestId(Uuid);

impl RequestId {
    pub fn new() -> Self {
        // v7: time-ordered, so new rows land at the end of the primary-key index.
        Self(Uuid::now_v7())
    }

    /// Parses a client-supplied ID; anything malformed is simply "not found" to the caller.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }
}

impl RequestId {
    /// The largest ID (all ones), above every real one: where a descending list starts.
    pub const MAX: RequestId = RequestId(Uuid::max());

    /// The UUID, for the store's columns.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// A stored ID, read back from the database.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A product's serial number from the CSV: a positive integer, unique within one upload.
///
/// Built only by validating (no `Deserialize` either), so holding one means it is positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SerialNumber(i64);

impl SerialNumber {
    /// A serial number as written in the CSV (see [`parse_serial`] for the forms accepted).
    pub fn parse(raw: &str) -> Result<Self, SerialNumberError> {
        parse_serial(raw).map(Self)
    }

    /// A serial number already known as a number (read back from the database, built by a
    /// test); `None` unless it is positive.
    pub fn new(value: i64) -> Option<Self> {
        (value > 0).then_some(Self(value))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for SerialNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A product name: trimmed, never blank, no control characters but line breaks and tabs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ProductName(String);

impl ProductName {
    /// Trims the name and checks it.
    pub fn parse(raw: &str) -> Result<Self, ProductNameError> {
        check_name(raw).map(|name| Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An absolute http or https URL of an input image, within the configured length limit, kept
/// as the client wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ImageUrl(String);

impl ImageUrl {
    /// Trims the URL and checks it by the rules of every client URL ([`check_url`]),
    /// within `max_len` bytes.
    pub fn parse(raw: &str, max_len: usize) -> Result<Self, UrlError> {
        let raw = raw.trim();
        check_url(raw, max_len)?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who owns a request: a stable, non-reversible tag of the API key that created it, or the
/// open owner when the API has no keys. A key sees only the requests of its own tag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Owner(String);

impl Owner {
    /// The owner of every request when no API keys are configured.
    pub fn open() -> Self {
        Self(String::new())
    }

    /// The tag of an API key (the first 16 bytes of its SHA-256, in hex).
    pub fn of_key(key: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(key.as_bytes());
        Self(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A tag read back from the database.
    pub(crate) fn from_stored(tag: String) -> Self {
        Self(tag)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Lifecycle of a request, a product and an image. Images use `Pending`, `Processing`,
/// `Completed`, `Failed` and `Cancelled` (never started: its request was cancelled); products
/// and requests roll up to `CompletedWithErrors` too, and are `Cancelled` when their request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Processing,
    Completed,
    CompletedWithErrors,
    Failed,
    /// Stopped by a cancel: its pending images were never started.
    Cancelled,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 6] = [
        Status::Pending,
        Status::Processing,
        Status::Completed,
        Status::CompletedWithErrors,
        Status::Failed,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Completed => "completed",
            Status::CompletedWithErrors => "completed_with_errors",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Status::Pending,
            "processing" => Status::Processing,
            "completed" => Status::Completed,
            "completed_with_errors" => Status::CompletedWithErrors,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::CompletedWithErrors | Status::Failed | Status::Cancelled
        )
    }

    /// The status of a group (product or request) from the counts of its images.
    pub fn roll_up(total: i64, completed: i64, failed: i64, started: bool) -> Self {
        if total > 0 && completed + failed >= total {
            if failed == 0 {
                Status::Completed
            } else if completed == 0 {
                Status::Failed
            } else {
                Status::CompletedWithErrors
            }
        } else if started || completed + failed > 0 {
            Status::Processing
        } else {
            Status::Pending
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_is_listed() {
        // A new status makes this match fail to compile until it is added to ALL as well.
        let listed = |s: Status| match s {
            Status::Pending
            | Status::Processing
            | Status::Completed
            | Status::CompletedWithErrors
            | Status::Failed
            | Status::Cancelled => Status::ALL.contains(&s),
        };
        assert!(Status::ALL.into_iter().all(listed));
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn values_are_built_only_by_validating() {
        assert_eq!(SerialNumber::parse(" 7. ").map(SerialNumber::get), Ok(7));
        assert_eq!(SerialNumber::parse(""), Err(SerialNumberError::Missing));
        assert_eq!(
            SerialNumber::parse("0").unwrap_err().to_string(),
            "the serial number must be positive (1 or more), not \"0\""
        );
        assert_eq!(SerialNumber::new(0), None);
        assert_eq!(SerialNumber::new(3).map(SerialNumber::get), Some(3));

        assert_eq!(ProductName::parse("  Mug \t").unwrap().as_str(), "Mug");
        assert_eq!(
            ProductName::parse(" ").unwrap_err().to_string(),
            "the product name is empty"
        );

        let url = ImageUrl::parse(" https://a.example/x.jpg ", 100).unwrap();
        assert_eq!(url.as_str(), "https://a.example/x.jpg");
        assert!(matches!(
            ImageUrl::parse("https://a.example/x.jpg", 10),
            Err(UrlError::TooLong {
                len: 23,
                max: 10,
                ..
            })
        ));
        assert!(matches!(
            ImageUrl::parse("ftp://a.example/", 100),
            Err(UrlError::Scheme { .. })
        ));
    }

    #[test]
    fn values_serialize_as_plain_json() {
        let json = serde_json::to_string(&(
            SerialNumber::new(5).unwrap(),
            ProductName::parse("Mug").unwrap(),
            ImageUrl::parse("https://a.example/m.jpg", 100).unwrap(),
        ))
        .unwrap();
        assert_eq!(json, r#"[5,"Mug","https://a.example/m.jpg"]"#);
    }
}
