//! Memory a compression will need, read from headers before any of it is allocated.

use std::io::Cursor;

use image::ImageDecoder;

use super::{sniff, takes_fast_path, CompressOptions, FormatChoice, InputFormat, SizeBox};

/// What compressing `bytes` will hold in memory at its peak, beyond the bytes themselves: the
/// budget a job reserves before it takes a core (see `crate::memory`). Reads headers only.
///
/// Calibrated on 12 MP photos (release build, peak RSS less the body): fast path ~36 MB (the
/// 4:2:0 coefficients), ~55 MB for the progressive 4:2:2 one (its coefficients, 48 MB, and the
/// halved chroma; through pixels it took ~92 MB: zune-jpeg keeps every coefficient and then
/// the pixels), PNG RGB ~36 MB (the pixels). Pixels and the output's coefficients are
/// never held together (see `encode_pure_rust`), so the pixel path costs the larger of the two.
/// A header that cannot be read costs nothing: compressing it fails at that same header.
pub fn working_memory(bytes: &[u8], opts: &CompressOptions) -> u64 {
    if opts.size_box == SizeBox::NONE && opts.format == FormatChoice::Jpeg {
        return decode_memory(bytes);
    }
    if let Some(direct) = webp_from_ycbcr_memory(bytes, opts) {
        return direct;
    }
    let scaled = scaled_decode_memory(bytes, opts);
    // A JPEG bound for a box or another format goes through pixels, not the fast path.
    let (decode, reduced) = scaled.unwrap_or_else(|| (decode_memory_as(bytes, false), 1));
    let Ok(decoder) = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| ())
        .and_then(|r| r.into_decoder().map_err(|_| ()))
    else {
        return decode;
    };
    let (w, h) = decoder.dimensions();
    // Bytes a pixel from the decoder on: gray, RGB, or 4 with alpha (or CMYK) on the way.
    let color = decoder.color_type();
    let bpp = if color.has_alpha() || color.channel_count() > 3 {
        4
    } else if color.has_color() {
        3
    } else {
        1
    };
    // Either orientation: the box applies to the picture as shown.
    let (a, b) = opts.size_box.fit(w, h);
    let (c, d) = opts.size_box.fit(h, w);
    let out = (u64::from(a) * u64::from(b)).max(u64::from(c) * u64::from(d)) * bpp;
    // The resized copy, and the filter's intermediate: the source's rows at the output's width.
    let resize = if opts.size_box.shrinks(w, h) || opts.size_box.shrinks(h, w) {
        out + u64::from(w.max(h).div_ceil(reduced)) * u64::from(a.max(b).max(c).max(d)) * bpp
    } else {
        0
    };
    // libwebp's YUV 4:2:0 picture, made while the pixels are still held (`webp::Picture`);
    // the pixels go before the encoder runs, whose own buffers grow with the quality (at q90
    // they outgrow a 12 MP photo's decode: `webp::encoder_bytes`).
    let (import, encoding) = if opts.format == FormatChoice::Jpeg {
        (0, 0)
    } else {
        let planes = out / bpp * 3 / 2;
        (
            planes,
            planes + super::webp::encoder_bytes(out / bpp, opts.quality),
        )
    };
    // The decoder's scratch is gone by the time the box's filter runs: only the decoded
    // pixels are held then, beside the filter's buffers and the encoder.
    let held = u64::from(w.div_ceil(reduced)) * u64::from(h.div_ceil(reduced)) * bpp;
    decode.max(held + resize + import).max(encoding)
}

/// What the DCT-domain 1/2 decode holds, when the box sends a JPEG there (the same decision
/// as `decode::dct_reduction`): the pixels at the reduced size (its planes hold one MCU row),
/// with every coefficient too unless the file is read an MCU row at a time
/// (`jpeg::Info::streams`: a sequential file, the usual case); and the factor.
fn scaled_decode_memory(bytes: &[u8], opts: &CompressOptions) -> Option<(u64, u32)> {
    if sniff(bytes).ok()? != InputFormat::Jpeg {
        return None;
    }
    let info = crate::jpeg::info(bytes).ok()?;
    let reduced = super::decode::dct_reduction(&info, opts)?;
    let d = u64::from(reduced);
    let pixels = u64::from(info.width).div_ceil(d) * u64::from(info.height).div_ceil(d);
    let channels = info.components.len().min(3) as u64;
    let coefficients = if info.streams {
        0
    } else {
        jpeg_coefficient_bytes(&info)
    };
    Some((coefficients + pixels * channels, reduced))
}

