//! Lossy WebP output through libwebp (built from source by libwebp-sys).

use super::pixels::{Layout, Pixels};
use super::CompressError;
use libwebp_sys as sys;

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

/// A picture in libwebp's own YUV 4:2:0, made from our pixels: what the encoder reads. Once it
/// exists the RGB pixels are no longer needed (12 MP: 18 MB here against 36 MB of RGB).
pub(super) struct Picture(sys::WebPPicture);

impl Picture {
    /// Converts `pixels` (gray goes in as RGB) into libwebp's YUV picture.
    pub(super) fn import(pixels: &Pixels) -> Result<Picture, CompressError> {
        let (width, height) = (pixels.width, pixels.height);
        if width > WEBP_MAX_DIMENSION || height > WEBP_MAX_DIMENSION {
            return Err(CompressError::Encode(format!(
                "{width}x{height} exceeds WebP's maximum of {WEBP_MAX_DIMENSION} pixels per side"
            )));
        }
        let mut picture = sys::WebPPicture::new().map_err(|_| encode_error("version mismatch"))?;
        // Straight to YUV: the ARGB copy the `webp` crate asked for cost 4 bytes a pixel more.
        picture.use_argb = 0;
        picture.width = width as i32;
        picture.height = height as i32;
        let mut picture = Picture(picture);
        let gray_as_rgb;
        let (data, bpp, rgbx) = match pixels.layout {
            Layout::Rgb => (&pixels.data, 3, false),
            // Opaque: flattening set every fourth byte to 255; libwebp ignores it.
            Layout::RgbX => (&pixels.data, 4, true),
            Layout::Gray => {
                gray_as_rgb = pixels
                    .data
                    .iter()
                    .flat_map(|&g| [g, g, g])
                    .collect::<Vec<u8>>();
                (&gray_as_rgb, 3, false)
            }
        };
        let stride =
            i32::try_from(width as usize * bpp).map_err(|_| encode_error("rows too long"))?;
        if data.len() < width as usize * bpp * height as usize {
            return Err(encode_error("fewer pixels than the picture's size"));
        }
        // SAFETY: `data` holds `height` rows of `stride` bytes (checked above); the picture was
        // initialised by WebPPictureInit and is freed by Drop.
        let ok = unsafe {
            if rgbx {
                sys::WebPPictureImportRGBX(&mut picture.0, data.as_ptr(), stride)
            } else {
                sys::WebPPictureImportRGB(&mut picture.0, data.as_ptr(), stride)
            }
        };
        if ok == 0 {
            return Err(encode_error(&format!("import: {:?}", picture.0.error_code)));
        }
        Ok(picture)
    }

    /// Encodes the picture as lossy WebP at JPEG-scale quality `jpeg_quality`.
    pub(super) fn encode(mut self, jpeg_quality: u8) -> Result<Vec<u8>, CompressError> {
        let mut config = sys::WebPConfig::new().map_err(|_| encode_error("version mismatch"))?;
        config.quality = webp_quality(jpeg_quality);
        // libwebp's and Pillow's default effort.
        config.method = 4;
        // SAFETY: a zeroed writer is what WebPMemoryWriterInit makes; it is cleared below.
        let mut writer: sys::WebPMemoryWriter = unsafe { std::mem::zeroed() };
        unsafe { sys::WebPMemoryWriterInit(&mut writer) };
        self.0.writer = Some(sys::WebPMemoryWrite);
        self.0.custom_ptr = (&mut writer as *mut sys::WebPMemoryWriter).cast();
        // SAFETY: config and picture are initialised; the writer outlives the call.
        let ok = unsafe { sys::WebPEncode(&config, &mut self.0) };
        let out = if ok != 0 && !writer.mem.is_null() {
            // SAFETY: libwebp wrote `size` bytes at `mem`.
            Ok(unsafe { std::slice::from_raw_parts(writer.mem, writer.size) }.to_vec())
        } else {
            Err(encode_error(&format!("{:?}", self.0.error_code)))
        };
        // SAFETY: frees what WebPMemoryWrite allocated.
        unsafe { sys::WebPMemoryWriterClear(&mut writer) };
        self.0.custom_ptr = std::ptr::null_mut();
        out
    }
}

impl Drop for Picture {
    fn drop(&mut self) {
        // SAFETY: the picture was initialised; this frees its YUV planes (and nothing twice).
        unsafe { sys::WebPPictureFree(&mut self.0) };
    }
}

fn encode_error(what: &str) -> CompressError {
    CompressError::Encode(format!("libwebp: {what}"))
}

/// Lossy WebP of `pixels` at JPEG-scale quality `jpeg_quality`; the pixels are freed as soon as
/// libwebp has its own copy.
pub(super) fn encode_webp(pixels: Pixels, jpeg_quality: u8) -> Result<Vec<u8>, CompressError> {
    let picture = Picture::import(&pixels)?;
    drop(pixels);
    picture.encode(jpeg_quality)
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
