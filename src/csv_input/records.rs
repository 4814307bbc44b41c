//! Reading the file record by record, with the physical line each record starts on.

use csv::{ByteRecord, ReaderBuilder};

use super::{CsvError, Errors};

/// millions of fields, and a decoded copy of them all would multiply memory use.
#[derive(Debug, Clone, Copy)]
pub(super) struct Row<'a>(&'a ByteRecord);

impl<'a> Row<'a> {
    pub(super) fn len(self) -> usize {
        self.0.len()
    }

    pub(super) fn get(self, index: usize) -> Option<Field<'a>> {
        self.0.get(index).map(Field::new)
    }

    pub(super) fn fields(self) -> impl Iterator<Item = Field<'a>> {
        self.0.iter().map(Field::new)
    }
}

/// A field of a record: text, or bytes that are not UTF-8.
#[derive(Debug, Clone, Copy)]
pub(super) enum Field<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'a> Field<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) => Field::Text(s),
            Err(_) => Field::Binary(bytes),
        }
    }

    fn is_blank(&self) -> bool {
        match self {
            Field::Text(s) => s.trim().is_empty(),
            Field::Binary(_) => false,
        }
    }

    /// Blank before the delimiter is known: white space and any of the accepted delimiters
    /// only, so that a separator-only line before the header is skipped whichever delimiter is
    /// being tried (`,,` above a `;` header).
    fn is_blank_for_any_delimiter(&self) -> bool {
        match self {
            Field::Text(s) => s
                .chars()
                .all(|c| c.is_whitespace() || DELIMITERS.iter().any(|d| c == char::from(d.0))),
            Field::Binary(_) => false,
        }
    }

    pub(super) fn lossy(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Field::Text(s) => std::borrow::Cow::Borrowed(s),
            Field::Binary(bytes) => String::from_utf8_lossy(bytes),
        }
    }
}

/// Most fields one record may have. Well above any spreadsheet's column count (Excel stops at
/// 16,384) plus an unquoted URL list, so no real file comes near it; see [`FieldGuard`].
const MAX_FIELDS_PER_RECORD: usize = 20_000;

/// A field separator the parser accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delimiter(pub(super) u8);

impl Delimiter {
    pub(super) const COMMA: Self = Self(b',');
    pub(super) const SEMICOLON: Self = Self(b';');
    pub(super) const TAB: Self = Self(b'\t');

    pub(super) fn name(self) -> &'static str {
        match self.0 {
            b';' => "semicolon",
            b'\t' => "tab",
            _ => "comma",
        }
    }
}

/// The accepted delimiters, in the order the header is tried with them: comma first, so a
/// comma file (the common case) is read once.
pub(super) const DELIMITERS: [Delimiter; 3] =
    [Delimiter::COMMA, Delimiter::SEMICOLON, Delimiter::TAB];

/// The records of the file, with the line each starts on.
pub(super) struct Records<'a> {
    reader: csv::Reader<FieldGuard<'a>>,
    record: ByteRecord,
    lines: LineCounter<'a>,
    delimiter: Delimiter,
}

impl<'a> Records<'a> {
    pub(super) fn new(bytes: &'a [u8], delimiter: Delimiter) -> Self {
        let reader = ReaderBuilder::new()
            .delimiter(delimiter.0)
            // Raw records: the header is found and interpreted here, not by the csv crate.
            .has_headers(false)
            // Rows may be shorter (missing cells) or longer (unquoted URL lists) than the header.
            .flexible(true)
            .from_reader(FieldGuard {
                input: bytes,
                delimiter: delimiter.0,
                delimiters: 0,
                tripped: false,
            });
        Self {
            reader,
            record: ByteRecord::new(),
            lines: LineCounter::new(bytes),
            delimiter,
        }
    }

    pub(super) fn delimiter(&self) -> Delimiter {
        self.delimiter
    }