/// What a JPEG going straight from its coefficients to libwebp's YUV picture holds
/// (`decode::webp_from_ycbcr`): the picture (1.5 bytes a pixel), beside every coefficient of
/// a file that cannot be read an MCU row at a time, then the picture and the encoder.
fn webp_from_ycbcr_memory(bytes: &[u8], opts: &CompressOptions) -> Option<u64> {
    if sniff(bytes).ok()? != InputFormat::Jpeg {
        return None;
    }
    let info = crate::jpeg::info(bytes).ok()?;
    // A profile may send it through pixels after all (other than sRGB): counted as such.
    if !super::decode::webp_from_ycbcr(&info, opts) || info.icc_profile.is_some() {
        return None;
    }
    let pixels = u64::from(info.width) * u64::from(info.height);
    let planes = pixels * 3 / 2;
    let coefficients = if info.streams {
        0
    } else {
        jpeg_coefficient_bytes(&info)
    };
    let encoding = planes + super::webp::encoder_bytes(pixels, opts.quality);
    Some(
        (coefficients + planes)
            .max(encoding)
            .max(kept_bytes(&info, opts)),
    )
}

/// What the never-larger rule holds after a WebP came out larger than a JPEG input: the
/// lossless re-encode reads every coefficient and writes a file of about an eighth of them.
pub(super) fn kept_bytes(info: &crate::jpeg::Info, opts: &CompressOptions) -> u64 {
    if opts.never_larger {
        let coefficients = jpeg_coefficient_bytes(info);
        coefficients + coefficients / 8
    } else {
        0
    }
}

/// [`working_memory`] at the input's size, as JPEG.
fn decode_memory(bytes: &[u8]) -> u64 {
    decode_memory_as(bytes, true)
}

/// [`decode_memory`], with the fast path for JPEG inputs allowed or not.
fn decode_memory_as(bytes: &[u8], fast_path: bool) -> u64 {
    let Ok(format) = sniff(bytes) else {
        return 0;
    };
    if format == InputFormat::Jpeg {
        if let Ok(info) = crate::jpeg::info(bytes) {
            let pixels = u64::from(info.width) * u64::from(info.height);
            let coefficients = jpeg_coefficient_bytes(&info);
            if fast_path && takes_fast_path(&info) {
                // The coefficients, then the output written from them. Chroma halved to 4:2:0
                // on the way goes to a new buffer (a quarter of the pixels at 2 bytes each)
                // while the input's chroma is still held.
                let halved = match info.components.as_slice() {
                    [y, _, _] if (y.h, y.v) != (2, 2) => pixels / 2,
                    _ => 0,
                };
                return coefficients + (coefficients / 8).max(halved);
            }
            let channels = if info.components.len() == 1 { 1 } else { 3 };
            // zune-jpeg buffers all coefficients of a progressive file; sequential ones go by
            // rows of blocks. Half the pixels again covers its scratch (measured ~0.4).
            let buffered = if info.progressive { coefficients } else { 0 };
            let decode = pixels * channels + pixels * channels / 2 + buffered;
            return decode.max(encode_bytes(pixels * channels, pixels, channels));
        }
        // Refused by our reader (12-bit, arithmetic, CMYK…): the pixel path judges it.
    }
    let Ok(decoder) = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|_| ())
        .and_then(|r| r.into_decoder().map_err(|_| ()))
    else {
        return 0;
    };
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    let decoded = decoder.total_bytes();
    let channels = if decoder.color_type().has_color() {
        3
    } else {
        1
    };
    // 16-bit samples are converted into a fresh 8-bit buffer while the decoded one is alive.
    let converted = if decoder.color_type().bytes_per_pixel() > decoder.color_type().channel_count()
    {
        pixels * channels
    } else {
        0
    };
    // image-webp decodes through planes of its own before the RGB(A) buffer (measured ~1.5
    // bytes a pixel).
    let scratch = if format == InputFormat::WebP {
        pixels * 2
    } else {
        0
    };
    let held = if converted > 0 { converted } else { decoded };
    (decoded + converted + scratch).max(encode_bytes(held, pixels, channels))
}

