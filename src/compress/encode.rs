//! The JPEG encoders: our own (`crate::jpeg::encode_pixels`, the default) or libjpeg-turbo
//! (`turbo`).

use super::decode::JPEG_MAX_DIMENSION;
use super::pixels::{Layout, Pixels};
use super::CompressError;
use crate::jpeg::Target;

pub(super) fn encode_jpeg(pixels: Pixels, target: Target) -> Result<Vec<u8>, CompressError> {
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
        turbo::encode(&pixels, width, height, target)
    }
    #[cfg(not(feature = "turbo"))]
    {
        encode_pure_rust(pixels, width, height, target)
    }
}

/// Pixels to coefficients (YCbCr 4:2:0, islow DCT, `target`'s tables), coded by
/// the same writer as the DCT-domain fast path: one interleaved baseline scan with optimal
/// Huffman tables. The pixels go in by value: they are freed, an MCU row at a time, as their
/// coefficients are made, so the two are not held at once.
#[cfg(not(feature = "turbo"))]
fn encode_pure_rust(
    pixels: Pixels,
    width: u16,
    height: u16,
    target: Target,
) -> Result<Vec<u8>, CompressError> {
    use crate::jpeg::PixelLayout;
    let layout = match pixels.layout {
        Layout::Gray => PixelLayout::Gray,
        Layout::Rgb => PixelLayout::Rgb,
        Layout::RgbX => PixelLayout::Rgbx,
    };
    crate::jpeg::encode_pixels(pixels.data, width, height, layout, target)
        .map_err(|e| CompressError::Encode(e.to_string()))
}

/// libjpeg-turbo's encoder (as mozjpeg at its fastest settings: no trellis, baseline) with
/// SIMD: about 3x the pure-Rust encoder's speed, and optimised Huffman tables in a single
/// interleaved scan that every decoder reads.
#[cfg(feature = "turbo")]
mod turbo {
    use super::{CompressError, Layout, Pixels, Target};

    pub fn encode(
        pixels: &Pixels,
        width: u16,
        height: u16,
        target: Target,
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
            c.set_quality(f32::from(target.quality()));
            if let Some(setting) = target.perceptual() {
                // The same base table as the pure-Rust encoder; mozjpeg scales it in floating
                // point, which can put a step one off libjpeg's integer scaling.
                let q = f32::from(setting);
                let table = mozjpeg::qtable::KleinSilversteinCarney.scaled(q, q);
                c.set_luma_qtable(&table);
                c.set_chroma_qtable(&table);
            }
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
