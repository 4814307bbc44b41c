//! Parsing and validation of the uploaded products CSV.
//!
//! The whole file is validated before anything is accepted: one bad row rejects the upload, and
//! the client gets every problem found (up to [`MAX_REPORTED_ERRORS`]) in one response instead
//! of fixing them one round trip at a time.
//!
//! Accepted format:
//! - UTF-8, with or without a byte-order mark; LF, CRLF or (old Mac) CR line endings.
//! - The first non-blank line is the header. Columns are found by name, ignoring case, white
//!   space, dots, underscores and hyphens, and may come in any order; unknown columns are ignored.
//! - Then one product a line. Blank lines, and lines holding only commas and white space, are
//!   skipped.
//! - The URL cell holds one or more URLs separated by commas or white space. A URL containing
//!   a comma therefore cannot be expressed (percent-encode it as `%2C`). When the URL column is
//!   the last named column, fields past it (an unquoted cell whose commas split it into several
//!   fields) belong to it too.
//!
//! Line numbers in errors are 1-based physical lines of the file (the header is normally line
//! 1); a product whose quoted cells span several lines is reported at the line it starts on.

use std::collections::HashMap;
use std::fmt;

use csv::{ByteRecord, ReaderBuilder};
use serde::Serialize;
use url::Url;

use crate::domain::{ImageUrl, ProductName, SerialNumber};

/// Errors beyond this many are not collected: the client gets enough to see the pattern, and a
/// hostile or badly broken file cannot make us build (and send) a huge error list.
pub const MAX_REPORTED_ERRORS: usize = 100;

/// How much of an offending value an error message quotes, in characters.
const MAX_SHOWN_CHARS: usize = 100;

/// Limits on one upload, from the settings.
#[derive(Debug, Clone)]
pub struct CsvLimits {
    /// Most products (non-blank data rows) a file may hold.
    pub max_rows: usize,
    /// Most input image URLs one product may have.
    pub max_urls_per_product: usize,
    /// Longest accepted URL, in bytes.
    pub max_url_len: usize,
}

impl Default for CsvLimits {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            max_urls_per_product: 20,
            max_url_len: 2048,
        }
    }
}

/// One valid product row.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedProduct {
    /// The 1-based line of the file the row starts on.
    pub line: u64,
    pub serial_number: SerialNumber,
    pub product_name: ProductName,
    /// In the order the client wrote them; never empty.
    pub input_urls: Vec<ImageUrl>,
}

/// One problem with the uploaded file.
///
/// Serializes as `{"line":3,"column":"Input Image Urls","message":"..."}`, with `column` null
/// for problems with a whole row or the whole file.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CsvError {
    /// The 1-based physical line of the file. File-level problems use line 1 (an empty file) or
    /// the line after the header (a file without products).
    pub line: u64,
    /// The canonical name of the column ("S. No.", "Product Name" or "Input Image Urls"), or
    /// `None` when the problem is not in one of those cells.
    pub column: Option<String>,
    /// A human-readable description, quoting (a truncated copy of) the offending value.
    pub message: String,
}

impl CsvError {
    fn row(line: u64, message: String) -> Self {
        Self {
            line,
            column: None,
            message,
        }
    }

