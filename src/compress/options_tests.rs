//! Per-upload options through the codec: the size box, WebP and `auto`, and the DCT-domain
//! downscale of JPEG inputs.

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat};

use super::fixtures::{encode_as, jpeg_fixture, photo_like, psnr, with_exif_orientation, OPTS};
use super::*;

fn boxed(w: Option<u32>, h: Option<u32>, format: FormatChoice) -> CompressOptions {
    CompressOptions {
        size_box: SizeBox {
            max_width: w,
            max_height: h,
        },
        format,
        ..OPTS
    }
}

fn decoded(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).unwrap().to_rgb8()
}

#[test]
fn outputs_fit_the_box_keep_the_ratio_and_never_grow() {
    let photo = photo_like(640, 480);
    let inputs = [
        jpeg_fixture(&photo, 90),
        encode_as(photo.clone(), ImageFormat::Png),
        encode_as(photo.clone(), ImageFormat::WebP),
    ];
    for input in &inputs {
        for format in FormatChoice::ALL {
            for (w, h) in [
                (Some(200), None),
                (None, Some(100)),
                (Some(1000), Some(1000)),
            ] {
                let out = compress(input, &boxed(w, h, format)).unwrap();
                let img = decoded(&out.bytes);
                assert_eq!((img.width(), img.height()), (out.width, out.height));
                assert!(w.is_none_or(|w| out.width <= w) && h.is_none_or(|h| out.height <= h));
                assert!(out.width <= 640 && out.height <= 480, "never enlarged");
                let ratio_h = f64::from(out.width) * 480.0 / 640.0;
                assert!(
                    (ratio_h - f64::from(out.height)).abs() <= 1.0,
                    "aspect kept"
                );
                let sniffed = sniff(&out.bytes).unwrap();
                match (format, out.format) {
                    (FormatChoice::Jpeg, OutputFormat::Jpeg) => {
                        assert_eq!(sniffed, InputFormat::Jpeg)
                    }
                    (FormatChoice::Webp, OutputFormat::WebP) => {
                        assert_eq!(sniffed, InputFormat::WebP)
                    }
                    (FormatChoice::Auto, OutputFormat::Jpeg) => {
                        assert_eq!(sniffed, InputFormat::Jpeg)
                    }
                    (FormatChoice::Auto, OutputFormat::WebP) => {
                        assert_eq!(sniffed, InputFormat::WebP)
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}

#[test]
fn orientation_is_applied_before_the_box() {
    // Stored 640x480, shown 480x640 (EXIF 6): a 240-wide box gives 240x320.
    let jpeg = with_exif_orientation(jpeg_fixture(&photo_like(640, 480), 90), 6);
    let out = compress(&jpeg, &boxed(Some(240), None, FormatChoice::Jpeg)).unwrap();
    assert_eq!((out.width, out.height), (240, 320));
    let img = decoded(&out.bytes);
    assert_eq!((img.width(), img.height()), (240, 320));
}

#[test]
fn auto_keeps_the_smaller_of_jpeg_and_webp() {
    let photo = photo_like(320, 240);
    let input = encode_as(photo, ImageFormat::Png);
    let jpeg = compress(&input, &boxed(None, None, FormatChoice::Jpeg)).unwrap();
    let webp = compress(&input, &boxed(None, None, FormatChoice::Webp)).unwrap();
    let auto = compress(&input, &boxed(None, None, FormatChoice::Auto)).unwrap();
    assert_eq!(auto.bytes.len(), jpeg.bytes.len().min(webp.bytes.len()));
    // A flat picture: WebP wins by far.
    let flat = encode_as(DynamicImage::new_rgb8(300, 300), ImageFormat::Png);
    assert_eq!(
        compress(&flat, &boxed(None, None, FormatChoice::Auto))
            .unwrap()
            .format,
        OutputFormat::WebP
    );
}

#[test]
fn webp_quality_follows_the_option() {
    let input = encode_as(photo_like(320, 240), ImageFormat::Png);
    let q = |quality| {
        let o = CompressOptions {
            quality,
            ..boxed(None, None, FormatChoice::Webp)
        };
        compress(&input, &o).unwrap().bytes.len()
    };
    assert!(q(30) < q(60) && q(60) < q(90));
}

/// The DCT-domain downscale against a full decode, both followed by the same Lanczos3 filter,
/// both measured against the source picture resized by that filter: within 0.5 dB.
#[test]
fn dct_domain_downscale_is_within_half_a_db_of_a_full_decode() {
    let source = photo_like(1600, 1200);
    let jpeg = jpeg_fixture(&source, 92);
    for (denominator, target) in [(2u32, (400u32, 300u32)), (2, (200, 150)), (2, (100, 75))] {
        let reference = image::imageops::resize(&source, target.0, target.1, FilterType::Lanczos3);
        let scaled = crate::jpeg::decode_scaled(&jpeg, denominator).unwrap();
        assert_eq!(scaled.width, 1600 / denominator);
        let pixels = pixels::Pixels {
            data: scaled.data,
            width: scaled.width,
            height: scaled.height,
            layout: pixels::Layout::Rgb,
        };
        let via_dct = resize::resize(pixels, target.0, target.1).unwrap();
        let full = decoded(&jpeg);
        let pixels = pixels::Pixels {
            data: full.into_raw(),
            width: 1600,
            height: 1200,
            layout: pixels::Layout::Rgb,
        };
        let via_full = resize::resize(pixels, target.0, target.1).unwrap();
        let (a, b) = (
            psnr(&via_dct.data, &reference),
            psnr(&via_full.data, &reference),
        );
        assert!(
            a >= b - 0.5,
            "1/{denominator}: DCT-domain {a:.2} dB, full decode {b:.2} dB"
        );
    }
    // The service takes that path for a box at most a quarter of the picture.
    let out = compress(&jpeg, &boxed(Some(400), None, FormatChoice::Jpeg)).unwrap();
    assert_eq!((out.width, out.height), (400, 300));
    assert_eq!(out.codec, Codec::Pixels);
}

/// With 1.5-2x left for the filter, the 1/2 decode is taken only at qualities up to 85, where
/// the output's own coding error hides its own: the output's PSNR stays within 0.5 dB of what
/// a full decode and the same filter and encoder make (here: the full decode handed over as a
/// PNG, which goes the same way).
#[test]
fn dct_domain_downscale_with_less_left_for_the_filter_keeps_the_output_within_half_a_db() {
    let source = photo_like(1600, 1200);
    let jpeg = jpeg_fixture(&source, 92);
    let full_png = encode_as(decoded(&jpeg), ImageFormat::Png);
    let info = crate::jpeg::info(&jpeg).unwrap();
    // 1600 -> 480: 3.3x in all, 1.67x after the 1/2 decode.
    let reference = image::imageops::resize(&source, 480, 360, FilterType::Lanczos3);
    for quality in [50u8, 85] {
        let opts = CompressOptions {
            quality,
            ..boxed(Some(480), None, FormatChoice::Jpeg)
        };
        assert_eq!(decode::dct_reduction(&info, &opts), Some(2), "q{quality}");
        let via_dct = compress(&jpeg, &opts).unwrap();
        let via_full = compress(&full_png, &opts).unwrap();
        assert_eq!((via_dct.width, via_dct.height), (480, 360));
        let (a, b) = (
            psnr(decoded(&via_dct.bytes).as_raw(), &reference),
            psnr(decoded(&via_full.bytes).as_raw(), &reference),
        );
        assert!(
            a >= b - 0.5,
            "q{quality}: DCT-domain {a:.2} dB, full decode {b:.2} dB"
        );
    }
    // Above 85 the output would show it: a full decode.
    let opts = CompressOptions {
        quality: 90,
        ..boxed(Some(480), None, FormatChoice::Jpeg)
    };
    assert_eq!(decode::dct_reduction(&info, &opts), None);
    // 2x left: taken at any quality.
    let opts = CompressOptions {
        quality: 100,
        ..boxed(Some(400), None, FormatChoice::Jpeg)
    };
    assert_eq!(decode::dct_reduction(&info, &opts), Some(2));
}

#[test]
fn without_a_box_a_jpeg_still_takes_the_fast_path() {
    let jpeg = jpeg_fixture(&photo_like(320, 240), 90);
    let out = compress(&jpeg, &boxed(Some(320), Some(240), FormatChoice::Jpeg)).unwrap();
    assert_eq!(out.codec, Codec::Requantized);
}

/// A JPEG bound for WebP goes from its coefficients straight to libwebp's YUV: the output is
/// at least as close to the input as what the pixel path makes of the same decoded pixels (as
/// a PNG), for 4:2:0, 4:4:4, progressive and gray inputs; a rotated one still turns.
#[test]
fn jpeg_to_webp_from_the_coefficients_matches_the_pixel_path() {
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
    let source = photo_like(321, 243);
    let opts = boxed(None, None, FormatChoice::Webp);
    for (sampling, progressive, gray) in [
        (SamplingFactor::F_2_2, false, false),
        (SamplingFactor::F_1_1, false, false),
        (SamplingFactor::F_2_1, true, false),
        (SamplingFactor::F_1_1, false, true),
    ] {
        let label = format!("{sampling:?} progressive={progressive} gray={gray}");
        let mut jpeg = Vec::new();
        let mut e = Encoder::new(&mut jpeg, 90);
        e.set_sampling_factor(sampling);
        e.set_progressive(progressive);
        let gray_px: Vec<u8> = source.pixels().map(|p| p.0[1]).collect();
        let (px, ct) = if gray {
            (&gray_px, ColorType::Luma)
        } else {
            (source.as_raw(), ColorType::Rgb)
        };
        e.encode(px, 321, 243, ct).unwrap();
        let decoded_input = image::load_from_memory(&jpeg).unwrap().to_rgb8();
        let png = encode_as(decoded_input.clone(), ImageFormat::Png);
        let direct = compress(&jpeg, &opts).unwrap();
        let via_pixels = compress(&png, &opts).unwrap();
        assert_eq!(direct.format, OutputFormat::WebP, "{label}");
        assert_eq!((direct.width, direct.height), (321, 243), "{label}");
        let score = |out: &Compressed| psnr(decoded(&out.bytes).as_raw(), decoded_input.as_raw());
        let (a, b) = (score(&direct), score(&via_pixels));
        assert!(a > b - 0.1, "{label}: {a:.2} dB against {b:.2} dB");
        // The pixel path low-passes chroma twice (upsampled by the decoder, averaged again by
        // libwebp's import); this one keeps it as coded: here up to 0.9 dB better for up to
        // 10% more bytes on pure noise, +0.9% bytes over the bench photos.
        let ratio = direct.bytes.len() as f64 / via_pixels.bytes.len() as f64;
        assert!(ratio < 1.12, "{label}: bytes x{ratio:.3}");
    }
    // Orientation 6 (turn 90°): the pixel path, which turns it.
    let jpeg = with_exif_orientation(jpeg_fixture(&source, 90), 6);
    let out = compress(&jpeg, &opts).unwrap();
    assert_eq!((out.width, out.height), (243, 321));
}

/// Effort 1 quantises to the perceptual table at the calibrated setting on both paths (pixels
/// from a PNG, coefficients from a JPEG), which makes the outputs smaller here; outside the
/// calibrated settings it is the fastest effort, byte for byte.
#[test]
fn effort_1_takes_the_perceptual_table_where_it_was_calibrated() {
    use crate::jpeg::{Effort, Target};
    let image = photo_like(320, 240);
    let inputs = [
        ("png", encode_as(image.clone(), ImageFormat::Png)),
        ("jpeg q95", jpeg_fixture(&image, 95)),
    ];
    let effort1 = Effort::new(1).unwrap();
    for (name, input) in &inputs {
        for quality in [30u8, 50, 75] {
            let opts = |effort| CompressOptions {
                quality,
                effort,
                ..OPTS
            };
            let fast = compress(input, &opts(Effort::FASTEST)).unwrap();
            let perceptual = compress(input, &opts(effort1)).unwrap();
            let info = crate::jpeg::info(&perceptual.bytes).unwrap();
            let luma = info.quant_tables[usize::from(info.components[0].tq)].unwrap();
            let want = Target::new(quality, effort1).luma();
            // With `turbo` the pixel path's table is mozjpeg's scaling of the same base table,
            // in floating point (below 50: 50/q where libjpeg has the integer 5000/q), which
            // can be one step off.
            let off = luma
                .iter()
                .zip(&want)
                .map(|(&a, &b)| a.abs_diff(b))
                .max()
                .unwrap_or(0);
            let allowed = u16::from(cfg!(feature = "turbo") && *name == "png");
            assert!(
                off <= allowed,
                "{name} q{quality}: {luma:?} against {want:?}"
            );
            assert_ne!(luma, Target::new(quality, Effort::FASTEST).luma());
            assert!(
                perceptual.bytes.len() < fast.bytes.len(),
                "{name} q{quality}: {} against {} bytes",
                perceptual.bytes.len(),
                fast.bytes.len()
            );
        }
        for quality in [10u8, 90] {
            let opts = |effort| CompressOptions {
                quality,
                effort,
                ..OPTS
            };
            assert_eq!(
                compress(input, &opts(effort1)).unwrap().bytes,
                compress(input, &opts(Effort::FASTEST)).unwrap().bytes,
                "{name} q{quality}"
            );
        }
    }
}
