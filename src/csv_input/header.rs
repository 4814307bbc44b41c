//! The header row: which cell holds which column.

use super::records::{Delimiter, Field, Row};
use super::{show, CsvError, Errors, MAX_SHOWN_CHARS};

/// The columns the service reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Column {
    Serial,
    Name,
    Urls,
}

impl Column {
    pub(super) const ALL: [Column; 3] = [Column::Serial, Column::Name, Column::Urls];

    pub(super) fn canonical_name(self) -> &'static str {
        match self {
            Column::Serial => "S. No.",
            Column::Name => "Product Name",
            Column::Urls => "Input Image Urls",
        }
    }

    /// The column a header cell names, from its normalized form (see [`classify_header`]).
    fn from_normalized(name: &str) -> Option<Self> {
        match name {
            "sno" | "serial" | "serialno" | "serialnumber" => Some(Column::Serial),
            "productname" => Some(Column::Name),
            "inputimageurls" => Some(Column::Urls),
            _ => None,
        }
    }
}

/// What a header cell is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderCell {
    /// Blank, or only punctuation that names are compared without (e.g. a trailing comma).
    Unnamed,
    Known(Column),
    Other,
}

/// Header names are compared without case, white space, dots, underscores or hyphens (and
/// without stray byte-order marks, which some tools leave inside the first cell).
fn classify_header(cell: &str) -> HeaderCell {
    // Longer than any known name once normalized: no need to normalize a huge cell completely.
    const LONGEST_KNOWN: usize = "inputimageurls".len();
    match normalized(cell, LONGEST_KNOWN) {
        None => HeaderCell::Other,
        Some(n) if n.is_empty() => HeaderCell::Unnamed,
        Some(n) => Column::from_normalized(&n).map_or(HeaderCell::Other, HeaderCell::Known),
    }
}

/// A header cell as names are compared: lower case, without white space, dots, underscores,
/// hyphens or byte-order marks; None once it is longer than `max` bytes.
pub(super) fn normalized(cell: &str, max: usize) -> Option<String> {
    let mut normalized = String::new();
    for c in cell
        .chars()
        .filter(|&c| !(c.is_whitespace() || matches!(c, '.' | '_' | '-' | '\u{FEFF}')))
    {
        normalized.extend(c.to_lowercase());
        if normalized.len() > max {
            return None;
        }
    }
    Some(normalized)
}

/// Where the columns are, from the header row.
#[derive(Debug)]
pub(super) struct Columns {
    pub(super) serial: usize,
    pub(super) name: usize,
    pub(super) urls: usize,
    /// The number of cells in the header row.
    pub(super) header_width: usize,
    /// True when no named column follows the URL column, so that any fields after it (beyond
    /// the header, or under unnamed header cells such as a trailing comma's) are more URLs from
    /// an unquoted cell. Otherwise such fields cannot be attributed and are an error.
    pub(super) urls_take_extra_fields: bool,
}

/// How well a header row read with some delimiter names the required columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct HeaderFit {
    /// Every required column found exactly once: the header is usable.
    pub(super) usable: bool,
    /// How many of the required columns were found (at least once).
    pub(super) known: usize,
}

impl HeaderFit {
    /// Classifies the header's cells without reporting anything; used to pick the delimiter.
    pub(super) fn of(header: Row<'_>) -> Self {
        let mut counts = [0usize; 3];
        for field in header.fields() {
            if let HeaderCell::Known(column) = classify_header(&field.lossy()) {
                counts[column as usize] += 1;
            }
        }
        Self {
            usable: counts.iter().all(|&n| n == 1),
            known: counts.iter().filter(|&&n| n > 0).count(),
        }
    }
}

