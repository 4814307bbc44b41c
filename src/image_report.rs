//! report.csv: one row per image of a request, in CSV order, with its product, its input and
//! output, its outcome and its figures. Read a page of rows at a time (from a snapshot for
//! the endpoint, from short reads for the bundle), so a large request never sits in memory.
//!
//! The columns are listed once ([`COLUMNS`]) beside the one function that fills them
//! ([`ReportLine::cells`]); a figure the store does not keep yet is an empty cell.

use crate::core::{ImageRow, ProductRow, StoreError, StoreResult};
use crate::report::{defuse, Paged, StatusRows};

/// The header row.
pub const COLUMNS: [&str; 19] = [
    "S. No.",
    "Product Name",
    "Image Position",
    "Input Image Url",
    "Output Image Url",
    "Status",
    "Error Code",
    "Error",
    "Bytes In",
    "Bytes Out",
    "Input Width",
    "Input Height",
    "Output Width",
    "Output Height",
    "Input Format",
    "Output Format",
    "Codec",
    "Color Profile",
    "Note",
];

/// One image with its product, in CSV order.
#[derive(Debug, Clone)]
pub struct ReportLine {
    pub serial_number: i64,
    pub product_name: String,
    /// The image's position in the whole request (0-based).
    pub ordinal: i64,
    pub image: ImageRow,
}

impl ReportLine {
    /// The row's cells, in the order of [`COLUMNS`].
    pub fn cells(&self) -> [String; COLUMNS.len()] {
        let i = &self.image;
        let num = |n: Option<i64>| n.map(|n| n.to_string()).unwrap_or_default();
        let text = |t: Option<&str>| t.unwrap_or_default().to_string();
        [
            self.serial_number.to_string(),
            self.product_name.clone(),
            (i.position + 1).to_string(),
            i.input_url.clone(),
            text(i.output_url.as_deref()),
            i.status.as_str().to_string(),
            text(i.error_code.map(|c| c.as_str())),
            text(i.error.as_deref()),
            num(i.bytes_in),
            num(i.bytes_out),
            // The input's own size: not kept by the store yet.
            String::new(),
            String::new(),
            num(i.width),
            num(i.height),
            text(i.input_format.as_deref()),
            text(output_format(i)),
            text(i.codec.as_deref()),
            text(i.color_profile.as_deref()),
            text(i.note.as_deref()),
        ]
    }
}

/// The output's format (`jpeg`, `png`, `webp`, `gif`): as recorded, else (rows written before
/// the format was recorded) from the extension of its stored key.
pub fn output_format(image: &ImageRow) -> Option<&str> {
    if let Some(format) = image.output_format.as_deref() {
        return Some(format);
    }
    let ext = image.output_key.as_deref()?.rsplit_once('.')?.1;
    Some(match ext.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => "jpeg",
        "png" => "png",
        "webp" => "webp",
        "gif" => "gif",
        "bmp" => "bmp",
        _ => return None,
    })
}

/// The file extension an output is saved with: its format's usual one, else `bin`.
pub fn output_extension(image: &ImageRow) -> &'static str {
    match output_format(image) {
        Some("jpeg") => "jpg",
        Some("png") => "png",
        Some("webp") => "webp",
        Some("gif") => "gif",
        Some("bmp") => "bmp",
        _ => "bin",
    }
}

/// A request's images with their products, in CSV order, a page of each at a time.
pub struct ReportLines {
    page: i64,
    products: Paged<ProductRow>,
    images: Paged<(i64, ImageRow)>,
    current: Option<ProductRow>,
}

impl ReportLines {
    pub fn new(page: i64) -> Self {
        Self {
            page: page.max(1),
            products: Paged::default(),
            images: Paged::default(),
            current: None,
        }
    }

    /// The next image, or `None` after the last.
    pub async fn next(&mut self, rows: &mut impl StatusRows) -> StoreResult<Option<ReportLine>> {
        if self.images.needs_page() {
            let page = rows.images(self.images.after, self.page).await?;
            self.images.add_page(page, self.page, |(o, _)| *o);
        }
        let Some((ordinal, image)) = self.images.rows.pop_front() else {
            return Ok(None);
        };
        // Images come in product order, so the products are walked forward alongside.
        while self
            .current
            .as_ref()
            .is_none_or(|p| p.id != image.product_id)
        {
            if self.products.needs_page() {
                let page = rows.products(self.products.after, self.page).await?;
                self.products.add_page(page, self.page, |p| p.position);
            }
            self.current = Some(self.products.rows.pop_front().ok_or_else(|| {
                StoreError::Other(anyhow::anyhow!("image {ordinal} has no product"))
            })?);
        }
        let product = self.current.as_ref().expect("set above");
        Ok(Some(ReportLine {
            serial_number: product.serial_number,
            product_name: product.product_name.clone(),
            ordinal,
            image,
        }))
    }
}

/// report.csv, a chunk at a time.
pub struct ReportCsv {
    lines: ReportLines,
    header: bool,
    done: bool,
}

impl ReportCsv {
    /// Reads `page` rows a query.
    pub fn new(page: i64) -> Self {
        Self {
            lines: ReportLines::new(page),
            header: false,
            done: false,
        }
    }

