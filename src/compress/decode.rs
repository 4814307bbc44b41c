//! The pixel path: the header checked against the limits, then the decoder run with limits of
//! its own, its output made opaque 8-bit, oriented and encoded.

use std::io::Cursor;

use image::codecs::bmp::BmpDecoder;
use image::codecs::gif::GifDecoder;
use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::codecs::tiff::TiffDecoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageError, ImageResult, Limits};

use crate::jpeg::StructureProblem;

use super::color::{self, ColorHandling, Verdict};
use super::encode::encode_jpeg;
use super::pixels::{to_opaque_8bit, Layout, Pixels};
use super::policy::{requantize_if_eligible, JpegRoute};
use super::resize::resize;
use super::smaller::never_larger;
use super::webp::{Picture, WEBP_MAX_DIMENSION};
use super::webp_decode::LibWebpDecoder;
use super::{
    sniff, Codec, CompressError, CompressOptions, Compressed, FormatChoice, InputFormat,
    OutputFormat,
};

/// The largest width or height a JPEG frame header can express.
pub(super) const JPEG_MAX_DIMENSION: u32 = u16::MAX as u32;

/// Widest decoded pixel `image` can hand us (RGBA, 32-bit float per channel). Used only to size
/// the allocation backstop, which must never reject an image that passed the pixel check.
const MAX_BYTES_PER_PIXEL: u64 = 16;

/// Headroom on top of the pixel buffer for decoders' own scratch space (PNG chunk buffers, TIFF
/// strips, a GIF frame smaller than its canvas...).
const DECODER_SCRATCH_BYTES: u64 = 64 * 1024 * 1024;

pub(super) fn compress_unguarded(
    bytes: &[u8],
    opts: &CompressOptions,
    past_peak: &dyn Fn(u64),
) -> Result<Compressed, CompressError> {
    let format = sniff(bytes)?;
    let made = recompress(bytes, format, opts, past_peak)?;
    // A picture made smaller to fit the box is what was asked for: the input, at its size,
    // would not do, however few bytes it has.
    Ok(if opts.never_larger && !made.resized {
        never_larger(bytes, format, made)
    } else {
        made.out
    })
}

/// An output as recompressed, and the input's orientation (which a kept input must carry).
pub(super) struct Made {
    pub(super) out: Compressed,
    pub(super) orientation: u16,
    /// Made smaller to fit the size box.
    pub(super) resized: bool,
}

fn recompress(
    bytes: &[u8],
    format: InputFormat,
    opts: &CompressOptions,
    past_peak: &dyn Fn(u64),
) -> Result<Made, CompressError> {
    // Decoders are built directly (rather than through `ImageReader`) so that the format we
    // sniffed is exactly the decoder that runs, and so we can inspect the header in between.
    let reader = Cursor::new(bytes);
    let ctx = Job {
        bytes,
        format,
        opts,
        past_peak,
    };
    if format == InputFormat::Jpeg {
        if let Some(made) = ctx.jpeg_scaled(bytes)? {
            return Ok(made);
        }
        if let Some(made) = ctx.jpeg_webp(bytes)? {
            return Ok(made);
        }
        match requantize_if_eligible(bytes, opts)? {
            JpegRoute::Done(made) => return Ok(made),
            JpegRoute::Cmyk(info, transform, color) => {
                return ctx.run_cmyk(&info, transform.as_ref(), color)
            }
            JpegRoute::Pixels(preset) => return ctx.run(JpegDecoder::new(reader), preset),
        }
    }
    match format {
        InputFormat::Jpeg => ctx.run(JpegDecoder::new(reader), None),
        // PNG is the one decoder that takes its memory limit at construction time. Only the
        // allocation cap goes in here: a dimension limit would make the constructor fail with a
        // generic limit error before we could report the dimensions as `TooManyPixels`.
        InputFormat::Png => ctx.run_png(PngDecoder::with_limits(reader, ctx.limits(false))),
        InputFormat::WebP => ctx.run(LibWebpDecoder::new(bytes), None),
        // `GifDecoder` as an `ImageDecoder` reads exactly one frame (the first) and stops, so an
        // animation with thousands of frames costs the same as a still image. Never use
        // `into_frames()` here.
        InputFormat::Gif => ctx.run(GifDecoder::new(reader), None),
        InputFormat::Bmp => ctx.run(BmpDecoder::new(reader), None),
        InputFormat::Tiff => ctx.run(TiffDecoder::new(reader), None),
    }
}

/// The EXIF orientation a JPEG's header states (none: as stored).
fn exif_orientation(info: &crate::jpeg::Info) -> Orientation {
    info.exif_orientation
        .and_then(|o| Orientation::from_exif(o as u8))
        .unwrap_or(Orientation::NoTransforms)
}