    /// Reads the next record that is not blank (only delimiters and white space) and returns
    /// the line it starts on; `None` at the end of the file, or on a read error (reported).
    pub(super) fn next_non_blank(&mut self, errors: &mut Errors) -> Option<u64> {
        self.next_record(errors, false)
    }

    /// Like [`Self::next_non_blank`], for the header: lines of nothing but white space and any
    /// accepted delimiter are skipped too.
    pub(super) fn next_header(&mut self, errors: &mut Errors) -> Option<u64> {
        self.next_record(errors, true)
    }

    /// The first line of the record last read, as raw bytes (at most `max` of them), for
    /// error messages.
    pub(super) fn first_line_of_row(&self, max: usize) -> &'a [u8] {
        let rest = &self.lines.bytes[self.lines.pos.min(self.lines.bytes.len())..];
        let end = rest
            .iter()
            .take(max)
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(rest.len().min(max));
        &rest[..end]
    }

    fn next_record(&mut self, errors: &mut Errors, header: bool) -> Option<u64> {
        loop {
            self.reader.get_mut().delimiters = 0;
            let result = self.reader.read_byte_record(&mut self.record);
            // The record's position is set before reading, so it is right even after an error.
            let offset = self
                .record
                .position()
                .and_then(|p| usize::try_from(p.byte()).ok())
                .unwrap_or(usize::MAX);
            match result {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    let line = self.lines.record_start_line(offset);
                    let message = if self.reader.get_ref().tripped {
                        format!(
                            "too many fields in one line (more than {MAX_FIELDS_PER_RECORD}); \
                             this does not look like a CSV of products"
                        )
                    } else {
                        // Reading from memory has no other failure mode; kept for safety.
                        format!("the CSV cannot be read: {e}")
                    };
                    errors.push(CsvError::row(line, message));
                    return None;
                }
            }
            let line = self.lines.record_start_line(offset);
            let blank = |f: Field<'_>| {
                if header {
                    f.is_blank_for_any_delimiter()
                } else {
                    f.is_blank()
                }
            };
            if !self.row().fields().all(blank) {
                return Some(line);
            }
        }
    }

    /// The record last read.
    pub(super) fn row(&self) -> Row<'_> {
        Row(&self.record)
    }
}

/// The input as the csv reader sees it, failing the read once the current record has too many
/// fields.
///
/// The csv crate keeps every field's end offset in the record (and grows that storage by
/// doubling), so a file of nothing but commas costs it about 40 bytes of memory per input byte:
/// hundreds of megabytes for an upload of a few. It reads the whole record before returning it,
/// so the only place to stop it early is its input. Delimiters are counted as the reader takes
/// its input (reset before each record), which may include up to one buffer (8 KiB) of the
/// records before and after; harmless at this limit.
struct FieldGuard<'a> {
    input: &'a [u8],
    /// The delimiter byte the reader splits on.
    delimiter: u8,
    /// Delimiters handed to the reader since the current record began.
    delimiters: usize,
    /// Whether a read failed because of the limit.
    tripped: bool,
}

impl std::io::Read for FieldGuard<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.delimiters >= MAX_FIELDS_PER_RECORD {
            self.tripped = true;
            return Err(std::io::Error::other("too many fields in one record"));
        }
        let n = self.input.read(buf)?;
        let delimiter = self.delimiter;
        self.delimiters += buf[..n].iter().filter(|&&b| b == delimiter).count();
        Ok(n)
    }
}

/// Finds the physical line a record starts on.
///
/// The csv crate's `Position::line()` is not usable for this: a record's position is where the
/// reader stood when it began reading it, i.e. right after the previous record, before the
/// blank lines it then skips, and before the `\n` of a CRLF ending (so with CRLF every record
/// would be reported one line early per preceding line). Its byte offset is exact, though, so
/// this counts line breaks up to the record's first byte itself, advancing monotonically
/// through the input so the total work stays linear.
struct LineCounter<'a> {
    bytes: &'a [u8],
    /// Line breaks before this offset have been counted into `line`.
    pos: usize,
    /// The line `pos` is on.
    line: u64,
}

