//! One data row: its serial number, its name, and (through [`super::urls`]) its URLs.

use std::collections::HashMap;

use super::header::{Column, Columns};
use super::records::{Field, Row};
use super::{show, urls, CsvError, CsvLimits, Errors, ParsedProduct};
use crate::domain::{ProductName, SerialNumber};

/// Validates one non-blank data row; `None` if it has any problem (all reported to `errors`).
pub(super) fn check_row(
    line: u64,
    row: Row<'_>,
    columns: &Columns,
    limits: &CsvLimits,
    seen_serials: &mut HashMap<SerialNumber, u64>,
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

    let serial = match SerialNumber::parse(text(columns.serial)) {
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
                Some(serial)
            }
        },
        Err(error) => {
            ok = false;
            errors.push(CsvError::cell(line, Column::Serial, error.to_string()));
            None
        }
    };

    let name = match ProductName::parse(text(columns.name)) {
        Ok(name) => Some(name),
        Err(error) => {
            ok = false;
            errors.push(CsvError::cell(line, Column::Name, error.to_string()));
            None
        }
    };

    let urls = urls::check_cells(line, row, columns, limits, ok, errors);

    match (ok, serial, name, urls) {
        (true, Some(serial_number), Some(product_name), Some(input_urls)) => Some(ParsedProduct {
            line,
            serial_number,
            product_name,
            input_urls,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_input::test_support::*;

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
        let serials: Vec<i64> = products.iter().map(|p| p.serial_number.get()).collect();
        assert_eq!(serials, [1, 2, 3, 7, i64::MAX]);
    }

    #[test]
    fn names_and_urls_are_trimmed_and_urls_kept_as_written() {
        let products = ok(&format!(
            "{HEADER}1,\u{a0} Blue Widget \t, HTTPS://Example.COM/a/../Img.JPG?x=1&y=%20#frag \n"
        ));
        assert_eq!(products[0].product_name.as_str(), "Blue Widget");
        assert_eq!(
            urls(&products[0]),
            ["HTTPS://Example.COM/a/../Img.JPG?x=1&y=%20#frag"]
        );
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
    fn short_row_reports_each_missing_cell() {
        let errors = errs(&format!("{HEADER}garbage\n"));
        assert_eq!(places(&errors), [(2, S), (2, N), (2, U)]);
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
}
