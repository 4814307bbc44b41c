//! Colour management against LittleCMS's conversions of the same pictures: the fixtures in
//! tests/fixtures/color (made by its make.py) carry real profiles (ProPhoto, Adobe RGB
//! compatible, Wide Gamut, sRGB, a FOGRA39 CMYK profile built by ArgyllCMS) and broken ones.

use std::path::PathBuf;

use image::ImageFormat;

use super::fixtures::{psnr, OPTS};
use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/fixtures/color", name]
        .iter()
        .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rgb_of(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes).expect("decodes").to_rgb8()
}

const Q50: CompressOptions = CompressOptions {
    quality: 50,
    ..OPTS
};

/// What `input` truly looks like in sRGB (make.py): decoded and converted from its own
/// profile by LittleCMS. The broken fixtures' pixels are the sRGB picture itself.
fn truth_of(input: &str) -> String {
    if input == "truth-srgb.png" || input.starts_with("broken-") {
        "truth-srgb.png".to_owned()
    } else {
        format!("truth-{input}.png")
    }
}

/// The output's PSNR against the input correctly converted to sRGB, and the output.
fn measure(input: &str) -> (f64, Compressed) {
    let out = compress(&fixture(input), &Q50).unwrap_or_else(|e| panic!("{input}: {e}"));
    let truth = rgb_of(&fixture(&truth_of(input)));
    let got = rgb_of(&out.bytes);
    assert_eq!(got.dimensions(), truth.dimensions(), "{input}");
    (psnr(got.as_raw(), truth.as_raw()), out)
}

