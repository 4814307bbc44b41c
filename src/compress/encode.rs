//! The JPEG encoders: jpeg-encoder (pure Rust, the default) or libjpeg-turbo (`turbo`).

// With `turbo`, libjpeg-turbo encodes; jpeg-encoder stays for the default build and tests.
#[cfg_attr(feature = "turbo", allow(unused_imports))]
use jpeg_encoder::{ChromaSubsamplingMethod, ColorType as JpegColorType, Encoder, SamplingFactor};

use super::decode::JPEG_MAX_DIMENSION;
use super::pixels::{Layout, Pixels};
use super::CompressError;

/// Whether to compute per-image Huffman tables. Off, deliberately: jpeg-encoder 0.7 can only
/// do that by writing each colour component in its own scan (a "non-interleaved" JPEG). Those
/// files are valid and browsers (libjpeg-turbo) show them correctly, but zune-jpeg 0.5.15 — the
/// JPEG decoder inside `image`, and so in most Rust software that might consume our output —
/// silently decodes them to colour noise (and `check_jpeg_structure` makes us reject them as
/// input). On a 12 MP photo optimised tables would save ~7% of output size for ~25% more encode
/// time. Re-evaluate once a fixed zune-jpeg is in the lockfile;
/// `output_decodes_faithfully_with_image` guards the choice.
#[cfg_attr(feature = "turbo", allow(dead_code))]
const OPTIMIZE_HUFFMAN_TABLES: bool = false;

pub(super) fn encode_jpeg(pixels: Pixels, quality: u8) -> Result<Vec<u8>, CompressError> {
    let too_big = || {
        CompressError::Encode(format!(
            "{}x{} exceeds JPEG's maximum of {JPEG_MAX_DIMENSION} pixels per side",
            pixels.width, pixels.height
        ))
    };
    let width = u16::try_from(pixels.width).map_err(|_| too_big())?;
    let height = u16::try_from(pixels.height).map_err(|_| too_big())?;

    #[cfg(feature = "turbo")]
    {
        turbo::encode(&pixels, width, height, quality)
    }
    #[cfg(not(feature = "turbo"))]
    {
        encode_pure_rust(pixels, width, height, quality)
    }
}

#[cfg(not(feature = "turbo"))]
fn encode_pure_rust(
    pixels: Pixels,
    width: u16,
    height: u16,
    quality: u8,
) -> Result<Vec<u8>, CompressError> {
    let color_type = match pixels.layout {
        Layout::Gray => JpegColorType::Luma,
        Layout::Rgb => JpegColorType::Rgb,
        Layout::RgbX => JpegColorType::Rgba,
    };
    // Output is typically a small fraction of the raw pixels; a rough first guess saves a few
    // reallocations on large images without over-reserving on small ones.
    let mut jpeg = Vec::with_capacity(pixels.data.len() / 8);
    let mut encoder = Encoder::new(&mut jpeg, quality.clamp(1, 100));
    // 4:2:0 regardless of quality (jpeg-encoder's default switches to 4:4:4 at q >= 90):
    // halving chroma resolution is invisible in photos and saves a lot of bytes. Averaging each
    // 2x2 chroma block (as libjpeg does) instead of sampling its top-left pixel costs ~20% more
    // encode time and buys ~0.5-1 dB PSNR at the same file size.
    encoder.set_sampling_factor(SamplingFactor::R_4_2_0);
    encoder.set_chroma_subsampling_method(ChromaSubsamplingMethod::Average);
    encoder.set_optimized_huffman_tables(OPTIMIZE_HUFFMAN_TABLES);
    encoder
        .encode(&pixels.data, width, height, color_type)
        .map_err(|e| CompressError::Encode(e.to_string()))?;
    // A 12 MP image is 36 MB of pixels; the Huffman pass below holds as much again in
    // coefficients. Not holding both at once halves this job's peak.
    drop(pixels);
    // jpeg-encoder's own optimised tables come with one scan per colour component, which
    // zune-jpeg 0.5 (inside `image`) decodes wrongly; re-coding its standard-table output with
    // optimal tables is lossless, keeps one interleaved scan, and makes files 2-18% smaller.
    Ok(crate::jpeg::optimize_huffman(&jpeg).unwrap_or(jpeg))
}

/// libjpeg-turbo's encoder (as mozjpeg at its fastest settings: no trellis, baseline) with
/// SIMD: about 3x the pure-Rust encoder's speed, and optimised Huffman tables in a single
/// interleaved scan that every decoder reads.
#[cfg(feature = "turbo")]
mod turbo {
    use super::{CompressError, Layout, Pixels};

    pub fn encode(
        pixels: &Pixels,
        width: u16,
        height: u16,
        quality: u8,
    ) -> Result<Vec<u8>, CompressError> {
        let (color_space, stride) = match pixels.layout {
            Layout::Gray => (mozjpeg::ColorSpace::JCS_GRAYSCALE, 1),
            Layout::Rgb => (mozjpeg::ColorSpace::JCS_RGB, 3),
            Layout::RgbX => (mozjpeg::ColorSpace::JCS_EXT_RGBX, 4),
        };
        // libjpeg reports errors by unwinding (mozjpeg's `unwinding` feature); catch them here.
        std::panic::catch_unwind(|| -> std::io::Result<Vec<u8>> {
            let mut c = mozjpeg::Compress::new(color_space);
            c.set_fastest_defaults();
            c.set_size(width.into(), height.into());
            c.set_quality(quality.clamp(1, 100) as f32);
            c.set_optimize_coding(true);
            if pixels.layout != Layout::Gray {
                c.set_chroma_sampling_pixel_sizes((2, 2), (2, 2));
            }
            let mut started = c.start_compress(Vec::with_capacity(pixels.data.len() / 8))?;
            let row = usize::from(width) * stride;
            for chunk in pixels.data.chunks(row * 16) {
                started.write_scanlines(chunk)?;
            }
            started.finish()
        })
        .map_err(|_| CompressError::Encode("libjpeg failed".into()))?
        .map_err(|e| CompressError::Encode(e.to_string()))
    }
}
