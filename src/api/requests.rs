//! The caller's requests: the list (keyset-paged, newest first), cancel, and retry of failed
//! images. Thin: the rules are the core's (`core::lifecycle`).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::DateTime;
use serde::{Deserialize, Serialize};

use super::{lookup, AppState};
use crate::core::{CancelOutcome, ListAfter, RetryOutcome};
use crate::domain::{Owner, RequestId, Status};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::failure::ErrorCode;
use crate::report::RequestSummary;

/// Requests a page holds when `limit` is not given, and at most.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

/// A page of the request list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestList {
    /// Newest first.
    pub requests: Vec<RequestSummary>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The answer to a retry: the request after it, and how many images went back in the queue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryAnswer {
    #[serde(flatten)]
    pub request: RequestSummary,
    pub requeued_images: i64,
}

/// The optional body of a retry.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBody {
    /// Retry only the failed images with one of these error codes (default: every failed image).
    #[schema(value_type = Option<Vec<ErrorCode>>, min_items = 1)]
    pub error_codes: Option<Vec<String>>,
}

/// The caller's requests (another API key's never show), newest first, a page at a time.
/// Pages follow each other by `nextCursor`, which never skips or repeats a request, however
/// many are uploaded meanwhile (newer uploads come before the first page).
#[utoipa::path(
    get,
    path = "/api/requests",
    tag = "requests",
    params(
        ("status" = Option<Status>, Query, description = "Only requests with this status"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Requests a page (1 to 100, default 20)"),
        ("cursor" = Option<String>, Query, pattern = "^[A-Za-z0-9_-]*$", description = "The `nextCursor` of the previous page (opaque; any other value is a 400)"),
    ),
    responses(
        (status = 200, description = "A page of requests", body = RequestList),
        (status = 400, description = "A bad status, limit or cursor", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    owner: Owner,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<RequestList>> {
    let q = ListQuery::parse(query.as_deref().unwrap_or(""))?;
    // One more than asked: whether there is a next page.
    let mut rows = state
        .core
        .list_requests(&owner, q.status, q.after, q.limit + 1)
        .await?;
    let next_cursor = (rows.len() > q.limit).then(|| {
        rows.truncate(q.limit);
        rows.last().map(|r| encode_cursor(r.created_at, r.id))
    });
    Ok(Json(RequestList {
        requests: rows.iter().map(RequestSummary::of).collect(),
        next_cursor: next_cursor.flatten(),
    }))
}

struct ListQuery {
    status: Option<Status>,
    limit: usize,
    after: Option<ListAfter>,
}

impl ListQuery {
    fn parse(query: &str) -> ApiResult<Self> {
        let (mut status, mut limit, mut cursor) = (None, None, None);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "status" => &mut status,
                "limit" => &mut limit,
                "cursor" => &mut cursor,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(ApiError::BadRequest(format!(
                    "{key} is given more than once"
                )));
            }
        }
        let status = status.map(|s| parse_status(&s)).transpose()?;
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT}, not {}",
                        crate::domain::show(&l)
                    ))
                })?,
        };
        // An empty cursor is none: the first page.
        let after = cursor
            .filter(|c| !c.trim().is_empty())
            .map(|c| {
                decode_cursor(&c).ok_or_else(|| {
                    ApiError::BadRequest(
                        "cursor is not valid: pass the nextCursor of the previous page, unchanged"
                            .into(),
                    )
                })
            })
            .transpose()?;
        Ok(ListQuery {
            status,
            limit,
            after,
        })
    }
}

fn parse_status(s: &str) -> ApiResult<Status> {
    Status::parse(s.trim()).ok_or_else(|| {
        let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        ApiError::BadRequest(format!(
            "status must be one of {}, not {}",
            all.join(", "),
            crate::domain::show(s)
        ))
    })
}

/// `base64url("v1.{created_at in µs}.{id}")`: opaque to clients, exact on both databases
/// (SQLite keeps milliseconds, Postgres microseconds).
fn encode_cursor(created_at: DateTime<chrono::Utc>, id: RequestId) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1.{}.{id}", created_at.timestamp_micros()))
}

