//! Lossy WebP output through libwebp (built from source by libwebp-sys).

use super::pixels::{Layout, Pixels};
use super::CompressError;

/// WebP's largest side.
pub(super) const WEBP_MAX_DIMENSION: u32 = 16_383;

/// The WebP quality meant to look like JPEG quality `q`: libwebp's scale is commonly held to
/// run a few points higher for the same look. A provisional mapping, not yet calibrated here
/// (docs/api.md#formats): measuring it at equal SSIMULACRA2 on the bench photos is open work.
pub(super) fn webp_quality(jpeg_quality: u8) -> f32 {
    let q = f32::from(jpeg_quality.clamp(1, 100));
    (q + 10.0 * (1.0 - q / 100.0) * (q / 50.0).min(1.0)).clamp(1.0, 100.0)
}

pub(super) fn encode_webp(pixels: &Pixels, jpeg_quality: u8) -> Result<Vec<u8>, CompressError> {
    if pixels.width > WEBP_MAX_DIMENSION || pixels.height > WEBP_MAX_DIMENSION {
        return Err(CompressError::Encode(format!(
            "{}x{} exceeds WebP's maximum of {WEBP_MAX_DIMENSION} pixels per side",
            pixels.width, pixels.height
        )));
    }
    let gray_as_rgb;
    let encoder = match pixels.layout {
        Layout::Rgb => webp::Encoder::from_rgb(&pixels.data, pixels.width, pixels.height),
        // Opaque: flattening set every fourth byte to 255.
        Layout::RgbX => webp::Encoder::from_rgba(&pixels.data, pixels.width, pixels.height),
        Layout::Gray => {
            gray_as_rgb = pixels
                .data
                .iter()
                .flat_map(|&g| [g, g, g])
                .collect::<Vec<u8>>();
            webp::Encoder::from_rgb(&gray_as_rgb, pixels.width, pixels.height)
        }
    };
    let mut config = webp::WebPConfig::new()
        .map_err(|_| CompressError::Encode("libwebp: no default configuration".into()))?;
    config.quality = webp_quality(jpeg_quality);
    // libwebp's and Pillow's default effort.
    config.method = 4;
    let out = encoder
        .encode_advanced(&config)
        .map_err(|e| CompressError::Encode(format!("libwebp: {e:?}")))?;
    Ok(out.to_vec())
}