impl Columns {
    /// `None` if the header is unusable (a required column missing or given twice); the
    /// reasons are in `errors`. A header that is not valid UTF-8 is reported but still used if
    /// its required columns can be found, so that the rows get checked too.
    ///
    /// `delimiter` is the one the header was read with, used to show the header as written.
    pub(super) fn from_header(
        header: Row<'_>,
        line: u64,
        delimiter: Delimiter,
        errors: &mut Errors,
    ) -> Option<Self> {
        let mut found: [Option<(usize, String)>; 3] = [None, None, None];
        let mut last_named = None;
        let mut usable = true;
        if let Some(bytes) = header.fields().find_map(|f| match f {
            Field::Binary(bytes) => Some(bytes),
            Field::Text(_) => None,
        }) {
            errors.push(CsvError::row(
                line,
                format!(
                    "the header is not valid UTF-8 text (save the file as UTF-8 CSV): {}",
                    show(&String::from_utf8_lossy(bytes))
                ),
            ));
        }
        for (index, field) in header.fields().enumerate() {
            let cell = field.lossy();
            match classify_header(&cell) {
                HeaderCell::Unnamed => continue,
                HeaderCell::Other => {}
                HeaderCell::Known(column) => {
                    let slot = &mut found[column as usize];
                    match slot {
                        Some((first, first_cell)) => {
                            usable = false;
                            errors.push(CsvError::cell(
                                line,
                                column,
                                format!(
                                    "the column appears twice in the header: {} (column {}) \
                                     and {} (column {})",
                                    show(first_cell),
                                    *first + 1,
                                    show(&cell),
                                    index + 1
                                ),
                            ));
                        }
                        None => *slot = Some((index, cell.into_owned())),
                    }
                }
            }
            last_named = Some(index);
        }
        for column in Column::ALL {
            if found[column as usize].is_none() {
                usable = false;
                errors.push(CsvError::cell(
                    line,
                    column,
                    format!(
                        "the header has no \"{}\" column; the header found is: {}",
                        column.canonical_name(),
                        show(&join_for_display(header, delimiter))
                    ),
                ));
            }
        }
        match (usable, found) {
            (true, [Some((serial, _)), Some((name, _)), Some((urls, _))]) => Some(Self {
                serial,
                name,
                urls,
                header_width: header.len(),
                urls_take_extra_fields: last_named == Some(urls),
            }),
            _ => None,
        }
    }

    /// The column a data field belongs to, if any.
    pub(super) fn column_of_field(&self, index: usize) -> Option<Column> {
        if index == self.serial {
            Some(Column::Serial)
        } else if index == self.name {
            Some(Column::Name)
        } else if index == self.urls || (self.urls_take_extra_fields && index > self.urls) {
            Some(Column::Urls)
        } else {
            None
        }
    }
}

/// The header cells joined with the file's delimiter, cut off once long enough to be shown (the
/// header may be one enormous line).
fn join_for_display(header: Row<'_>, delimiter: Delimiter) -> String {
    let mut joined = String::new();
    for (i, field) in header.fields().enumerate() {
        if joined.chars().count() > MAX_SHOWN_CHARS {
            break;
        }
        if i > 0 {
            joined.push(char::from(delimiter.0));
        }
        let cell = field.lossy();
        joined.extend(cell.chars().take(MAX_SHOWN_CHARS + 1));
    }
    joined
}

#[cfg(test)]
mod tests {
    use crate::csv_input::test_support::*;

    #[test]
    fn every_serial_header_variant_is_recognised() {
        for name in [
            "S. No.",
            "Serial Number",
            "SerialNumber",
            "serial_number",
            "sno",
            "serial",
            "serial no",
            "S.No",
            "SERIAL-NUMBER",
            "  s. no.  ",
            "Serial No.",
        ] {
            let products = parse(&format!(
                "{name},Product Name,Input Image Urls\n7,SKU,https://a.example/x.jpg\n"
            ))
            .unwrap_or_else(|e| panic!("header {name:?}: {e:#?}"));
            assert_eq!(
                products[0].serial_number,
                SerialNumber::new(7).unwrap(),
                "header {name:?}"
            );
        }
    }

    #[test]
    fn every_name_header_variant_is_recognised() {
        for name in [
            "Product Name",
            "ProductName",
            "product_name",
            "PRODUCT-NAME",
            " product name ",
        ] {
            let products = parse(&format!(
                "S. No.,{name},Input Image Urls\n1,Widget,https://a.example/x.jpg\n"
            ))
            .unwrap_or_else(|e| panic!("header {name:?}: {e:#?}"));
            assert_eq!(
                products[0].product_name.as_str(),
                "Widget",
                "header {name:?}"
            );
        }
    }

    #[test]
    fn every_urls_header_variant_is_recognised() {
        for name in [
            "Input Image Urls",
            "Input Image URLs",
            "InputImageUrls",
            "input_image_urls",
            "INPUT-IMAGE-URLS",
        ] {
            let products = parse(&format!(
                "S. No.,Product Name,{name}\n1,SKU,https://a.example/x.jpg\n"
            ))
            .unwrap_or_else(|e| panic!("header {name:?}: {e:#?}"));
            assert_eq!(
                urls(&products[0]),
                ["https://a.example/x.jpg"],
                "header {name:?}"
            );
        }
    }

    #[test]
    fn quoted_header_cells_are_recognised() {
        let products =
            ok("\"S. No.\",\"Product Name\",\"Input Image Urls\"\n1,SKU,https://a.example/x.jpg\n");
        assert_eq!(products.len(), 1);
    }

