//! Why an image failed, as data: a closed set of machine-readable kinds that the fetch and
//! codec error types produce, stored with every failed image beside its human message, shown
//! in the status body as `errorCode` and counted by the metrics. Nothing is classified by
//! matching text.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of an image failure. The names are part of the API: add, never rename.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The origin answered 404 or 410.
    NotFound,
    /// The origin answered another error status (4xx, or 5xx after every retry).
    HttpError,
    /// The download timed out.
    Timeout,
    /// The origin could not be reached, or the connection broke mid-download.
    Connection,
    /// The body is larger than the download limit.
    TooLarge,
    /// The image has more pixels than the limit (a decompression bomb, or just too big).
    TooManyPixels,
    /// The body is not an image in a supported format (an HTML page, SVG, empty body…).
    NotAnImage,
    /// The format was recognised but the data is corrupt, truncated or unsupported.
    Undecodable,
    /// The image could not be written as a JPEG (for example a side over 65,535 pixels).
    EncodeFailed,
    /// Decoding and encoding took longer than the limit.
    DecodeTimeout,
    /// The URL resolves to an address the service may not fetch (private, loopback, …).
    RefusedAddress,
    /// More redirects than the limit.
    TooManyRedirects,
    /// The URL, or a redirect's `Location`, is not a fetchable http or https URL.
    InvalidUrl,
    /// The output could not be written to storage, even after retries.
    StorageFailed,
    /// The worker processing it stopped (crashed, was killed) during every attempt.
    WorkerLost,
    /// The worker could not run the attempt (its work budgets were closed, as at shutdown);
    /// retried, and final only once the attempts are used up.
    Interrupted,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::NotFound,
        ErrorCode::HttpError,
        ErrorCode::Timeout,
        ErrorCode::Connection,
        ErrorCode::TooLarge,
        ErrorCode::TooManyPixels,
        ErrorCode::NotAnImage,
        ErrorCode::Undecodable,
        ErrorCode::EncodeFailed,
        ErrorCode::DecodeTimeout,
        ErrorCode::RefusedAddress,
        ErrorCode::TooManyRedirects,
        ErrorCode::InvalidUrl,
        ErrorCode::StorageFailed,
        ErrorCode::WorkerLost,
        ErrorCode::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::HttpError => "http_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Connection => "connection",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TooManyPixels => "too_many_pixels",
            ErrorCode::NotAnImage => "not_an_image",
            ErrorCode::Undecodable => "undecodable",
            ErrorCode::EncodeFailed => "encode_failed",
            ErrorCode::DecodeTimeout => "decode_timeout",
            ErrorCode::RefusedAddress => "refused_address",
            ErrorCode::TooManyRedirects => "too_many_redirects",
            ErrorCode::InvalidUrl => "invalid_url",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::WorkerLost => "worker_lost",
            ErrorCode::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed attempt at an image: its kind and what a person reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }
}
