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
    let i = segment(&MEASURED, q);
    let ((j0, w0), (j1, w1)) = (MEASURED[i - 1], MEASURED[i]);
    w0 + (w1 - w0) * (q - j0) / (j1 - j0)
}

/// What libwebp's encoder holds beside its picture, for `pixels` at JPEG-scale quality
/// `jpeg_quality`: mostly its token buffer (every coded decision, 2 bytes each, kept so the
/// probabilities can be fitted before writing), which grows with quality and detail. Measured
/// on the noisiest bench photo (the 12 MP native camera file, x1), as peak RSS during the
/// encode less the picture and the body (`IMGBATCH_CPU_WORKERS=1`, one image): 1.25 B/px at
/// q20, 2.6 at q50, 4.7 at q80, 7.4 at q90, 11.6 at q100; a tenth more here for headroom.
pub(super) fn encoder_bytes(pixels: u64, jpeg_quality: u8) -> u64 {
    // Tenths of a byte a pixel, by JPEG-scale quality.
    const MEASURED: [(u64, u64); 8] = [
        (0, 11),
        (20, 14),
        (35, 21),
        (50, 29),
        (65, 34),
        (80, 52),
        (90, 81),
        (100, 128),
    ];
    let q = u64::from(jpeg_quality.clamp(1, 100));
    let i = segment(&MEASURED, q);
    let ((q0, b0), (q1, b1)) = (MEASURED[i - 1], MEASURED[i]);
    let tenths = b0 * (q1 - q) + b1 * (q - q0);
    pixels * tenths / (10 * (q1 - q0))
}

/// The end of the segment of a measured table (by JPEG-scale quality, rising, from 0 to 100)
/// that holds `q`: the two tables above are interpolated between entries `i - 1` and `i`.
fn segment<T: PartialOrd + Copy, V>(table: &[(T, V)], q: T) -> usize {
    table
        .iter()
        .position(|&(j, _)| j >= q)
        .unwrap_or(table.len() - 1)
        .max(1)
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

    /// A JPEG's own YCbCr decoded straight into the picture's 4:2:0 planes
    /// (`jpeg::decode_yuv420`), then moved from JPEG's full range to the limited range VP8
    /// codes (the same BT.601 matrix, so the colours are the ones libwebp's own import would
    /// make from the RGB). No RGB is ever made: 12 MP costs the picture's 18 MB (and a
    /// progressive file's coefficients) where the pixel path held 36 MB of RGB and the
    /// decoder's scratch beside it, and the colour conversion and libwebp's import are gone.
    pub(super) fn from_jpeg(jpeg: &[u8], width: u32, height: u32) -> Result<Picture, String> {
        if width == 0 || height == 0 || width > WEBP_MAX_DIMENSION || height > WEBP_MAX_DIMENSION {
            return Err(format!("{width}x{height} does not fit a WebP picture"));
        }
        let mut picture = sys::WebPPicture::new().map_err(|_| "version mismatch".to_string())?;
        picture.use_argb = 0;
        picture.width = width as i32;
        picture.height = height as i32;
        let mut picture = Picture(picture);
        // SAFETY: an initialised picture; WebPPictureAlloc sizes its planes from width,
        // height and colorspace (YUV 4:2:0, no alpha), and Drop frees them.
        if unsafe { sys::WebPPictureAlloc(&mut picture.0) } == 0 {
            return Err("cannot allocate the picture".into());
        }
        let p = &picture.0;
        let (w, h) = (width as usize, height as usize);
        let (y_stride, uv_stride) = (p.y_stride as usize, p.uv_stride as usize);
        let uv_rows = h.div_ceil(2);
        // SAFETY: the planes' sizes as WebPPictureAlloc made them (below); zeroed first, so
        // no slice is ever over uninitialised memory whatever the decoder leaves unwritten.
        unsafe {
            std::ptr::write_bytes(p.y, 0, y_stride * h);
            std::ptr::write_bytes(p.u, 128, uv_stride * uv_rows);
            std::ptr::write_bytes(p.v, 128, uv_stride * uv_rows);
        }
        // SAFETY: WebPPictureAlloc made `y` of `y_stride` x height bytes and `u`, `v` of
        // `uv_stride` x ceil(height/2); they live as long as the picture, borrowed here only.
        let (y, u, v) = unsafe {
            (
                std::slice::from_raw_parts_mut(p.y, y_stride * h),
                std::slice::from_raw_parts_mut(p.u, uv_stride * uv_rows),
                std::slice::from_raw_parts_mut(p.v, uv_stride * uv_rows),
            )
        };
        let mut planes = crate::jpeg::Yuv420Planes {
            y,
            y_stride,
            u,
            v,
            uv_stride,
        };
        let color = crate::jpeg::decode_yuv420(jpeg, &mut planes).map_err(|e| e.to_string())?;
        let (luma, chroma) = limited_range_tables();
        for row in planes.y.chunks_mut(y_stride) {
            row[..w].iter_mut().for_each(|s| *s = luma[usize::from(*s)]);
        }
        for plane in [&mut *planes.u, &mut *planes.v] {
            for row in plane.chunks_mut(uv_stride) {
                let row = &mut row[..w.div_ceil(2)];
                if color {
                    row.iter_mut().for_each(|s| *s = chroma[usize::from(*s)]);
                } else {
                    row.fill(128);
                }
            }
        }
        Ok(picture)
    }

    /// What encoding this picture holds at its peak: its planes and the encoder's buffers.
    pub(super) fn encoding_bytes(&self, jpeg_quality: u8) -> u64 {
        let (w, h) = (self.0.width.max(0) as u64, self.0.height.max(0) as u64);
        let planes = w * h + 2 * w.div_ceil(2) * h.div_ceil(2);
        planes + encoder_bytes(w * h, jpeg_quality)
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

/// JPEG's full-range Y and Cb/Cr (0-255) to VP8's limited range (16-235 and 16-240).
fn limited_range_tables() -> ([u8; 256], [u8; 256]) {
    let mut luma = [0u8; 256];
    let mut chroma = [0u8; 256];
    for i in 0..256 {
        luma[i] = (16.0 + i as f64 * 219.0 / 255.0).round() as u8;
        chroma[i] = (128.0 + (i as f64 - 128.0) * 224.0 / 255.0).round() as u8;
    }
    (luma, chroma)
}

fn encode_error(what: &str) -> CompressError {
    CompressError::Encode(format!("libwebp: {what}"))
}

#[cfg(test)]
mod tests {
    use super::{encoder_bytes, webp_quality};

    #[test]
    fn the_encoders_buffers_follow_the_measured_table() {
        let px = 12_000_000;
        assert_eq!(encoder_bytes(px, 50), px * 29 / 10);
        assert_eq!(encoder_bytes(px, 100), px * 128 / 10);
        let all: Vec<u64> = (1..=100).map(|q| encoder_bytes(px, q)).collect();
        assert!(all.windows(2).all(|w| w[0] <= w[1]));
        assert!(all[0] >= px);
    }

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