/// The factor a JPEG is decoded smaller by in the DCT domain before the box's filter (2), or
/// None for a full decode.
///
/// The 1/2 decode runs each block's lowest 4x4 frequencies through a 4-point inverse DCT: its
/// error is in what the box's Lanczos3 filter then keeps, so it shrinks as that filter's own
/// reduction grows. Measured on a 3 MP photo re-encoded at q92 (the 1/2 decode + Lanczos3
/// against a full decode + Lanczos3, both against the source resized by Lanczos3): 1.1 dB
/// below at 3.3x in all (1.67x left for the filter), 2.2 dB at 2.5x, 3.5 dB at 2.2x; at q75
/// 0.25, 0.5 and 0.8 dB; with 2x left, within 0.5 dB (`compress::options_tests`). Those
/// 50 dB-level errors vanish under an output encoder's own (q50 here: 35-40 dB); where the
/// output is kept near-lossless they would not, so the shortcut asks for a 2x filter above
/// quality 85 and 1.5x at or below it (the output stays within 0.5 dB of a full decode's:
/// `compress::options_tests`). 1/4 and 1/8 measured 2.3 dB below a full decode even with 2x
/// left: never taken.
pub(super) fn dct_reduction(info: &crate::jpeg::Info, opts: &CompressOptions) -> Option<u32> {
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let turned = matches!(
        exif_orientation(info),
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    // The box applies to the picture as shown; here it is turned back to the stored one.
    let (tw, th) = if turned {
        let (a, b) = opts.size_box.fit(h, w);
        (b, a)
    } else {
        opts.size_box.fit(w, h)
    };
    let left = |full: u32, target: u32| f64::from(full.div_ceil(2)) / f64::from(target.max(1));
    let needed = if opts.quality <= 85 { 1.5 } else { 2.0 };
    (left(w, tw) >= needed && left(h, th) >= needed).then_some(2)
}

/// Whether a JPEG bound for WebP goes from its coefficients straight to libwebp's YUV 4:2:0
/// (`Job::jpeg_webp`): WebP (not `auto`, which needs pixels for its JPEG candidate too) at
/// the input's size, nothing to rotate, 8-bit YCbCr or gray the coefficient reader takes,
/// chroma no coarser than 4:2:0. The profile is judged after this (sRGB or none).
pub(super) fn webp_from_ycbcr(info: &crate::jpeg::Info, opts: &CompressOptions) -> bool {
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let sampling_ok = match info.components.as_slice() {
        [_] => true,
        [y, cb, cr] => {
            // Luma at most twice the chroma's resolution each way: halved or kept, never
            // upsampled.
            let ratio = |l: u8, c: u8| c > 0 && l.is_multiple_of(c) && matches!(l / c, 1 | 2);
            info.adobe_transform != Some(0)
                && (cb.h, cb.v) == (cr.h, cr.v)
                && ratio(y.h, cb.h)
                && ratio(y.v, cb.v)
        }
        _ => false,
    };
    opts.format == FormatChoice::Webp
        && info.unsupported.is_none()
        && info.precision == 8
        && exif_orientation(info) == Orientation::NoTransforms
        && opts.size_box.fit(w, h) == (w, h)
        && w <= WEBP_MAX_DIMENSION
        && h <= WEBP_MAX_DIMENSION
        && sampling_ok
}

/// Per-call context shared by the format-specific steps.
pub(super) struct Job<'a> {
    pub(super) bytes: &'a [u8],
    format: InputFormat,
    opts: &'a CompressOptions,
    /// Told when the working set falls for good (see [`super::compress_releasing`]).
    past_peak: &'a dyn Fn(u64),
}

