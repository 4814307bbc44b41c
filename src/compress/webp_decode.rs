//! WebP inputs decoded by libwebp: the decoder of the browsers, libvips and Pillow, built from
//! its C sources by libwebp-sys (already here for the encoder). image-webp, which this
//! replaces for still pictures, decoded the bench's WebP photos at 17-30 MP/s a core where
//! libwebp does 41-74 (../shared/notes/codecs.md; re-measured in docs/performance.md).
//!
//! image-webp still reads the container: dimensions, alpha, the ICC profile and EXIF come
//! from it exactly as before, and so do its errors for a broken container. An animation goes
//! to it whole (its first frame), since libwebp's still-picture API refuses animations.

use std::io::Cursor;

use image::codecs::webp::WebPDecoder;
use image::error::{DecodingError, ImageFormatHint};
use image::metadata::Orientation;
use image::{ColorType, ImageDecoder, ImageError, ImageFormat, ImageResult, Limits};
use libwebp_sys as sys;

/// A WebP still picture's pixels from libwebp, its metadata from image-webp.
pub(super) struct LibWebpDecoder<'a> {
    bytes: &'a [u8],
    container: WebPDecoder<Cursor<&'a [u8]>>,
}

impl<'a> LibWebpDecoder<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> ImageResult<Self> {
        Ok(LibWebpDecoder {
            bytes,
            container: WebPDecoder::new(Cursor::new(bytes))?,
        })
    }
}

impl ImageDecoder for LibWebpDecoder<'_> {
    fn dimensions(&self) -> (u32, u32) {
        self.container.dimensions()
    }

    fn color_type(&self) -> ColorType {
        self.container.color_type()
    }

    fn icc_profile(&mut self) -> ImageResult<Option<Vec<u8>>> {
        self.container.icc_profile()
    }

    fn exif_metadata(&mut self) -> ImageResult<Option<Vec<u8>>> {
        self.container.exif_metadata()
    }

    fn orientation(&mut self) -> ImageResult<Orientation> {
        self.container.orientation()
    }

    fn set_limits(&mut self, limits: Limits) -> ImageResult<()> {
        self.container.set_limits(limits)
    }

    fn read_image(self, buf: &mut [u8]) -> ImageResult<()> {
        if self.container.has_animation() {
            return self.container.read_image(buf);
        }
        let (width, height) = self.dimensions();
        let rgba = self.color_type() == ColorType::Rgba8;
        decode_into(self.bytes, width, height, rgba, buf).map_err(|reason| {
            ImageError::Decoding(DecodingError::new(
                ImageFormatHint::Exact(ImageFormat::WebP),
                reason,
            ))
        })
    }

    fn read_image_boxed(self: Box<Self>, buf: &mut [u8]) -> ImageResult<()> {
        (*self).read_image(buf)
    }
}

/// Decodes a still WebP into `buf`: `width` x `height` RGB, or RGBA when `rgba`, rows packed.
fn decode_into(
    bytes: &[u8],
    width: u32,
    height: u32,
    rgba: bool,
    buf: &mut [u8],
) -> Result<(), String> {
    let bpp: usize = if rgba { 4 } else { 3 };
    let stride = width as usize * bpp;
    if buf.len() != stride * height as usize {
        return Err(format!(
            "libwebp: a buffer of {} bytes for {width}x{height}",
            buf.len()
        ));
    }
    let stride = i32::try_from(stride).map_err(|_| "libwebp: rows too long".to_string())?;
    let mut config =
        sys::WebPDecoderConfig::new().map_err(|_| "libwebp: version mismatch".to_string())?;
    // SAFETY: `bytes` is a live slice of the length given; `config.input` is a valid,
    // initialised features struct that libwebp only writes.
    let status = unsafe { sys::WebPGetFeatures(bytes.as_ptr(), bytes.len(), &mut config.input) };
    if status != sys::VP8StatusCode::VP8_STATUS_OK {
        return Err(reason(status));
    }
    let size = (config.input.width, config.input.height);
    if u32::try_from(size.0) != Ok(width) || u32::try_from(size.1) != Ok(height) {
        return Err(format!(
            "the bitstream is {}x{}, the container says {width}x{height}",
            size.0, size.1
        ));
    }
    config.output.colorspace = if rgba {
        sys::WEBP_CSP_MODE::MODE_RGBA
    } else {
        sys::WEBP_CSP_MODE::MODE_RGB
    };
    // Into our buffer: libwebp checks that stride x height fits in `size` before writing.
    config.output.is_external_memory = 1;
    config.output.u.RGBA = sys::WebPRGBABuffer {
        rgba: buf.as_mut_ptr(),
        stride,
        size: buf.len(),
    };
    // SAFETY: `bytes` as above; `config` was initialised by WebPInitDecoderConfig and its
    // output points at `buf`, which outlives the call and holds `size` writable bytes.
    let status = unsafe { sys::WebPDecode(bytes.as_ptr(), bytes.len(), &mut config) };
    // SAFETY: frees only what libwebp allocated itself (nothing, with external memory).
    unsafe { sys::WebPFreeDecBuffer(&mut config.output) };
    if status != sys::VP8StatusCode::VP8_STATUS_OK {
        return Err(reason(status));
    }
    Ok(())
}