/// What encoding the pixels holds at its peak, given the bytes of the pixels it encodes. The
/// pure-Rust encoder (`jpeg::encode_pixels`) makes the coefficients an MCU row at a time from
/// the bottom up and cuts the pixel buffer down behind them (in steps of at most an eighth), so
/// it holds about the larger of the two, never both.
/// libjpeg (`turbo`) keeps every coefficient for its optimised tables while the caller still
/// holds the pixels, and writes into a buffer of about an eighth of them: measured 204-210 MB
/// peak RSS over the 12 MP batch when this counted only the coefficients.
fn encode_bytes(pixel_bytes: u64, pixels: u64, channels: u64) -> u64 {
    let coefficients = output_coefficient_bytes(pixels, channels);
    if cfg!(feature = "turbo") {
        pixel_bytes + coefficients + pixel_bytes / 8
    } else {
        coefficients
    }
}

/// The coefficients of the 4:2:0 (or grey) output, which the Huffman pass holds.
fn output_coefficient_bytes(pixels: u64, channels: u64) -> u64 {
    // Two bytes per coefficient; chroma adds half of the luma at 4:2:0.
    if channels == 1 {
        pixels * 2
    } else {
        pixels * 3
    }
}

/// Two bytes per coefficient of every component, at its own sampling.
fn jpeg_coefficient_bytes(info: &crate::jpeg::Info) -> u64 {
    let hmax = info
        .components
        .iter()
        .map(|c| c.h)
        .max()
        .unwrap_or(1)
        .max(1);
    let vmax = info
        .components
        .iter()
        .map(|c| c.v)
        .max()
        .unwrap_or(1)
        .max(1);
    let (w, h) = (u64::from(info.width), u64::from(info.height));
    info.components
        .iter()
        .map(|c| {
            let cw = (w * u64::from(c.h)).div_ceil(u64::from(hmax)).div_ceil(8) * 8;
            let ch = (h * u64::from(c.v)).div_ceil(u64::from(vmax)).div_ceil(8) * 8;
            cw * ch * 2
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::fixtures::{encode_as, jpeg_fixture, photo_like};
    use image::{DynamicImage, ImageFormat};

    #[test]
    fn working_memory_is_read_from_the_header() {
        let photo = photo_like(400, 300);
        // 4:2:0 JPEG, fast path: its coefficients at 2 bytes each, blocks padded to 8 (Y
        // 400x304, Cb and Cr 200x152), plus an eighth for the output.
        let jpeg = jpeg_fixture(&photo, 80);
        assert!(takes_fast_path(&crate::jpeg::info(&jpeg).unwrap()));
        let coefficients = (400 * 304 + 2 * 200 * 152) * 2;
        assert_eq!(decode_memory(&jpeg), coefficients + coefficients / 8);
        // 4:4:4 (jpeg-encoder's default from q90), fast path too: three full planes, and
        // chroma halved into new buffers while they are held.
        let jpeg444 = jpeg_fixture(&photo, 95);
        let info = crate::jpeg::info(&jpeg444).unwrap();
        assert_eq!((info.components[0].h, info.components[0].v), (1, 1));
        assert!(takes_fast_path(&info));
        let coefficients = 3 * 400 * 304 * 2;
        let halved = 400 * 300 / 2;
        assert_eq!(
            decode_memory(&jpeg444),
            coefficients + (coefficients / 8).max(halved)
        );
        // 8-bit RGB PNG: the decoded pixels, which equal the output's 4:2:0 coefficients (with
        // libjpeg, both at once, and its output buffer).
        let png = encode_as(photo.clone(), ImageFormat::Png);
        let rgb = 400 * 300 * 3;
        let turbo = cfg!(feature = "turbo");
        let expected = if turbo { rgb + rgb + rgb / 8 } else { rgb };
        assert_eq!(decode_memory(&png), expected);
        // 16-bit RGBA: 8 bytes a pixel decoded, plus the 8-bit RGB copy made from them.
        let wide = DynamicImage::ImageRgb8(photo).into_rgba16();
        let png16 = encode_as(wide, ImageFormat::Png);
        let decoded = 400 * 300 * (8 + 3);
        let expected = if turbo {
            decoded.max(rgb + rgb + rgb / 8)
        } else {
            decoded
        };
        assert_eq!(decode_memory(&png16), expected);
        // What cannot be read costs nothing: it fails at the header.
        assert_eq!(decode_memory(b"<html>not an image</html>"), 0);
        assert_eq!(decode_memory(&png[..20]), 0);
    }
}
