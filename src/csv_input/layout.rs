//! An accepted file's own layout (its header as spelt, its column order, its extra columns), so
//! output.csv can give the file back as it was, with one column added.

use super::header::{normalized, Columns};
use super::records::Row;
use super::{find_header, Errors};

/// The header and every product row of an accepted file, cell by cell, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvLayout {
    /// The file's delimiter (comma, semicolon or tab).
    pub delimiter: u8,
    pub header: Vec<String>,
    /// One row per product, each as wide as the header.
    pub rows: Vec<Vec<String>>,
}

/// The name output.csv gives the column it adds.
pub const OUTPUT_COLUMN: &str = "Output Image Urls";

/// Reads the layout of a file [`super::parse_csv`] accepted; None for one it would not.
///
/// Rows come out as wide as the header: URLs that spilled out of an unquoted cell into the
/// fields after it go back into that cell (joined by the delimiter, as written), and missing
/// trailing cells are empty. A column the file already calls `Output Image Urls` (a file that
/// was itself an output.csv) is left out, so the column added is the only one of that name.
pub fn layout(bytes: &[u8]) -> Option<CsvLayout> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut errors = Errors::default();
    let (mut records, header_line) = find_header(bytes, &mut errors).ok()?;
    let delimiter = records.delimiter();
    let columns = Columns::from_header(records.row(), header_line, delimiter, &mut errors)?;
    let width = if columns.urls_take_extra_fields {
        columns.urls + 1
    } else {
        columns.header_width
    };
    let glue = char::from(delimiter.0).to_string();
    let shape = |row: Row<'_>| -> Vec<String> {
        let mut cells: Vec<String> = row.fields().map(|f| f.lossy().into_owned()).collect();
        if columns.urls_take_extra_fields && cells.len() > width {
            let spilled: Vec<String> = cells
                .drain(columns.urls..)
                .filter(|c| !c.trim().is_empty())
                .collect();
            cells.push(spilled.join(&glue));
        }
        cells.resize(width, String::new());
        cells
    };
    let header = shape(records.row());
    let mut rows = Vec::new();
    while records.next_non_blank(&mut errors).is_some() {
        rows.push(shape(records.row()));
    }
    if !errors.0.is_empty() {
        return None;
    }
    let keep: Vec<bool> = header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            i == columns.urls
                || i == columns.serial
                || i == columns.name
                || normalized(name, 15).as_deref() != Some("outputimageurls")
        })
        .collect();
    let pick = |cells: Vec<String>| -> Vec<String> {
        cells
            .into_iter()
            .zip(&keep)
            .filter_map(|(c, &k)| k.then_some(c))
            .collect()
    };
    Some(CsvLayout {
        delimiter: delimiter.0,
        header: pick(header),
        rows: rows.into_iter().map(pick).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_input::{parse_csv, CsvLimits};

    fn both(text: &str) -> CsvLayout {
        let products = parse_csv(text.as_bytes(), &CsvLimits::default()).expect("valid file");
        let layout = layout(text.as_bytes()).expect("layout of a valid file");
        assert_eq!(layout.rows.len(), products.len(), "one row per product");
        layout
    }

    #[test]
    fn keeps_spellings_order_and_extra_columns() {
        let l = both(
            "\u{feff}sku,product_name,Notes,input image URLs,S.No\r\n\
             A1,Shoe,\"say \"\"hi\"\"\",\"https://a/1.jpg, https://a/2.jpg\",1\r\n\
             \r\n\
             B2,Hat,,https://a/3.jpg,2\r\n",
        );
        assert_eq!(l.delimiter, b',');
        assert_eq!(
            l.header,
            ["sku", "product_name", "Notes", "input image URLs", "S.No"]
        );
        assert_eq!(
            l.rows,
            [
                vec![
                    "A1",
                    "Shoe",
                    "say \"hi\"",
                    "https://a/1.jpg, https://a/2.jpg",
                    "1"
                ],
                vec!["B2", "Hat", "", "https://a/3.jpg", "2"],
            ]
        );
    }

    #[test]
    fn spilled_urls_go_back_into_their_cell() {
        let l = both(
            "S. No.;Product Name;Input Image Urls;\n1;Shoe;https://a/1.jpg;https://a/2.jpg\n\
             2;Hat;https://a/3.jpg\n",
        );
        assert_eq!(l.delimiter, b';');
        assert_eq!(l.header, ["S. No.", "Product Name", "Input Image Urls"]);
        assert_eq!(l.rows[0][2], "https://a/1.jpg;https://a/2.jpg");
        assert_eq!(l.rows[1], ["2", "Hat", "https://a/3.jpg"]);
    }

    #[test]
    fn a_previous_output_column_is_left_out() {
        let l = both(
            "S. No.,Output Image Urls,Product Name,Input Image Urls\n1,https://old/x.jpg,Shoe,https://a/1.jpg\n",
        );
        assert_eq!(l.header, ["S. No.", "Product Name", "Input Image Urls"]);
        assert_eq!(l.rows[0], ["1", "Shoe", "https://a/1.jpg"]);
    }

    #[test]
    fn short_rows_are_padded() {
        let l = both("Product Name,Input Image Urls,S. No.,Colour\nShoe,https://a/1.jpg,1\n");
        assert_eq!(l.rows[0], ["Shoe", "https://a/1.jpg", "1", ""]);
    }
}
