//! outputs.zip: every completed output of a request, byte for byte, and its report.csv, written
//! as a ZIP as it is read. Entries are stored (JPEGs do not deflate), written with data
//! descriptors (a size and CRC after the data), so nothing has to be known or held before an
//! entry starts, and ZIP64 records are added when the archive passes 4 GiB or 65,535 entries.
//!
//! Rows are read a page at a time, each page in a short snapshot of its own: a bundle of
//! thousands of images can take minutes to download, and one snapshot held that long would hold
//! back Postgres's VACUUM and SQLite's checkpoints (the status stream's concern). What a bundle
//! holds in memory is a page of rows, one chunk of one object, and the archive's central
//! directory (about 100 bytes an entry).

use async_zip::base::write::ZipFileWriter;
use async_zip::{Compression, ZipEntryBuilder, ZipString};
use futures::{AsyncWriteExt as _, StreamExt};
use tokio::io::AsyncWrite;

use crate::core::{Core, ImageRow, ProductRow, StoreError, StoreResult};
use crate::domain::{RequestId, Status};
use crate::image_report::{output_extension, ReportCsv, ReportLine, ReportLines};
use crate::report::StatusRows;
use crate::storage::Storage;

/// Rows read per query.
const PAGE_ROWS: i64 = 500;

/// Bytes of report.csv written at once.
const REPORT_CHUNK: usize = 64 * 1024;

/// The report's name inside the archive. Image entries start with a serial number, so none
/// can take it.
pub const REPORT_NAME: &str = "report.csv";

/// The longest product name kept in an entry name, in bytes (whole characters): with the
/// serial, the position and the extension an entry name stays far below the 255 bytes file
/// systems allow.
const MAX_NAME_BYTES: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read output {key}: {source}")]
    Storage {
        key: String,
        source: object_store::Error,
    },
    #[error("cannot write the archive: {0}")]
    Zip(#[from] async_zip::error::ZipError),
    #[error("cannot write the archive: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes the bundle of request `id` to `out`, and hands `out` back once the archive is
/// complete. The caller checks first that the request exists and whose it is.
pub async fn write<W: AsyncWrite + Unpin>(
    core: &Core,
    storage: &Storage,
    id: RequestId,
    out: W,
) -> Result<W, BundleError> {
    let mut zip = ZipFileWriter::with_tokio(out);
    let mut lines = ReportLines::new(PAGE_ROWS);
    let mut rows = ShortReads { core, id };
    while let Some(line) = lines.next(&mut rows).await? {
        let Some(key) = stored_output(&line.image) else {
            continue;
        };
        let mut object = storage
            .read(key)
            .await
            .map_err(|source| storage_error(key, source))?;
        let mut entry = zip.write_entry_stream(entry(entry_name(&line))).await?;
        while let Some(chunk) = object.next().await {
            let chunk = chunk.map_err(|source| storage_error(key, source))?;
            entry.write_all(&chunk).await?;
        }
        entry.close().await?;
    }
    let mut entry = zip.write_entry_stream(entry(REPORT_NAME.into())).await?;
    let mut report = ReportCsv::new(PAGE_ROWS);
    let mut rows = ShortReads { core, id };
    while let Some(chunk) = report.next_chunk(&mut rows, REPORT_CHUNK).await? {
        entry.write_all(&chunk).await?;
    }
    entry.close().await?;
    let mut out = zip.close().await?.into_inner();
    tokio::io::AsyncWriteExt::flush(&mut out).await?;
    Ok(out)
}

/// The key of an image's output, if it has one to bundle.
fn stored_output(image: &ImageRow) -> Option<&str> {
    match image.status {
        Status::Completed => image.output_key.as_deref(),
        _ => None,
    }
}

fn storage_error(key: &str, source: object_store::Error) -> BundleError {
    BundleError::Storage {
        key: key.to_string(),
        source,
    }
}

fn entry(name: String) -> ZipEntryBuilder {
    ZipEntryBuilder::new(
        ZipString::new(name.into_bytes(), async_zip::StringEncoding::Utf8),
        Compression::Stored,
    )
    .unix_permissions(0o644)
}

/// `{serial}_{product name}_{position}.{ext}`, e.g. `12_Blue mug_1.jpg`: unique in a request
/// (serials are unique, and positions within a product), one path component whatever the
/// product is called (see [`safe_name`]).
pub fn entry_name(line: &ReportLine) -> String {
    format!(
        "{}_{}_{}.{}",
        line.serial_number,
        safe_name(&line.product_name),
        line.image.position + 1,
        output_extension(&line.image)
    )
}

/// A product name made safe as part of a file name on any file system: path separators,
/// characters Windows refuses, and control characters become `_`; runs of dots become one `_`
/// (no `..`); no leading or trailing dots or spaces; at most [`MAX_NAME_BYTES`] bytes, cut at a
/// character. Other Unicode is kept.
pub fn safe_name(name: &str) -> String {
    let mut out = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        let c = match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c if c.is_control() => '_',
            '.' if chars.peek() == Some(&'.') => {
                while chars.next_if_eq(&'.').is_some() {}
                '_'
            }
            c => c,
        };
        if out.len() + c.len_utf8() > MAX_NAME_BYTES {
            break;
        }
        out.push(c);
    }
    let trimmed = out.trim_matches(|c: char| c == '.' || c.is_whitespace());
    if trimmed.is_empty() {
        "product".into()
    } else {
        trimmed.to_string()
    }
}

/// A request's rows, each page read in a snapshot of its own.
struct ShortReads<'a> {
    core: &'a Core,
    id: RequestId,
}

impl StatusRows for ShortReads<'_> {
    async fn output_urls(
        &mut self,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, Option<String>)>> {
        let mut snap = self.core.read_snapshot().await?;
        let page = snap.output_urls(self.id, after, limit).await;
        snap.close().await?;
        page
    }

    async fn products(&mut self, after: i64, limit: i64) -> StoreResult<Vec<ProductRow>> {
        let mut snap = self.core.read_snapshot().await?;
        let page = snap.products(self.id, after, limit).await;
        snap.close().await?;
        page
    }

    async fn images(&mut self, after: i64, limit: i64) -> StoreResult<Vec<(i64, ImageRow)>> {
        let mut snap = self.core.read_snapshot().await?;
        let page = snap.images(self.id, after, limit).await;
        snap.close().await?;
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_become_one_safe_component() {
        for (name, want) in [
            ("../../etc/passwd", "____etc_passwd"),
            ("a/b\\c", "a_b_c"),
            ("nul\0and\u{7}bell\u{9b}", "nul_and_bell_"),
            ("..", "_"),
            ("...hidden", "_hidden"),
            (" .", "product"),
            ("Café crème 🍵", "Café crème 🍵"),
            ("x.y", "x.y"),
        ] {
            assert_eq!(safe_name(name), want, "{name:?}");
        }
        let long = "é".repeat(300);
        let cut = safe_name(&long);
        assert!(cut.len() <= MAX_NAME_BYTES && cut.chars().all(|c| c == 'é'));
        for name in ["../../etc/passwd", "a/b\\c", &long, "\0\r\n"] {
            let s = safe_name(name);
            assert!(!s.contains('/') && !s.contains('\\') && !s.contains(".."));
            assert!(!s.chars().any(char::is_control));
        }
    }
}