    fn cell(line: u64, column: Column, message: String) -> Self {
        Self {
            line,
            column: Some(column.canonical_name().to_owned()),
            message,
        }
    }
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(f, "line {}, {}: {}", self.line, column, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

/// Parses and validates an uploaded CSV.
///
/// Returns the products in file order, or every problem found (at most
/// [`MAX_REPORTED_ERRORS`], in file order) if there is any problem at all. Never panics, and
/// runs in time and memory linear in the input.
///
/// # Errors
///
/// Any problem rejects the whole file. Most errors name the line of the offending row and the
/// column of the offending cell. File-level errors: "the file is empty" (nothing but blank
/// lines, or no bytes at all) is reported on line 1, where the header was expected; "the CSV
/// has no products" on the line after the header. A missing or repeated required column is
/// reported on the header's line, and parsing stops there. Parsing also stops at the first row
/// past [`CsvLimits::max_rows`] and at a line with an absurd number of fields.
pub fn parse_csv(bytes: &[u8], limits: &CsvLimits) -> Result<Vec<ParsedProduct>, Vec<CsvError>> {
    // csv-core happens to skip a leading BOM too; stripping it here keeps the contract from
    // depending on that, and keeps byte offsets (used for line numbers) consistent.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut records = Records::new(bytes);
    let mut errors = Errors::default();

    let Some(header_line) = records.next_non_blank(&mut errors) else {
        if errors.0.is_empty() {
            errors.push(CsvError::row(1, "the file is empty".to_owned()));
        }
        return Err(errors.0);
    };
    let Some(columns) = Columns::from_header(records.row(), header_line, &mut errors) else {
        return Err(errors.0);
    };

    let mut products = Vec::new();
    let mut seen_serials: HashMap<i64, u64> = HashMap::new();
    let mut rows = 0usize;
    while !errors.is_full() {
        let Some(line) = records.next_non_blank(&mut errors) else {
            break;
        };
        rows += 1;
        if rows > limits.max_rows {
            errors.push(CsvError::row(
                line,
                format!(
                    "too many products: a file may hold at most {} products",
                    limits.max_rows
                ),
            ));
            break;
        }
        let product = check_row(
            line,
            records.row(),
            &columns,
            limits,
            &mut seen_serials,
            &mut errors,
        );
        // Once the file is known to be rejected, valid rows are no longer worth keeping.
        match product {
            Some(product) if errors.0.is_empty() => products.push(product),
            _ => products = Vec::new(),
        }
    }

    if !errors.0.is_empty() {
        return Err(errors.0);
    }
    if products.is_empty() {
        return Err(vec![CsvError::row(
            header_line + 1,
            "the CSV has no products".to_owned(),
        )]);
    }
    Ok(products)
}

/// Validates one non-blank data row; `None` if it has any problem (all reported to `errors`).
fn check_row(
    line: u64,
    row: Row<'_>,
    columns: &Columns,
    limits: &CsvLimits,
    seen_serials: &mut HashMap<i64, u64>,
    errors: &mut Errors,
) -> Option<ParsedProduct> {
    // The cells cannot be checked until they are text; one error a line is enough for the
    // client to find the encoding problem.
    if let Some((index, bytes)) = row.fields().enumerate().find_map(|(i, f)| match f {
        Field::Binary(bytes) => Some((i, bytes)),
        Field::Text(_) => None,
    }) {
        let message = format!(
            "the line is not valid UTF-8 text (save the file as UTF-8 CSV): {}",
            show(&String::from_utf8_lossy(bytes))
        );
        errors.push(match columns.column_of_field(index) {
            Some(column) => CsvError::cell(line, column, message),
            None => CsvError::row(line, message),
        });
        return None;
    }
    let text = |index: usize| match row.get(index) {
        Some(Field::Text(s)) => s,
        _ => "",
    };
    let mut ok = true;

    if !columns.urls_take_extra_fields {
        if let Some(extra) = row
            .fields()
            .skip(columns.header_width)
            .map(|f| match f {
                Field::Text(s) => s.trim(),
                Field::Binary(_) => "",
            })
            .find(|s| !s.is_empty())
        {
            ok = false;
            errors.push(CsvError::row(
                line,
                format!(
                    "too many fields: the header has {} columns but this line has {} \
                     (first extra value: {}); put several URLs in one cell in double quotes",
                    columns.header_width,
                    row.len(),
                    show(extra)
                ),
            ));
        }
    }

    let serial = match parse_serial(text(columns.serial)) {
        Ok(serial) => match seen_serials.get(&serial) {
            Some(&first_line) => {
                ok = false;
                errors.push(CsvError::cell(
                    line,
                    Column::Serial,
                    format!(
                        "duplicate serial number {serial}: it is already used on line {first_line}"
                    ),
                ));
                None
            }
            None => {
                seen_serials.insert(serial, line);
                Some(SerialNumber(serial))
            }
        },
        Err(message) => {
            ok = false;
            errors.push(CsvError::cell(line, Column::Serial, message));
            None
        }
    };

    let name = match check_name(text(columns.name)) {
        Ok(name) => Some(ProductName(name.to_owned())),
        Err(message) => {
            ok = false;
            errors.push(CsvError::cell(line, Column::Name, message));
            None
        }
    };

    let url_cells = if columns.urls_take_extra_fields {
        usize::MAX
    } else {
        1
    };
    let tokens = || {
        row.fields()
            .skip(columns.urls)
            .take(url_cells)
            .filter_map(|f| match f {
                Field::Text(s) => Some(s),
                Field::Binary(_) => None,
            })
            .flat_map(|s| s.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|t| !t.is_empty())
    };
    let count = tokens().count();
    if count == 0 {
        ok = false;
        errors.push(CsvError::cell(
            line,
            Column::Urls,
            "no image URL: at least one http or https URL is required".to_owned(),
        ));
    } else if count > limits.max_urls_per_product {
        ok = false;
        errors.push(CsvError::cell(
            line,
            Column::Urls,
            format!(
                "too many image URLs: {count}; a product may have at most {}",
                limits.max_urls_per_product
            ),
        ));
    }
    let mut urls = Vec::new();
    for token in tokens() {
        if errors.is_full() {
            return None;
        }
        match check_url(token, limits.max_url_len) {
            // No point in copying URLs of a row that is rejected anyway (there may be many).
            Ok(()) if ok => urls.push(ImageUrl(token.to_owned())),
            Ok(()) => {}
            Err(message) => {
                ok = false;
                urls = Vec::new();
                errors.push(CsvError::cell(line, Column::Urls, message));
            }
        }
    }

    match (ok, serial, name) {
        (true, Some(serial_number), Some(product_name)) => Some(ParsedProduct {
            line,
            serial_number,
            product_name,
            input_urls: urls,
        }),
        _ => None,
    }
}

/// A positive integer that fits an `i64`, surrounded by optional white space and followed by an
/// optional dot (spreadsheets often number rows `1.`, `2.`, ...).
fn parse_serial(raw: &str) -> Result<i64, String> {
    let value = raw.trim();
    if value.is_empty() {
        return Err("the serial number is missing".to_owned());
    }
    let digits = value.strip_suffix('.').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "the serial number must be a positive whole number, not {}",
            show(value)
        ));
    }
    match digits.parse::<i64>() {
        Ok(0) => Err(format!(
            "the serial number must be positive (1 or more), not {}",
            show(value)
        )),
        Ok(serial) => Ok(serial),
        // Only digits, so the one possible failure is overflow.
        Err(_) => Err(format!(
            "the serial number is too large (at most {}): {}",
            i64::MAX,
            show(value)
        )),
    }
}

