//! The never-larger rule: an output never has more bytes than its input.
//!
//! When the recompressed JPEG is larger (a small or low-quality input, an already well
//! compressed WebP, a tiny palette PNG or GIF), a smaller version of the input itself is kept,
//! in this order:
//! 1. for a JPEG, its own coefficients re-encoded losslessly with optimal Huffman tables (the
//!    same pixels; usually 5-15% under the input);
//! 2. the input's bytes with its metadata removed (`metadata`), in its own format.
//!
//! Both keep what the picture needs to look the same: a colour profile other than sRGB (a
//! colour-managed viewer applies it) and the orientation. TIFF is never kept (browsers do not
//! show it): a TIFF whose JPEG is larger keeps the JPEG, and says so.

use super::color::ColorHandling;
use super::decode::Made;
use super::metadata;
use super::{Codec, Compressed, InputFormat, OutputFormat};

pub(super) fn never_larger(input: &[u8], format: InputFormat, made: Made) -> Compressed {
    let Made {
        out, orientation, ..
    } = made;
    if out.bytes.len() <= input.len() {
        return out;
    }
    let grown = out.bytes.len();
    let color = match &out.color {
        ColorHandling::Converted { from } => ColorHandling::Kept { from: from.clone() },
        other => other.clone(),
    };
    let kept = |bytes: Vec<u8>, format: OutputFormat, codec: Codec, what: &str| {
        let note = format!(
            "kept {what}: recompressing gave {grown} bytes, more than the input's {}",
            input.len()
        );
        Compressed {
            bytes,
            format,
            width: out.width,
            height: out.height,
            input_format: out.input_format,
            codec,
            note: Some(join(&note, color.note())),
            color: color.clone(),
        }
    };
    if format == InputFormat::Jpeg {
        if let Some(bytes) = lossless_jpeg(input, &color, orientation) {
            if bytes.len() <= input.len() {
                return kept(
                    bytes,
                    OutputFormat::Jpeg,
                    Codec::Lossless,
                    "a lossless re-encode of the input",
                );
            }
        }
    }
    if let (Some(served), Some(bytes)) = (
        OutputFormat::of_input(format),
        metadata::strip(format, input, orientation),
    ) {
        if bytes.len() <= input.len() {
            return kept(
                bytes,
                served,
                Codec::Original,
                "the input's own bytes, metadata removed",
            );
        }
    }
    let why = format!(
        "larger than the input ({grown} bytes against {}): {} inputs are not kept as they are",
        input.len(),
        format.as_str()
    );
    Compressed {
        note: Some(join(&why, out.note.clone())),
        ..out
    }
}

/// A JPEG's own coefficients with optimal Huffman tables, carrying its profile (when the
/// colours depend on it) and orientation.
fn lossless_jpeg(input: &[u8], color: &ColorHandling, orientation: u16) -> Option<Vec<u8>> {
    let info = crate::jpeg::info(input).ok()?;
    let reencoded = crate::jpeg::optimize_huffman(input).ok()?;
    let icc = match color {
        ColorHandling::Kept { .. } => info.icc_profile.as_deref(),
        _ => None,
    };
    Some(crate::jpeg::with_color_and_orientation(
        &reencoded,
        icc,
        orientation,
    ))
}

fn join(first: &str, second: Option<String>) -> String {
    match second {
        Some(s) => format!("{first}; {s}"),
        None => first.to_owned(),
    }
}
