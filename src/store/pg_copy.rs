//! Binary `COPY` for the Postgres backend's bulk loads: rows encoded in Postgres's binary copy
//! format and streamed to the server in pieces.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgCopyIn};
use uuid::Uuid;

use super::{StoreError, StoreResult};

/// Rows for `COPY … FROM STDIN (FORMAT binary)`: the cheapest way to load many rows, with no
/// statement to plan and no text to parse or escape. The data goes out in pieces of about
/// [`COPY_CHUNK`] bytes, so the server inserts while the rest is encoded, and a large upload is
/// not held in memory twice. Format: "Binary Format" in
/// <https://www.postgresql.org/docs/current/sql-copy.html>.
///
/// End with [`BinaryCopy::finish`]. After any error, return it and let the transaction roll
/// back: the copy is then over.
pub(super) struct BinaryCopy<'c> {
    /// `None` once aborted.
    copy: Option<PgCopyIn<&'c mut PgConnection>>,
    buf: Vec<u8>,
    /// The length of a text value too long for the format (over 2 GiB; Postgres stores at most
    /// 1 GiB anyway). A NULL stands in for it, and the copy is aborted before anything more is
    /// sent.
    oversized: Option<usize>,
}

const COPY_CHUNK: usize = 64 * 1024;

/// 2000-01-01T00:00:00Z, the epoch of Postgres's binary timestamps, in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

impl<'c> BinaryCopy<'c> {
    pub(super) async fn begin(conn: &'c mut PgConnection, statement: &str) -> StoreResult<Self> {
        let copy = conn.copy_in_raw(statement).await?;
        let mut buf = Vec::with_capacity(COPY_CHUNK + 4096);
        // Signature, flags (none), length of the header extension (none).
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes());
        Ok(Self {
            copy: Some(copy),
            buf,
            oversized: None,
        })
    }

    /// Starts a row of `fields` values: exactly that many calls of the value methods follow.
    pub(super) fn row(&mut self, fields: i16) {
        self.buf.extend_from_slice(&fields.to_be_bytes());
    }

    /// One value: its length, then its bytes in the type's binary form.
    fn value(&mut self, bytes: &[u8]) {
        match i32::try_from(bytes.len()) {
            Ok(len) => {
                self.buf.extend_from_slice(&len.to_be_bytes());
                self.buf.extend_from_slice(bytes);
            }
            Err(_) => {
                self.oversized = Some(bytes.len());
                self.null();
            }
        }
    }

    pub(super) fn null(&mut self) {
        self.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    pub(super) fn int4(&mut self, v: i32) {
        self.value(&v.to_be_bytes());
    }

    pub(super) fn int8(&mut self, v: i64) {
        self.value(&v.to_be_bytes());
    }

    pub(super) fn uuid(&mut self, v: Uuid) {
        self.value(v.as_bytes());
    }

    /// UTF-8, as the database's encoding is.
    pub(super) fn text(&mut self, v: &str) {
        self.value(v.as_bytes());
    }

    /// Microseconds since Postgres's epoch, truncated as sqlx does when it binds a `DateTime`,
    /// so these rows hold the same instant as the `requests` row bound the usual way.
    pub(super) fn timestamptz(&mut self, v: DateTime<Utc>) {
        self.int8(v.timestamp_micros() - PG_EPOCH_UNIX_MICROS);
    }

    pub(super) async fn flush_if_full(&mut self) -> StoreResult<()> {
        if self.buf.len() >= COPY_CHUNK {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> StoreResult<()> {
        if let Some(len) = self.oversized {
            if let Some(copy) = self.copy.take() {
                copy.abort("value too long").await?;
            }
            return Err(StoreError::Other(anyhow::anyhow!(
                "a value of {len} bytes is too long for the database"
            )));
        }
        if let Some(copy) = self.copy.as_mut() {
            copy.send(self.buf.as_slice()).await?;
        }
        self.buf.clear();
        Ok(())
    }

    /// Sends the rest and the end marker. Constraint violations surface here.
    pub(super) async fn finish(mut self) -> StoreResult<u64> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.send().await?;
        match self.copy.take() {
            Some(copy) => Ok(copy.finish().await?),
            None => Err(StoreError::Other(anyhow::anyhow!("COPY already aborted"))),
        }
    }
}
