//! A decoder for the PNGs photos come as: 8-bit gray, gray+alpha, RGB or RGBA, not interlaced,
//! no transparent colour key. Everything else (palettes, 16-bit, Adam7, `tRNS`, damaged chunk
//! structure) is left to the `png` crate behind `image`, which also reads the header and the
//! metadata chunks before this runs.
//!
//! Why our own: on a 12 MP RGB photo the `png` crate spent 42% of the decode-and-encode time
//! undoing Paeth filters a byte at a time and 32% inflating (`fdeflate`, which this uses too).
//! Here the filters run on whole pixels in vector registers ([`unfilter`]), and the rows are
//! inflated straight into the pixel buffer and unfiltered a few rows behind the inflater, while
//! they are still in cache, moving each one left over its filter byte; nothing is copied
//! twice and no second image-sized buffer exists.

mod unfilter;

use std::ops::Range;

use fdeflate::Decompressor;

use unfilter::{paeth_pair, unfilter, Filter};

/// The eight bytes every PNG starts with.
pub(crate) const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// How far back deflate may copy from: decoded bytes this close to the inflater's position are
/// not yet unfiltered, since unfiltering changes them.
const WINDOW: usize = 32 * 1024;

/// How much is inflated before the rows it completes are unfiltered: a few hundred KB stay in
/// the core's cache.
const STRETCH: usize = 256 * 1024;

/// A PNG this module decodes, as its chunks describe it.
#[derive(Debug)]
pub struct Plain {
    width: u32,
    height: u32,
    channels: u8,
    /// Where each `IDAT` chunk's data lies in the file, in order.
    idat: Vec<Range<usize>>,
}

/// Why the image data could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    #[error("corrupt compressed image data: {0:?}")]
    Inflate(fdeflate::DecompressionError),
    #[error("image data is truncated ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("invalid filter type {filter} in row {row}")]
    Filter { filter: u8, row: usize },
    #[error("image too large for this machine")]
    TooLarge,
}

