//! JPEG work in the DCT-coefficient domain, in pure Rust with no dependencies.
//!
//! Reading a JPEG only as far as its quantised DCT coefficients (entropy decoding, no IDCT, no
//! colour conversion, no resampling) is several times cheaper than decoding to pixels, and
//! writing coefficients back is cheaper still than encoding pixels. Two operations build on it:
//!
//! - [`optimize_huffman`]: a lossless re-encode with Huffman tables fitted to the image
//!   (typically 7-15% smaller than the standard tables), same coefficients, same pixels.
//! - [`requantize`]: re-encode at a lower quality by rescaling the coefficients to the standard
//!   IJG tables for that quality, keeping the input's step wherever it is already coarser.
//!
//! Inputs may be baseline/extended sequential (SOF0/SOF1, interleaved or not, restart markers,
//! any sampling factors) or progressive (SOF2, spectral selection and successive
//! approximation), 8-bit, Huffman-coded.
//!
//! Output is one baseline interleaved scan (SOI, DQT, SOF0, DHT, SOS, data, EOI) with all
//! metadata stripped; at effort 3 ([`Effort`]) a progressive file with spectral selection
//! instead, where that is smaller (`progressive`). Inputs that cannot be represented that way without changing what they
//! mean (arithmetic coding, 12-bit, lossless, CMYK/YCCK, Adobe RGB transform, ...) are refused
//! with a reason, so the caller can take the pixel path.
//!
//! A third operation, [`encode_pixels`], is the pixel path's encoder: pixels to quantised
//! coefficients (`forward`, with AVX2 kernels in `forward_x86`), written by the same writer.
//!
//! Layout: `bitread` (entropy-coded segment reader), `huffman` (decode tables, optimal table
//! construction, encode tables), `parse` (markers and the scan loop), `decode` (scan decoding
//! into coefficient buffers), `requant` (rescaling to the target tables), `trellis`
//! (rate-distortion quantisation of a block), `resample` (chroma halving), `encode` (bit writer
//! and the baseline writer), `progressive` (the progressive writer and its planner), `tables`
//! (efforts and quantisation tables), `strip` (metadata removal for outputs kept as they are).

mod bitread;
mod decode;
mod encode;
mod forward;
#[cfg(target_arch = "x86_64")]
mod forward_x86;
mod huffman;
mod parse;
mod progressive;
mod requant;
mod resample;
mod scaled;
mod strip;
mod tables;
mod trellis;

#[cfg(test)]
mod tests;

pub use forward::{encode_pixels, PixelLayout};
pub(crate) use parse::{check_structure, StructureProblem};
pub use scaled::{decode_scaled, decode_yuv420, ScaledPixels, Yuv420Planes};
pub use strip::{orientation_exif, strip_metadata, with_color_and_orientation};
pub use tables::{Effort, Target, KLEIN};

use std::fmt;

/// Why a JPEG could not be read or written; the message is meant for logs and status bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegError(pub String);

impl fmt::Display for JpegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "jpeg: {}", self.0)
    }
}

impl std::error::Error for JpegError {}

pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T, JpegError> {
    Err(JpegError(msg.into()))
}

/// A re-encoded JPEG and its dimensions.
#[derive(Debug, Clone)]
pub struct Requantized {
    pub jpeg: Vec<u8>,
    pub width: u16,
    pub height: u16,
}

/// One frame component as declared in the SOF segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentInfo {
    pub id: u8,
    /// Horizontal and vertical sampling factors (1-4).
    pub h: u8,
    pub v: u8,
    /// Index of the quantisation table it uses.
    pub tq: u8,
}

