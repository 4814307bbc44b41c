//! The never-larger rule and metadata removal, on the fixtures of tests/fixtures/kept (made by
//! its make.py: small, well-compressed inputs whose every metadata block says SECRET).

use std::path::PathBuf;

use image::GenericImageView;

use super::fixtures::{encode_as, jpeg_fixture, photo_like, with_exif_orientation, OPTS};
use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/kept", name]
        .iter()
        .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const RULE_ON: CompressOptions = CompressOptions {
    quality: 50,
    never_larger: true,
    ..OPTS
};
const RULE_OFF: CompressOptions = CompressOptions {
    never_larger: false,
    ..RULE_ON
};

const FIXTURES: [&str; 6] = [
    "small-q40.webp",
    "small-q70.webp",
    "meta-q40.webp",
    "low-q20-prog.jpg",
    "palette.png",
    "palette.gif",
];

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// At q100 every fixture's JPEG is larger than the fixture, so every one is kept.
const RULE_ON_Q100: CompressOptions = CompressOptions {
    quality: 100,
    ..RULE_ON
};

#[test]
fn no_output_is_larger_than_its_input() {
    for name in FIXTURES {
        let input = fixture(name);
        let at_q50 = compress(&input, &RULE_ON).unwrap();
        assert!(at_q50.bytes.len() <= input.len(), "{name} at q50");
        let out = compress(&input, &RULE_ON_Q100).unwrap();
        assert!(
            out.bytes.len() <= input.len(),
            "{name}: {} bytes out of {}",
            out.bytes.len(),
            input.len()
        );
        assert!(
            matches!(out.codec, Codec::Lossless | Codec::Original),
            "{name}: {:?}",
            out.codec
        );
        let note = out.note.clone().unwrap_or_default();
        assert!(note.starts_with("kept "), "{name}: {note}");
        // The kept file decodes to the picture, at the size reported.
        let decoded = image::load_from_memory(&out.bytes).expect("kept output decodes");
        let (w, h) = decoded.dimensions();
        let turned = if name.starts_with("meta") || name.starts_with("low") {
            (h, w) // orientation 6
        } else {
            (w, h)
        };
        assert_eq!((out.width, out.height), turned, "{name}");
    }
}

#[test]
fn kept_inputs_are_served_in_their_own_format() {
    let expect = [
        ("small-q40.webp", OutputFormat::WebP, Codec::Original),
        ("palette.png", OutputFormat::Png, Codec::Original),
        ("palette.gif", OutputFormat::Gif, Codec::Original),
    ];
    for (name, format, codec) in expect {
        let out = compress(&fixture(name), &RULE_ON).unwrap();
        assert_eq!((out.format, out.codec), (format, codec), "{name}");
        assert_eq!(format.content_type(), format!("image/{}", format.as_str()));
    }
}

#[test]
fn with_the_rule_off_every_output_is_a_jpeg() {
    for name in FIXTURES {
        let out = compress(&fixture(name), &RULE_OFF).unwrap();
        assert_eq!(out.format, OutputFormat::Jpeg, "{name}");
        assert!(out.bytes.starts_with(&[0xFF, 0xD8]), "{name}");
        assert!(matches!(out.codec, Codec::Requantized | Codec::Pixels));
    }
    // And these inputs are the ones that need the rule: their JPEG is larger.
    let webp = fixture("small-q40.webp");
    assert!(compress(&webp, &RULE_OFF).unwrap().bytes.len() > webp.len());
}

#[test]
fn metadata_never_survives_in_a_kept_output() {
    for name in FIXTURES {
        let input = fixture(name);
        if !name.contains("small") {
            assert!(
                contains(&input, b"SECRET"),
                "{name}: the fixture has metadata"
            );
        }
        for opts in [RULE_ON, RULE_ON_Q100, RULE_OFF] {
            let out = compress(&input, &opts).unwrap();
            assert!(
                !contains(&out.bytes, b"SECRET"),
                "{name} ({:?}): metadata survived",
                out.codec
            );
            assert!(!contains(&out.bytes, b"http://ns.adobe.com/xap"), "{name}");
        }
    }
}