/// The reference pipeline's PSNR per input (reference.txt, written by make.py): LittleCMS's
/// conversion, then libjpeg-turbo at q50.
fn reference(input: &str) -> f64 {
    let text = String::from_utf8(fixture("reference.txt")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, db) = l.split_once(' ')?;
            (name == input).then(|| db.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{input} is not in reference.txt"))
}

/// Every tagged input is converted, and comes out at least as true to its picture as LittleCMS
/// and libjpeg-turbo make it (within 0.5 dB). Lossless tagged inputs also come out within 1 dB
/// of the same picture untagged. (Lossy ones cannot, in any pipeline: coded in a wide-gamut
/// space, their own coding noise grows when shown in sRGB; reference.txt shows the same gap
/// for the reference.) The table is printed for docs/color.md.
#[test]
fn tagged_inputs_are_converted_as_truly_as_the_reference() {
    let cases = [
        // (tagged input, the untagged input of the same picture and format)
        ("prophoto.jpg", "untagged.jpg"),
        ("adobergb.jpg", "untagged.jpg"),
        ("widegamut.jpg", "untagged.jpg"),
        ("prophoto-444-prog.jpg", "untagged-444-prog.jpg"),
        ("adobergb-444-prog.jpg", "untagged-444-prog.jpg"),
        ("widegamut-444-prog.jpg", "untagged-444-prog.jpg"),
        ("prophoto.png", "truth-srgb.png"),
        ("prophoto.webp", "untagged.webp"),
        ("prophoto.tif", "untagged.tif"),
        ("cmyk-fogra39.jpg", "untagged.jpg"),
    ];
    let mut table = String::from(
        "| input | untagged, ours | tagged, ours | tagged, LittleCMS + libjpeg-turbo | \
         tagged, profile ignored |\n|---|---|---|---|---|\n",
    );
    for (tagged, untagged) in cases {
        let (base, _) = measure(untagged);
        let (got, out) = measure(tagged);
        assert_eq!(out.color.as_str(), Some("converted"), "{tagged}");
        assert!(
            out.note
                .as_deref()
                .is_some_and(|n| n.contains("converted to sRGB")),
            "{tagged}: {:?}",
            out.note
        );
        let reference = reference(tagged);
        assert!(
            got >= reference - 0.5,
            "{tagged}: {got:.2} dB, the reference pipeline gets {reference:.2} dB"
        );
        let lossless = tagged.ends_with(".png") || tagged.ends_with(".tif");
        assert!(
            !lossless || got >= base - 1.0,
            "{tagged}: {got:.2} dB, the untagged picture gets {base:.2} dB"
        );
        // What the service did before: the same pixels, profile ignored.
        let stripped = naive_psnr(tagged);
        table += &format!(
            "| {tagged} | {base:.2} dB | {got:.2} dB | {reference:.2} dB | {stripped:.2} dB |\n"
        );
    }
    eprintln!("{table}");
}

/// The tagged input's pixels read as if they were sRGB: what outputs were before colour
/// management (the comparison row of the table).
fn naive_psnr(input: &str) -> f64 {
    let bytes = fixture(input);
    let decoded = match image::load_from_memory(&bytes) {
        Ok(i) => i.to_rgb8(),
        Err(_) => return f64::NAN,
    };
    psnr(
        decoded.as_raw(),
        rgb_of(&fixture(&truth_of(input))).as_raw(),
    )
}

#[test]
fn an_srgb_profile_keeps_the_fast_path() {
    let (got, out) = measure("srgb.jpg");
    assert_eq!(out.codec, Codec::Requantized);
    assert_eq!(out.color, ColorHandling::Srgb);
    assert_eq!(out.note, None);
    let (base, _) = measure("untagged.jpg");
    assert!(got >= base - 1.0, "{got:.2} against {base:.2}");
}

#[test]
fn untagged_inputs_say_nothing_about_colour() {
    for name in [
        "untagged.jpg",
        "untagged.webp",
        "truth-srgb.png",
        "untagged.tif",
    ] {
        let out = compress(&fixture(name), &Q50).unwrap();
        assert_eq!(out.color, ColorHandling::Untagged, "{name}");
        assert_eq!(out.color.as_str(), None, "{name}");
    }
    let untagged = compress(&fixture("untagged.jpg"), &Q50).unwrap();
    assert_eq!(untagged.codec, Codec::Requantized);
}

/// A CMYK JPEG without a profile is shown the way browsers show it: the naive conversion,
/// which turns Pillow's naive RGB -> CMYK back into the picture.
#[test]
fn untagged_cmyk_is_converted_as_browsers_do() {
    let (got, out) = measure("cmyk-untagged.jpg");
    assert_eq!(out.color, ColorHandling::Untagged);
    let (base, _) = measure("untagged.jpg");
    assert!(got >= base - 1.0, "{got:.2} against {base:.2}");
}

/// Broken, hostile and mismatched profiles cost the profile, never the image: the pixels are
/// taken as sRGB (which they are, in these fixtures), and the image says why.
#[test]
fn broken_profiles_fall_back_to_srgb_with_a_note() {
    for (name, untagged) in [
        ("broken-truncated.jpg", "untagged.jpg"),
        ("broken-garbage.png", "truth-srgb.png"),
        ("broken-tagcount.webp", "untagged.webp"),
        ("broken-gray-on-rgb.jpg", "untagged.jpg"),
    ] {
        let (got, out) = measure(name);
        assert_eq!(
            out.color.as_str(),
            Some("ignored"),
            "{name}: {:?}",
            out.color
        );
        let note = out.note.unwrap_or_default();
        assert!(note.contains("taken as sRGB"), "{name}: {note}");
        let (base, _) = measure(untagged);
        assert!(got >= base - 1.0, "{name}: {got:.2} dB against {base:.2}");
    }
}

/// Arbitrary bytes as a profile never panic, never fail the image.
#[test]
fn any_bytes_as_a_profile_are_judged_without_panicking() {
    let good = fixture("prophoto.jpg");
    let icc = crate::jpeg::info(&good).unwrap().icc_profile.unwrap();
    let mut rng = super::fixtures::Rng(7);
    for data in [
        color::Data::Gray,
        color::Data::Rgb,
        color::Data::Rgbx,
        color::Data::Cmyk,
    ] {
        for i in 0..200 {
            let mut bytes = icc.clone();
            // Flip a few bytes in the header and tag table, or truncate.
            for _ in 0..(1 + i % 4) {
                let at = rng.next() as usize % bytes.len().min(400);
                bytes[at] = rng.next() as u8;
            }
            if i % 7 == 0 {
                bytes.truncate(rng.next() as usize % bytes.len());
            }
            let _ = color::assess(&bytes, data);
        }
    }
}

/// The fixtures' tagged JPEG decodes as a JPEG with the profile we expect to have read.
#[test]
fn jpeg_profiles_are_read_from_their_app2_chunks() {
    let info = crate::jpeg::info(&fixture("prophoto.jpg")).unwrap();
    let icc = info.icc_profile.expect("a profile");
    assert_eq!(&icc[36..40], b"acsp", "an ICC header");
    assert_eq!(
        u32::from_be_bytes(icc[..4].try_into().unwrap()) as usize,
        icc.len(),
        "the declared size is what the chunks joined to"
    );
    assert!(
        image::load_from_memory_with_format(&fixture("prophoto.jpg"), ImageFormat::Jpeg).is_ok()
    );
}
