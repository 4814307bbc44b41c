//! Colour management: pixels described by an embedded ICC profile, converted to sRGB.
//!
//! Outputs carry no profile, so whatever shows them assumes sRGB; an input in another colour
//! space (Display P3 from phones, Adobe RGB or ProPhoto from cameras and retouchers, CMYK from
//! print workflows) must therefore be converted, or its colours shift (saturated reds go
//! brown). The conversion is moxcms's (pure Rust), relative colorimetric: in-gamut colours stay
//! exactly where they are, out-of-gamut ones clip to the sRGB boundary, as browsers render.
//!
//! A profile is judged once per distinct profile and kind of pixel data and the verdict cached:
//! phones tag every photo with the same few profiles, so building a transform (and probing
//! whether a profile is sRGB in disguise) is paid once per process, not once per image.

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use moxcms::{
    ColorProfile, DataColorSpace, Layout as CmsLayout, ParsingOptions, ProfileText,
    RenderingIntent, Transform8BitExecutor, TransformOptions,
};
use sha2::{Digest, Sha256};

/// Larger profiles are refused unread. Real RGB profiles are 0.5-60 KB and press CMYK profiles
/// up to a few MB; JPEG's APP2 chunks could declare 16 MB.
const MAX_ICC_BYTES: usize = 4 << 20;
/// A colour lookup table larger than this (bytes) is refused: the table is built in memory
/// before any pixel is converted, and a hostile profile could otherwise claim hundreds of MB.
const MAX_CLUT_BYTES: usize = 4 << 20;
/// Distinct verdicts kept; when full, the cache starts again (a process meets few profiles).
const CACHE_ENTRIES: usize = 64;
/// A transform moving no probe colour by more than this (in 8-bit levels) is sRGB in effect.
const SRGB_TOLERANCE: u8 = 1;

/// The pixel data a profile has to describe, as the decoder hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Data {
    Gray,
    Rgb,
    /// RGB in 4-byte pixels (alpha already flattened; the fourth byte is carried through).
    Rgbx,
    /// Ink amounts, 0 = no ink, 4 bytes a pixel; converted to 3-byte RGB.
    Cmyk,
}

impl Data {
    fn color_space(self) -> DataColorSpace {
        match self {
            Data::Gray => DataColorSpace::Gray,
            Data::Rgb | Data::Rgbx => DataColorSpace::Rgb,
            Data::Cmyk => DataColorSpace::Cmyk,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Data::Gray => "grayscale",
            Data::Rgb | Data::Rgbx => "RGB",
            Data::Cmyk => "CMYK",
        }
    }
}

/// What was done about an image's embedded profile; reported on the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColorHandling {
    /// No embedded profile: the pixels are sRGB by convention, as browsers assume.
    Untagged,
    /// The embedded profile is sRGB, or indistinguishable from it: nothing to convert.
    Srgb,
    /// Converted to sRGB from the embedded profile (its description).
    Converted { from: String },
    /// The embedded profile could not be used, so the pixels were treated as sRGB.
    Ignored { reason: String },
    /// The output is the input kept (never-larger) with its embedded profile, which any
    /// colour-managed viewer applies.
    Kept { from: String },
}

impl ColorHandling {
    /// The stored token: `srgb`, `converted` or `ignored`; None without a profile.
    pub fn as_str(&self) -> Option<&'static str> {
        match self {
            ColorHandling::Untagged => None,
            ColorHandling::Srgb => Some("srgb"),
            ColorHandling::Converted { .. } => Some("converted"),
            ColorHandling::Ignored { .. } => Some("ignored"),
            ColorHandling::Kept { .. } => Some("kept"),
        }
    }

    /// A sentence for the image's record, where there is something to say.
    pub fn note(&self) -> Option<String> {
        match self {
            ColorHandling::Untagged | ColorHandling::Srgb => None,
            ColorHandling::Converted { from } => Some(format!(
                "converted to sRGB from its embedded ICC profile ({from})"
            )),
            ColorHandling::Ignored { reason } => Some(format!(
                "its embedded ICC profile was not used ({reason}); the pixels were taken as sRGB"
            )),
            ColorHandling::Kept { from } => {
                Some(format!("keeps its embedded ICC profile ({from})"))
            }
        }
    }
}

