//! Metadata out, colour information kept: for JPEGs served as they are (or as their lossless
//! re-encode) instead of a recompressed copy.
//!
//! Kept: JFIF (APP0), the ICC profile (APP2 `ICC_PROFILE`) and Adobe's colour transform (APP14),
//! which say what the pixels mean, and every segment that decoding needs. Dropped: EXIF and XMP
//! (APP1: GPS, camera serials, thumbnails), IPTC/Photoshop (APP13), comments, every other APPn,
//! and anything after the end of the image (phones append videos and second pictures there).
//! An EXIF orientation other than 1 comes back as a minimal EXIF block holding only that tag,
//! or the picture would turn on its side.

use super::parse::{read_marker_code, read_segment, skip_entropy_coded_data};
use super::{err, JpegError};

/// `jpeg` without its metadata; refuses files whose structure cannot be followed exactly.
pub fn strip_metadata(jpeg: &[u8], orientation: u16) -> Result<Vec<u8>, JpegError> {
    if jpeg.len() < 4 || jpeg[..2] != [0xFF, 0xD8] {
        return err("not a JPEG (no SOI marker)");
    }
    let mut out = Vec::with_capacity(jpeg.len());
    out.extend_from_slice(&[0xFF, 0xD8]);
    push_orientation(&mut out, orientation);
    let mut pos = 2;
    loop {
        if jpeg.get(pos) != Some(&0xFF) {
            return err(format!("expected a marker at offset {pos}"));
        }
        let Some((marker, next)) = read_marker_code(jpeg, pos) else {
            return err("missing EOI marker");
        };
        match marker {
            0xD9 => {
                out.extend_from_slice(&[0xFF, 0xD9]);
                return Ok(out);
            }
            0xD0..=0xD7 | 0x01 => {
                pos = next;
                continue;
            }
            0xD8 | 0x00 => return err("unexpected marker"),
            _ => {}
        }
        let Ok((seg, end)) = read_segment(jpeg, next) else {
            return err("marker segment runs past the end of data");
        };
        if keeps(marker, seg) {
            out.extend_from_slice(&[0xFF, marker]);
            out.extend_from_slice(&jpeg[next..end]);
        }
        pos = end;
        if marker == 0xDA {
            let Some(scan_end) = skip_entropy_coded_data(jpeg, pos) else {
                return err("scan runs past the end of data");
            };
            out.extend_from_slice(&jpeg[pos..scan_end]);
            pos = scan_end;
        }
    }
}

fn keeps(marker: u8, seg: &[u8]) -> bool {
    match marker {
        0xE0 => seg.starts_with(b"JFIF\0"),
        0xE2 => seg.starts_with(b"ICC_PROFILE\0"),
        0xEE => seg.starts_with(b"Adobe"),
        0xE1 | 0xE3..=0xED | 0xEF | 0xFE => false,
        _ => true,
    }
}

/// `jpeg` (as our writer makes it: SOI, then tables, no metadata) with `icc` and `orientation`
/// put back after the SOI: what a lossless re-encode must carry to mean the same picture.
pub fn with_color_and_orientation(jpeg: &[u8], icc: Option<&[u8]>, orientation: u16) -> Vec<u8> {
    const TAG: &[u8] = b"ICC_PROFILE\0";
    const CHUNK: usize = 65535 - 2 - 14;
    let mut out = Vec::with_capacity(jpeg.len() + icc.map_or(0, |p| p.len() + 512));
    out.extend_from_slice(&jpeg[..2]);
    push_orientation(&mut out, orientation);
    if let Some(icc) = icc.filter(|p| !p.is_empty()) {
        let chunks: Vec<&[u8]> = icc.chunks(CHUNK).collect();
        // More than 255 chunks cannot be numbered; such a profile was never readable anyway.
        if chunks.len() <= 255 {
            for (i, chunk) in chunks.iter().enumerate() {
                out.extend_from_slice(&[0xFF, 0xE2]);
                out.extend_from_slice(&((chunk.len() + 2 + 14) as u16).to_be_bytes());
                out.extend_from_slice(TAG);
                out.extend_from_slice(&[i as u8 + 1, chunks.len() as u8]);
                out.extend_from_slice(chunk);
            }
        }
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// An APP1 EXIF segment holding only the orientation, when it is not the default.
fn push_orientation(out: &mut Vec<u8>, orientation: u16) {
    if orientation == 1 || !(1..=8).contains(&orientation) {
        return;
    }
    let tiff = orientation_exif(orientation);
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((tiff.len() + 2 + 6) as u16).to_be_bytes());
    out.extend_from_slice(b"Exif\0\0");
    out.extend_from_slice(&tiff);
}

/// A TIFF-structured EXIF block (as PNG's eXIf and WebP's EXIF chunks hold it, and JPEG's APP1
/// after `Exif\0\0`) with one entry, the orientation: little-endian header, one IFD of one
/// SHORT, no next IFD.
pub fn orientation_exif(orientation: u16) -> Vec<u8> {
    let mut t = Vec::with_capacity(26);
    t.extend_from_slice(b"II*\0");
    t.extend_from_slice(&8u32.to_le_bytes());
    t.extend_from_slice(&1u16.to_le_bytes());
    t.extend_from_slice(&0x0112u16.to_le_bytes());
    t.extend_from_slice(&3u16.to_le_bytes());
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&orientation.to_le_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&0u32.to_le_bytes());
    t
}