impl Job<'_> {
    pub(super) fn decode_error(&self, reason: impl Into<String>) -> CompressError {
        CompressError::Decode {
            format: self.format.as_str(),
            reason: reason.into(),
        }
    }

    fn image_error(&self, err: ImageError) -> CompressError {
        match err {
            ImageError::Limits(e) => self.decode_error(format!("exceeds decoding limits: {e}")),
            ImageError::Unsupported(e) => self.decode_error(format!("unsupported: {e}")),
            other => self.decode_error(other.to_string()),
        }
    }

    /// Decoding limits derived from `max_pixels`: a second line of defence behind our own header
    /// check, which also covers allocations the header does not predict (decoder scratch
    /// buffers, a GIF frame larger than its canvas, TIFF strips).
    fn limits(&self, with_dimensions: bool) -> Limits {
        let mut limits = Limits::default();
        limits.max_alloc = Some(
            self.opts
                .max_pixels
                .saturating_mul(MAX_BYTES_PER_PIXEL)
                .saturating_add(DECODER_SCRATCH_BYTES),
        );
        if with_dimensions {
            // A side longer than max_pixels implies more than max_pixels pixels.
            let max_side = u32::try_from(self.opts.max_pixels).unwrap_or(u32::MAX);
            limits.max_image_width = Some(max_side);
            limits.max_image_height = Some(max_side);
        }
        limits
    }

    /// The checks made from the header alone, before a single pixel buffer exists.
    pub(super) fn check_header(&self, width: u32, height: u32) -> Result<(), CompressError> {
        if u64::from(width) * u64::from(height) > self.opts.max_pixels {
            return Err(CompressError::TooManyPixels {
                width,
                height,
                max: self.opts.max_pixels,
            });
        }
        if width == 0 || height == 0 {
            return Err(
                self.decode_error(format!("header declares an empty {width}x{height} image"))
            );
        }
        if width > JPEG_MAX_DIMENSION || height > JPEG_MAX_DIMENSION {
            // Orientation may swap the sides, so both must fit regardless.
            return Err(CompressError::Encode(format!(
                "{width}x{height} exceeds JPEG's maximum of {JPEG_MAX_DIMENSION} pixels per side"
            )));
        }
        if self.format == InputFormat::Jpeg {
            check_jpeg_structure(self.bytes).map_err(|reason| self.decode_error(reason))?;
        }
        Ok(())
    }

    /// The pixel path. `preset`: what is already known about the colour (a CMYK JPEG whose
    /// profile cannot be used, decoded the way browsers show it), instead of reading a profile.
    fn run<D: ImageDecoder>(
        &self,
        decoder: ImageResult<D>,
        preset: Option<ColorHandling>,
    ) -> Result<Made, CompressError> {
        self.run_with(decoder, preset, |decoder| self.decode_whole(decoder))
    }

    /// A PNG: its rows decoded by [`crate::png`] when it takes the file (8-bit, not interlaced,
    /// no colour key: photos), else by `image`. `image`'s decoder reads the header and the
    /// metadata either way; the chunks are walked (and checksummed) only once the header has
    /// passed.
    fn run_png(
        &self,
        decoder: ImageResult<PngDecoder<Cursor<&[u8]>>>,
    ) -> Result<Made, CompressError> {
        self.run_with(decoder, None, |decoder| {
            match crate::png::Plain::read(self.bytes) {
                Some(plain) => self.decode_plain(&plain),
                None => self.decode_whole(decoder),
            }
        })
    }

    fn run_with<D: ImageDecoder>(
        &self,
        decoder: ImageResult<D>,
        preset: Option<ColorHandling>,
        decode: impl FnOnce(D) -> Result<DynamicImage, CompressError>,
    ) -> Result<Made, CompressError> {
        let mut decoder = decoder.map_err(|e| self.image_error(e))?;

        // 1. Header checks, before a single pixel buffer exists.
        let (width, height) = decoder.dimensions();
        self.check_header(width, height)?;

        // A broken or unreadable EXIF block is metadata damage, not image damage: keep the
        // pixels as stored rather than rejecting an otherwise good image. The same goes for a
        // colour profile that cannot even be extracted.
        let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
        let icc = decoder.icc_profile();

        // 2. Decode.
        let image = decode(decoder)?;

        // 3. To 8-bit gray or RGB, transparency flattened onto white, into sRGB, then oriented.
        //    Orientation runs last so that a rotation never has to move 16-bit samples.
        let mut pixels = to_opaque_8bit(image);
        let color = match (preset, icc) {
            (Some(preset), _) => preset,
            (None, Ok(Some(icc))) => self.to_srgb(&icc, &mut pixels)?,
            (None, Ok(None)) => ColorHandling::Untagged,
            (None, Err(e)) => ColorHandling::Ignored {
                reason: format!("unreadable: {e}"),
            },
        };
        self.finish(pixels, orientation, color)
    }

    /// The whole image through `decoder`, with limits enforced inside the decoder too. The
    /// main buffer is reserved against the allocation budget first, as `ImageReader::decode`
    /// does, so that what is left over is what the decoder may use for scratch.
    fn decode_whole<D: ImageDecoder>(&self, mut decoder: D) -> Result<DynamicImage, CompressError> {
        let mut limits = self.limits(true);
        limits
            .reserve(decoder.total_bytes())
            .map_err(|e| self.image_error(e))?;
        decoder
            .set_limits(limits)
            .map_err(|e| self.image_error(e))?;
        DynamicImage::from_decoder(decoder).map_err(|e| self.image_error(e))
    }

    /// A PNG's rows through [`crate::png`] (its dimensions passed `check_header`).
    fn decode_plain(&self, plain: &crate::png::Plain) -> Result<DynamicImage, CompressError> {
        let data = plain
            .decode(self.bytes)
            .map_err(|e| self.decode_error(e.to_string()))?;
        let (w, h) = (plain.width(), plain.height());
        const BUF_OK: &str = "the decoder returns width x height x channels bytes";
        Ok(match plain.channels() {
            1 => DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, data).expect(BUF_OK)),
            2 => DynamicImage::ImageLumaA8(ImageBuffer::from_raw(w, h, data).expect(BUF_OK)),
            3 => DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, data).expect(BUF_OK)),
            _ => DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, data).expect(BUF_OK)),
        })
    }

    /// A JPEG the box shrinks enough, decoded at 1/2 in the DCT domain (see
    /// [`dct_reduction`]), then finished as any other. None when the box does not call for it
    /// or the coefficient reader refuses the file (CMYK, RGB-coded...): the full decode takes
    /// it then.
    fn jpeg_scaled(&self, bytes: &[u8]) -> Result<Option<Made>, CompressError> {
        let Ok(info) = crate::jpeg::info(bytes) else {
            return Ok(None);
        };
        let (w, h) = (u32::from(info.width), u32::from(info.height));
        let orientation = exif_orientation(&info);
        let Some(denominator) = dct_reduction(&info, self.opts) else {
            return Ok(None);
        };
        self.check_header(w, h)?;
        let Ok(scaled) = crate::jpeg::decode_scaled(bytes, denominator) else {
            return Ok(None);
        };
        let mut pixels = Pixels {
            layout: if scaled.channels == 1 {
                Layout::Gray
            } else {
                Layout::Rgb
            },
            data: scaled.data,
            width: scaled.width,
            height: scaled.height,
        };
        let color = match info.icc_profile.as_deref() {
            Some(icc) => self.to_srgb(icc, &mut pixels)?,
            None => ColorHandling::Untagged,
        };
        self.finish(pixels, orientation, color).map(Some)
    }

    /// A JPEG bound for WebP at its own size, decoded from its coefficients straight into
    /// libwebp's YUV picture (see [`webp_from_ycbcr`] and `webp::Picture::from_jpeg`). None
    /// when it may not go that way, or the coefficient reader refuses the file: the pixel path
    /// takes it then (and gives the precise error of a broken one).
    fn jpeg_webp(&self, bytes: &[u8]) -> Result<Option<Made>, CompressError> {
        // Before the header is read again: JPEG output, the usual case, never goes this way.
        if self.opts.format != FormatChoice::Webp {
            return Ok(None);
        }
        let Ok(info) = crate::jpeg::info(bytes) else {
            return Ok(None);
        };
        if !webp_from_ycbcr(&info, self.opts) {
            return Ok(None);
        }
        // A profile other than sRGB needs the pixels converted.
        let data = if info.components.len() == 1 {
            color::Data::Gray
        } else {
            color::Data::Rgb
        };
        let color = match info
            .icc_profile
            .as_deref()
            .map(|icc| color::assess(icc, data))
        {
            Some(verdict) if !verdict.is_srgb() => return Ok(None),
            Some(verdict) => verdict.handling(),
            None => ColorHandling::Untagged,
        };
        let (width, height) = (u32::from(info.width), u32::from(info.height));
        self.check_header(width, height)?;
        let Ok(picture) = Picture::from_jpeg(bytes, width, height) else {
            return Ok(None);
        };
        // What is left: the encode, and the never-larger rule's lossless re-encode after it.
        let rest = picture
            .encoding_bytes(self.opts.quality)
            .max(super::estimate::kept_bytes(&info, self.opts));
        (self.past_peak)(rest);
        Ok(Some(Made {
            out: Compressed {
                bytes: picture.encode(self.opts.quality)?,
                format: OutputFormat::WebP,
                width,
                height,
                input_format: InputFormat::Jpeg,
                codec: Codec::Pixels,
                note: color.note(),
                color,
            },
            orientation: 1,
            resized: false,
        }))
    }

    /// Converts `pixels` to sRGB as `icc` says they are.
    fn to_srgb(&self, icc: &[u8], pixels: &mut Pixels) -> Result<ColorHandling, CompressError> {
        let verdict = color::assess(icc, pixels.layout.color_data());
        if let Verdict::Convert { transform, .. } = &verdict {
            color::convert_in_place(
                transform.as_ref(),
                pixels.layout.color_data(),
                &mut pixels.data,
            )
            .map_err(|e| self.decode_error(e))?;
        }
        Ok(verdict.handling())
    }

    /// Orients and encodes sRGB pixels.
    pub(super) fn finish(
        &self,
        mut pixels: Pixels,
        orientation: Orientation,
        color: ColorHandling,
    ) -> Result<Made, CompressError> {
        pixels.apply_orientation(orientation);
        let (width, height) = self.opts.size_box.fit(pixels.width, pixels.height);
        let resized = (width, height) != (pixels.width, pixels.height);
        let pixels = resize(pixels, width, height)?;
        let mut note = color.note();
        let too_big_for_webp = width > WEBP_MAX_DIMENSION || height > WEBP_MAX_DIMENSION;
        let (bytes, format) = match self.opts.format {
            FormatChoice::Webp | FormatChoice::Auto if too_big_for_webp => {
                note = Some(join_notes(
                    note,
                    format!("kept as JPEG: WebP holds at most {WEBP_MAX_DIMENSION} pixels a side"),
                ));
                (encode_jpeg(pixels, self.opts.target())?, OutputFormat::Jpeg)
            }
            FormatChoice::Webp => {
                let picture = Picture::import(&pixels)?;
                drop(pixels);
                (self.past_peak)(picture.encoding_bytes(self.opts.quality));
                (picture.encode(self.opts.quality)?, OutputFormat::WebP)
            }
            FormatChoice::Auto => {
                // libwebp's YUV copy first, so the JPEG encoder can free the pixels as it goes.
                let picture = Picture::import(&pixels)?;
                let jpeg = encode_jpeg(pixels, self.opts.target())?;
                (self.past_peak)(picture.encoding_bytes(self.opts.quality) + jpeg.len() as u64);
                let webp = picture.encode(self.opts.quality)?;
                if webp.len() < jpeg.len() {
                    (webp, OutputFormat::WebP)
                } else {
                    (jpeg, OutputFormat::Jpeg)
                }
            }
            // The pixels go in by value: the encoder frees them as soon as it no longer needs
            // them, before the Huffman pass allocates the coefficients.
            FormatChoice::Jpeg => (encode_jpeg(pixels, self.opts.target())?, OutputFormat::Jpeg),
        };
        Ok(Made {
            out: Compressed {
                bytes,
                format,
                width,
                height,
                input_format: self.format,
                codec: Codec::Pixels,
                note,
                color,
            },
            orientation: u16::from(orientation.to_exif()),
            resized,
        })
    }
}

