//! Decoded pixels of any type reduced to what the encoder takes: 8-bit gray or RGB, opaque.

use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer};

/// 8-bit, opaque pixels ready for the encoder. RGBA input keeps its 4-byte layout
/// ([`Layout::RgbX`]): it is flattened in place and handed to the encoder as RGBA, which ignores
/// alpha, so no full-size RGB copy is ever made.
pub(super) struct Pixels {
    pub(super) data: Vec<u8>,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) layout: Layout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    Gray,
    Rgb,
    /// Alpha already flattened (the fourth byte is 255); the JPEG encoder ignores it.
    RgbX,
}

impl Layout {
    /// The pixel data a colour profile must describe for this layout.
    pub(super) fn color_data(self) -> super::color::Data {
        use super::color::Data;
        match self {
            Layout::Gray => Data::Gray,
            Layout::Rgb => Data::Rgb,
            Layout::RgbX => Data::Rgbx,
        }
    }
}

impl Pixels {
    pub(super) fn apply_orientation(&mut self, orientation: Orientation) {
        if orientation == Orientation::NoTransforms {
            return;
        }
        let data = std::mem::take(&mut self.data);
        let (w, h) = (self.width, self.height);
        const BUF_OK: &str = "buffer length matches dimensions by construction";
        let mut image = match self.layout {
            Layout::Gray => {
                DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, data).expect(BUF_OK))
            }
            Layout::Rgb => {
                DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, data).expect(BUF_OK))
            }
            Layout::RgbX => {
                DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, data).expect(BUF_OK))
            }
        };
        image.apply_orientation(orientation);
        self.width = image.width();
        self.height = image.height();
        self.data = match image {
            DynamicImage::ImageLuma8(b) => b.into_raw(),
            DynamicImage::ImageRgb8(b) => b.into_raw(),
            DynamicImage::ImageRgba8(b) => b.into_raw(),
            _ => unreachable!("orientation preserves the pixel type"),
        };
    }
}

/// Reduces any decoded image to 8-bit gray or RGB on white, reusing the decoder's buffer
/// whenever the output is no larger than the input.
pub(super) fn to_opaque_8bit(image: DynamicImage) -> Pixels {
    let (width, height) = (image.width(), image.height());
    let (data, layout) = match image {
        // The common cases: the decoder's buffer goes to the encoder untouched.
        DynamicImage::ImageRgb8(b) => (b.into_raw(), Layout::Rgb),
        DynamicImage::ImageLuma8(b) => (b.into_raw(), Layout::Gray),
        DynamicImage::ImageRgba8(b) => {
            let mut data = b.into_raw();
            flatten_rgba8_in_place(&mut data);
            (data, Layout::RgbX)
        }
        DynamicImage::ImageLumaA8(b) => {
            let mut data = b.into_raw();
            flatten_luma_alpha8_in_place(&mut data);
            (data, Layout::Gray)
        }
        // 16-bit: one pass from the u16 buffer into a fresh u8 one (a Vec<u16> allocation
        // cannot be reused as a Vec<u8>).
        DynamicImage::ImageLuma16(b) => (b.iter().map(|&v| u16_to_u8(v)).collect(), Layout::Gray),
        DynamicImage::ImageRgb16(b) => (b.iter().map(|&v| u16_to_u8(v)).collect(), Layout::Rgb),
        DynamicImage::ImageLumaA16(b) => (
            b.chunks_exact(2).map(|p| blend16(p[0], p[1])).collect(),
            Layout::Gray,
        ),
        DynamicImage::ImageRgba16(b) => {
            let mut out = Vec::with_capacity(b.len() / 4 * 3);
            for p in b.chunks_exact(4) {
                out.extend_from_slice(&[
                    blend16(p[0], p[3]),
                    blend16(p[1], p[3]),
                    blend16(p[2], p[3]),
                ]);
            }
            (out, Layout::Rgb)
        }
        // Rare (float TIFF and future variants): let `image` do the conversion.
        other if other.color().has_alpha() => {
            let mut data = other.into_rgba8().into_raw();
            flatten_rgba8_in_place(&mut data);
            (data, Layout::RgbX)
        }
        other => (other.into_rgb8().into_raw(), Layout::Rgb),
    };
    Pixels {
        data,
        width,
        height,
        layout,
    }
}