/// The verdict on one profile for one kind of pixel data.
#[derive(Clone)]
pub(super) enum Verdict {
    Srgb,
    Convert {
        transform: Arc<Transform8BitExecutor>,
        from: String,
    },
    Ignored(String),
}

impl Verdict {
    pub(super) fn handling(&self) -> ColorHandling {
        match self {
            Verdict::Srgb => ColorHandling::Srgb,
            Verdict::Convert { from, .. } => ColorHandling::Converted { from: from.clone() },
            Verdict::Ignored(reason) => ColorHandling::Ignored {
                reason: reason.clone(),
            },
        }
    }

    /// Whether the pixels can be used as they are.
    pub(super) fn is_srgb(&self) -> bool {
        !matches!(self, Verdict::Convert { .. })
    }
}

/// Verdicts by (SHA-256 of the profile, pixel data).
type Cache = Mutex<HashMap<([u8; 32], Data), Verdict>>;

/// Judges `icc` as the profile of `data`, from the cache when this profile was seen before.
pub(super) fn assess(icc: &[u8], data: Data) -> Verdict {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    if icc.len() > MAX_ICC_BYTES {
        return Verdict::Ignored(format!(
            "{} bytes, over the limit of {MAX_ICC_BYTES}",
            icc.len()
        ));
    }
    let key = (Sha256::digest(icc).into(), data);
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return v.clone();
    }
    // moxcms is hostile input's first reader here: a panic in it costs the profile, not the
    // image.
    let verdict = panic::catch_unwind(AssertUnwindSafe(|| judge(icc, data)))
        .unwrap_or_else(|_| Verdict::Ignored("the profile reader crashed on it".into()));
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= CACHE_ENTRIES {
        map.clear();
    }
    map.insert(key, verdict.clone());
    verdict
}

/// The verdict on `icc` as the profile of gray, RGB, RGBX and CMYK data, judged afresh
/// (no cache, no panic guard) with a probe conversion through each transform made: for the
/// fuzz target and the corpus replay, which must see a panic if moxcms has one.
pub fn judge_for_every_kind(icc: &[u8]) -> Vec<ColorHandling> {
    [Data::Gray, Data::Rgb, Data::Rgbx, Data::Cmyk]
        .into_iter()
        .map(|data| {
            let verdict = judge(icc, data);
            if let Verdict::Convert { transform, .. } = &verdict {
                let probe: Vec<u8> = (0..=255u8).cycle().take(4 * 3 * 257).collect();
                let _ = match data {
                    Data::Cmyk => cmyk_to_srgb(transform.as_ref(), &probe).map(drop),
                    _ => convert_in_place(transform.as_ref(), data, &mut probe.clone()),
                };
            }
            verdict.handling()
        })
        .collect()
}

fn judge(icc: &[u8], data: Data) -> Verdict {
    let options = ParsingOptions {
        max_profile_size: MAX_ICC_BYTES + 1,
        max_allowed_clut_size: MAX_CLUT_BYTES,
        ..ParsingOptions::default()
    };
    let profile = match ColorProfile::new_from_slice_with_options(icc, options) {
        Ok(p) => p,
        Err(e) => return Verdict::Ignored(format!("unreadable: {e}")),
    };
    if profile.color_space != data.color_space() {
        return Verdict::Ignored(format!(
            "it describes {:?} data, the image is {}",
            profile.color_space,
            data.name()
        ));
    }
    let (src, dst, dst_layout) = match data {
        Data::Gray => (CmsLayout::Gray, srgb_gray(), CmsLayout::Gray),
        Data::Rgb => (CmsLayout::Rgb, ColorProfile::new_srgb(), CmsLayout::Rgb),
        Data::Rgbx => (CmsLayout::Rgba, ColorProfile::new_srgb(), CmsLayout::Rgba),
        // moxcms reads 8-bit CMYK in the RGBA layout.
        Data::Cmyk => (CmsLayout::Rgba, ColorProfile::new_srgb(), CmsLayout::Rgb),
    };
    let options = TransformOptions {
        rendering_intent: RenderingIntent::RelativeColorimetric,
        ..TransformOptions::default()
    };
    let transform = match profile.create_transform_8bit(src, &dst, dst_layout, options) {
        Ok(t) => t,
        Err(e) => return Verdict::Ignored(format!("no conversion to sRGB: {e}")),
    };
    if data != Data::Cmyk && moves_nothing(transform.as_ref(), data) {
        return Verdict::Srgb;
    }
    Verdict::Convert {
        transform,
        from: description(&profile),
    }
}

