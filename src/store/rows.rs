//! Row mapping, written once: each backend reads its rows through [`Columns`] (its own column
//! types: SQLite's integer milliseconds and text UUIDs, Postgres's `timestamptz`, `uuid` and
//! `integer`), and these functions turn them into the store's values.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::types::*;
use super::{StoreError, StoreResult};
use crate::domain::{ImageOptions, Owner, RequestId, Status};
use crate::failure::ErrorCode;

/// Raw access to one column of a result row, by name, in the store's Rust types.
pub(crate) trait Columns {
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn opt_time(&self, col: &str) -> StoreResult<Option<DateTime<Utc>>>;
    fn uuid(&self, col: &str) -> StoreResult<Uuid>;

    fn int(&self, col: &str) -> StoreResult<i64> {
        self.opt_int(col)?.ok_or_else(|| null(col))
    }

    fn text(&self, col: &str) -> StoreResult<String> {
        self.opt_text(col)?.ok_or_else(|| null(col))
    }

    fn time(&self, col: &str) -> StoreResult<DateTime<Utc>> {
        self.opt_time(col)?.ok_or_else(|| null(col))
    }
}

fn null(col: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!("column {col} is NULL"))
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!("unknown {what} {value:?} in database"))
}

fn status(r: &impl Columns, col: &str) -> StoreResult<Status> {
    let s = r.text(col)?;
    Status::parse(&s).ok_or_else(|| corrupt("status", &s))
}

pub(crate) fn delivery_state(s: &str) -> StoreResult<DeliveryState> {
    DeliveryState::parse(s).ok_or_else(|| corrupt("delivery state", s))
}

fn error_code(r: &impl Columns, col: &str) -> StoreResult<Option<ErrorCode>> {
    r.opt_text(col)?
        .map(|s| ErrorCode::parse(&s).ok_or_else(|| corrupt("error code", &s)))
        .transpose()
}

pub(crate) fn request_id(r: &impl Columns, col: &str) -> StoreResult<RequestId> {
    Ok(RequestId::from_uuid(r.uuid(col)?))
}

/// `id, upload_digest`
pub(crate) fn idempotent(r: &impl Columns) -> StoreResult<(RequestId, String)> {
    Ok((request_id(r, "id")?, r.text("upload_digest")?))
}

/// The columns [`request`] reads, the same in both backends' `requests` table.
pub(crate) const REQUEST_COLUMNS: &str = "id, status, webhook_url, options, total_products, total_images, \
     completed_images, failed_images, cancelled_images, bytes_in, bytes_out, created_at, updated_at";