fn join_notes(first: Option<String>, then: String) -> String {
    match first {
        Some(first) => format!("{first}; {then}"),
        None => then,
    }
}

/// Checks the JPEG marker structure for two kinds of input that zune-jpeg (behind `image`)
/// "decodes" successfully into wrong pixels, and turns them into errors.
///
/// 1. Truncation. zune-jpeg is lenient: when the entropy-coded data runs out it fills the rest of
///    the picture with grey and reports success. For us that would silently publish a half-grey
///    product photo, typically from a download that was cut short. So we require an EOI marker
///    after the last scan. The trade-off: the rare encoder that omits the final EOI from an
///    otherwise complete file is rejected too, because we cannot tell it from a truncated one.
///
/// 2. Sequential (non-progressive) colour JPEGs whose components are coded in separate scans.
///    They are valid, and browsers decode them, but zune-jpeg 0.5.15 turns them into colour noise
///    without an error (zune-image issues #419/#422, fixed upstream after that release). An error
///    the user can see beats a garbage image nobody notices. Remove this check once the lockfile
///    has a zune-jpeg with the fix; `non_interleaved_jpeg_input_is_rejected` will then fail and say so.
///
/// Walking segments (instead of searching for `FF D9`) matters twice over: an EXIF thumbnail
/// carries its own EOI inside APP1, which a naive search would accept for a truncated main
/// image; and phones append data after the real EOI (Motion Photos, MPF), which an
/// "ends with FF D9" check would wrongly reject. Anything structurally odd that is neither of the
/// above is left for the decoder to judge.
fn check_jpeg_structure(bytes: &[u8]) -> Result<(), &'static str> {
    match crate::jpeg::check_structure(bytes) {
        Ok(()) => Ok(()),
        Err(StructureProblem::Truncated) => Err("data is truncated (no end-of-image marker)"),
        Err(StructureProblem::NonInterleaved) => Err(
            "unsupported: sequential JPEG with colour components in separate scans \
             (non-interleaved); re-save it as a standard or progressive JPEG",
        ),
    }
}