/// A trimmed, non-blank name.
///
/// Control characters other than line breaks and tabs are rejected: they are never intended,
/// they are a sign of a binary or mis-encoded file, and NUL cannot be stored in a PostgreSQL
/// text column at all.
fn check_name(raw: &str) -> Result<&str, String> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("the product name is empty".to_owned());
    }
    if name.chars().any(|c| c.is_control() && !c.is_whitespace()) {
        return Err(format!(
            "the product name contains a control character: {}",
            show(name)
        ));
    }
    Ok(name)
}

/// Checks one URL (already split out of its cell, so free of white space).
fn check_url(token: &str, max_len: usize) -> Result<(), String> {
    // Checked first, so that an enormous token costs no parsing.
    if token.len() > max_len {
        return Err(format!(
            "the URL is too long: {} bytes, at most {max_len} are allowed: {}",
            token.len(),
            show(token)
        ));
    }
    if token.chars().any(char::is_control) {
        return Err(format!(
            "the URL contains a control character: {}",
            show(token)
        ));
    }
    if is_plain_http_url(token) {
        return Ok(());
    }
    check_url_fully(token)
}

/// The checks of [`check_url`] that need the URL parsed.
fn check_url_fully(token: &str) -> Result<(), String> {
    let url = match Url::parse(token) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Err(format!(
                "not an absolute URL (it must start with http:// or https://): {}",
                show(token)
            ))
        }
        Err(e) => return Err(format!("not a valid URL ({e}): {}", show(token))),
    };
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the URL scheme \"{}\" is not allowed, only http and https are: {}",
            url.scheme(),
            show(token)
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("the URL has no host: {}", show(token)));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Quote the URL without its credentials: the message may be shown and logged.
        let mut redacted = url;
        // Cannot fail: the URL has a host (checked above).
        let _ = redacted.set_username("");
        let _ = redacted.set_password(None);
        return Err(format!(
            "credentials in URLs are not allowed (remove the user:password@ part): {}",
            show(redacted.as_str())
        ));
    }
    Ok(())
}

/// True for an http(s) URL of the plainest form, which [`check_url_fully`] would accept: a
/// lower-case scheme, a host of lower-case letters, digits and hyphens (or a dotted-quad IPv4
/// address), an optional port, then nothing or a path, query or fragment, which never fail to
/// parse. Parsing costs several thousand instructions a URL, half of them in host processing
/// (IDNA), and was most of the time of validating a large file; nearly every URL of a real file
/// takes this path. Anything unusual (upper case, punycode, credentials, other IPv4 forms, ...)
/// gets the full parse, so this decides nothing the parser would decide differently.
fn is_plain_http_url(token: &str) -> bool {
    let Some(rest) = token
        .strip_prefix("http://")
        .or_else(|| token.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if let Some(port) = port {
        let digits =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        if !digits || !port.parse::<u32>().is_ok_and(|p| p <= 65535) {
            return false;
        }
    }
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.'))
        || host
            .split('.')
            .any(|l| l.is_empty() || l.starts_with("xn--"))
    {
        return false;
    }
    // A host whose last label is a number is an IPv4 address to the parser (decimal, octal or
    // hex parts, fewer than four, ...); only the plain dotted quad is taken here.
    let last = host.rsplit('.').next().unwrap_or_default();
    if !(last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x")) {
        return true;
    }
    host.split('.').count() == 4
        && host.split('.').all(|part| {
            part.len() <= 3
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'))
                && part.parse::<u8>().is_ok()
        })
}

/// The columns the service reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Serial,
    Name,
    Urls,
}

impl Column {
    const ALL: [Column; 3] = [Column::Serial, Column::Name, Column::Urls];

    fn canonical_name(self) -> &'static str {
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
    let mut normalized = String::new();
    for c in cell
        .chars()
        .filter(|&c| !(c.is_whitespace() || matches!(c, '.' | '_' | '-' | '\u{FEFF}')))
    {
        normalized.extend(c.to_lowercase());
        if normalized.len() > LONGEST_KNOWN {
            return HeaderCell::Other;
        }
    }
    if normalized.is_empty() {
        HeaderCell::Unnamed
    } else {
        Column::from_normalized(&normalized).map_or(HeaderCell::Other, HeaderCell::Known)
    }
}

/// Where the columns are, from the header row.
#[derive(Debug)]
struct Columns {
    serial: usize,
    name: usize,
    urls: usize,
    /// The number of cells in the header row.
    header_width: usize,
    /// True when no named column follows the URL column, so that any fields after it (beyond
    /// the header, or under unnamed header cells such as a trailing comma's) are more URLs from
    /// an unquoted cell. Otherwise such fields cannot be attributed and are an error.
    urls_take_extra_fields: bool,
}

impl Columns {
    /// `None` if the header is unusable (a required column missing or given twice); the
    /// reasons are in `errors`. A header that is not valid UTF-8 is reported but still used if
    /// its required columns can be found, so that the rows get checked too.
    fn from_header(header: Row<'_>, line: u64, errors: &mut Errors) -> Option<Self> {
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
                        show(&join_for_display(header))
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
    fn column_of_field(&self, index: usize) -> Option<Column> {
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

/// The header cells joined with commas, cut off once long enough to be shown (the header may be
/// one enormous line).
fn join_for_display(header: Row<'_>) -> String {
    let mut joined = String::new();
    for (i, field) in header.fields().enumerate() {
        if joined.chars().count() > MAX_SHOWN_CHARS {
            break;
        }
        if i > 0 {
            joined.push(',');
        }
        let cell = field.lossy();
        joined.extend(cell.chars().take(MAX_SHOWN_CHARS + 1));
    }
    joined
}

/// The fields of one record, decoded on access rather than collected: a record may have
/// millions of fields, and a decoded copy of them all would multiply memory use.
#[derive(Debug, Clone, Copy)]
struct Row<'a>(&'a ByteRecord);

impl<'a> Row<'a> {
    fn len(self) -> usize {
        self.0.len()
    }

    fn get(self, index: usize) -> Option<Field<'a>> {
        self.0.get(index).map(Field::new)
    }

    fn fields(self) -> impl Iterator<Item = Field<'a>> {
        self.0.iter().map(Field::new)
    }
}

