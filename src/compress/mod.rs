//! Decode → JPEG re-encode, the CPU-bound heart of a job: in sRGB, and never larger than the
//! input.
//!
//! This module is deliberately pure and synchronous: it takes the downloaded bytes and returns
//! the JPEG, touching no I/O, clock or global state, so callers can run it on a blocking thread
//! pool and test it without a runtime. Every error it returns is a property of the bytes
//! themselves, so retrying the same bytes can never succeed; callers treat them all as permanent.
//!
//! Untrusted input drives everything here, so the order of operations is defensive: sniff the
//! magic number, read only the header, refuse oversized images, and only then allocate and decode
//! — all inside `catch_unwind`, so that a bug in a third-party decoder costs one image, not the
//! worker.
//!
//! Layout: `sniff` (the format from the magic number, and what a non-image looks like),
//! `policy` (whether a JPEG takes the DCT-domain fast path), `decode` (the pixel path: header
//! checks, limits, decoding), `cmyk` (CMYK JPEGs with a profile), `color` (embedded ICC
//! profiles to sRGB), `pixels` (conversion to opaque 8-bit), `encode` (the JPEG encoders),
//! `smaller` (the never-larger rule), `metadata` (inputs' own bytes without metadata),
//! `estimate` (the memory a compression will need, from headers alone).

mod cmyk;
mod color;
mod decode;
mod encode;
mod estimate;
mod metadata;
mod pixels;
mod policy;
mod resize;
mod smaller;
mod sniff;
mod webp;
mod webp_decode;

#[cfg(test)]
mod color_tests;
#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod kept_tests;
#[cfg(test)]
mod options_tests;
#[cfg(test)]
mod tests;

use std::panic::{self, UnwindSafe};

use crate::failure::{ErrorCode, Failure};

pub use crate::domain::FormatChoice;
pub use crate::jpeg::{Effort, Target};
pub use color::{judge_for_every_kind, ColorHandling};
pub use estimate::working_memory;
pub use policy::takes_fast_path;
pub use resize::SizeBox;
pub use sniff::sniff;

/// The input formats we accept, identified from the bytes alone.
///
/// Content-Type headers and URL extensions are routinely wrong (CDNs serve WebP as
/// `image/jpeg`, error pages come back as `200 text/html`), so they are never consulted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Jpeg,
    Png,
    WebP,
    Gif,
    Bmp,
    Tiff,
}

impl InputFormat {
    /// Stable lower-case name, suitable for logs, metrics labels and stored job results.
    pub fn as_str(self) -> &'static str {
        match self {
            InputFormat::Jpeg => "jpeg",
            InputFormat::Png => "png",
            InputFormat::WebP => "webp",
            InputFormat::Gif => "gif",
            InputFormat::Bmp => "bmp",
            InputFormat::Tiff => "tiff",
        }
    }
}

/// The formats an output can have: JPEG, or an input's own format when the input itself is
/// kept (never-larger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Jpeg,
    Png,
    WebP,
    Gif,
    Bmp,
}

impl OutputFormat {
    /// Stable lower-case name, as stored and reported.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
            OutputFormat::WebP => "webp",
            OutputFormat::Gif => "gif",
            OutputFormat::Bmp => "bmp",
        }
    }

    /// The output object's file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
            OutputFormat::WebP => "webp",
            OutputFormat::Gif => "gif",
            OutputFormat::Bmp => "bmp",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
            OutputFormat::WebP => "image/webp",
            OutputFormat::Gif => "image/gif",
            OutputFormat::Bmp => "image/bmp",
        }
    }

    /// The format an input of `format` is served in when kept as it is; None for TIFF, which
    /// browsers do not show.
    pub(crate) fn of_input(format: InputFormat) -> Option<Self> {
        match format {
            InputFormat::Jpeg => Some(OutputFormat::Jpeg),
            InputFormat::Png => Some(OutputFormat::Png),
            InputFormat::WebP => Some(OutputFormat::WebP),
            InputFormat::Gif => Some(OutputFormat::Gif),
            InputFormat::Bmp => Some(OutputFormat::Bmp),
            InputFormat::Tiff => None,
        }
    }

    /// The format an output object's key names, from its extension.
    pub fn from_extension(ext: &str) -> Option<Self> {
        [
            OutputFormat::Jpeg,
            OutputFormat::Png,
            OutputFormat::WebP,
            OutputFormat::Gif,
            OutputFormat::Bmp,
        ]
        .into_iter()
        .find(|f| f.extension() == ext)
    }
}

/// Knobs for one compression.
#[derive(Debug, Clone, Copy)]
pub struct CompressOptions {
    /// JPEG quality, 1-100. Values outside that range are clamped rather than rejected, because a
    /// misconfigured quality is not the image's fault and must not fail every job.
    pub quality: u8,
    /// Largest `width * height` we are willing to decode. Decoded size, not file size, is what
    /// costs memory: a 50 KB PNG can legitimately claim 100000x100000 pixels (a "decompression
    /// bomb"), so this is checked from the header before any pixel buffer is allocated.
    pub max_pixels: u64,
    /// Never serve an output with more bytes than its input: keep a lossless re-encode of a
    /// JPEG input, or the input's own bytes without metadata, instead (`smaller`).
    pub never_larger: bool,
    /// Outputs fit inside this box (after EXIF orientation), never enlarged.
    pub size_box: SizeBox,
    /// JPEG, WebP, or per image the smaller of the two.
    pub format: FormatChoice,
    /// How hard the JPEG encoder works for size (`IMGBATCH_EFFORT`).
    pub effort: Effort,
}