    #[test]
    fn columns_in_any_order_and_unknown_columns_ignored() {
        let products = ok("Notes,Input Image Urls,Price,Product Name,S. No.\n\
             hello,https://a.example/1.jpg,9.99,Widget,5\n");
        assert_eq!(products[0].serial_number, SerialNumber::new(5).unwrap());
        assert_eq!(products[0].product_name.as_str(), "Widget");
        assert_eq!(urls(&products[0]), ["https://a.example/1.jpg"]);
    }

    #[test]
    fn spill_over_also_fills_unnamed_trailing_header_cells() {
        // Spreadsheets often export a trailing comma on every line, header included.
        let products = ok("S. No.,Product Name,Input Image Urls,,\n\
             1,SKU1,https://a/1.jpg,https://a/2.jpg,https://a/3.jpg,https://a/4.jpg\n\
             2,SKU2,https://a/5.jpg,,\n");
        assert_eq!(
            urls(&products[0]),
            [
                "https://a/1.jpg",
                "https://a/2.jpg",
                "https://a/3.jpg",
                "https://a/4.jpg"
            ]
        );
        assert_eq!(urls(&products[1]), ["https://a/5.jpg"]);
    }

    #[test]
    fn missing_required_column() {
        let error = single(errs(
            "S. No.,Name,Input Image Urls\n1,SKU1,https://a/1.jpg\n",
        ));
        assert_eq!((error.line, error.column.as_deref()), (1, N));
        assert!(error.message.contains("Product Name"), "{}", error.message);
        assert!(
            error.message.contains("S. No.,Name,Input Image Urls"),
            "{}",
            error.message
        );

        // The header's actual line when blank lines precede it.
        let errors = errs("\n\nS. No.,Input Image Urls\n1,https://a/1.jpg\n");
        assert_eq!(places(&errors), [(3, N)]);

        // Another delimiter naming some columns: its header's problems, shown as written.
        let error = single(errs(
            "S. No.;Name;Input Image Urls\n1;SKU1;https://a/1.jpg\n",
        ));
        assert_eq!((error.line, error.column.as_deref()), (1, N));
        assert!(
            error.message.contains("\"S. No.;Name;Input Image Urls\""),
            "{}",
            error.message
        );
        let error = single(errs(
            "S. No.\tProduct Name\tImages\n1\tSKU1\thttps://a/1.jpg\n",
        ));
        assert_eq!((error.line, error.column.as_deref()), (1, U));
    }

    #[test]
    fn a_header_no_delimiter_fits_is_one_error() {
        // A file without a header.
        let error = single(errs("1,SKU1,https://a/1.jpg\n"));
        assert_eq!(
            error,
            CsvError {
                line: 1,
                column: None,
                message: "no delimiter (comma, semicolon, tab) gives the header columns \
                          \"S. No.\", \"Product Name\", \"Input Image Urls\"; \
                          the header row is: \"1,SKU1,https://a/1.jpg\""
                    .into()
            }
        );

        // Another separator (a pipe), after blank lines and a BOM; tabs are shown escaped.
        let error = single(errs(
            "\u{feff}\r\n\r\nS. No.|Product Name|Input Image Urls\r\n1|A|https://a/1\r\n",
        ));
        assert_eq!((error.line, error.column.as_deref()), (3, None));
        assert!(
            error
                .message
                .ends_with("the header row is: \"S. No.|Product Name|Input Image Urls\""),
            "{}",
            error.message
        );
        let error = single(errs("a\tb;c,d\n1\t2\n"));
        assert!(
            error.message.ends_with("\"a\\tb;c,d\""),
            "{}",
            error.message
        );

        // A long header row is cut.
        let error = single(errs(&format!("{}\n1,A,https://a/1\n", "x".repeat(5000))));
        assert!(error.message.len() < 400, "{}", error.message);
        assert!(error.message.ends_with("...\""), "{}", error.message);
    }