fn reason(status: sys::VP8StatusCode) -> String {
    use sys::VP8StatusCode as S;
    match status {
        S::VP8_STATUS_NOT_ENOUGH_DATA => "libwebp: data is truncated".into(),
        S::VP8_STATUS_BITSTREAM_ERROR => "libwebp: corrupt bitstream".into(),
        S::VP8_STATUS_UNSUPPORTED_FEATURE => "libwebp: unsupported feature".into(),
        S::VP8_STATUS_OUT_OF_MEMORY => "libwebp: out of memory".into(),
        other => format!("libwebp: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::compress;
    use crate::compress::fixtures::{encode_as, photo_like, psnr, Rng, OPTS};
    use image::{DynamicImage, Rgba, RgbaImage};

    /// What image-webp makes of `bytes`: the reference the new decoder is held to.
    fn image_webp(bytes: &[u8]) -> Vec<u8> {
        let d = WebPDecoder::new(Cursor::new(bytes)).unwrap();
        let mut buf = vec![0; d.total_bytes() as usize];
        d.read_image(&mut buf).unwrap();
        buf
    }

    fn libwebp(bytes: &[u8]) -> (ColorType, Vec<u8>) {
        let d = LibWebpDecoder::new(bytes).unwrap();
        let color = d.color_type();
        let mut buf = vec![0; d.total_bytes() as usize];
        d.read_image(&mut buf).unwrap();
        (color, buf)
    }

    fn lossy(width: u32, height: u32, quality: f32) -> Vec<u8> {
        let rgb = photo_like(width, height);
        webp::Encoder::from_rgb(&rgb, width, height)
            .encode(quality)
            .to_vec()
    }

    #[test]
    fn lossy_pictures_decode_as_image_webp_decodes_them() {
        for (w, h, q) in [(97, 61, 75.0), (16, 16, 10.0), (301, 17, 95.0)] {
            let bytes = lossy(w, h, q);
            let (color, ours) = libwebp(&bytes);
            assert_eq!(color, ColorType::Rgb8);
            let theirs = image_webp(&bytes);
            assert_eq!(ours.len(), theirs.len());
            // The two differ only in how chroma is upsampled (libwebp's "fancy" filter).
            let db = psnr(&ours, &theirs);
            assert!(db > 38.0, "{w}x{h} q{q}: {db:.2} dB");
        }
    }

    #[test]
    fn lossless_pictures_with_alpha_are_exact() {
        let image = RgbaImage::from_fn(45, 33, |x, y| {
            Rgba([x as u8 * 5, y as u8 * 7, (x * y) as u8, (x * 3 + y) as u8])
        });
        let bytes = encode_as(image.clone(), ImageFormat::WebP);
        let (color, ours) = libwebp(&bytes);
        assert_eq!(color, ColorType::Rgba8);
        assert!(ours == image.into_raw());
        assert!(ours == image_webp(&bytes));
    }

    #[test]
    fn an_animation_gives_its_first_frame() {
        let (red, blue) = (
            RgbaImage::from_pixel(24, 24, Rgba([255, 0, 0, 255])),
            RgbaImage::from_pixel(24, 24, Rgba([0, 0, 255, 255])),
        );
        let config = webp::WebPConfig::new().unwrap();
        let mut encoder = webp::AnimEncoder::new(24, 24, &config);
        encoder.add_frame(webp::AnimFrame::from_rgba(&red, 24, 24, 0));
        encoder.add_frame(webp::AnimFrame::from_rgba(&blue, 24, 24, 100));
        let bytes = encoder.encode().to_vec();
        let d = LibWebpDecoder::new(&bytes).unwrap();
        assert!(d.container.has_animation());
        let out = compress(&bytes, &OPTS).unwrap();
        let picture = image::load_from_memory(&out.bytes).unwrap().to_rgb8();
        let centre = picture.get_pixel(12, 12).0;
        assert!(centre[0] > 200 && centre[2] < 60, "{centre:?}");
    }

    #[test]
    fn truncated_and_damaged_files_fail_cleanly() {
        let bytes = lossy(64, 48, 60.0);
        let opts = OPTS;
        for len in 0..bytes.len() {
            assert!(compress(&bytes[..len], &opts).is_err(), "cut to {len}");
        }
        let mut rng = Rng(99);
        for _ in 0..3000 {
            let mut d = bytes.clone();
            let i = rng.next() as usize % d.len();
            d[i] ^= 1 << (rng.next() % 8);
            let _ = compress(&d, &opts);
        }
        let still = DynamicImage::ImageRgb8(photo_like(8, 8));
        assert!(compress(&encode_as(still, ImageFormat::WebP), &opts).is_ok());
    }
}