/// A field of a record: text, or bytes that are not UTF-8.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
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

    fn lossy(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Field::Text(s) => std::borrow::Cow::Borrowed(s),
            Field::Binary(bytes) => String::from_utf8_lossy(bytes),
        }
    }
}

/// Most fields one record may have. Well above any spreadsheet's column count (Excel stops at
/// 16,384) plus an unquoted URL list, so no real file comes near it; see [`FieldGuard`].
const MAX_FIELDS_PER_RECORD: usize = 20_000;

/// The records of the file, with the line each starts on.
struct Records<'a> {
    reader: csv::Reader<FieldGuard<'a>>,
    record: ByteRecord,
    lines: LineCounter<'a>,
}

impl<'a> Records<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let reader = ReaderBuilder::new()
            // Raw records: the header is found and interpreted here, not by the csv crate.
            .has_headers(false)
            // Rows may be shorter (missing cells) or longer (unquoted URL lists) than the header.
            .flexible(true)
            .from_reader(FieldGuard {
                input: bytes,
                delimiters: 0,
                tripped: false,
            });
        Self {
            reader,
            record: ByteRecord::new(),
            lines: LineCounter::new(bytes),
        }
    }

    /// Reads the next record that is not blank (only commas and white space) and returns the
    /// line it starts on; `None` at the end of the file, or on a read error (reported).
    fn next_non_blank(&mut self, errors: &mut Errors) -> Option<u64> {
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
            if !self.row().fields().all(|f| f.is_blank()) {
                return Some(line);
            }
        }
    }

    /// The record last read.
    fn row(&self) -> Row<'_> {
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
    /// Commas handed to the reader since the current record began.
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
        self.delimiters += buf[..n].iter().filter(|&&b| b == b',').count();
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

/// Collects errors, dropping any beyond [`MAX_REPORTED_ERRORS`].
#[derive(Debug, Default)]
struct Errors(Vec<CsvError>);

impl Errors {
    fn push(&mut self, error: CsvError) {
        if !self.is_full() {
            self.0.push(error);
        }
    }

    fn is_full(&self) -> bool {
        self.0.len() >= MAX_REPORTED_ERRORS
    }
}

