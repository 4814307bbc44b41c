//! Downloading one input image: streamed with a byte cap, bounded in time, redirects followed by
//! hand so that every hop is checked again, and failures sorted into permanent and transient,
//! each with its kind ([`ErrorCode`]) decided where it is made.

use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, LOCATION};
use reqwest::redirect::Policy;
use reqwest::StatusCode;

use crate::config::Config;
use crate::failure::{ErrorCode, Failure};
use crate::memory::{MemoryBudget, Reservation};
use crate::net::{self, AddressPolicy};

/// Why a download failed: its kind, what a person reads, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub code: ErrorCode,
    pub message: String,
    /// May work later (timeout, connection reset, 5xx, 408, 429); otherwise trying again will
    /// not help (404, too large, refused address, …).
    pub transient: bool,
}

impl FetchError {
    fn permanent(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            transient: false,
        }
    }

    fn transient(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            transient: true,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        Failure::new(e.code, e.message)
    }
}

#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    max_bytes: u64,
    max_redirects: usize,
    timeout: Duration,
    policy: AddressPolicy,
}

impl Fetcher {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let limits = &config.limits;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("imgbatch/", env!("CARGO_PKG_VERSION")))
            .redirect(Policy::none())
            .connect_timeout(limits.connect_timeout)
            .read_timeout(limits.download_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // A proxy would connect on our behalf and bypass the address check.
            .no_proxy();
        let policy = config.address_policy();
        if let Some(resolver) = policy.resolver() {
            builder = builder.dns_resolver(resolver);
        }
        Ok(Self {
            client: builder.build()?,
            max_bytes: limits.max_image_bytes,
            max_redirects: limits.max_redirects,
            timeout: limits.download_timeout,
            policy,
        })
    }

    /// The image's bytes, or why not, and their reservation against `budget`.
    ///
    /// The body is reserved once the response headers are in, at its declared length, before
    /// a byte of it is read. The request and the body are each bounded by the download timeout;
    /// time spent waiting for the budget in between is not counted, so a busy process never
    /// fails a download as slow.
    pub async fn fetch(
        &self,
        url: &str,
        budget: &MemoryBudget,
    ) -> Result<(Vec<u8>, Reservation), FetchError> {
        let response = self.timed(self.request(url)).await?;
        let declared = declared_length(&response);
        let mut reservation = budget
            .reserve(declared.unwrap_or(UNDECLARED_GUESS))
            .await
            .ok_or_else(|| FetchError::transient(ErrorCode::Interrupted, "shutting down"))?;
        let body = self.timed(self.read_body(response, declared)).await?;
        let len = body.len() as u64;
        if len > reservation.bytes() {
            // Only bodies without a (truthful) Content-Length get here. Waiting for more while
            // holding part of the budget could deadlock, so take what is free and go on: the
            // overshoot is bounded by the largest body of such downloads in flight.
            if let Some(more) = budget.try_reserve(len - reservation.bytes()) {
                reservation.merge(more);
            }
        }
        Ok((body, reservation))
    }

    async fn timed<T>(
        &self,
        step: impl std::future::Future<Output = Result<T, FetchError>>,
    ) -> Result<T, FetchError> {
        match tokio::time::timeout(self.timeout, step).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::transient(
                ErrorCode::Timeout,
                format!(
                    "download timed out after {}",
                    humantime::format_duration(self.timeout)
                ),
            )),
        }
    }

    /// Sends the request, following redirects, up to a successful response's headers.
    async fn request(&self, url: &str) -> Result<reqwest::Response, FetchError> {
        let mut url = url::Url::parse(url).map_err(|e| {
            FetchError::permanent(ErrorCode::InvalidUrl, format!("invalid URL: {e}"))
        })?;
        let mut hops = 0;
        let response = loop {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(FetchError::permanent(
                    ErrorCode::InvalidUrl,
                    format!("unsupported URL scheme {:?}", url.scheme()),
                ));
            }
            self.policy
                .check_url(&url)
                .map_err(|e| FetchError::permanent(ErrorCode::RefusedAddress, e.to_string()))?;
            let resp = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(classify)?;
            let status = resp.status();
            if status.is_redirection() {
                if hops >= self.max_redirects {
                    return Err(FetchError::permanent(
                        ErrorCode::TooManyRedirects,
                        format!("more than {} redirects", self.max_redirects),
                    ));
                }
                let location = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        // The origin's fault, not the URL's: a redirect that cannot be
                        // followed.
                        FetchError::permanent(
                            ErrorCode::HttpError,
                            format!("HTTP {status} without a Location"),
                        )
                    })?;
                url = url.join(location).map_err(|e| {
                    FetchError::permanent(
                        ErrorCode::InvalidUrl,
                        format!("bad redirect Location: {e}"),
                    )
                })?;
                hops += 1;
                continue;
            }
            if !status.is_success() {
                return Err(status_error(status));
            }
            break resp;
        };
        if declared_length(&response).is_some_and(|len| len > self.max_bytes) {
            return Err(too_large(self.max_bytes));
        }
        Ok(response)
    }

    async fn read_body(
        &self,
        mut response: reqwest::Response,
        declared: Option<u64>,
    ) -> Result<Vec<u8>, FetchError> {
        // Sized once from the declared length: growing by doubling would briefly hold up to
        // twice the body and leave the allocator with freed blocks of every size.
        let capacity = declared.unwrap_or(0).min(self.max_bytes) as usize;
        let mut body = Vec::with_capacity(capacity);
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() as u64 + chunk.len() as u64 > self.max_bytes {
                return Err(too_large(self.max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// What a body is reserved at when the origin does not say its length (chunked responses).
const UNDECLARED_GUESS: u64 = 1 << 20;

fn declared_length(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn too_large(max: u64) -> FetchError {
    FetchError::permanent(
        ErrorCode::TooLarge,
        format!("image is larger than the limit of {max} bytes"),
    )
}

fn status_error(status: StatusCode) -> FetchError {
    let msg = format!("origin answered HTTP {status}");
    if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
        FetchError::permanent(ErrorCode::NotFound, msg)
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        FetchError::transient(ErrorCode::HttpError, msg)
    } else {
        FetchError::permanent(ErrorCode::HttpError, msg)
    }
}

fn classify(e: reqwest::Error) -> FetchError {
    if let Some(refused) = net::find_refusal(&e) {
        return FetchError::permanent(ErrorCode::RefusedAddress, refused.to_string());
    }
    let (code, what) = if e.is_timeout() {
        (ErrorCode::Timeout, "timed out")
    } else if e.is_connect() {
        (ErrorCode::Connection, "could not connect")
    } else if e.is_body() || e.is_decode() {
        (ErrorCode::Connection, "connection broke while downloading")
    } else {
        (ErrorCode::Connection, "request failed")
    };
    FetchError::transient(code, format!("{what}: {}", root_cause(&e)))
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_sorted() {
        let cases = [
            (StatusCode::NOT_FOUND, ErrorCode::NotFound, false),
            (StatusCode::GONE, ErrorCode::NotFound, false),
            (StatusCode::FORBIDDEN, ErrorCode::HttpError, false),
            (StatusCode::BAD_REQUEST, ErrorCode::HttpError, false),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::HttpError,
                true,
            ),
            (StatusCode::BAD_GATEWAY, ErrorCode::HttpError, true),
            (StatusCode::REQUEST_TIMEOUT, ErrorCode::HttpError, true),
            (StatusCode::TOO_MANY_REQUESTS, ErrorCode::HttpError, true),
        ];
        for (status, code, transient) in cases {
            let e = status_error(status);
            assert_eq!((e.code, e.is_transient()), (code, transient), "{status}");
            assert_eq!(e.to_string(), format!("origin answered HTTP {status}"));
        }
    }

    #[test]
    fn too_large_is_permanent_and_keeps_its_message() {
        let e = too_large(10);
        assert_eq!((e.code, e.is_transient()), (ErrorCode::TooLarge, false));
        assert_eq!(e.to_string(), "image is larger than the limit of 10 bytes");
        let failure = Failure::from(e);
        assert_eq!(failure.code, ErrorCode::TooLarge);
        assert_eq!(
            failure.message,
            "image is larger than the limit of 10 bytes"
        );
    }
}
