//! Lossy WebP output through libwebp (built from source by libwebp-sys).

use super::pixels::{Layout, Pixels};
use super::CompressError;

/// WebP's largest side.
pub(super) const WEBP_MAX_DIMENSION: u32 = 16_383;

/// The WebP quality that looks like JPEG quality `q`: libwebp's quality (method 4) at which
/// its output reaches the SSIMULACRA2 score of libjpeg-turbo's at `q` (optimised Huffman
/// tables, which is what our encoder writes), median over the 12 small and medium bench photos
/// (`python3 bench/webp_mapping.py --classes s,m`, bench/results/webp_mapping.md), linear in
/// between. Above JPEG q90 WebP mostly cannot reach JPEG's score at any quality: 100 there.
/// Below q20 the measurement's grid ends (WebP 10 already scores above JPEG q20): halved.
pub(super) fn webp_quality(jpeg_quality: u8) -> f32 {
    const MEASURED: [(f32, f32); 11] = [
        (0.0, 0.0),
        (20.0, 10.0),
        (30.0, 25.6),
        (40.0, 37.1),
        (50.0, 52.2),
        (60.0, 63.5),
        (70.0, 75.5),
        (80.0, 83.3),
        (90.0, 94.3),
        (95.0, 100.0),
        (100.0, 100.0),
    ];
    let q = f32::from(jpeg_quality.clamp(1, 100));
    let i = MEASURED
        .iter()
        .position(|&(j, _)| j >= q)
        .unwrap_or(10)
        .max(1);
    let ((j0, w0), (j1, w1)) = (MEASURED[i - 1], MEASURED[i]);
    w0 + (w1 - w0) * (q - j0) / (j1 - j0)
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

#[cfg(test)]
mod tests {
    use super::webp_quality;

    #[test]
    fn the_mapping_is_the_measured_table_and_rises() {
        assert_eq!(webp_quality(50), 52.2);
        assert_eq!(webp_quality(80), 83.3);
        assert!((webp_quality(75) - 79.4).abs() < 1e-4);
        assert_eq!(webp_quality(100), 100.0);
        assert_eq!(webp_quality(1), 0.5);
        let all: Vec<f32> = (1..=100).map(webp_quality).collect();
        assert!(all.windows(2).all(|w| w[0] <= w[1]), "{all:?}");
    }
}