impl<'a> LineCounter<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            line: 1,
        }
    }

    /// The line of a record the csv reader began reading at byte `offset`.
    fn record_start_line(&mut self, offset: usize) -> u64 {
        // The csv reader skips line terminators before a record (empty lines); its first byte
        // is the first one that is not a terminator.
        let mut start = offset.min(self.bytes.len()).max(self.pos);
        while matches!(self.bytes.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        self.advance_to(start);
        self.line
    }

    fn advance_to(&mut self, to: usize) {
        let to = to.min(self.bytes.len());
        if to <= self.pos {
            return;
        }
        let breaks = self.bytes[self.pos..to]
            .iter()
            .enumerate()
            .filter(|&(i, &b)| {
                // A line ends with LF, CRLF (counted at its LF) or a lone CR.
                b == b'\n' || (b == b'\r' && self.bytes.get(self.pos + i + 1) != Some(&b'\n'))
            })
            .count();
        self.line = self.line.saturating_add(breaks as u64);
        self.pos = to;
    }
}

#[cfg(test)]
mod tests {
    use crate::csv_input::test_support::*;

    #[test]
    fn crlf_line_endings_and_line_numbers() {
        let input = "S. No.,Product Name,Input Image Urls\r\n\
                     1,SKU1,https://a/1.jpg\r\n\
                     \r\n\
                     2,SKU2,https://a/2.jpg\r\n";
        let products = ok(input);
        assert_eq!(products.iter().map(|p| p.line).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(urls(&products[1]), ["https://a/2.jpg"]);

        let errors = errs("S. No.,Product Name,Input Image Urls\r\n1,SKU1,https://a/1.jpg\r\n0,SKU2,https://a/2.jpg\r\n");
        assert_eq!(places(&errors), [(3, S)]);
    }

    #[test]
    fn lone_cr_line_endings_count_as_lines() {
        let errors = errs("S. No.,Product Name,Input Image Urls\r1,SKU1,https://a/1.jpg\r\r0,SKU2,https://a/2.jpg\r");
        assert_eq!(places(&errors), [(4, S)]);
    }

    #[test]
    fn blank_lines_are_skipped_and_lines_still_counted() {
        let input = "\n\
                     \n\
                     S. No.,Product Name,Input Image Urls\n\
                     \n\
                     1,SKU1,https://a/1.jpg\n\
                     ,,\n\
                     \x20 , \t ,\n\
                     \n\
                     2,SKU2,https://a/2.jpg\n\
                     \n\
                     \n";
        let products = ok(input);
        assert_eq!(products.iter().map(|p| p.line).collect::<Vec<_>>(), [5, 9]);

        let errors = errs("S. No.,Product Name,Input Image Urls\n\n\n1,,https://a/1.jpg\n\n");
        assert_eq!(places(&errors), [(4, N)]);
    }

    #[test]
    fn quoted_newlines_shift_line_numbers() {
        let input = "S. No.,Product Name,Input Image Urls,Notes\n\
                     1,SKU1,\"https://a/1.jpg\nhttps://a/2.jpg\",\"a\nlong\nnote\"\n\
                     2,SKU2,https://a/3.jpg,\n\
                     3,,https://a/4.jpg,\n";
        // Lines: 1 header, 2-5 the first product, 6 the second, 7 the third.
        let errors = errs(input);
        assert_eq!(places(&errors), [(7, N)]);

        let input = "S. No.,Product Name,Input Image Urls,Notes\n\
                     1,SKU1,\"https://a/1.jpg\r\nhttps://a/2.jpg\",\"a\r\nnote\"\r\n\
                     2,SKU2,https://a/3.jpg,\r\n";
        let products = ok(input);
        assert_eq!(products.iter().map(|p| p.line).collect::<Vec<_>>(), [2, 5]);
    }

    #[test]
    fn ten_megabyte_single_line() {
        let big = 10 * 1024 * 1024;

        // One enormous URL.
        let input = format!("{HEADER}1,A,https://a.example/{}\n", "x".repeat(big));
        let error = single(errs(&input));
        assert_eq!((error.line, error.column.as_deref()), (2, U));
        assert!(error.message.contains("too long"));
        assert!(error.message.len() < 400);

        // A line of URLs spilling over into hundreds of thousands of fields.
        let mut input = String::from(HEADER);
        input.push_str("1,A");
        while input.len() < big {
            input.push_str(",https://a.example/img.jpg");
        }
        input.push_str("\n2,B,https://a/2\n");
        let error = single(errs(&input));
        assert_eq!((error.line, error.column.as_deref()), (2, None));
        assert!(
            error.message.contains("too many fields"),
            "{}",
            error.message
        );

        // A header that is one enormous line without a newline (read once per delimiter).
        let input = "S".repeat(big);
        let error = single(errs(&input));
        assert_eq!((error.line, error.column.as_deref()), (1, None));
        assert!(error.message.len() < 400);

        // The same with semicolons or tabs: the field guard counts the file's delimiter.
        for delimiter in [";", "\t"] {
            let mut input = format!(
                "S. No.{d}Product Name{d}Input Image Urls\n1{d}A",
                d = delimiter
            );
            while input.len() < big {
                input.push_str(delimiter);
                input.push_str("https://a.example/img.jpg");
            }
            input.push('\n');
            let error = single(errs(&input));
            assert_eq!(
                (error.line, error.column.as_deref()),
                (2, None),
                "{delimiter:?}"
            );
            assert!(
                error.message.contains("too many fields"),
                "{}",
                error.message
            );
        }

        // Nothing but commas.
        let input = ",".repeat(big);
        let error = single(errs(&input));
        assert_eq!((error.line, error.column.as_deref()), (1, None));
        assert!(
            error.message.contains("too many fields"),
            "{}",
            error.message
        );
    }

    #[test]
    fn many_fields_below_the_guard_are_fine() {
        // Thousands of spilled URLs: counted, not a parse failure.
        let mut input = String::from(HEADER);
        input.push_str("1,A");
        for i in 0..5_000 {
            input.push_str(&format!(",https://a.example/{i}.jpg"));
        }
        input.push('\n');
        let error = single(errs(&input));
        assert_eq!((error.line, error.column.as_deref()), (2, U));
        assert!(
            error.message.contains("too many image URLs: 5000"),
            "{}",
            error.message
        );

        // A wide export: many unnamed trailing cells on every line.
        let trailing = ",".repeat(15_000);
        let input =
            format!("S. No.,Product Name,Input Image Urls{trailing}\n1,A,https://a/1{trailing}\n");
        let products = ok(&input);
        assert_eq!(urls(&products[0]), ["https://a/1"]);
    }

    #[test]
    fn a_million_blank_lines() {
        let blank = "\n".repeat(1_000_000);
        let error = single(errs(&blank));
        assert_eq!(error.message, "the file is empty");

        let input = format!("{HEADER}{blank}1,A,https://a/1\n{blank}");
        let products = ok(&input);
        assert_eq!(products.len(), 1);
        assert_eq!(products[0].line, 1_000_002);

        let input = format!("{HEADER}{}0,A,https://a/1\r\n", "\r\n".repeat(1_000_000));
        let error = single(errs(&input));
        assert_eq!(error.line, 1_000_002);

        let input = format!("{HEADER}{}", ",,\n".repeat(1_000_000));
        let error = single(errs(&input));
        assert_eq!(error.message, "the CSV has no products");
    }

    #[test]
    fn unterminated_quote_does_not_hide_problems() {
        let errors = errs(&format!("{HEADER}1,A,\"https://a/1\n2,B,https://a/2\n"));
        // The quoted cell swallows the rest of the file; its pieces show up as bad URLs.
        assert_eq!(errors[0].line, 2);
        assert_eq!(errors[0].column.as_deref(), U);
    }
}