    /// At least `chunk_bytes` of the CSV (less for the last chunk), or `None` after the last.
    pub async fn next_chunk(
        &mut self,
        rows: &mut (impl StatusRows + Send),
        chunk_bytes: usize,
    ) -> StoreResult<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        let mut buf = Vec::new();
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(&mut buf);
        let csv_err = |e: csv::Error| StoreError::Other(e.into());
        if !std::mem::replace(&mut self.header, true) {
            w.write_record(COLUMNS).map_err(csv_err)?;
        }
        loop {
            w.flush().map_err(|e| StoreError::Other(e.into()))?;
            if w.get_ref().len() >= chunk_bytes {
                break;
            }
            let Some(line) = self.lines.next(rows).await? else {
                self.done = true;
                break;
            };
            let cells = line.cells();
            w.write_record(cells.iter().map(|c| defuse(c).into_owned()))
                .map_err(csv_err)?;
        }
        drop(w);
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Status;

    fn image(product_id: i64, position: i64, key: Option<&str>) -> ImageRow {
        ImageRow {
            product_id,
            position,
            input_url: format!("http://a/{product_id}/{position}"),
            status: if key.is_some() {
                Status::Completed
            } else {
                Status::Failed
            },
            output_url: key.map(|k| format!("http://o/{k}")),
            error: key.is_none().then(|| "=HYPERLINK(\"x\")".into()),
            error_code: None,
            attempts: 1,
            codec: key.map(|_| "pixels".into()),
            output_key: key.map(Into::into),
            input_format: key.map(|_| "png".into()),
            bytes_in: key.map(|_| 100),
            bytes_out: key.map(|_| 40),
            width: key.map(|_| 8),
            height: key.map(|_| 6),
            output_format: None,
            color_profile: None,
            note: None,
        }
    }

    struct Rows(Vec<ProductRow>, Vec<ImageRow>);

    impl StatusRows for Rows {
        async fn output_urls(&mut self, _: i64, _: i64) -> StoreResult<Vec<(i64, Option<String>)>> {
            unreachable!("the report reads no output URL list")
        }

        async fn products(&mut self, after: i64, limit: i64) -> StoreResult<Vec<ProductRow>> {
            let page = self.0.iter().filter(|p| p.position > after);
            Ok(page.take(limit as usize).cloned().collect())
        }

        async fn images(&mut self, after: i64, limit: i64) -> StoreResult<Vec<(i64, ImageRow)>> {
            let all = self
                .1
                .iter()
                .cloned()
                .enumerate()
                .map(|(o, i)| (o as i64, i));
            Ok(all
                .filter(|(o, _)| *o > after)
                .take(limit as usize)
                .collect())
        }
    }

    fn rows() -> Rows {
        let product = |id, position, name: &str| ProductRow {
            id,
            position,
            serial_number: position * 10 + 1,
            product_name: name.into(),
            status: Status::Completed,
        };
        Rows(
            vec![
                product(7, 0, "Mug, \"blue\""),
                product(8, 1, "=1+1"),
                product(9, 2, "Plate"),
            ],
            vec![
                image(7, 0, Some("r/0-a.jpg")),
                image(7, 1, None),
                image(8, 0, Some("r/2-b.png")),
                image(9, 0, Some("r/3-c.webp")),
            ],
        )
    }

    #[tokio::test]
    async fn one_quoted_row_an_image_in_csv_order_at_any_page_size() {
        for page in [1, 2, 3, 500] {
            for chunk in [1, 64, 1 << 20] {
                let mut csv = ReportCsv::new(page);
                let mut rows = rows();
                let mut out = Vec::new();
                while let Some(c) = csv.next_chunk(&mut rows, chunk).await.unwrap() {
                    out.extend(c);
                }
                let mut r = csv::Reader::from_reader(out.as_slice());
                assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>(), COLUMNS);
                let recs: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
                assert_eq!(recs.len(), 4, "page {page} chunk {chunk}");
                assert_eq!(&recs[0][1], "Mug, \"blue\"");
                assert_eq!(&recs[1][2], "2");
                assert_eq!(&recs[1][5], "failed");
                assert_eq!(&recs[1][7], "'=HYPERLINK(\"x\")");
                assert_eq!(&recs[2][1], "'=1+1");
                assert_eq!(&recs[2][15], "png");
                assert_eq!(&recs[3][0], "21");
                assert_eq!(&recs[3][15], "webp");
                assert_eq!((&recs[0][8], &recs[0][9]), ("100", "40"));
            }
        }
    }

    #[test]
    fn extensions_follow_the_stored_type() {
        assert_eq!(output_extension(&image(1, 0, Some("r/0-a.jpg"))), "jpg");
        assert_eq!(output_extension(&image(1, 0, Some("r/0-a.GIF"))), "gif");
        assert_eq!(output_extension(&image(1, 0, Some("r/0-a.exe"))), "bin");
        assert_eq!(output_extension(&image(1, 0, None)), "bin");
        let mut recorded = image(1, 0, Some("r/0-a.jpg"));
        recorded.output_format = Some("webp".into());
        assert_eq!(
            output_extension(&recorded),
            "webp",
            "the recorded format wins"
        );
    }
}