/// [`REQUEST_COLUMNS`]
pub(crate) fn request(r: &impl Columns) -> StoreResult<RequestRow> {
    Ok(RequestRow {
        id: request_id(r, "id")?,
        status: status(r, "status")?,
        webhook_url: r.opt_text("webhook_url")?,
        options: options(r, "options")?,
        total_products: r.int("total_products")?,
        total_images: r.int("total_images")?,
        completed_images: r.int("completed_images")?,
        failed_images: r.int("failed_images")?,
        cancelled_images: r.int("cancelled_images")?,
        bytes_in: r.int("bytes_in")?,
        bytes_out: r.int("bytes_out")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

/// `status, updated_at, total_images, d_updated, attempts, state` (the delivery's columns
/// from a left join: NULL without one)
pub(crate) fn request_head(r: &impl Columns) -> StoreResult<RequestHead> {
    let webhook = match r.opt_time("d_updated")? {
        Some(t) => Some((t, r.int("attempts")?, r.text("state")?)),
        None => None,
    };
    Ok(RequestHead {
        version: RequestVersion {
            status: status(r, "status")?,
            updated_at: r.time("updated_at")?,
            webhook,
        },
        total_images: r.int("total_images")?,
    })
}

/// `id, position, serial_number, product_name, status`
pub(crate) fn product(r: &impl Columns) -> StoreResult<ProductRow> {
    Ok(ProductRow {
        id: r.int("id")?,
        position: r.int("position")?,
        serial_number: r.int("serial_number")?,
        product_name: r.text("product_name")?,
        status: status(r, "status")?,
    })
}

/// `ordinal, product_id, position, input_url, status, output_url, error, error_code,
/// attempts, codec, bytes_in, bytes_out, width, height, output_format, color_profile, note,
/// output_key, input_format`
pub(crate) fn image(r: &impl Columns) -> StoreResult<(i64, ImageRow)> {
    Ok((
        r.int("ordinal")?,
        ImageRow {
            product_id: r.int("product_id")?,
            position: r.int("position")?,
            input_url: r.text("input_url")?,
            status: status(r, "status")?,
            output_url: r.opt_text("output_url")?,
            error: r.opt_text("error")?,
            error_code: error_code(r, "error_code")?,
            attempts: r.int("attempts")?,
            codec: r.opt_text("codec")?,
            output_key: r.opt_text("output_key")?,
            input_format: r.opt_text("input_format")?,
            bytes_in: r.opt_int("bytes_in")?,
            bytes_out: r.opt_int("bytes_out")?,
            width: r.opt_int("width")?,
            height: r.opt_int("height")?,
            output_format: r.opt_text("output_format")?,
            color_profile: r.opt_text("color_profile")?,
            note: r.opt_text("note")?,
        },
    ))
}

/// `ordinal, output_url`
pub(crate) fn output_url(r: &impl Columns) -> StoreResult<(i64, Option<String>)> {
    Ok((r.int("ordinal")?, r.opt_text("output_url")?))
}

/// `id, url, state, attempts, last_status_code, last_error, next_attempt_at, delivered_at`
pub(crate) fn webhook(r: &impl Columns) -> StoreResult<WebhookRow> {
    let state = delivery_state(&r.text("state")?)?;
    Ok(WebhookRow {
        id: r.uuid("id")?,
        url: r.text("url")?,
        state,
        attempts: r.int("attempts")?,
        last_status_code: r.opt_int("last_status_code")?,
        last_error: r.opt_text("last_error")?,
        next_attempt_at: match state {
            DeliveryState::Pending => Some(r.time("next_attempt_at")?),
            _ => None,
        },
        delivered_at: r.opt_time("delivered_at")?,
    })
}

/// `id, request_id, product_id, ordinal, position, input_url, attempts`
pub(crate) fn image_job(r: &impl Columns) -> StoreResult<ImageJob> {
    Ok(ImageJob {
        id: r.int("id")?,
        request_id: request_id(r, "request_id")?,
        product_id: r.int("product_id")?,
        ordinal: r.int("ordinal")?,
        position: r.int("position")?,
        input_url: r.text("input_url")?,
        attempts: r.int("attempts")?,
        options: None,
    })
}

/// A request's stored options; NULL (an older request) is None, anything unreadable an error.
pub(crate) fn options(r: &impl Columns, col: &str) -> StoreResult<Option<ImageOptions>> {
    r.opt_text(col)?
        .map(|s| ImageOptions::from_json(&s).ok_or_else(|| corrupt("options", &s)))
        .transpose()
}

/// `id, request_id, url, attempts, payload, event_at, owner`
pub(crate) fn delivery_job(r: &impl Columns) -> StoreResult<DeliveryJob> {
    Ok(DeliveryJob {
        id: r.uuid("id")?,
        request_id: request_id(r, "request_id")?,
        owner: Owner::from_stored(r.text("owner")?),
        url: r.text("url")?,
        attempts: r.int("attempts")?,
        payload: r.opt_text("payload")?,
        event_at: r.time("event_at")?,
    })
}

/// `total_images, completed_images, failed_images`
pub(crate) fn counts(r: &impl Columns) -> StoreResult<Counts> {
    Ok(Counts {
        total: r.int("total_images")?,
        completed: r.int("completed_images")?,
        failed: r.int("failed_images")?,
    })
}

/// `status_code, error`
pub(crate) fn attempt(r: &impl Columns) -> StoreResult<(Option<i64>, Option<String>)> {
    Ok((r.opt_int("status_code")?, r.opt_text("error")?))
}

/// `total_images, completed_images, failed_images, status, webhook_url`
pub(crate) fn tally(r: &impl Columns) -> StoreResult<Tally> {
    Ok(Tally {
        counts: counts(r)?,
        status: status(r, "status")?,
        webhook_url: r.opt_text("webhook_url")?,
    })
}
