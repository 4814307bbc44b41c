//! An input's own bytes with its metadata removed, losslessly: what the never-larger rule
//! serves when recompressing would have grown the file.
//!
//! Each container is walked chunk by chunk and rewritten with a list of what to keep (what the
//! pixels need to be shown as they were: image data, palette, transparency, colour profile and
//! tags, animation), never a list of what to drop, so metadata of a kind we have not heard of
//! does not slip through. GPS, camera serials, XMP and comments never survive. An EXIF
//! orientation other than 1 comes back as a block holding only that tag.
//!
//! A container that cannot be followed exactly gives None: then the input is not served.

use super::InputFormat;
use crate::png;

/// `bytes` (of `format`) without metadata; None for formats we do not keep or cannot walk.
pub(super) fn strip(format: InputFormat, bytes: &[u8], orientation: u16) -> Option<Vec<u8>> {
    match format {
        InputFormat::Jpeg => crate::jpeg::strip_metadata(bytes, orientation).ok(),
        InputFormat::Png => strip_png(bytes, orientation),
        InputFormat::WebP => strip_webp(bytes, orientation),
        InputFormat::Gif => strip_gif(bytes),
        // BMP has no metadata blocks; TIFF keeps its metadata in tags that point anywhere in the
        // file, and browsers do not show TIFF at all, so it is never served as it is.
        InputFormat::Bmp => Some(bytes.to_vec()),
        InputFormat::Tiff => None,
    }
}

/// PNG chunks that change how the image looks or moves; everything else is metadata.
const PNG_KEEP: [&[u8; 4]; 17] = [
    b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT",
    b"bKGD", b"cICP", b"mDCv", b"cLLi", b"acTL", b"fcTL", b"fdAT",
];

fn strip_png(bytes: &[u8], orientation: u16) -> Option<Vec<u8>> {
    if !bytes.starts_with(png::SIGNATURE) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(png::SIGNATURE);
    let mut pos = png::SIGNATURE.len();
    let mut wrote_orientation = orientation == 1;
    loop {
        let chunk = png::chunk(bytes, pos)?;
        let kind = &chunk.kind;
        // eXIf must come before the image data.
        if !wrote_orientation && (kind == b"IDAT" || kind == b"acTL") {
            png::push_chunk(
                &mut out,
                b"eXIf",
                &crate::jpeg::orientation_exif(orientation),
            );
            wrote_orientation = true;
        }
        if PNG_KEEP.contains(&kind) {
            out.extend_from_slice(&bytes[pos..pos + chunk.len]);
        }
        pos += chunk.len;
        if kind == b"IEND" {
            return Some(out);
        }
    }
}

/// WebP chunks that make the picture (VP8X's flags are rewritten to match).
const WEBP_KEEP: [&[u8; 4]; 7] = [
    b"VP8X", b"ICCP", b"ANIM", b"ANMF", b"ALPH", b"VP8 ", b"VP8L",
];
const VP8X_EXIF: u8 = 0x08;
const VP8X_XMP: u8 = 0x04;

fn strip_webp(bytes: &[u8], orientation: u16) -> Option<Vec<u8>> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return None;
    }
    let riff_end = 8usize.checked_add(u32::from_le_bytes(bytes[4..8].try_into().ok()?) as usize)?;
    let body = bytes.get(12..riff_end)?;
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(b"RIFF\0\0\0\0WEBP");
    let mut pos = 0;
    let mut vp8x_at = None;
    while pos < body.len() {
        let kind = body.get(pos..pos + 4)?;
        let len = u32::from_le_bytes(body.get(pos + 4..pos + 8)?.try_into().ok()?) as usize;
        let end = (pos + 8).checked_add(len)?.checked_add(len & 1)?;
        let chunk = body.get(pos..end.min(body.len()))?;
        if kind == b"VP8X" {
            vp8x_at = Some(out.len());
        }
        if WEBP_KEEP.iter().any(|k| k.as_slice() == kind) {
            out.extend_from_slice(chunk);
            if chunk.len() < end - pos {
                out.push(0); // the pad byte of a final odd-sized chunk
            }
        }
        pos = end;
    }
    match vp8x_at {
        Some(at) if out.len() > at + 8 => {
            let flags = &mut out[at + 8];
            *flags &= !(VP8X_EXIF | VP8X_XMP);
            if orientation != 1 {
                *flags |= VP8X_EXIF;
                let exif = crate::jpeg::orientation_exif(orientation);
                out.extend_from_slice(b"EXIF");
                out.extend_from_slice(&(exif.len() as u32).to_le_bytes());
                out.extend_from_slice(&exif);
                if exif.len() % 2 == 1 {
                    out.push(0);
                }
            }
        }
        Some(_) => return None,
        // A simple (lossy or lossless) WebP has no metadata and no orientation.
        None => {}
    }
    let riff_len = u32::try_from(out.len() - 8).ok()?;
    out[4..8].copy_from_slice(&riff_len.to_le_bytes());
    Some(out)
}

/// GIF: header, screen descriptor and palettes, frames and their control blocks, and the
/// looping extension are kept; comments and every other application extension (XMP among
/// them) go.
fn strip_gif(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 13 || !(bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")) {
        return None;
    }
    let mut pos = 13 + color_table_len(bytes[10]);
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(bytes.get(..pos)?);
    loop {
        match *bytes.get(pos)? {
            0x3B => {
                out.push(0x3B);
                return Some(out);
            }
            0x2C => {
                let descriptor_end = pos + 10;
                let packed = *bytes.get(pos + 9)?;
                let data_start = descriptor_end + color_table_len(packed) + 1; // + LZW code size
                let end = skip_sub_blocks(bytes, data_start)?;
                out.extend_from_slice(bytes.get(pos..end)?);
                pos = end;
            }
            0x21 => {
                let label = *bytes.get(pos + 1)?;
                let end = skip_sub_blocks(bytes, pos + 2)?;
                let keep = match label {
                    0xF9 | 0x01 => true,
                    0xFF => {
                        let id = bytes.get(pos + 3..pos + 14)?;
                        bytes[pos + 2] == 11 && (id == b"NETSCAPE2.0" || id == b"ANIMEXTS1.0")
                    }
                    _ => false,
                };
                if keep {
                    out.extend_from_slice(&bytes[pos..end]);
                }
                pos = end;
            }
            _ => return None,
        }
    }
}

/// Bytes of the colour table a GIF packed field announces (bit 7 set: 3 * 2^(n+1)).
fn color_table_len(packed: u8) -> usize {
    if packed & 0x80 == 0 {
        0
    } else {
        3 << ((packed & 7) + 1)
    }
}

/// The offset just past the sub-block chain starting at `pos` (its zero-length terminator).
fn skip_sub_blocks(bytes: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let n = *bytes.get(pos)? as usize;
        pos += 1 + n;
        if n == 0 {
            return Some(pos);
        }
        if pos > bytes.len() {
            return None;
        }
    }
}