/// A grayscale profile with sRGB's tone curve: gray stays gray, in sRGB's encoding.
fn srgb_gray() -> ColorProfile {
    let mut gray = ColorProfile::new_srgb();
    gray.color_space = DataColorSpace::Gray;
    gray.gray_trc = gray.green_trc.clone();
    gray
}

/// Whether the transform leaves every probe colour (a 9-level grid per channel, every gray
/// level for gray data) within [`SRGB_TOLERANCE`]: sRGB under another name, or close enough
/// that converting would change nothing a viewer could see.
fn moves_nothing(transform: &Transform8BitExecutor, data: Data) -> bool {
    let levels: Vec<u8> = (0..=8).map(|i| (i * 32).min(255) as u8).collect();
    let probe: Vec<u8> = match data {
        Data::Gray => (0..=255).collect(),
        Data::Rgb | Data::Rgbx => {
            let mut p = Vec::new();
            for &r in &levels {
                for &g in &levels {
                    for &b in &levels {
                        p.extend_from_slice(&[r, g, b]);
                        if data == Data::Rgbx {
                            p.push(255);
                        }
                    }
                }
            }
            p
        }
        Data::Cmyk => return false,
    };
    let mut out = vec![0u8; probe.len()];
    if transform.transform(&probe, &mut out).is_err() {
        return false;
    }
    probe
        .iter()
        .zip(&out)
        .all(|(a, b)| a.abs_diff(*b) <= SRGB_TOLERANCE)
}

fn description(profile: &ColorProfile) -> String {
    let text = match &profile.description {
        Some(ProfileText::PlainString(s)) => s.clone(),
        Some(ProfileText::Localizable(l)) => l.first().map(|s| s.value.clone()).unwrap_or_default(),
        Some(ProfileText::Description(d)) => d.ascii_string.clone(),
        None => String::new(),
    };
    // The description is the profile author's text: shown to users, so kept short and printable.
    let clean: String = text.chars().filter(|c| !c.is_control()).take(64).collect();
    match clean.trim() {
        "" => "an unnamed profile".to_owned(),
        s => format!("\"{s}\""),
    }
}

/// Pixels converted per transform call: small enough to stay in cache, large enough that the
/// per-call overhead vanishes.
const CHUNK_PIXELS: usize = 4096;

/// Converts `pixels` (laid out as `data`, which must not be CMYK) to sRGB in place.
pub(super) fn convert_in_place(
    transform: &Transform8BitExecutor,
    data: Data,
    pixels: &mut [u8],
) -> Result<(), String> {
    let bpp = match data {
        Data::Gray => 1,
        Data::Rgb => 3,
        Data::Rgbx => 4,
        Data::Cmyk => return Err("CMYK cannot be converted in place".into()),
    };
    let mut scratch = vec![0u8; CHUNK_PIXELS * bpp];
    for chunk in pixels.chunks_mut(CHUNK_PIXELS * bpp) {
        let src = &mut scratch[..chunk.len()];
        src.copy_from_slice(chunk);
        transform
            .transform(src, chunk)
            .map_err(|e| format!("colour conversion failed: {e}"))?;
    }
    Ok(())
}

/// Converts 4-byte ink amounts (0 = no ink) to 3-byte sRGB.
pub(super) fn cmyk_to_srgb(
    transform: &Transform8BitExecutor,
    cmyk: &[u8],
) -> Result<Vec<u8>, String> {
    let mut rgb = vec![0u8; cmyk.len() / 4 * 3];
    for (src, dst) in cmyk
        .chunks(CHUNK_PIXELS * 4)
        .zip(rgb.chunks_mut(CHUNK_PIXELS * 3))
    {
        transform
            .transform(src, dst)
            .map_err(|e| format!("colour conversion failed: {e}"))?;
    }
    Ok(rgb)
}
