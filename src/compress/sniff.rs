//! The format from the magic number alone, and for anything else a guess at what it is.

use super::{CompressError, InputFormat};

/// How many leading bytes the "what does it look like" heuristics examine. Enough to get past a
/// BOM, a doctype and a comment or two; small enough to be free.
const SNIFF_WINDOW: usize = 1024;

/// Identifies the image format from its magic number.
///
/// Only the signature is checked, not that the rest of the file is valid: a recognised format
/// means "worth handing to that decoder", and the decoder reports corruption as
/// [`CompressError::Decode`]. Everything else gets a best-effort description so that the user can
/// tell an HTML error page or an SVG logo from a genuinely broken file.
pub fn sniff(bytes: &[u8]) -> Result<InputFormat, CompressError> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(InputFormat::Jpeg);
    }
    if bytes.starts_with(crate::png::SIGNATURE) {
        return Ok(InputFormat::Png);
    }
    if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        return Ok(InputFormat::Gif);
    }
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Ok(InputFormat::WebP);
    }
    // Classic TIFF (42) and BigTIFF (43), in both byte orders.
    if bytes.starts_with(b"II*\0")
        || bytes.starts_with(b"MM\0*")
        || bytes.starts_with(b"II+\0")
        || bytes.starts_with(b"MM\0+")
    {
        return Ok(InputFormat::Tiff);
    }
    if is_bmp(bytes) {
        return Ok(InputFormat::Bmp);
    }
    Err(CompressError::NotAnImage(describe_non_image(bytes)))
}

/// "BM" alone is two printable ASCII letters that plenty of text starts with, so additionally
/// require a known DIB header size where the BMP file header says it will be.
fn is_bmp(bytes: &[u8]) -> bool {
    if bytes.len() < 18 || !bytes.starts_with(b"BM") {
        return false;
    }
    let dib_header_size = u32::from_le_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]);
    // BITMAPCOREHEADER, INFOHEADER, V2/V3 INFOHEADER, OS/2 v2 (16 and 64), V4, V5.
    matches!(dib_header_size, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124)
}

/// A short human-readable guess at what a non-image body is. Purely diagnostic: it never changes
/// the outcome, only the message, so heuristics are fine here.
fn describe_non_image(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "empty body".to_owned();
    }
    let head = &bytes[..bytes.len().min(SNIFF_WINDOW)];

    // Binary signatures of things people plausibly link to instead of a supported image.
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        let brand = &head[8..12];
        if matches!(brand, b"avif" | b"avis") {
            return "AVIF image, which is not a supported input format".to_owned();
        }
        if matches!(
            brand,
            b"heic" | b"heix" | b"hevc" | b"heim" | b"heis" | b"mif1" | b"msf1"
        ) {
            return "HEIF/HEIC image, which is not a supported input format".to_owned();
        }
        return "looks like an MP4/QuickTime video".to_owned();
    }
    if head.starts_with(b"%PDF-") {
        return "looks like a PDF document".to_owned();
    }
    if head.starts_with(&[0x1F, 0x8B]) {
        // Usually a server that gzips despite no Accept-Encoding, or a client that did not
        // decode Content-Encoding: worth calling out explicitly.
        return "looks like gzip-compressed data".to_owned();
    }
    if head.starts_with(b"PK\x03\x04") {
        return "looks like a ZIP archive".to_owned();
    }
    if head.starts_with(&[0, 0, 1, 0]) || head.starts_with(&[0, 0, 2, 0]) {
        return "looks like an ICO/CUR icon, which is not a supported input format".to_owned();
    }
    if head.starts_with(b"8BPS") {
        return "looks like a Photoshop document".to_owned();
    }
    if head.starts_with(b"RIFF") {
        return "RIFF container that is not WebP (audio or video?)".to_owned();
    }

    // Text-based formats: skip a UTF-8 BOM and leading whitespace, compare case-insensitively.
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let text = trim_ascii_start(text);
    if text.is_empty() {
        return "blank body (only whitespace)".to_owned();
    }
    let lower = text.to_ascii_lowercase();
    let contains = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    if lower.starts_with(b"<") {
        if lower.starts_with(b"<svg") || contains(b"<svg") {
            return "looks like SVG".to_owned();
        }
        if lower.starts_with(b"<!doctype html")
            || contains(b"<html")
            || contains(b"<head")
            || contains(b"<body")
        {
            return "looks like HTML".to_owned();
        }
        if lower.starts_with(b"<?xml") {
            return "looks like XML".to_owned();
        }
        return "looks like HTML or XML markup".to_owned();
    }
    if lower.starts_with(b"{") || lower.starts_with(b"[") {
        return "looks like JSON".to_owned();
    }
    if looks_like_text(head) {
        return "looks like plain text".to_owned();
    }
    let preview: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!(
        "unrecognised binary data (starts with {})",
        preview.join(" ")
    )
}

