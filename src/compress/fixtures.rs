//! Deterministic inputs shared by the tests of the submodules.

use std::io::Cursor;

use image::codecs::gif::GifEncoder;
use image::{DynamicImage, Frame, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use jpeg_encoder::{ColorType as JpegColorType, Encoder};

use super::CompressOptions;

pub(super) const OPTS: CompressOptions = CompressOptions {
    quality: 80,
    max_pixels: 50_000_000,
    // The tests of the recompressing paths; the never-larger rule has tests of its own.
    never_larger: false,
    size_box: super::SizeBox::NONE,
    format: super::FormatChoice::Jpeg,
    effort: super::Effort::FASTEST,
};

/// Deterministic xorshift, so fixtures are identical on every run.
pub(super) struct Rng(pub(super) u32);
impl Rng {
    pub(super) fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }
}

/// Gradient plus noise: compresses like a photo, unlike flat synthetic colour.
pub(super) fn photo_like(width: u32, height: u32) -> RgbImage {
    let mut rng = Rng(0x9E37_79B9);
    RgbImage::from_fn(width, height, |x, y| {
        let mut noise = || (rng.next() % 41) as i32 - 20;
        let r = (x * 255 / width) as i32 + noise();
        let g = (y * 255 / height) as i32 + noise();
        let b = ((x + y) * 255 / (width + height)) as i32 + noise();
        Rgb([r, g, b].map(|v| v.clamp(0, 255) as u8))
    })
}

pub(super) fn jpeg_fixture(image: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    Encoder::new(&mut out, quality)
        .encode(
            image.as_raw(),
            image.width() as u16,
            image.height() as u16,
            JpegColorType::Rgb,
        )
        .unwrap();
    out
}

pub(super) fn encode_as(image: impl Into<DynamicImage>, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.into().write_to(&mut out, format).unwrap();
    out.into_inner()
}

pub(super) fn two_frame_gif() -> Vec<u8> {
    let red = RgbaImage::from_pixel(16, 16, Rgba([255, 0, 0, 255]));
    let blue = RgbaImage::from_pixel(16, 16, Rgba([0, 0, 255, 255]));
    let mut out = Vec::new();
    GifEncoder::new(&mut out)
        .encode_frames([Frame::new(red), Frame::new(blue)])
        .unwrap();
    out
}

// --- EXIF orientation --------------------------------------------------------------------

/// Inserts a hand-written APP1 Exif segment (big-endian TIFF, one IFD entry: Orientation)
/// right after SOI.
pub(super) fn with_exif_orientation(jpeg: Vec<u8>, orientation: u16) -> Vec<u8> {
    let mut exif = b"Exif\0\0".to_vec();
    exif.extend_from_slice(b"MM\0\x2A"); // TIFF header, big-endian
    exif.extend_from_slice(&8u32.to_be_bytes()); // offset of IFD0
    exif.extend_from_slice(&1u16.to_be_bytes()); // one entry
    exif.extend_from_slice(&0x0112u16.to_be_bytes()); // tag: Orientation
    exif.extend_from_slice(&3u16.to_be_bytes()); // type: SHORT
    exif.extend_from_slice(&1u32.to_be_bytes()); // count
    exif.extend_from_slice(&orientation.to_be_bytes());
    exif.extend_from_slice(&[0, 0]); // value padding
    exif.extend_from_slice(&0u32.to_be_bytes()); // no next IFD

    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&(exif.len() as u16 + 2).to_be_bytes());
    out.extend_from_slice(&exif);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Peak signal-to-noise ratio of two equally long 8-bit buffers, in dB.
pub(super) fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let squared: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let mse = squared / a.len() as f64;
    10.0 * (255.0 * 255.0 / mse).log10()
}