impl Plain {
    /// The file's layout when this module decodes it, else None. Every chunk's length is
    /// checked against the file and every `IDAT` against its CRC here, so that anything odd
    /// reaches the `png` crate and its precise error.
    pub fn read(bytes: &[u8]) -> Option<Plain> {
        if !bytes.starts_with(SIGNATURE) {
            return None;
        }
        let mut at = SIGNATURE.len();
        let header = chunk(bytes, at)?;
        if &header.kind != b"IHDR" || header.data.len() != 13 {
            return None;
        }
        let h = &bytes[header.data.clone()];
        let width = u32::from_be_bytes(h[0..4].try_into().ok()?);
        let height = u32::from_be_bytes(h[4..8].try_into().ok()?);
        let (depth, color, compression, filtering, interlace) = (h[8], h[9], h[10], h[11], h[12]);
        let channels = match color {
            0 => 1,
            4 => 2,
            2 => 3,
            6 => 4,
            _ => return None,
        };
        if depth != 8 || compression != 0 || filtering != 0 || interlace != 0 {
            return None;
        }
        if width == 0 || height == 0 {
            return None;
        }
        at += header.len;
        let mut idat = Vec::new();
        loop {
            let next = chunk(bytes, at)?;
            match &next.kind {
                // A colour key makes one colour transparent: the `png` crate expands it to alpha.
                b"tRNS" if idat.is_empty() => return None,
                b"IDAT" => {
                    // Image data is one run of chunks: a second run is an error for the `png`
                    // crate to report.
                    if idat.last().is_some_and(|r: &Range<usize>| r.end + 4 != at) {
                        return None;
                    }
                    if next.computed_crc(bytes) != next.crc {
                        return None;
                    }
                    idat.push(next.data.clone());
                }
                b"IEND" => break,
                _ => {}
            }
            at += next.len;
        }
        (!idat.is_empty()).then_some(Plain {
            width,
            height,
            channels,
            idat,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// 1 (gray), 2 (gray, alpha), 3 (RGB) or 4 (RGBA), 8 bits each.
    pub fn channels(&self) -> u8 {
        self.channels
    }

    /// The pixels, rows top to bottom, `channels` bytes a pixel. The caller has checked the
    /// dimensions against its own limits.
    pub fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, PngError> {
        let bpp = usize::from(self.channels);
        let stride = usize::try_from(self.width)
            .ok()
            .and_then(|w| w.checked_mul(bpp))
            .ok_or(PngError::TooLarge)?;
        let rows = usize::try_from(self.height).map_err(|_| PngError::TooLarge)?;
        let filtered_len = stride
            .checked_add(1)
            .and_then(|row| row.checked_mul(rows))
            .ok_or(PngError::TooLarge)?;
        // Filtered rows go in at stride + 1 bytes each and come out at stride, so the one
        // buffer holds both, the output trailing behind.
        let mut buf = Vec::new();
        buf.try_reserve_exact(filtered_len)
            .map_err(|_| PngError::TooLarge)?;
        buf.resize(filtered_len, 0);
        let mut rows_done = Rows::new(bpp, stride, rows);
        let mut inflater = Decompressor::new();
        // As the `png` crate does: the chunks' CRCs already guard the data.
        inflater.ignore_adler32();
        let mut produced = 0;
        'chunks: for (i, range) in self.idat.iter().enumerate() {
            let mut input = &bytes[range.clone()];
            let last = i + 1 == self.idat.len();
            loop {
                // A bounded stretch at a time, so that rows are unfiltered while they are
                // still in cache even when one chunk holds the whole image.
                let limit = (produced + STRETCH).min(filtered_len);
                let (used, made) = inflater
                    .read(input, &mut buf[..limit], produced, last)
                    .map_err(PngError::Inflate)?;
                input = &input[used..];
                produced += made;
                rows_done.advance(&mut buf, produced.saturating_sub(WINDOW))?;
                // Data past the image's last row is ignored, as libpng does.
                if produced == filtered_len || inflater.is_done() {
                    break 'chunks;
                }
                // `read` returns with its input used up, its output full, or the stream done:
                // output short of the limit means this chunk is used up; at the limit, the
                // inflater may still hold output, so ask again.
                if produced < limit {
                    break;
                }
            }
        }
        if produced < filtered_len {
            return Err(PngError::Truncated {
                got: produced,
                want: filtered_len,
            });
        }
        rows_done.advance(&mut buf, filtered_len)?;
        buf.truncate(stride * rows);
        Ok(buf)
    }
}

/// Unfilters rows in place, in order, as their filtered bytes become final: row `y`'s filtered
/// bytes start at `y * (stride + 1)` (after its filter type byte) and its pixels go to
/// `y * stride`, which never lies ahead of what is still to be read.
struct Rows {
    bpp: usize,
    stride: usize,
    rows: usize,
    /// Rows already unfiltered.
    next: usize,
    /// The row above the first: zeros.
    zeros: Vec<u8>,
}

impl Rows {
    fn new(bpp: usize, stride: usize, rows: usize) -> Rows {
        Rows {
            bpp,
            stride,
            rows,
            next: 0,
            zeros: vec![0; stride],
        }
    }

    /// Unfilters every row whose filtered bytes all lie below `ready`.
    fn advance(&mut self, buf: &mut [u8], ready: usize) -> Result<(), PngError> {
        let (bpp, stride) = (self.bpp, self.stride);
        let filter_at = |y: usize| y * (stride + 1);
        let filter = |buf: &[u8], y: usize| {
            let byte = buf[filter_at(y)];
            Filter::from_byte(byte).ok_or(PngError::Filter {
                filter: byte,
                row: y,
            })
        };
        while self.next < self.rows && filter_at(self.next + 1) <= ready {
            let y = self.next;
            let first = filter(buf, y)?;
            let has_next = y + 1 < self.rows;
            // Two Paeth rows in a row (most of a photo) are undone together: a Paeth row waits
            // for the next to be ready (the last call has every row ready).
            if first == Filter::Paeth && has_next && filter_at(y + 2) > ready {
                break;
            }
            let pair = first == Filter::Paeth && has_next && filter(buf, y + 1)? == Filter::Paeth;
            let count = if pair { 2 } else { 1 };
            for row in y..y + count {
                let from = filter_at(row) + 1;
                buf.copy_within(from..from + stride, row * stride);
            }
            let (above, here) = buf.split_at_mut(y * stride);
            let prev = if y == 0 {
                &self.zeros[..]
            } else {
                &above[(y - 1) * stride..]
            };
            let (cur, below) = here.split_at_mut(stride);
            if pair {
                paeth_pair(bpp, prev, cur, &mut below[..stride]);
            } else {
                unfilter(first, bpp, prev, cur);
            }
            self.next += count;
        }
        Ok(())
    }
}

/// For the PNG fuzzer and its corpus replay: when this module takes `data` (at most
/// `max_pixels`), decodes it here and through the `png` crate, and panics if the `png` crate
/// decodes it and this does not, or to other pixels. The same again with every chunk's CRC
/// made right, so that mutated image data gets past the checksum. Returns how many of the two
/// this module took.
#[doc(hidden)]
pub fn check_against_png_crate(data: &[u8], max_pixels: u64) -> usize {
    let mut fixed = data.to_vec();
    let mut at = SIGNATURE.len();
    while let Some(next) = chunk(&fixed, at) {
        let crc = next.computed_crc(&fixed);
        fixed[next.data.end..next.data.end + 4].copy_from_slice(&crc.to_be_bytes());
        at += next.len;
    }
    usize::from(check_one(data, max_pixels)) + usize::from(check_one(&fixed, max_pixels))
}

fn check_one(data: &[u8], max_pixels: u64) -> bool {
    let Some(plain) = Plain::read(data) else {
        return false;
    };
    if u64::from(plain.width) * u64::from(plain.height) > max_pixels {
        return false;
    }
    let ours = plain.decode(data);
    if let Ok(image) = image::load_from_memory_with_format(data, image::ImageFormat::Png) {
        match ours {
            Ok(pixels) => assert!(pixels == image.into_bytes(), "the pixels differ"),
            Err(e) => panic!("the png crate decodes it, this says: {e}"),
        }
    }
    true
}

/// One chunk of a PNG file, as found by [`chunk`].
pub(crate) struct Chunk {
    pub(crate) kind: [u8; 4],
    /// Where its data lies in the file.
    pub(crate) data: Range<usize>,
    crc: u32,
    /// Bytes the whole chunk takes: length, type, data and CRC.
    pub(crate) len: usize,
}

impl Chunk {
    /// The CRC of its type and data as they are in `bytes`.
    fn computed_crc(&self, bytes: &[u8]) -> u32 {
        crc32fast::hash(&bytes[self.data.start - 4..self.data.end])
    }
}

/// The chunk starting at `at`, if the file holds all of it.
pub(crate) fn chunk(bytes: &[u8], at: usize) -> Option<Chunk> {
    let head = bytes.get(at..at.checked_add(8)?)?;
    let len = usize::try_from(u32::from_be_bytes(head[0..4].try_into().ok()?)).ok()?;
    let kind: [u8; 4] = head[4..8].try_into().ok()?;
    let data = at + 8..at.checked_add(8)?.checked_add(len)?;
    let crc = bytes.get(data.end..data.end.checked_add(4)?)?;
    Some(Chunk {
        kind,
        crc: u32::from_be_bytes(crc.try_into().ok()?),
        data,
        len: len + 12,
    })
}

/// Appends a chunk of type `kind` holding `data`, with its CRC.
pub(crate) fn push_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

#[cfg(test)]
mod tests;