/// A value quoted for an error message: cut to [`MAX_SHOWN_CHARS`] characters, with control and
/// bidirectional-override characters escaped so that the message displays what was really there.
fn show(value: &str) -> String {
    let mut shown = String::from("\"");
    let mut chars = value.chars();
    for c in chars.by_ref().take(MAX_SHOWN_CHARS) {
        if c.is_control()
            || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
        {
            shown.extend(c.escape_debug());
        } else {
            shown.push(c);
        }
    }
    if chars.next().is_some() {
        shown.push_str("...");
    }
    shown.push('"');
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "S. No.,Product Name,Input Image Urls\n";

    fn parse(input: &str) -> Result<Vec<ParsedProduct>, Vec<CsvError>> {
        parse_csv(input.as_bytes(), &CsvLimits::default())
    }

    fn ok(input: &str) -> Vec<ParsedProduct> {
        parse(input).unwrap_or_else(|e| panic!("expected success, got {e:#?}"))
    }

    fn errs(input: &str) -> Vec<CsvError> {
        match parse(input) {
            Ok(products) => panic!("expected errors, got {products:#?}"),
            Err(errors) => errors,
        }
    }

    fn errs_bytes(input: &[u8], limits: &CsvLimits) -> Vec<CsvError> {
        match parse_csv(input, limits) {
            Ok(products) => panic!("expected errors, got {products:#?}"),
            Err(errors) => errors,
        }
    }

    fn urls(product: &ParsedProduct) -> Vec<&str> {
        product.input_urls.iter().map(ImageUrl::as_str).collect()
    }

    /// (line, column) of each error, for compact assertions.
    fn places(errors: &[CsvError]) -> Vec<(u64, Option<&str>)> {
        errors
            .iter()
            .map(|e| (e.line, e.column.as_deref()))
            .collect()
    }

    fn single(errors: Vec<CsvError>) -> CsvError {
        assert_eq!(errors.len(), 1, "expected exactly one error: {errors:#?}");
        errors.into_iter().next().unwrap()
    }

    const S: Option<&str> = Some("S. No.");
    const N: Option<&str> = Some("Product Name");
    const U: Option<&str> = Some("Input Image Urls");

    // ---- Accepted input ----

    #[test]
    fn parses_a_simple_file_in_order() {
        let products = ok(&format!(
            "{HEADER}1,SKU1,https://a.example/1.jpg\n2,SKU2,http://b.example/2.png\n"
        ));
        assert_eq!(
            products,
            vec![
                ParsedProduct {
                    line: 2,
                    serial_number: SerialNumber(1),
                    product_name: ProductName("SKU1".into()),
                    input_urls: vec![ImageUrl("https://a.example/1.jpg".into())],
                },
                ParsedProduct {
                    line: 3,
                    serial_number: SerialNumber(2),
                    product_name: ProductName("SKU2".into()),
                    input_urls: vec![ImageUrl("http://b.example/2.png".into())],
                },
            ]
        );
    }

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
                SerialNumber(7),
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
            assert_eq!(products[0].product_name.0, "Widget", "header {name:?}");
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
        assert_eq!(products[0].serial_number, SerialNumber(5));
        assert_eq!(products[0].product_name.0, "Widget");
        assert_eq!(urls(&products[0]), ["https://a.example/1.jpg"]);
    }

    #[test]
    fn quoted_url_cell_with_commas() {
        let products = ok(&format!(
            "{HEADER}1,SKU1,\"https://a.example/1.jpg,https://a.example/2.jpg, https://a.example/3.jpg ,\"\n"
        ));
        assert_eq!(
            urls(&products[0]),
            [
                "https://a.example/1.jpg",
                "https://a.example/2.jpg",
                "https://a.example/3.jpg"
            ]
        );
    }

    #[test]
    fn white_space_separated_urls() {
        let products = ok(&format!(
            "{HEADER}1,SKU1,https://a.example/1.jpg  https://a.example/2.jpg\thttps://a.example/3.jpg\n\
             2,SKU2,\"https://a.example/4.jpg\nhttps://a.example/5.jpg\r\nhttps://a.example/6.jpg\"\n"
        ));
        assert_eq!(
            urls(&products[0]),
            [
                "https://a.example/1.jpg",
                "https://a.example/2.jpg",
                "https://a.example/3.jpg"
            ]
        );
        assert_eq!(
            urls(&products[1]),
            [
                "https://a.example/4.jpg",
                "https://a.example/5.jpg",
                "https://a.example/6.jpg"
            ]
        );
    }

    #[test]
    fn unquoted_urls_spill_into_extra_fields() {
        let products = ok(&format!(
            "{HEADER}1,SKU1,https://a/1.jpg,https://a/2.jpg,https://a/3.jpg\n2,SKU2,https://a/4.jpg\n"
        ));
        assert_eq!(
            urls(&products[0]),
            ["https://a/1.jpg", "https://a/2.jpg", "https://a/3.jpg"]
        );
        assert_eq!(urls(&products[1]), ["https://a/4.jpg"]);
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
    fn extra_fields_rejected_when_urls_column_is_not_last() {
        let errors = errs(
            "Input Image Urls,S. No.,Product Name\n\
             https://a/1.jpg,1,SKU1\n\
             https://a/2.jpg,2,SKU2,https://a/3.jpg\n",
        );
        let error = single(errors);
        assert_eq!((error.line, error.column.as_deref()), (3, None));
        assert!(
            error.message.contains("too many fields"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("https://a/3.jpg"),
            "{}",
            error.message
        );

        // Blank extra fields (trailing commas) are harmless.
        let products = ok("Input Image Urls,S. No.,Product Name\nhttps://a/1.jpg,1,SKU1,, \n");
        assert_eq!(products.len(), 1);
    }

    #[test]
    fn serial_with_trailing_dot_and_white_space() {
        let products = ok(&format!(
            "{HEADER}1.,SKU1,https://a/1.jpg\n  2  ,SKU2,https://a/2.jpg\n\" 3. \",SKU3,https://a/3.jpg\n\
             007,SKU7,https://a/7.jpg\n9223372036854775807,Max,https://a/m.jpg\n"
        ));
        let serials: Vec<i64> = products.iter().map(|p| p.serial_number.0).collect();
        assert_eq!(serials, [1, 2, 3, 7, i64::MAX]);
    }

    #[test]
    fn names_and_urls_are_trimmed_and_urls_kept_as_written() {
        let products = ok(&format!(
            "{HEADER}1,\u{a0} Blue Widget \t, HTTPS://Example.COM/a/../Img.JPG?x=1&y=%20#frag \n"
        ));
        assert_eq!(products[0].product_name.0, "Blue Widget");
        assert_eq!(
            urls(&products[0]),
            ["HTTPS://Example.COM/a/../Img.JPG?x=1&y=%20#frag"]
        );
    }

    #[test]
    fn byte_order_mark_is_stripped() {
        let products = ok(&format!("\u{feff}{HEADER}1,SKU1,https://a/1.jpg\n"));
        assert_eq!(products[0].serial_number, SerialNumber(1));
        assert_eq!(products[0].line, 2);

        // Left in place, the mark would make a quoted first cell unquoted (BOM and quotes
        // included), and the serial column would not be found.
        let products = ok(
            "\u{feff}\"S. No.\",\"Product Name\",\"Input Image Urls\"\r\n1,SKU1,https://a/1.jpg\r\n",
        );
        assert_eq!(products[0].serial_number, SerialNumber(1));
    }

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
    fn many_products() {
        let mut input = String::from(HEADER);
        for i in 1..=10_000 {
            input.push_str(&format!("{i},SKU{i},https://a.example/{i}.jpg\n"));
        }
        let products = ok(&input);
        assert_eq!(products.len(), 10_000);
        assert_eq!(products[9_999].line, 10_001);
        assert_eq!(products[9_999].serial_number, SerialNumber(10_000));
    }

    // ---- Rejections ----

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

        // A file without a header: every column is missing.
        let errors = errs("1,SKU1,https://a/1.jpg\n");
        assert_eq!(places(&errors), [(1, S), (1, N), (1, U)]);

        // Semicolon-separated: one big cell.
        let errors = errs("S. No.;Product Name;Input Image Urls\n1;SKU1;https://a/1.jpg\n");
        assert_eq!(places(&errors), [(1, S), (1, N), (1, U)]);

        // The header's actual line when blank lines precede it.
        let errors = errs("\n\nS. No.,Input Image Urls\n1,https://a/1.jpg\n");
        assert_eq!(places(&errors), [(3, N)]);
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

    #[test]
    fn bad_serial_numbers() {
        let input = format!(
            "{HEADER}0,A,https://a/1.jpg\n-1,B,https://a/2.jpg\nabc,C,https://a/3.jpg\n\
             1.5,D,https://a/4.jpg\n,E,https://a/5.jpg\n99999999999999999999,F,https://a/6.jpg\n\
             +1,G,https://a/7.jpg\n1..,H,https://a/8.jpg\n.,I,https://a/9.jpg\n"
        );
        let errors = errs(&input);
        assert_eq!(
            places(&errors),
            (2..=10).map(|line| (line, S)).collect::<Vec<_>>()
        );
        assert!(errors[0].message.contains("positive") && errors[0].message.contains("\"0\""));
        assert!(
            errors[1].message.contains("\"-1\""),
            "{}",
            errors[1].message
        );
        assert!(
            errors[2].message.contains("\"abc\""),
            "{}",
            errors[2].message
        );
        assert!(
            errors[3].message.contains("\"1.5\""),
            "{}",
            errors[3].message
        );
        assert!(
            errors[4].message.contains("missing"),
            "{}",
            errors[4].message
        );
        assert!(
            errors[5].message.contains("too large"),
            "{}",
            errors[5].message
        );
    }

    #[test]
    fn duplicate_serial_names_the_first_line() {
        let errors = errs(&format!(
            "{HEADER}1,A,https://a/1.jpg\n2,B,https://a/2.jpg\n1.,C,https://a/3.jpg\n 2 ,D,https://a/4.jpg\n"
        ));
        assert_eq!(places(&errors), [(4, S), (5, S)]);
        assert!(
            errors[0].message.contains("line 2"),
            "{}",
            errors[0].message
        );
        assert!(errors[0].message.contains('1'), "{}", errors[0].message);
        assert!(
            errors[1].message.contains("line 3"),
            "{}",
            errors[1].message
        );
    }

    #[test]
    fn blank_or_control_character_names() {
        let errors = errs(&format!(
            "{HEADER}1,,https://a/1.jpg\n2,   ,https://a/2.jpg\n3,\"a\0b\",https://a/3.jpg\n4,\"multi\nline\",https://a/4.jpg\n"
        ));
        // The two-line name on line 5 is accepted; NUL is not.
        assert_eq!(places(&errors), [(2, N), (3, N), (4, N)]);
        assert!(errors[0].message.contains("empty"), "{}", errors[0].message);
        assert!(errors[2].message.contains("a\\0b"), "{}", errors[2].message);
    }

    #[test]
    fn missing_urls() {
        let errors = errs(&format!("{HEADER}1,A,\n2,B, , ,\n3,C\n4,D,\"\"\n"));
        assert_eq!(places(&errors), [(2, U), (3, U), (4, U), (5, U)]);
        assert!(
            errors[0].message.contains("at least one"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn short_row_reports_each_missing_cell() {
        let errors = errs(&format!("{HEADER}garbage\n"));
        assert_eq!(places(&errors), [(2, S), (2, N), (2, U)]);
    }

    #[test]
    fn relative_and_non_http_urls_are_rejected() {
        let cases = [
            ("/images/1.jpg", "absolute"),
            ("images/1.jpg", "absolute"),
            ("//a.example/1.jpg", "absolute"),
            ("ftp://a.example/1.jpg", "\"ftp\""),
            ("javascript:alert(1)", "\"javascript\""),
            ("file:///etc/passwd", "\"file\""),
            ("data:image/png;base64;iVBORw0KGgo=", "\"data\""),
            ("mailto:someone@a.example", "\"mailto\""),
            ("HTTPX://a.example/1.jpg", "\"httpx\""),
            ("http://", "not a valid URL"),
            ("https://exa mple.com", "absolute"),
            ("http://[::1/", "not a valid URL"),
        ];
        for (url, expected) in cases {
            let input = format!("{HEADER}1,A,https://ok.example/1.jpg\n2,B,\"{url}\"\n");
            let errors = errs(&input);
            assert!(!errors.is_empty(), "{url}");
            assert_eq!(errors[0].line, 3, "{url}");
            assert_eq!(errors[0].column.as_deref(), U, "{url}");
            assert!(
                errors[0].message.contains(expected),
                "{url}: {}",
                errors[0].message
            );
        }
    }

    #[test]
    fn urls_with_credentials_are_rejected_without_echoing_them() {
        let error = single(errs(&format!(
            "{HEADER}1,A,https://bob:hunter2@a.example/1.jpg\n"
        )));
        assert_eq!((error.line, error.column.as_deref()), (2, U));
        assert!(error
            .message
            .contains("credentials in URLs are not allowed"));
        assert!(!error.message.contains("hunter2"), "{}", error.message);
        assert!(
            error.message.contains("a.example/1.jpg"),
            "{}",
            error.message
        );

        let error = single(errs(&format!("{HEADER}1,A,http://bob@a.example/1.jpg\n")));
        assert!(error.message.contains("credentials"), "{}", error.message);
    }

    #[test]
    fn plain_urls_skip_the_full_parse_only_when_it_would_accept_them() {
        for url in [
            "https://cdn.example.com/a/b.jpg?w=1&h=2#x",
            "http://127.0.0.1:45678/x.jpg?u=7",
            "http://0.0.0.0",
            "http://a-b.c9:65535",
            "https://images.example.com/%7Euser/[1]|{2}^`\\\"<'>é.jpg",
            "http://localhost?q",
        ] {
            assert!(is_plain_http_url(url), "{url}");
            assert_eq!(check_url_fully(url), Ok(()), "{url}");
        }
        // Left to the full parse, whatever it decides.
        for url in [
            "HTTP://a.example/1.jpg",
            "https://A.example/",
            "https://xn--nxasmq6b.example/",
            "https://bob:pw@a.example/",
            "https://a.example:65536/",
            "https://a.example:/",
            "https://a..example/",
            "https://a.example./",
            "http://1.2.3/",
            "http://1.2.3.4.5/",
            "http://01.2.3.4/",
            "http://256.1.1.1/",
            "http://1.2.3.0x1f/",
            "http://a.0x/",
            "http://a\\b/",
            "http:///a",
            "https://",
            "ftp://a.example/",
        ] {
            assert!(!is_plain_http_url(url), "{url}");
        }
        // Every URL this path accepts, the parser accepts too, over a space of near misses.
        let pieces = [
            "", "a", "0", "1", "9", "255", "256", "00", "0x", "0x1", "-", "xn--a", ".", ":", ":80",
            ":99999", "@", "/", "?", "#", "\\", "%", "[", "]",
        ];
        for scheme in ["http://", "https://"] {
            for a in pieces {
                for b in pieces {
                    for c in pieces {
                        for d in ["", ".", "/p", ":1/p"] {
                            let url = format!("{scheme}{a}{b}.{c}{d}");
                            if is_plain_http_url(&url) {
                                assert_eq!(check_url_fully(&url), Ok(()), "{url}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn url_control_characters_are_rejected() {
        let error = single(errs(&format!(
            "{HEADER}1,A,\"https://a.example/\x01.jpg\"\n"
        )));
        assert_eq!((error.line, error.column.as_deref()), (2, U));
        assert!(
            error.message.contains("control character"),
            "{}",
            error.message
        );
    }

    #[test]
    fn url_length_limit() {
        let limits = CsvLimits {
            max_url_len: 40,
            ..CsvLimits::default()
        };
        let prefix = "https://a.example/";
        let exact = format!("{prefix}{}", "x".repeat(40 - prefix.len()));
        let over = format!("{exact}y");
        let input = format!("{HEADER}1,A,{exact}\n");
        assert!(parse_csv(input.as_bytes(), &limits).is_ok());

        let input = format!("{HEADER}1,A,{exact}\n2,B,{over}\n");
        let error = single(errs_bytes(input.as_bytes(), &limits));
        assert_eq!((error.line, error.column.as_deref()), (3, U));
        assert!(error.message.contains("too long"), "{}", error.message);
        assert!(error.message.contains("41"), "{}", error.message);
    }

    #[test]
    fn url_count_limit() {
        let limits = CsvLimits {
            max_urls_per_product: 3,
            ..CsvLimits::default()
        };
        let input = format!("{HEADER}1,A,https://a/1 https://a/2 https://a/3\n");
        assert!(parse_csv(input.as_bytes(), &limits).is_ok());

        let input = format!(
            "{HEADER}1,A,https://a/1 https://a/2 https://a/3\n2,B,https://a/1,https://a/2,https://a/3,https://a/4\n"
        );
        let error = single(errs_bytes(input.as_bytes(), &limits));
        assert_eq!((error.line, error.column.as_deref()), (3, U));
        assert!(
            error.message.contains('4') && error.message.contains('3'),
            "{}",
            error.message
        );
    }

    #[test]
    fn too_many_rows_stops_parsing() {
        let limits = CsvLimits {
            max_rows: 3,
            ..CsvLimits::default()
        };
        let input = format!(
            "{HEADER}1,A,https://a/1\n2,B,https://a/2\n\n3,C,https://a/3\n4,D,https://a/4\n5,,\n"
        );
        let error = single(errs_bytes(input.as_bytes(), &limits));
        assert_eq!((error.line, error.column.as_deref()), (6, None));
        assert!(error.message.contains("at most 3"), "{}", error.message);

        // Exactly at the limit is fine.
        let input = format!("{HEADER}1,A,https://a/1\n2,B,https://a/2\n3,C,https://a/3\n\n");
        assert_eq!(parse_csv(input.as_bytes(), &limits).unwrap().len(), 3);

        // Earlier errors are kept.
        let input =
            format!("{HEADER}0,A,https://a/1\n2,B,https://a/2\n3,C,https://a/3\n4,D,https://a/4\n");
        let errors = errs_bytes(input.as_bytes(), &limits);
        assert_eq!(places(&errors), [(2, S), (5, None)]);
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let mut input = HEADER.as_bytes().to_vec();
        input.extend_from_slice(
            b"1,A,https://a/1\n2,Caf\xe9,https://a/2\n3,C,https://a/3\n4,D,https://a/4\xff\n",
        );
        let errors = errs_bytes(&input, &CsvLimits::default());
        assert_eq!(places(&errors), [(3, N), (5, U)]);
        assert!(errors[0].message.contains("UTF-8"), "{}", errors[0].message);
        assert!(
            errors[0].message.contains("Caf\u{fffd}"),
            "{}",
            errors[0].message
        );

        // In an ignored column: still an error, on no particular column.
        let input = b"S. No.,Product Name,Input Image Urls,Notes\n1,A,https://a/1,\xc3\n";
        let errors = errs_bytes(input, &CsvLimits::default());
        assert_eq!(places(&errors), [(2, None)]);

        // In the header: reported, and the rows are still checked.
        let input = b"S. No.,Product Name,Input Image Urls,Not\xe9s\n0,A,https://a/1,\n";
        let errors = errs_bytes(input, &CsvLimits::default());
        assert_eq!(places(&errors), [(1, None), (2, S)]);
    }

    #[test]
    fn empty_file() {
        for input in ["", "\u{feff}", "\n\n\r\n", " \n , ,\n\t\n"] {
            let error = single(errs(input));
            assert_eq!(
                error,
                CsvError {
                    line: 1,
                    column: None,
                    message: "the file is empty".into()
                },
                "{input:?}"
            );
        }
    }

    #[test]
    fn header_only() {
        for input in [
            "S. No.,Product Name,Input Image Urls",
            "S. No.,Product Name,Input Image Urls\n",
            "S. No.,Product Name,Input Image Urls\r\n\r\n,,\r\n",
        ] {
            let error = single(errs(input));
            assert_eq!(
                error,
                CsvError {
                    line: 2,
                    column: None,
                    message: "the CSV has no products".into()
                },
                "{input:?}"
            );
        }
    }

    #[test]
    fn all_errors_are_reported_in_order() {
        let errors = errs(&format!(
            "{HEADER}x,,ftp://a/1\n2,B,https://a/2\n2,C,/rel https://a/3 javascript:x\n"
        ));
        assert_eq!(
            places(&errors),
            [(2, S), (2, N), (2, U), (4, S), (4, U), (4, U)]
        );
    }

    #[test]
    fn errors_are_capped() {
        let mut input = String::from(HEADER);
        for i in 1..=150 {
            input.push_str(&format!("{i},,https://a/{i}\n"));
        }
        let errors = errs(&input);
        assert_eq!(errors.len(), MAX_REPORTED_ERRORS);
        assert_eq!(errors[0].line, 2);
        assert_eq!(errors[99].line, 101);

        // Many errors within one row stop at the cap too.
        let mut input = String::from(HEADER);
        input.push_str("1,A,");
        input.push_str(&"/rel ".repeat(500));
        input.push('\n');
        let errors = errs(&input);
        assert_eq!(errors.len(), MAX_REPORTED_ERRORS);
        assert!(errors[0].message.contains("too many image URLs: 500"));
    }

    #[test]
    fn long_values_are_truncated_in_messages() {
        let name = "é".repeat(1000);
        let input = format!("{HEADER}{name},A,https://a/1\n");
        let error = single(errs(&input));
        assert!(error.message.chars().count() < 250, "{}", error.message);
        assert!(error.message.contains("...\""), "{}", error.message);
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

        // A header that is one enormous line without a newline.
        let input = "S".repeat(big);
        let errors = errs(&input);
        assert_eq!(places(&errors), [(1, S), (1, N), (1, U)]);
        assert!(errors.iter().all(|e| e.message.len() < 400));

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
    fn binary_garbage_never_panics() {
        // A small deterministic generator (xorshift), so failures are reproducible.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200 {
            let len = (next() % 4096) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Half the time behind a valid header, so the row checks get exercised too.
            if round % 2 == 0 {
                let mut with_header = HEADER.as_bytes().to_vec();
                with_header.append(&mut bytes);
                bytes = with_header;
            }
            match parse_csv(&bytes, &CsvLimits::default()) {
                Ok(products) => assert!(!products.is_empty()),
                Err(errors) => {
                    assert!(!errors.is_empty() && errors.len() <= MAX_REPORTED_ERRORS);
                }
            }
        }
        // Structured garbage: quotes, delimiters and line breaks only.
        for round in 0..200 {
            let len = (next() % 512) as usize;
            let mut bytes = HEADER.as_bytes().to_vec();
            bytes.extend((0..len).map(|_| b"\"\r\n,1a. \xff"[(next() % 9) as usize]));
            let _ = parse_csv(&bytes, &CsvLimits::default());
            let _ = round;
        }
        // Degenerate limits.
        let zero = CsvLimits {
            max_rows: 0,
            max_urls_per_product: 0,
            max_url_len: 0,
        };
        let error = single(errs_bytes(
            format!("{HEADER}1,A,https://a/1\n").as_bytes(),
            &zero,
        ));
        assert!(error.message.contains("at most 0"));
    }

    #[test]
    fn unterminated_quote_does_not_hide_problems() {
        let errors = errs(&format!("{HEADER}1,A,\"https://a/1\n2,B,https://a/2\n"));
        // The quoted cell swallows the rest of the file; its pieces show up as bad URLs.
        assert_eq!(errors[0].line, 2);
        assert_eq!(errors[0].column.as_deref(), U);
    }

    #[test]
    fn error_serializes_to_the_documented_json() {
        let error = CsvError {
            line: 3,
            column: Some("Input Image Urls".into()),
            message: "bad".into(),
        };
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"line":3,"column":"Input Image Urls","message":"bad"}"#
        );
        let error = CsvError {
            line: 1,
            column: None,
            message: "the file is empty".into(),
        };
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"line":1,"column":null,"message":"the file is empty"}"#
        );
        assert_eq!(error.to_string(), "line 1: the file is empty");
    }

    #[test]
    fn default_limits() {
        let limits = CsvLimits::default();
        assert_eq!(
            (
                limits.max_rows,
                limits.max_urls_per_product,
                limits.max_url_len
            ),
            (10_000, 20, 2048)
        );
    }
}
