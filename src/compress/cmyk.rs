//! CMYK and YCCK JPEGs with a usable colour profile: decoded to ink amounts, then converted to
//! sRGB through the profile. (Without one, `image`'s decoder applies the naive conversion that
//! browsers use, on the ordinary pixel path.)

use image::metadata::Orientation;
use moxcms::Transform8BitExecutor;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

use super::color::{self, ColorHandling};
use super::decode::{Job, Made};
use super::pixels::{Layout, Pixels};
use super::CompressError;
use crate::jpeg::Info;

impl Job<'_> {
    pub(super) fn run_cmyk(
        &self,
        info: &Info,
        transform: &Transform8BitExecutor,
        color: ColorHandling,
    ) -> Result<Made, CompressError> {
        let (width, height) = (u32::from(info.width), u32::from(info.height));
        self.check_header(width, height)?;
        // The samples as stored: zune-jpeg copies them out untouched when asked for the
        // colour space the file is in.
        let ycck = info.adobe_transform == Some(2);
        let stored = if ycck {
            ColorSpace::YCCK
        } else {
            ColorSpace::CMYK
        };
        let options = DecoderOptions::default()
            .set_strict_mode(false)
            .set_max_width(usize::MAX)
            .set_max_height(usize::MAX)
            .jpeg_set_out_colorspace(stored);
        let mut decoder =
            zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(self.bytes), options);
        let mut samples = decoder
            .decode()
            .map_err(|e| self.decode_error(e.to_string()))?;
        if samples.len() != width as usize * height as usize * 4 {
            return Err(self.decode_error("CMYK samples do not fill the frame"));
        }
        to_ink(&mut samples, ycck);
        let rgb = color::cmyk_to_srgb(transform, &samples).map_err(|e| self.decode_error(e))?;
        drop(samples);
        let pixels = Pixels {
            data: rgb,
            width,
            height,
            layout: Layout::Rgb,
        };
        let orientation = info
            .exif_orientation
            .and_then(|o| Orientation::from_exif(u8::try_from(o).ok()?))
            .unwrap_or(Orientation::NoTransforms);
        self.finish(pixels, orientation, color)
    }
}

/// Stored samples to ink amounts (0 = no ink), in place. CMYK JPEGs store inverted values
/// (Adobe's convention, which every CMYK JPEG in the wild follows; browsers assume it too).
/// YCCK stores the inverted C, M, Y as YCbCr: converting that to RGB gives the ink amounts
/// directly, and K is inverted as in CMYK.
fn to_ink(samples: &mut [u8], ycck: bool) {
    for p in samples.chunks_exact_mut(4) {
        if ycck {
            let y = f32::from(p[0]);
            let cb = f32::from(p[1]) - 128.0;
            let cr = f32::from(p[2]) - 128.0;
            let clamp = |v: f32| v.round().clamp(0.0, 255.0) as u8;
            p[0] = clamp(y + 1.402 * cr);
            p[1] = clamp(y - 0.344_136 * cb - 0.714_136 * cr);
            p[2] = clamp(y + 1.772 * cb);
        } else {
            for v in &mut p[..3] {
                *v = 255 - *v;
            }
        }
        p[3] = 255 - p[3];
    }
}