impl CompressOptions {
    /// Options with no box, JPEG output, at `quality`.
    pub fn jpeg(quality: u8, max_pixels: u64, never_larger: bool) -> Self {
        Self {
            quality,
            max_pixels,
            never_larger,
            size_box: SizeBox::NONE,
            format: FormatChoice::Jpeg,
            effort: Effort::FASTEST,
        }
    }

    /// The tables JPEG outputs are quantised to.
    pub fn target(&self) -> Target {
        Target::new(self.quality, self.effort)
    }
}

/// A finished output.
#[derive(Debug)]
pub struct Compressed {
    /// The output file. Recompressed: a baseline sRGB JPEG with no metadata segments (no EXIF,
    /// ICC, XMP), so location data and camera serials cannot leak, orientation baked into the
    /// pixels. Kept (`Codec::Lossless`, `Codec::Original`): the input's picture without its
    /// metadata, with its colour profile and orientation.
    pub bytes: Vec<u8>,
    pub format: OutputFormat,
    /// Dimensions of the picture as shown, i.e. after EXIF orientation.
    pub width: u32,
    pub height: u32,
    pub input_format: InputFormat,
    /// Which path made the output.
    pub codec: Codec,
    /// What was done about the input's embedded colour profile.
    pub color: ColorHandling,
    /// What a user should know about this output (a conversion, a kept input), if anything.
    pub note: Option<String>,
}

/// The ways an output is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// JPEG in, JPEG out in the DCT domain: coefficients requantised, no pixels (crate::jpeg).
    Requantized,
    /// Decoded to pixels and encoded again.
    Pixels,
    /// A JPEG input's own coefficients, re-encoded losslessly with optimal Huffman tables,
    /// because recompressing would have grown the file.
    Lossless,
    /// The input's own bytes, metadata removed, because recompressing would have grown it.
    Original,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Requantized => "requantized",
            Codec::Pixels => "pixels",
            Codec::Lossless => "lossless",
            Codec::Original => "original",
        }
    }
}

/// Why an image could not be compressed. All variants are permanent: they describe the bytes,
/// and the same bytes will fail the same way on every attempt.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The body is not one of the supported image formats. The reason says what it looks like
    /// instead (HTML error page, SVG, empty body...) because that is what a user needs to fix
    /// their CSV.
    #[error("not an image: {0}")]
    NotAnImage(String),
    /// Refused before decoding so that a decompression bomb costs nothing but a header parse.
    #[error("image is {width}x{height} pixels, over the limit of {max} pixels")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    /// The format was recognised but the data is truncated, corrupt, or uses a feature the
    /// decoder does not support.
    #[error("could not decode {format} image: {reason}")]
    Decode {
        format: &'static str,
        reason: String,
    },
    /// The decoded image cannot be represented as a JPEG (e.g. a side longer than 65535).
    #[error("could not encode JPEG: {0}")]
    Encode(String),
    /// A decoder or the encoder panicked. Surfaced as an error rather than propagated because
    /// crafted input reaching a bug in a codec must not take down a worker thread.
    #[error("decoder crashed: {0}")]
    Panicked(String),
}

impl CompressError {
    /// The failure kind stored and reported for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            CompressError::NotAnImage(_) => ErrorCode::NotAnImage,
            CompressError::TooManyPixels { .. } => ErrorCode::TooManyPixels,
            CompressError::Decode { .. } => ErrorCode::Undecodable,
            CompressError::Encode(_) => ErrorCode::EncodeFailed,
            // A decoder bug reached by these bytes: to the user, the image did not decode.
            CompressError::Panicked(_) => ErrorCode::Undecodable,
        }
    }
}

impl From<CompressError> for Failure {
    fn from(e: CompressError) -> Self {
        Failure::new(e.code(), e.to_string())
    }
}

/// Recompresses `bytes` (any supported format) into a metadata-free sRGB JPEG, or keeps a
/// smaller lossless version of the input when that JPEG would be larger (see
/// [`CompressOptions::never_larger`]).
///
/// Never panics: a panic anywhere inside the codecs is caught and returned as
/// [`CompressError::Panicked`]. (That requires the default `panic = "unwind"`; the panic hook
/// still runs, so the panic message also reaches stderr/logs.)
pub fn compress(bytes: &[u8], opts: &CompressOptions) -> Result<Compressed, CompressError> {
    compress_releasing(bytes, opts, &|_| {})
}

/// [`compress`], calling `past_peak(bytes)` when what the rest of the work holds (beyond the
/// input) falls to `bytes` for good, so that memory reserved for its peak can go to the next
/// job early (`crate::memory::Reservation::shrink_to`). A WebP encode is the case: it runs
/// for most of the time on a fraction of what its decode needed.
pub fn compress_releasing(
    bytes: &[u8],
    opts: &CompressOptions,
    past_peak: &dyn Fn(u64),
) -> Result<Compressed, CompressError> {
    let opts = *opts;
    // Unwind safety: the callback only gives memory back; nothing it touches is left
    // half-changed by a panic in the codecs.
    let past_peak = panic::AssertUnwindSafe(past_peak);
    guarded(move || decode::compress_unguarded(bytes, &opts, *past_peak))
}

/// Runs `f`, turning a panic into [`CompressError::Panicked`].
///
/// Unwind safety holds because everything `f` mutates is created inside it and dropped on
/// unwind; the inputs are shared references to plain data.
fn guarded<T>(
    f: impl FnOnce() -> Result<T, CompressError> + UnwindSafe,
) -> Result<T, CompressError> {
    panic::catch_unwind(f).unwrap_or_else(|payload| {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "panic with a non-string payload".to_owned()
        };
        Err(CompressError::Panicked(message))
    })
}