/// UTF-8 without control characters other than whitespace. The window may cut a multi-byte
/// character in half at its end, which must not count against it.
fn looks_like_text(head: &[u8]) -> bool {
    let valid = match std::str::from_utf8(head) {
        Ok(_) => head.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => return false,
    };
    head[..valid]
        .iter()
        .all(|&b| !b.is_ascii_control() || b.is_ascii_whitespace())
}

fn trim_ascii_start(mut bytes: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = bytes {
        if first.is_ascii_whitespace() {
            bytes = rest;
        } else {
            break;
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::fixtures::{encode_as, jpeg_fixture, photo_like, two_frame_gif, Rng};
    use image::{DynamicImage, ImageFormat};

    fn not_an_image_reason(bytes: &[u8]) -> String {
        match sniff(bytes) {
            Err(CompressError::NotAnImage(reason)) => reason,
            other => panic!("expected NotAnImage, got {other:?}"),
        }
    }

    #[test]
    fn sniff_detects_each_supported_format() {
        let rgb = photo_like(8, 8);
        let cases = [
            (jpeg_fixture(&rgb, 80), InputFormat::Jpeg),
            (encode_as(rgb.clone(), ImageFormat::Png), InputFormat::Png),
            (
                encode_as(
                    DynamicImage::ImageRgb8(rgb.clone()).into_rgba8(),
                    ImageFormat::WebP,
                ),
                InputFormat::WebP,
            ),
            (two_frame_gif(), InputFormat::Gif),
            (encode_as(rgb.clone(), ImageFormat::Bmp), InputFormat::Bmp),
            (encode_as(rgb, ImageFormat::Tiff), InputFormat::Tiff),
        ];
        for (bytes, expected) in cases {
            assert_eq!(sniff(&bytes).unwrap(), expected);
        }
        assert_eq!(sniff(b"II*\0\x08\0\0\0").unwrap(), InputFormat::Tiff);
        assert_eq!(sniff(b"MM\0*\0\0\0\x08").unwrap(), InputFormat::Tiff);
    }

    #[test]
    fn sniff_rejects_html() {
        let html = b"\xEF\xBB\xBF\n  <!DOCTYPE html><html><head><title>404</title></head></html>";
        assert_eq!(not_an_image_reason(html), "looks like HTML");
        assert_eq!(
            not_an_image_reason(b"<HTML><BODY>Moved</BODY></HTML>"),
            "looks like HTML"
        );
    }

    #[test]
    fn sniff_rejects_svg() {
        let svg = br#"<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>"#;
        assert_eq!(not_an_image_reason(svg), "looks like SVG");
        assert_eq!(
            not_an_image_reason(b"<svg viewBox='0 0 1 1'></svg>"),
            "looks like SVG"
        );
    }

    #[test]
    fn sniff_rejects_empty_and_blank() {
        assert_eq!(not_an_image_reason(b""), "empty body");
        assert!(not_an_image_reason(b" \r\n\t").contains("blank"));
    }

    #[test]
    fn sniff_rejects_random_bytes() {
        let mut rng = Rng(12345);
        let mut bytes: Vec<u8> = (0..256).map(|_| rng.next() as u8).collect();
        bytes[0] = 0x07; // make sure the random prefix is not accidentally a signature
        assert!(not_an_image_reason(&bytes).starts_with("unrecognised binary data"));
    }

    #[test]
    fn sniff_describes_other_common_bodies() {
        assert_eq!(
            not_an_image_reason(b"{\"error\":\"nope\"}"),
            "looks like JSON"
        );
        assert_eq!(
            not_an_image_reason(b"Access denied"),
            "looks like plain text"
        );
        assert!(not_an_image_reason(b"\x1f\x8b\x08\0\0\0\0\0").contains("gzip"));
        assert!(not_an_image_reason(b"\0\0\0\x1cftypavif\0\0\0\0").contains("AVIF"));
        assert!(not_an_image_reason(b"%PDF-1.7\n").contains("PDF"));
        // "BM" followed by text is not a bitmap.
        assert_eq!(
            not_an_image_reason(b"BMW parts catalogue, page 1"),
            "looks like plain text"
        );
    }
}
