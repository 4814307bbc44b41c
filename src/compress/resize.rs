//! Fitting a picture inside an upload's size box: aspect ratio kept, never enlarged, with a
//! Lanczos3 filter (fast_image_resize: SSE4.1/AVX2/NEON picked at run time), in the pixels'
//! own sRGB encoding as libvips, Pillow and browsers resize.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::pixels::{Layout, Pixels};
use super::CompressError;

/// The size box of a compression: the most pixels of width and of height an output may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SizeBox {
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
}

impl SizeBox {
    /// No limit.
    pub const NONE: SizeBox = SizeBox {
        max_width: None,
        max_height: None,
    };

    /// The size a `width` x `height` picture is shown at inside the box: the largest that fits
    /// with the aspect ratio kept (each side rounded, at least one pixel), or the picture's own
    /// when it already fits. Never larger than the picture.
    pub fn fit(&self, width: u32, height: u32) -> (u32, u32) {
        let scale_w = self
            .max_width
            .map_or(1.0, |m| f64::from(m) / f64::from(width));
        let scale_h = self
            .max_height
            .map_or(1.0, |m| f64::from(m) / f64::from(height));
        let scale = scale_w.min(scale_h);
        if scale >= 1.0 {
            return (width, height);
        }
        // The side that binds is the box's exactly; the other is rounded, so the aspect ratio
        // is kept to within half a pixel.
        let side = |n: u32, limit: Option<u32>, exact: bool| -> u32 {
            match (exact, limit) {
                (true, Some(m)) => m.min(n),
                _ => ((f64::from(n) * scale).round() as u32).clamp(1, n),
            }
        };
        let width_binds = scale_w <= scale_h;
        (
            side(width, self.max_width, width_binds),
            side(height, self.max_height, !width_binds),
        )
    }

    /// Whether a picture stored as `width` x `height`, shown turned a quarter when `turned`
    /// (EXIF orientations 5-8), must be made smaller to fit.
    pub fn shrinks_stored(&self, width: u32, height: u32, turned: bool) -> bool {
        if turned {
            self.shrinks(height, width)
        } else {
            self.shrinks(width, height)
        }
    }

    /// Whether a `width` x `height` picture must be made smaller to fit.
    pub fn shrinks(&self, width: u32, height: u32) -> bool {
        self.fit(width, height) != (width, height)
    }
}

/// `pixels` at `width` x `height`.
pub(super) fn resize(pixels: Pixels, width: u32, height: u32) -> Result<Pixels, CompressError> {
    if (pixels.width, pixels.height) == (width, height) {
        return Ok(pixels);
    }
    let pixel_type = match pixels.layout {
        Layout::Gray => PixelType::U8,
        Layout::Rgb => PixelType::U8x3,
        Layout::RgbX => PixelType::U8x4,
    };
    let failed = |e: &dyn std::fmt::Display| CompressError::Encode(format!("resize: {e}"));
    let src = Image::from_vec_u8(pixels.width, pixels.height, pixels.data, pixel_type)
        .map_err(|e| failed(&e))?;
    let mut dst = Image::new(width, height, pixel_type);
    // Alpha is already flattened: the fourth byte is opaque and needs no premultiplying.
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(false);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| failed(&e))?;
    drop(src);
    Ok(Pixels {
        data: dst.into_vec(),
        width,
        height,
        layout: pixels.layout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(w: Option<u32>, h: Option<u32>, size: (u32, u32)) -> (u32, u32) {
        SizeBox {
            max_width: w,
            max_height: h,
        }
        .fit(size.0, size.1)
    }

    #[test]
    fn fits_inside_keeping_the_aspect_ratio() {
        assert_eq!(fit(Some(1200), Some(1200), (4000, 3000)), (1200, 900));
        assert_eq!(fit(Some(1200), None, (3000, 4000)), (1200, 1600));
        assert_eq!(fit(None, Some(1200), (3000, 4000)), (900, 1200));
        assert_eq!(fit(Some(1000), Some(100), (4000, 3000)), (133, 100));
        assert_eq!(fit(Some(1), Some(1), (4000, 3000)), (1, 1));
        assert_eq!(fit(Some(10), None, (4000, 3)), (10, 1));
    }

    #[test]
    fn never_enlarges() {
        assert_eq!(fit(Some(5000), Some(5000), (4000, 3000)), (4000, 3000));
        assert_eq!(fit(None, None, (4000, 3000)), (4000, 3000));
        assert_eq!(fit(Some(4000), None, (4000, 3000)), (4000, 3000));
    }

    #[test]
    fn every_box_keeps_the_ratio_within_a_pixel() {
        for (w, h) in [(4000, 3000), (1, 9999), (1234, 567), (640, 480), (3, 2)] {
            for (bw, bh) in [
                (Some(100), Some(100)),
                (Some(37), None),
                (None, Some(5)),
                (Some(1), Some(7)),
            ] {
                let (fw, fh) = fit(bw, bh, (w, h));
                assert!(bw.is_none_or(|b| fw <= b) && bh.is_none_or(|b| fh <= b));
                assert!(fw <= w && fh <= h && fw >= 1 && fh >= 1);
                // The unbound side is within one pixel of the exact ratio.
                let exact_h = f64::from(fw) * f64::from(h) / f64::from(w);
                let exact_w = f64::from(fh) * f64::from(w) / f64::from(h);
                assert!(
                    (exact_h - f64::from(fh)).abs() <= 1.0
                        || (exact_w - f64::from(fw)).abs() <= 1.0,
                    "{w}x{h} in {bw:?}x{bh:?} -> {fw}x{fh}"
                );
            }
        }
    }
}