/// Composites RGBA onto opaque white, leaving the (now meaningless) alpha byte in place.
fn flatten_rgba8_in_place(data: &mut [u8]) {
    for p in data.chunks_exact_mut(4) {
        let a = p[3];
        if a != 255 {
            p[0] = blend8(p[0], a);
            p[1] = blend8(p[1], a);
            p[2] = blend8(p[2], a);
            // Opaque now: a WebP encoder handed these as RGBA must not see transparency.
            p[3] = 255;
        }
    }
}

/// Composites gray+alpha onto white and compacts to one byte per pixel within the same buffer.
/// Writing index `i` never overtakes reading index `2i`, so this is safe in place.
fn flatten_luma_alpha8_in_place(data: &mut Vec<u8>) {
    let pixels = data.len() / 2;
    for i in 0..pixels {
        data[i] = blend8(data[2 * i], data[2 * i + 1]);
    }
    data.truncate(pixels);
}

/// `round((c * a + 255 * (255 - a)) / 255)`: source-over compositing onto white.
#[inline]
fn blend8(c: u8, a: u8) -> u8 {
    let (c, a) = (u32::from(c), u32::from(a));
    let t = c * a + 255 * (255 - a) + 128;
    // Exact rounding division by 255 for t < 65536*255.
    ((t + (t >> 8)) >> 8) as u8
}

/// 16-bit variant of [`blend8`] that goes straight to 8 bits, rounding only once:
/// `round((c * a + 65535 * (65535 - a)) * 255 / 65535²)`.
#[inline]
fn blend16(c: u16, a: u16) -> u8 {
    const MAX: u64 = u16::MAX as u64;
    let (c, a) = (u64::from(c), u64::from(a));
    let numerator = (c * a + MAX * (MAX - a)) * 255;
    let denominator = MAX * MAX;
    ((numerator + denominator / 2) / denominator) as u8
}

/// Rounds a 16-bit sample to 8 bits (`round(v * 255 / 65535)`), so 65535 stays 255.
#[inline]
fn u16_to_u8(v: u16) -> u8 {
    ((u32::from(v) * 255 + 32767) / 65535) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend8_matches_exact_rounding_for_every_input() {
        for c in 0..=255u8 {
            for a in 0..=255u8 {
                let exact = (f64::from(c) * f64::from(a) + 255.0 * (255.0 - f64::from(a))) / 255.0;
                assert_eq!(blend8(c, a), exact.round() as u8, "c={c} a={a}");
            }
        }
    }

    #[test]
    fn sixteen_bit_conversions_round_like_exact_arithmetic() {
        assert_eq!(u16_to_u8(0), 0);
        assert_eq!(u16_to_u8(65535), 255);
        assert_eq!(blend16(0, 0), 255);
        assert_eq!(blend16(0, 65535), 0);
        assert_eq!(blend16(65535, 65535), 255);

        let max = 65535.0;
        for v in (0..=65535u16).step_by(7) {
            assert_eq!(
                u16_to_u8(v),
                (f64::from(v) * 255.0 / max).round() as u8,
                "v={v}"
            );
        }
        for c in (0..=65535u16).step_by(251) {
            for a in (0..=65535u16).step_by(257) {
                let (cf, af) = (f64::from(c), f64::from(a));
                let exact = (cf * af + max * (max - af)) * 255.0 / (max * max);
                assert_eq!(blend16(c, a), exact.round() as u8, "c={c} a={a}");
            }
        }
    }
}
