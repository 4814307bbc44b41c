//! Which JPEGs skip the pixels: requantised in the DCT domain instead of decoded and encoded.

use super::{Codec, CompressError, CompressOptions, Compressed, InputFormat};

/// The policy, in one place: may this JPEG take the DCT-domain fast path? Only when the result
/// is what the pixel path would make: 8-bit YCbCr coming out 4:2:0 (or grayscale), no rotation
/// to apply, nothing the coefficient reader refuses. 4:4:4, 4:2:2 and 4:4:0 inputs have their
/// chroma halved in the DCT domain on the way (`jpeg::requantize`); rotated, CMYK/YCCK, other
/// samplings and odd files go through pixels.
pub fn takes_fast_path(info: &crate::jpeg::Info) -> bool {
    if info.unsupported.is_some() || info.precision != 8 || info.exif_orientation.unwrap_or(1) != 1
    {
        return false;
    }
    match info.components.as_slice() {
        [_] => true,
        [y, cb, cr] => {
            // Adobe transform 0 means RGB stored as is, not YCbCr.
            info.adobe_transform != Some(0)
                && matches!((y.h, y.v), (2, 2) | (2, 1) | (1, 2) | (1, 1))
                && (cb.h, cb.v) == (1, 1)
                && (cr.h, cr.v) == (1, 1)
        }
        _ => false,
    }
}

/// The fast path: None sends the image down the pixel path (not eligible, or the coefficient
/// reader refused it, in which case the pixel path gives the precise error).
pub(super) fn requantize_if_eligible(
    bytes: &[u8],
    opts: &CompressOptions,
) -> Result<Option<Compressed>, CompressError> {
    let Ok(info) = crate::jpeg::info(bytes) else {
        return Ok(None);
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    if u64::from(width) * u64::from(height) > opts.max_pixels {
        return Err(CompressError::TooManyPixels {
            width,
            height,
            max: opts.max_pixels,
        });
    }
    if !takes_fast_path(&info) {
        return Ok(None);
    }
    Ok(crate::jpeg::requantize(bytes, opts.quality.clamp(1, 100))
        .ok()
        .map(|r| Compressed {
            jpeg: r.jpeg,
            width: r.width.into(),
            height: r.height.into(),
            input_format: InputFormat::Jpeg,
            codec: Codec::Requantized,
        }))
}