/// What the headers say, without entropy decoding. Useful for choosing a path.
#[derive(Debug, Clone)]
pub struct Info {
    pub width: u16,
    pub height: u16,
    pub components: Vec<ComponentInfo>,
    pub progressive: bool,
    /// Sample precision in bits (8 for everything we can process).
    pub precision: u8,
    /// Quantisation tables by index, in zigzag order, as last defined before the first scan.
    pub quant_tables: [Option<[u16; 64]>; 4],
    /// The transform byte of an Adobe APP14 segment, if there is one
    /// (0 = none/RGB/CMYK, 1 = YCbCr, 2 = YCCK).
    pub adobe_transform: Option<u8>,
    /// EXIF orientation (1-8), if an EXIF segment states one.
    pub exif_orientation: Option<u16>,
    /// The embedded ICC profile (APP2 `ICC_PROFILE` chunks before the first scan, joined), if
    /// there is one; not validated.
    pub icc_profile: Option<Vec<u8>>,
    /// Why [`optimize_huffman`]/[`requantize`] would refuse this file, if they would.
    pub unsupported: Option<String>,
    /// A sequential frame whose first scan codes every component: [`decode_scaled`] reads it
    /// one MCU row at a time instead of holding every coefficient.
    pub streams: bool,
}

/// Reads the headers of `jpeg` (stops at the first scan).
pub fn info(jpeg: &[u8]) -> Result<Info, JpegError> {
    parse::read_info(jpeg)
}

/// Losslessly re-encodes a JPEG with Huffman tables optimised for its own symbol statistics.
///
/// The output has the same frame, quantisation tables and coefficients as the input, hence
/// decodes to exactly the same pixels, as one baseline interleaved scan without restart markers
/// and without metadata.
pub fn optimize_huffman(jpeg: &[u8]) -> Result<Vec<u8>, JpegError> {
    let img = parse::read_coefficients(jpeg)?;
    encode::write_baseline(&img)
}

/// Re-encodes a JPEG at `quality` (1-100) in the coefficient domain, with the fastest
/// effort's tables ([`requantize_to`]).
pub fn requantize(jpeg: &[u8], quality: u8) -> Result<Requantized, JpegError> {
    if !(1..=100).contains(&quality) {
        return err(format!("quality {quality} is outside 1-100"));
    }
    requantize_to(jpeg, Target::new(quality, Effort::FASTEST))
}

/// Re-encodes a JPEG to `target`'s tables in the coefficient domain.
///
/// Where the input's step is already at least the target's, the input step and coefficient
/// are kept, so an input at or below the target quality comes out pixel-identical. 4:4:4, 4:2:2
/// and 4:4:0 YCbCr inputs come out 4:2:0, their chroma halved in the DCT domain (`resample`).
pub fn requantize_to(jpeg: &[u8], target: Target) -> Result<Requantized, JpegError> {
    let mut img = parse::read_coefficients(jpeg)?;
    resample::chroma_to_420(&mut img, target);
    requant::requantize_image(&mut img, target);
    let bytes = encode::write(&img, target)?;
    Ok(Requantized {
        jpeg: bytes,
        width: img.width,
        height: img.height,
    })
}

/// libjpeg's quality scaling (jcparam.c `jpeg_quality_scaling` + `jpeg_add_quant_table` with
/// baseline clamping), returned in zigzag order like DQT payloads and our coefficient blocks.
pub fn scaled_table(base_natural: &[u16; 64], quality: u8) -> [u16; 64] {
    let q = u32::from(quality.clamp(1, 100));
    let scale = if q < 50 { 5000 / q } else { 200 - 2 * q };
    let mut out = [0u16; 64];
    for (zz, o) in out.iter_mut().enumerate() {
        let base = u32::from(base_natural[ZIGZAG[zz] as usize]);
        *o = ((base * scale + 50) / 100).clamp(1, 255) as u16;
    }
    out
}

/// Zigzag index -> natural (row-major) index.
pub(crate) const ZIGZAG: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// ITU T.81 Annex K, table K.1 (natural order).
pub const STD_LUMA_QT: [u16; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];

/// ITU T.81 Annex K, table K.2 (natural order).
pub const STD_CHROMA_QT: [u16; 64] = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
];
