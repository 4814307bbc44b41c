//! Which JPEGs skip the pixels: requantised in the DCT domain instead of decoded and encoded.

use std::sync::Arc;

use moxcms::Transform8BitExecutor;

use super::color::{self, ColorHandling, Data, Verdict};
use super::decode::Made;
use super::{
    Codec, CompressError, CompressOptions, Compressed, FormatChoice, InputFormat, OutputFormat,
};

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

/// Where a JPEG goes.
pub(super) enum JpegRoute {
    /// Requantised in the DCT domain: done.
    Done(Made),
    /// CMYK with a usable profile: decoded to ink amounts and converted (`cmyk`).
    Cmyk(
        Box<crate::jpeg::Info>,
        Arc<Transform8BitExecutor>,
        ColorHandling,
    ),
    /// Through the pixel path; with what is already known about its colour, if anything.
    Pixels(Option<ColorHandling>),
}

/// The fast path, if this JPEG may take it: not when its embedded profile is other than sRGB
/// (the pixels must be converted), or when [`takes_fast_path`] says no, or when the
/// coefficient reader refuses the file, in which case the pixel path gives the precise error.
pub(super) fn requantize_if_eligible(
    bytes: &[u8],
    opts: &CompressOptions,
) -> Result<JpegRoute, CompressError> {
    let Ok(info) = crate::jpeg::info(bytes) else {
        return Ok(JpegRoute::Pixels(None));
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    if u64::from(width) * u64::from(height) > opts.max_pixels {
        return Err(CompressError::TooManyPixels {
            width,
            height,
            max: opts.max_pixels,
        });
    }
    let data = match info.components.len() {
        1 => Data::Gray,
        4 => Data::Cmyk,
        _ => Data::Rgb,
    };
    let verdict = info
        .icc_profile
        .as_deref()
        .map(|icc| color::assess(icc, data));
    if data == Data::Cmyk {
        return Ok(match verdict {
            Some(Verdict::Convert { transform, from }) => {
                JpegRoute::Cmyk(Box::new(info), transform, ColorHandling::Converted { from })
            }
            other => JpegRoute::Pixels(Some(
                other.map_or(ColorHandling::Untagged, |v| v.handling()),
            )),
        });
    }
    // The fast path writes a JPEG at the input's size: not for another format, nor for a
    // picture the box shrinks (jpeg_scaled takes most of those before this).
    let turned = info.exif_orientation.is_some_and(|o| (5..=8).contains(&o));
    let shrinks = opts.size_box.shrinks_stored(width, height, turned);
    if opts.format != FormatChoice::Jpeg || shrinks {
        return Ok(JpegRoute::Pixels(None));
    }
    if verdict.as_ref().is_some_and(|v| !v.is_srgb()) || !takes_fast_path(&info) {
        return Ok(JpegRoute::Pixels(None));
    }
    let Ok(r) = crate::jpeg::requantize_to(bytes, opts.target()) else {
        return Ok(JpegRoute::Pixels(None));
    };
    let color = verdict.map_or(ColorHandling::Untagged, |v| v.handling());
    Ok(JpegRoute::Done(Made {
        out: Compressed {
            bytes: r.jpeg,
            format: OutputFormat::Jpeg,
            width: r.width.into(),
            height: r.height.into(),
            input_format: InputFormat::Jpeg,
            codec: Codec::Requantized,
            note: color.note(),
            color,
        },
        orientation: 1,
        resized: false,
    }))
}