fn decode_cursor(cursor: &str) -> Option<ListAfter> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor.trim()).ok()?).ok()?;
    let mut parts = raw.splitn(3, '.');
    if parts.next()? != "v1" {
        return None;
    }
    let created_at = DateTime::from_timestamp_micros(parts.next()?.parse().ok()?)?;
    let id = RequestId::parse(parts.next()?)?;
    Some(ListAfter { created_at, id })
}

/// Cancels a pending or processing request: its images not started yet never will be; images
/// already running may finish (and are recorded), but the request stays `cancelled`, a final
/// status. Its webhook, if it has a target, is `request.cancelled`. Cancelling a cancelled
/// request again changes nothing and answers the same.
#[utoipa::path(
    post,
    path = "/api/requests/{requestId}/cancel",
    tag = "requests",
    params(("requestId" = String, Path, description = "The ID returned by the upload")),
    responses(
        (status = 200, description = "The request, cancelled", body = RequestSummary),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Request ID not found", body = ErrorBody),
        (status = 410, description = "The request was deleted by retention", body = ErrorBody),
        (status = 409, description = "The request has finished already", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
) -> ApiResult<Json<RequestSummary>> {
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    match state.core.cancel_request(id, &owner).await? {
        None => Err(lookup::missing(&state.core, id, &owner).await),
        Some(CancelOutcome::Cancelled(row)) => Ok(Json(RequestSummary::of(&row))),
        Some(CancelOutcome::Finished(status)) => Err(ApiError::Conflict(format!(
            "the request has already finished ({status}); only a pending or processing \
             request can be cancelled"
        ))),
    }
}

/// Puts the request's failed images back in the queue (only those with the given error codes,
/// if any: a JSON body `{"errorCodes": ["timeout"]}` and/or the query
/// `?errorCodes=timeout,connection`),
/// with their attempts reset and errors cleared; on a cancelled request, its images that never
/// started too. The request goes back to `processing`, and when it settles again it has a new
/// final status and sends a new webhook.
#[utoipa::path(
    post,
    path = "/api/requests/{requestId}/retry",
    tag = "requests",
    params(
        ("requestId" = String, Path, description = "The ID returned by the upload"),
        ("errorCodes" = Option<Vec<ErrorCode>>, Query, style = Form, explode = false, description = "Comma-separated error codes: retry only the failed images with one of them"),
    ),
    request_body(content = Option<RetryBody>, content_type = "application/json", description = "Optional: which error codes to retry"),
    responses(
        (status = 200, description = "Images queued again", body = RetryAnswer),
        (status = 400, description = "A bad body or error code", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "Request ID not found", body = ErrorBody),
        (status = 410, description = "The request was deleted by retention", body = ErrorBody),
        (status = 409, description = "No image to retry", body = ErrorBody),
        (status = 429, description = "Rate limit", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn retry(
    State(state): State<AppState>,
    owner: Owner,
    Path(raw_id): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult<Json<RetryAnswer>> {
    let codes = retry_codes(query.as_deref().unwrap_or(""), &body)?;
    let id = RequestId::parse(&raw_id).ok_or_else(ApiError::request_not_found)?;
    match state.core.retry_request(id, &owner, codes.clone()).await? {
        None => Err(lookup::missing(&state.core, id, &owner).await),
        Some(RetryOutcome::Requeued { request, images }) => Ok(Json(RetryAnswer {
            request: RequestSummary::of(&request),
            requeued_images: images,
        })),
        Some(RetryOutcome::NothingToRetry(status)) => {
            let what = match status {
                Status::Cancelled => "failed or cancelled images",
                _ => "failed images",
            };
            let which = match &codes {
                Some(codes) => {
                    let names: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
                    format!(" with errorCode {}", names.join(" or "))
                }
                None => String::new(),
            };
            Err(ApiError::Conflict(format!(
                "nothing to retry: this request ({status}) has no {what}{which}"
            )))
        }
    }
}

/// The error codes asked for, from the query and the body together; `None` for all (also
/// when the query's `errorCodes` is empty).
fn retry_codes(query: &str, body: &[u8]) -> ApiResult<Option<Vec<ErrorCode>>> {
    let mut from_query: Option<Vec<String>> = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key == "errorCodes" {
            let codes = value
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty());
            from_query.get_or_insert_with(Vec::new).extend(codes);
        }
    }
    let from_query = from_query.filter(|c| !c.is_empty());
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        // `null` is no body, as the document's optional body allows.
        let parsed: Option<RetryBody> = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body must be JSON like {{\"errorCodes\": [\"timeout\"]}} (or empty): {e}"
            ))
        })?;
        parsed.and_then(|p| p.error_codes)
    };
    let names = match (from_query, from_body) {
        (None, None) => return Ok(None),
        (_, Some(b)) if b.is_empty() => {
            return Err(ApiError::BadRequest(
                "errorCodes names no error code: leave it out to retry every failed image".into(),
            ))
        }
        (Some(mut q), Some(b)) => {
            q.extend(b);
            q
        }
        (Some(n), None) | (None, Some(n)) => n,
    };
    let mut codes = Vec::with_capacity(names.len());
    for name in &names {
        let code = ErrorCode::parse(name.trim()).ok_or_else(|| {
            let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
            ApiError::BadRequest(format!(
                "unknown error code {}; the codes are {}",
                crate::domain::show(name),
                all.join(", ")
            ))
        })?;
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    Ok(Some(codes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(e: ApiError) -> (u16, String) {
        (e.status().as_u16(), e.to_string())
    }

    #[test]
    fn cursors_round_trip_and_refuse_anything_else() {
        let at = DateTime::from_timestamp_micros(1_795_872_705_123_456).unwrap();
        let id = RequestId::new();
        let c = encode_cursor(at, id);
        assert_eq!(decode_cursor(&c), Some(ListAfter { created_at: at, id }));
        for bad in [
            "",
            "x",
            "djEuMS4y",
            &URL_SAFE_NO_PAD.encode("v2.1.x"),
            "%%%",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_query_is_checked_precisely() {
        let q = ListQuery::parse("status=failed&limit=5&other=1").unwrap();
        assert_eq!(
            (q.status, q.limit, q.after),
            (Some(Status::Failed), 5, None)
        );
        assert_eq!(ListQuery::parse("").unwrap().limit, DEFAULT_LIMIT);
        let err = |q: &str| message(ListQuery::parse(q).err().unwrap());
        assert_eq!(
            err("status=done"),
            (
                400,
                "status must be one of pending, processing, completed, completed_with_errors, \
                 failed, cancelled, not \"done\""
                    .into()
            )
        );
        assert_eq!(
            err("limit=0"),
            (
                400,
                "limit must be a whole number from 1 to 100, not \"0\"".into()
            )
        );
        assert_eq!(err("limit=101").0, 400);
        assert_eq!(err("limit=1&limit=2").1, "limit is given more than once");
        assert!(err("cursor=abc").1.starts_with("cursor is not valid"));
    }

    #[test]
    fn retry_codes_come_from_the_query_or_the_body() {
        assert_eq!(retry_codes("", b"").unwrap(), None);
        assert_eq!(retry_codes("", b"{}").unwrap(), None);
        assert_eq!(
            retry_codes("errorCodes=timeout,connection,timeout", b"").unwrap(),
            Some(vec![ErrorCode::Timeout, ErrorCode::Connection])
        );
        assert_eq!(
            retry_codes("", br#"{"errorCodes":["not_found"]}"#).unwrap(),
            Some(vec![ErrorCode::NotFound])
        );
        let err = |q: &str, b: &[u8]| message(retry_codes(q, b).err().unwrap());
        assert!(err("errorCodes=nope", b"")
            .1
            .starts_with("unknown error code \"nope\""));
        assert_eq!(retry_codes("errorCodes=", b"").unwrap(), None);
        assert_eq!(retry_codes("", br#"{"errorCodes":null}"#).unwrap(), None);
        assert_eq!(retry_codes("", b"null").unwrap(), None);
        assert_eq!(
            retry_codes("errorCodes=timeout", br#"{"errorCodes":["not_found"]}"#).unwrap(),
            Some(vec![ErrorCode::Timeout, ErrorCode::NotFound])
        );
        assert_eq!(err("", br#"{"errorCodes":[]}"#).0, 400);
        assert_eq!(err("", b"[1]").0, 400);
        assert_eq!(err("", br#"{"codes":[]}"#).0, 400);
    }
}