/// A kept JPEG or WebP with orientation 6 comes back with an EXIF block holding only that tag,
/// so it still shows upright; the kept JPEG also decodes to exactly the input's pixels.
#[test]
fn kept_outputs_keep_their_orientation_and_only_that() {
    let input = fixture("low-q20-prog.jpg");
    let out = compress(&input, &RULE_ON_Q100).unwrap();
    assert!(matches!(out.codec, Codec::Lossless | Codec::Original));
    let info = crate::jpeg::info(&out.bytes).unwrap();
    assert_eq!(info.exif_orientation, Some(6));
    assert_eq!(
        image::load_from_memory(&out.bytes)
            .unwrap()
            .to_rgb8()
            .as_raw(),
        image::load_from_memory(&input[..input.len() - b"SECRET-TRAILER".len()])
            .unwrap()
            .to_rgb8()
            .as_raw(),
        "a lossless re-encode or the input itself: the same pixels"
    );
    let webp = compress(&fixture("meta-q40.webp"), &RULE_ON).unwrap();
    assert_eq!(webp.format, OutputFormat::WebP);
    let exif = crate::jpeg::orientation_exif(6);
    assert!(contains(&webp.bytes, &exif), "minimal EXIF in the WebP");
    let mut decoder =
        image::codecs::webp::WebPDecoder::new(std::io::Cursor::new(&webp.bytes)).unwrap();
    use image::ImageDecoder;
    assert_eq!(
        decoder.orientation().unwrap(),
        image::metadata::Orientation::Rotate90
    );
}

/// A JPEG whose recompression would grow keeps its own coefficients, losslessly re-encoded
/// (smaller than the input thanks to optimal Huffman tables) and carrying its rotation.
#[test]
fn a_jpeg_below_the_target_quality_keeps_its_coefficients() {
    // Baseline with standard tables at q30, rotated (so it takes the pixel path): at q100 its
    // JPEG is far larger.
    let input = with_exif_orientation(jpeg_fixture(&photo_like(96, 64), 30), 6);
    let out = compress(&input, &RULE_ON_Q100).unwrap();
    assert!(out.bytes.len() <= input.len());
    assert_eq!(out.codec, Codec::Lossless, "{:?}", out.note);
    assert_eq!(
        crate::jpeg::info(&out.bytes).unwrap().exif_orientation,
        Some(6)
    );
    assert_eq!((out.width, out.height), (64, 96));
}

/// TIFF is never served as it is (browsers do not show it): its JPEG stays, with a note.
#[test]
fn a_tiff_keeps_its_jpeg_even_when_larger() {
    let tiny = image::RgbImage::from_pixel(8, 8, image::Rgb([10, 200, 30]));
    let input = encode_as(tiny, image::ImageFormat::Tiff);
    let out = compress(&input, &RULE_ON).unwrap();
    assert_eq!(out.format, OutputFormat::Jpeg);
    if out.bytes.len() > input.len() {
        assert!(out.note.unwrap_or_default().contains("not kept"));
    }
}

#[test]
fn stripped_containers_stay_valid() {
    // PNG chunk CRCs, WebP RIFF sizes and GIF block chains must survive the rewrite: every
    // kept file decodes with `image`, checked above; here the RIFF size is checked exactly.
    let out = compress(&fixture("meta-q40.webp"), &RULE_ON).unwrap();
    let riff = u32::from_le_bytes(out.bytes[4..8].try_into().unwrap()) as usize;
    assert_eq!(riff + 8, out.bytes.len());
    let png = compress(&fixture("palette.png"), &RULE_ON).unwrap();
    assert!(
        png.bytes.ends_with(&[0xAE, 0x42, 0x60, 0x82]),
        "ends with IEND's CRC"
    );
}