    #[test]
    fn semicolon_files() {
        // As Excel saves them in many locales: BOM, CRLF, a trailing delimiter, blank rows.
        let products = ok("\u{feff}S. No.;Product Name;Input Image Urls;\r\n\
             1.;Blue Mug;https://a/1.jpg,https://a/2.jpg;\r\n\
             ;;;\r\n\
             2.;Cup;\"https://a/3.jpg https://a/4.jpg\";\r\n\
             3;Plate;https://a/5.jpg;https://a/6.jpg\r\n");
        assert_eq!(
            products.iter().map(|p| p.line).collect::<Vec<_>>(),
            [2, 4, 5]
        );
        assert_eq!(products[0].product_name.as_str(), "Blue Mug");
        // Commas and spaces inside the URL cell still separate URLs, and unquoted URLs
        // spill over into extra fields.
        assert_eq!(urls(&products[0]), ["https://a/1.jpg", "https://a/2.jpg"]);
        assert_eq!(urls(&products[1]), ["https://a/3.jpg", "https://a/4.jpg"]);
        assert_eq!(urls(&products[2]), ["https://a/5.jpg", "https://a/6.jpg"]);

        // Errors keep their lines, columns and messages.
        let errors =
            errs("S. No.;Product Name;Input Image Urls\n1;A;https://a/1\n\n1;;ftp://a/2\n");
        assert_eq!(places(&errors), [(4, S), (4, N), (4, U)]);
        assert!(
            errors[0].message.contains("line 2"),
            "{}",
            errors[0].message
        );

        // A separator-only line before the header is blank whichever delimiter it uses.
        let products = ok(",,\n;;\nS. No.;Product Name;Input Image Urls\n1;A;https://a/1\n");
        assert_eq!(products[0].line, 4);
    }

    #[test]
    fn tab_files() {
        let products = ok("S. No.\tProduct Name\tInput Image Urls\n\
             1\tMug\thttps://a/1.jpg https://a/2.jpg\n\
             \t\t\n\
             2\tCup\thttps://a/3.jpg\thttps://a/4.jpg\n");
        assert_eq!(products.iter().map(|p| p.line).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(urls(&products[0]), ["https://a/1.jpg", "https://a/2.jpg"]);
        assert_eq!(urls(&products[1]), ["https://a/3.jpg", "https://a/4.jpg"]);

        // Columns in another order, an ignored column, a quoted header.
        let products = ok("\"Input Image Urls\"\tNotes\t\"S. No.\"\tProduct Name\n\
             https://a/1.jpg\tfragile\t7\tVase\n");
        assert_eq!(products[0].serial_number, SerialNumber::new(7).unwrap());
        assert_eq!(products[0].product_name.as_str(), "Vase");

        let errors = errs("S. No.\tProduct Name\tInput Image Urls\n0\tA\thttps://a/1\n");
        assert_eq!(places(&errors), [(2, S)]);
    }

    #[test]
    fn quoted_fields_may_hold_the_other_delimiters() {
        // Comma file: semicolons and tabs are plain characters.
        let products = ok("S. No.,Product Name,Input Image Urls\n\
             1,\"Mug; blue\tlarge\",https://a/1.jpg?a=1;b=2\n");
        assert_eq!(products[0].product_name.as_str(), "Mug; blue\tlarge");
        assert_eq!(urls(&products[0]), ["https://a/1.jpg?a=1;b=2"]);

        // Semicolon file: quoted semicolons and commas in the name.
        let products = ok("S. No.;Product Name;Input Image Urls\n\
             1;\"Mug; blue, large\";\"https://a/1.jpg?a=1;b=2\"\n");
        assert_eq!(products[0].product_name.as_str(), "Mug; blue, large");
        assert_eq!(urls(&products[0]), ["https://a/1.jpg?a=1;b=2"]);

        // Tab file: quoted tabs, commas and semicolons.
        let products = ok("S. No.\tProduct Name\tInput Image Urls\n\
             1\t\"Mug,\tblue; large\"\thttps://a/1.jpg\n");
        assert_eq!(products[0].product_name.as_str(), "Mug,\tblue; large");

        // A quoted header cell holding another delimiter does not make that delimiter fit.
        let products = ok(
            "\"S. No.\";\"Product Name, full\";Product Name;Input Image Urls\n\
             1;x;A;https://a/1.jpg\n",
        );
        assert_eq!(products[0].product_name.as_str(), "A");
    }

    #[test]
    fn comma_wins_when_it_fits() {
        // The header fits with commas: semicolons in cells stay characters of the cell.
        let products = ok("S. No.,Product Name,Input Image Urls\n1,A;B,https://a/1\n");
        assert_eq!(products[0].product_name.as_str(), "A;B");
    }

    #[test]
    fn duplicate_header_column() {
        let error = single(errs(
            "S. No.,Product Name,Serial Number,Input Image Urls\n1,SKU1,1,https://a/1.jpg\n",
        ));
        assert_eq!((error.line, error.column.as_deref()), (1, S));
        assert!(error.message.contains("twice"), "{}", error.message);
        assert!(error.message.contains("Serial Number"), "{}", error.message);
    }
}
