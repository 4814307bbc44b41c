//! Tests need the `image` and `jpeg-encoder` crates (dev-dependencies of the host crate).

use super::*;
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

/// Deterministic xorshift noise so tests need no RNG crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A photo-like RGB pattern: smooth gradients, an edge, and noise.
fn photo(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let n = (rng.next() % 24) as i32 - 12;
            let edge = if (x as i32 - y as i32 / 2) > w as i32 / 3 {
                60
            } else {
                0
            };
            let r = (x * 255 / w.max(1)) as i32 + n + edge;
            let g = (y * 255 / h.max(1)) as i32 + n / 2;
            let b = (((x + y) * 128) / (w + h)) as i32 + 64 - n - edge / 2;
            px.extend([r, g, b].map(|v| v.clamp(0, 255) as u8));
        }
    }
    px
}

fn gray(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks(3)
        .map(|p| ((p[0] as u32 * 3 + p[1] as u32 * 5 + p[2] as u32 * 2) / 10) as u8)
        .collect()
}

#[derive(Clone, Copy)]
struct Enc {
    progressive: bool,
    q: u8,
    sampling: SamplingFactor,
    restart: Option<u16>,
    grayscale: bool,
}

fn enc(px: &[u8], w: u16, h: u16, o: Enc) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out, o.q);
    e.set_sampling_factor(o.sampling);
    e.set_progressive(o.progressive);
    if let Some(r) = o.restart {
        e.set_restart_interval(r);
    }
    let ct = if o.grayscale {
        ColorType::Luma
    } else {
        ColorType::Rgb
    };
    e.encode(px, w, h, ct).unwrap();
    out
}

fn decode(jpeg: &[u8]) -> (u32, u32, Vec<u8>) {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg).unwrap();
    (img.width(), img.height(), img.into_bytes())
}

fn encode_case(w: u16, h: u16, o: Enc) -> Vec<u8> {
    let rgb = photo(w as u32, h as u32, w as u64 * 31 + h as u64);
    let px = if o.grayscale { gray(&rgb) } else { rgb };
    enc(&px, w, h, o)
}

fn assert_lossless(input: &[u8], label: &str) -> Vec<u8> {
    let out = optimize_huffman(input).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_same_coeffs(input, &out, label);
    if label.contains("411") {
        // zune-jpeg 0.5 decodes the last MCU row of some 4:1:1 files differently depending on
        // the Huffman tables (libjpeg-turbo's djpeg and Pillow decode input and output of the
        // 33x17 case identically); the coefficient check above is what matters here.
        return out;
    }
    let a = decode(input);
    let b = decode(&out);
    assert_eq!((a.0, a.1), (b.0, b.1), "{label}: dimensions");
    assert!(a.2 == b.2, "{label}: pixels differ");
    out
}

/// Every block the decoder displays holds the same coefficients in both files.
fn assert_same_coeffs(a: &[u8], b: &[u8], label: &str) {
    let a = parse::read_coefficients(a).unwrap();
    let b = parse::read_coefficients(b).unwrap();
    assert_eq!(a.comps.len(), b.comps.len());
    for (ca, cb) in a.comps.iter().zip(&b.comps) {
        assert_eq!(ca.qt, cb.qt, "{label}: quant table");
        assert_eq!(
            (ca.w_blocks, ca.h_blocks),
            (cb.w_blocks, cb.h_blocks),
            "{label}"
        );
        for by in 0..ca.h_blocks {
            for bx in 0..ca.w_blocks {
                let oa = (by * ca.bw + bx) * 64;
                let ob = (by * cb.bw + bx) * 64;
                assert_eq!(
                    ca.coeffs[oa..oa + 64],
                    cb.coeffs[ob..ob + 64],
                    "{label}: block {bx},{by} of component {}",
                    ca.id
                );
            }
        }
    }
}

const SAMPLINGS: [(SamplingFactor, &str); 5] = [
    (SamplingFactor::F_2_2, "420"),
    (SamplingFactor::F_1_1, "444"),
    (SamplingFactor::F_2_1, "422"),
    (SamplingFactor::F_1_2, "440"),
    (SamplingFactor::F_4_1, "411"),
];

#[test]
fn optimize_is_lossless_and_smaller() {
    for &(w, h) in &[(33u16, 17u16), (64, 64), (1, 1), (8, 9), (257, 131)] {
        for &(sampling, sname) in &SAMPLINGS {
            for restart in [None, Some(1), Some(3)] {
                for grayscale in [false, true] {
                    for (q, progressive) in [(30u8, false), (75, false), (95, false), (80, true)] {
                        let o = Enc {
                            progressive,
                            q,
                            sampling,
                            restart,
                            grayscale,
                        };
                        let label = format!(
                            "{w}x{h} {sname} rst={restart:?} gray={grayscale} q{q} prog={progressive}"
                        );
                        let input = encode_case(w, h, o);
                        let out = assert_lossless(&input, &label);
                        if w as u32 * h as u32 >= 4096 && !progressive {
                            assert!(
                                out.len() < input.len(),
                                "{label}: {} >= {}",
                                out.len(),
                                input.len()
                            );
                        }
                        // Idempotent in content: optimising the output again is lossless too.
                        let again = optimize_huffman(&out).unwrap();
                        assert_eq!(decode(&again).2, decode(&out).2, "{label}: second pass");
                    }
                }
            }
        }
    }
}

#[test]
fn optimize_reports_size_gain() {
    let (w, h) = (640u16, 480u16);
    let o = Enc {
        progressive: false,
        q: 75,
        sampling: SamplingFactor::F_2_2,
        restart: None,
        grayscale: false,
    };
    let input = encode_case(w, h, o);
    let out = assert_lossless(&input, "640x480");
    let gain = 1.0 - out.len() as f64 / input.len() as f64;
    eprintln!(
        "640x480 q75 420: {} -> {} bytes ({:.1}% smaller)",
        input.len(),
        out.len(),
        gain * 100.0
    );
    assert!(gain > 0.03);
}

#[test]
fn output_structure_is_plain_baseline() {
    let o = Enc {
        progressive: false,
        q: 80,
        sampling: SamplingFactor::F_2_2,
        restart: Some(2),
        grayscale: false,
    };
    let out = optimize_huffman(&encode_case(50, 40, o)).unwrap();
    let mut markers = Vec::new();
    let mut p = 2;
    while p + 4 <= out.len() {
        assert_eq!(out[p], 0xFF);
        let m = out[p + 1];
        markers.push(m);
        if m == 0xDA {
            break;
        }
        p += 2 + u16::from_be_bytes([out[p + 2], out[p + 3]]) as usize;
    }
    assert_eq!(markers, vec![0xDB, 0xC0, 0xC4, 0xDA]);
    assert_eq!(&out[out.len() - 2..], &[0xFF, 0xD9]);
    let i = info(&out).unwrap();
    assert_eq!((i.width, i.height, i.components.len()), (50, 40, 3));
    assert!(!i.progressive && i.unsupported.is_none());
}

#[test]
fn metadata_is_stripped_and_orientation_reported() {
    let o = Enc {
        progressive: false,
        q: 80,
        sampling: SamplingFactor::F_2_2,
        restart: None,
        grayscale: false,
    };
    let rgb = photo(40, 30, 7);
    let mut input = Vec::new();
    let mut e = Encoder::new(&mut input, o.q);
    // Minimal big-endian EXIF with orientation 6.
    let mut exif = b"MM\0\x2a\0\0\0\x08\0\x01".to_vec();
    exif.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0]);
    e.add_exif_metadata(&exif).unwrap();
    e.add_app_segment(15, b"hello".to_vec()).unwrap();
    e.encode(&rgb, 40, 30, ColorType::Rgb).unwrap();
    assert_eq!(info(&input).unwrap().exif_orientation, Some(6));
    let out = assert_lossless(&input, "exif");
    assert!(!out.windows(4).any(|w| w == b"Exif"));
    assert_eq!(info(&out).unwrap().exif_orientation, None);
}

#[test]
fn truncated_input_is_an_error() {
    let o = Enc {
        progressive: false,
        q: 75,
        sampling: SamplingFactor::F_2_2,
        restart: Some(1),
        grayscale: false,
    };
    for input in [
        encode_case(24, 20, o),
        encode_case(17, 9, Enc { restart: None, ..o }),
    ] {
        for len in 0..input.len() {
            assert!(
                optimize_huffman(&input[..len]).is_err(),
                "truncated to {len} accepted"
            );
            let _ = requantize(&input[..len], 50);
            let _ = info(&input[..len]);
        }
    }
}

#[test]
fn structure_check_finds_truncation_and_tolerates_the_rest() {
    let o = Enc {
        progressive: false,
        q: 75,
        sampling: SamplingFactor::F_2_2,
        restart: Some(1),
        grayscale: false,
    };
    let input = encode_case(24, 20, o);
    assert_eq!(check_structure(&input), Ok(()));
    for len in 2..input.len() {
        assert_eq!(
            check_structure(&input[..len]),
            Err(StructureProblem::Truncated),
            "truncated to {len}"
        );
    }
    // Stray bytes between segments and data after EOI are left to the decoder.
    let mut stray = input[..2].to_vec();
    stray.extend_from_slice(b"junk");
    stray.extend_from_slice(&input[2..]);
    stray.extend_from_slice(b"trailing video");
    assert_eq!(check_structure(&stray), Ok(()));
    // So is a length field under 2: corrupt, not truncated.
    assert_eq!(check_structure(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 1]), Ok(()));
}

#[test]
fn corrupt_input_never_panics() {
    let o = Enc {
        progressive: false,
        q: 90,
        sampling: SamplingFactor::F_2_1,
        restart: Some(2),
        grayscale: false,
    };
    let input = encode_case(40, 24, o);
    let mut rng = Rng(12345);
    for _ in 0..3000 {
        let mut d = input.clone();
        let flips = 1 + rng.next() % 4;
        for _ in 0..flips {
            let i = (rng.next() % d.len() as u64) as usize;
            d[i] ^= 1 << (rng.next() % 8);
        }
        if let Ok(out) = optimize_huffman(&d) {
            // Whatever we accept must re-read cleanly.
            optimize_huffman(&out).unwrap();
        }
        let _ = requantize(&d, 40);
        // A damaged frame header may claim any size: the planes are for the real one.
        let (mut y, mut u, mut v) = (vec![0; 40 * 24], vec![0; 20 * 12], vec![0; 20 * 12]);
        let _ = decode_yuv420(
            &d,
            &mut Yuv420Planes {
                y: &mut y,
                y_stride: 40,
                u: &mut u,
                v: &mut v,
                uv_stride: 20,
            },
        );
    }
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0 * 255.0 / mse.max(1e-9)).log10()
}

#[test]
fn requantize_at_or_below_target_is_pixel_identical() {
    // 4:4:4 colour is not here: its chroma is halved to 4:2:0 (`resample`).
    for (sampling, grayscale) in [
        (SamplingFactor::F_2_2, false),
        (SamplingFactor::F_2_2, true),
        (SamplingFactor::F_1_1, true),
    ] {
        {
            let o = Enc {
                progressive: false,
                q: 30,
                sampling,
                restart: None,
                grayscale,
            };
            let input = encode_case(77, 45, o);
            for target in [30, 50] {
                let r = requantize(&input, target).unwrap();
                assert_eq!((r.width, r.height), (77, 45));
                assert!(decode(&input).2 == decode(&r.jpeg).2, "q30 -> q{target}");
            }
        }
    }
}

/// What compress.rs's pure-Rust pixel path makes of decoded pixels (`encode_pure_rust`):
/// jpeg-encoder with 2x2-averaged 4:2:0 chroma and standard tables, then our Huffman pass.
fn pixel_path(px: &[u8], w: u16, h: u16, q: u8, grayscale: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut e = Encoder::new(&mut out, q);
    e.set_sampling_factor(SamplingFactor::R_4_2_0);
    e.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Average);
    let ct = if grayscale {
        ColorType::Luma
    } else {
        ColorType::Rgb
    };
    e.encode(px, w, h, ct).unwrap();
    optimize_huffman(&out).unwrap()
}

/// The inputs the service sends down the fast path (`compress::takes_fast_path`: 4:2:0 YCbCr
/// or grayscale), in each coding the reader handles, at `qualities`.
fn fast_path_cases(sizes: &[(u16, u16)], qualities: &[u8]) -> Vec<(String, u16, u16, Enc)> {
    let mut cases = Vec::new();
    for &(w, h) in sizes {
        for grayscale in [false, true] {
            for (progressive, restart) in [(false, None), (false, Some(3)), (true, None)] {
                for &q in qualities {
                    let o = Enc {
                        progressive,
                        q,
                        sampling: SamplingFactor::F_2_2,
                        restart,
                        grayscale,
                    };
                    let kind = match (progressive, restart, grayscale) {
                        (true, _, false) => "prog 420",
                        (true, _, true) => "prog gray",
                        (false, Some(_), false) => "rst3 420",
                        (false, Some(_), true) => "rst3 gray",
                        (false, None, false) => "base 420",
                        (false, None, true) => "base gray",
                    };
                    cases.push((format!("{w}x{h} {kind} q{q}"), w, h, o));
                }
            }
        }
    }
    cases
}

/// Cases of `requantize_matches_pixel_reencode` measured outside its bounds, listed here (with
/// what was measured) rather than widening the bounds for every case: (size, colour, source
/// quality, target, bytes ratio, PSNR loss in dB), each the same for baseline, restart and
/// progressive inputs. Grayscale where the steps exactly double (q75 -> q50, q85 -> q70):
/// ties rounded toward zero drop every +-1 coefficient, 25-44% fewer bytes for 0.2-0.34 dB.
/// 333x211 4:2:0 q85 -> q50: 3.0-3.2% more bytes for 0.02 dB more.
const OVER_BOUNDS: [(&str, &str, u8, u8, f64, f64); 4] = [
    ("512x384", "gray", 75, 50, 0.555, 0.34),
    ("333x211", "gray", 75, 50, 0.749, 0.21),
    ("512x384", "gray", 85, 70, 0.658, 0.27),
    ("333x211", "420", 85, 50, 1.032, -0.02),
];

#[test]
fn requantize_matches_pixel_reencode() {
    // At the same target quality, the fast path must cost at most 3% more bytes than decoding
    // and re-encoding, and lose at most 0.1 dB of PSNR (both against the decoded input).
    // Smaller or better is fine: below the target the fast path keeps the input's
    // coefficients, where the pixel path quantises a second time.
    const MAX_BYTES_RATIO: f64 = 1.03;
    const MAX_PSNR_LOSS: f64 = 0.1;
    let qualities = [30, 45, 55, 65, 75, 85, 90, 95, 97];
    let mut runs: Vec<(String, Vec<u8>, u16, u16, Enc, u8)> = Vec::new();
    for (label, w, h, o) in fast_path_cases(&[(512, 384), (333, 211)], &qualities) {
        runs.push((label, encode_case(w, h, o), w, h, o, 50));
    }
    // Other targets, from the high qualities phones and cameras write.
    for (label, w, h, o) in fast_path_cases(&[(512, 384)], &[85, 95]) {
        let input = encode_case(w, h, o);
        for target in [40u8, 70] {
            runs.push((label.clone(), input.clone(), w, h, o, target));
        }
    }
    let mut failures = Vec::new();
    let (mut worst_ratio, mut worst_loss) = (0f64, f64::MIN);
    for (label, input, w, h, o, target) in &runs {
        let (_, _, src_px) = decode(input);
        let r = requantize(input, *target).unwrap();
        let (_, _, fast_px) = decode(&r.jpeg);
        let pix = pixel_path(&src_px, *w, *h, *target, o.grayscale);
        let (_, _, pix_px) = decode(&pix);
        let (pf, pp) = (psnr(&src_px, &fast_px), psnr(&src_px, &pix_px));
        let ratio = r.jpeg.len() as f64 / pix.len() as f64;
        let loss = pp - pf;
        eprintln!(
            "{label} -> q{target}: fast {} B {pf:.2} dB, pixel {} B {pp:.2} dB, \
             bytes ratio {ratio:.3}, psnr diff {:+.2} dB",
            r.jpeg.len(),
            pix.len(),
            -loss
        );
        let colour = if o.grayscale { "gray" } else { "420" };
        let known = OVER_BOUNDS
            .iter()
            .find(|k| (k.0, k.1, k.2, k.3) == (&format!("{w}x{h}")[..], colour, o.q, *target));
        // A listed case may not get worse than measured (rounding slack only).
        let (max_ratio, max_loss) = match known {
            Some(k) => (k.4 + 0.002, k.5 + 0.01),
            None => (MAX_BYTES_RATIO, MAX_PSNR_LOSS),
        };
        if known.is_none() {
            worst_ratio = worst_ratio.max(ratio);
            worst_loss = worst_loss.max(loss);
        }
        if ratio > max_ratio || loss > max_loss {
            failures.push(format!(
                "{label} -> q{target}: bytes ratio {ratio:.3}, psnr {pf:.2} vs {pp:.2} dB"
            ));
        }
    }
    eprintln!(
        "{} cases; outside OVER_BOUNDS: worst bytes ratio {worst_ratio:.3}, \
         worst psnr loss {worst_loss:.2} dB",
        runs.len()
    );
    assert!(failures.is_empty(), "over the bounds: {failures:#?}");
}

/// Whether libjpeg-turbo's `djpeg` can be run. Absent, tests that need it are skipped, unless
/// IMGBATCH_REQUIRE_DJPEG is set (CI sets it), where a missing tool must not pass as a skip.
fn djpeg_present(test: &str) -> bool {
    match std::process::Command::new("djpeg").arg("-version").output() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::env::var_os("IMGBATCH_REQUIRE_DJPEG").is_some() {
                panic!("{test}: djpeg is not installed and IMGBATCH_REQUIRE_DJPEG is set");
            }
            eprintln!("{test}: djpeg not installed (libjpeg-turbo-progs); skipping");
            false
        }
        Err(e) => panic!("{test}: cannot run djpeg: {e}"),
    }
}

/// A decode by libjpeg-turbo's djpeg: exit status, stderr, and the PNM samples (RGB or gray).
struct Djpeg {
    ok: bool,
    stderr: String,
    width: u32,
    height: u32,
    samples: Vec<u8>,
}

fn djpeg(jpeg: &[u8]) -> Djpeg {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("djpeg")
        .arg("-pnm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn djpeg");
    let mut stdin = child.stdin.take().unwrap();
    let input = jpeg.to_vec();
    // Written from another thread: djpeg starts writing pixels before it has read everything,
    // and both pipes are bounded.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let (width, height, samples) = parse_pnm(&out.stdout).unwrap_or((0, 0, Vec::new()));
    Djpeg {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        width,
        height,
        samples,
    }
}

/// Binary PGM/PPM with maxval 255, as djpeg writes them.
fn parse_pnm(d: &[u8]) -> Option<(u32, u32, Vec<u8>)> {
    if !(d.starts_with(b"P5") || d.starts_with(b"P6")) {
        return None;
    }
    let mut p = 2;
    let mut fields = [0u32; 3];
    for f in &mut fields {
        while d.get(p)?.is_ascii_whitespace() {
            p += 1;
        }
        let start = p;
        while d.get(p)?.is_ascii_digit() {
            p += 1;
        }
        *f = std::str::from_utf8(&d[start..p]).ok()?.parse().ok()?;
    }
    let [w, h, maxval] = fields;
    if maxval != 255 {
        return None;
    }
    Some((w, h, d.get(p + 1..)?.to_vec()))
}

/// Our outputs must decode cleanly in libjpeg-turbo, a decoder independent of ours and of
/// zune-jpeg (which `image` uses): libjpeg reports recoverable damage ("Corrupt JPEG data",
/// "Premature end of JPEG file") only as a warning on stderr with exit status 0, so stderr
/// must be empty too. Its pixels must also agree with zune-jpeg's: to within 1 (IDCT
/// rounding) for grayscale, to 40 dB for colour.
#[test]
fn outputs_decode_cleanly_in_libjpeg() {
    if !djpeg_present("outputs_decode_cleanly_in_libjpeg") {
        return;
    }
    let sizes = [(1, 1), (8, 9), (17, 9), (33, 17), (77, 45), (257, 131)];
    let mut inputs: Vec<(String, Vec<u8>)> = fast_path_cases(&sizes, &[30, 50, 75, 90, 97])
        .into_iter()
        .map(|(label, w, h, o)| (label, encode_case(w, h, o)))
        .collect();
    // 4:4:4, 4:2:2 and 4:4:0, whose chroma requantize halves, at odd sizes (partner blocks
    // missing at the right and bottom, luma grids padded to whole MCUs); and 4:1:1, which the
    // service sends down the pixel path, but requantize must still write validly.
    for &(sampling, sname) in &SAMPLINGS[1..] {
        let (sizes, qualities): (&[(u16, u16)], &[u8]) = if sname == "411" {
            (&[(17, 9), (77, 45)], &[85])
        } else {
            (
                &[(1, 1), (7, 5), (17, 9), (77, 45), (257, 131)],
                &[30, 50, 85, 97],
            )
        };
        for &(w, h) in sizes {
            for (progressive, restart) in [(false, None), (false, Some(1)), (true, None)] {
                for &q in qualities {
                    let o = Enc {
                        progressive,
                        q,
                        sampling,
                        restart,
                        grayscale: false,
                    };
                    let label = format!("{w}x{h} {sname} q{q} prog={progressive} rst={restart:?}");
                    inputs.push((label, encode_case(w, h, o)));
                }
            }
        }
    }
    let (mut worst_gray, mut worst_color_psnr) = (0u8, f64::MAX);
    let mut problems = Vec::new();
    for (label, input) in &inputs {
        let r = requantize(input, 50).unwrap_or_else(|e| panic!("{label}: {e}"));
        let opt = optimize_huffman(input).unwrap_or_else(|e| panic!("{label}: {e}"));
        let src = djpeg(input);
        assert!(
            src.ok && src.stderr.is_empty(),
            "{label}: input: {}",
            src.stderr
        );
        let gray = label.contains("gray");
        // Same coefficients must give libjpeg's very same pixels: always for the Huffman pass,
        // and for requantize when the input is already at or below the target quality.
        let unchanged = label.ends_with(" q30") || label.ends_with(" q50");
        for (what, out, same) in [
            ("requantize q50", &r.jpeg, unchanged),
            ("optimize_huffman", &opt, true),
        ] {
            let d = djpeg(out);
            if !d.ok || !d.stderr.is_empty() {
                problems.push(format!("{label} {what}: ok={} stderr={:?}", d.ok, d.stderr));
                continue;
            }
            if same && (d.width, d.height, &d.samples) != (src.width, src.height, &src.samples) {
                problems.push(format!(
                    "{label} {what}: libjpeg decodes it unlike the input"
                ));
            }
            let (w, h, ours) = decode(out);
            if (d.width, d.height) != (w, h) || d.samples.len() != ours.len() {
                problems.push(format!(
                    "{label} {what}: djpeg {}x{} ({} samples), zune-jpeg {w}x{h} ({})",
                    d.width,
                    d.height,
                    d.samples.len(),
                    ours.len()
                ));
                continue;
            }
            let diff = d
                .samples
                .iter()
                .zip(&ours)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0);
            let p = psnr(&d.samples, &ours);
            if gray {
                worst_gray = worst_gray.max(diff);
                if diff > 1 {
                    problems.push(format!("{label} {what}: samples differ by up to {diff}"));
                }
            } else {
                // libjpeg's triangular chroma upsampling and colour conversion differ from
                // zune-jpeg's by several levels at colour edges (measured: up to 11, 43.4 dB
                // at worst here); a block decoded wrongly costs far more.
                worst_color_psnr = worst_color_psnr.min(p);
                if p < 40.0 {
                    problems.push(format!("{label} {what}: djpeg vs zune-jpeg {p:.1} dB"));
                }
            }
        }
    }
    eprintln!(
        "{} inputs, 2 outputs each: djpeg vs zune-jpeg: gray max diff {worst_gray}, \
         colour min psnr {worst_color_psnr:.1} dB",
        inputs.len()
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn requantized_tables_are_the_libjpeg_tables() {
    let o = Enc {
        progressive: false,
        q: 95,
        sampling: SamplingFactor::F_2_2,
        restart: None,
        grayscale: false,
    };
    let r = requantize(&encode_case(32, 32, o), 50).unwrap();
    let i = info(&r.jpeg).unwrap();
    let q0 = i.quant_tables[i.components[0].tq as usize].unwrap();
    let q1 = i.quant_tables[i.components[1].tq as usize].unwrap();
    assert_eq!(q0, scaled_table(&STD_LUMA_QT, 50));
    assert_eq!(q1, scaled_table(&STD_CHROMA_QT, 50));
}

#[test]
fn refuses_other_kinds() {
    let rgb = photo(40, 40, 3);
    let mut cmyk = Vec::new();
    let px: Vec<u8> = rgb.chunks(3).flat_map(|p| [p[0], p[1], p[2], 0]).collect();
    Encoder::new(&mut cmyk, 80)
        .encode(&px, 40, 40, ColorType::Cmyk)
        .unwrap();
    assert!(optimize_huffman(&cmyk).is_err());
    assert!(optimize_huffman(b"not a jpeg").is_err());
    assert!(optimize_huffman(&[]).is_err());
}

/// Timing and size on the shared bench photos: `cargo test --release -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_real_photos() {
    let dir = "/work/shared/bench-images";
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let orig = std::fs::read(&path).unwrap();
        let (w, h, px) = decode(&orig);
        let mut q50 = Vec::new();
        let mut e = Encoder::new(&mut q50, 50);
        // Baseline: what the service produces before optimising its tables.
        e.set_sampling_factor(SamplingFactor::F_2_2);
        e.encode(&px, w as u16, h as u16, ColorType::Rgb).unwrap();
        let best = |f: &dyn Fn() -> Vec<u8>| {
            let mut t = f64::MAX;
            let mut out = Vec::new();
            for _ in 0..3 {
                let s = std::time::Instant::now();
                out = f();
                t = t.min(s.elapsed().as_secs_f64() * 1000.0);
            }
            (t, out)
        };
        let (t, out) = best(&|| optimize_huffman(&q50).unwrap());
        assert!(decode(&out).2 == decode(&q50).2, "{name}");
        eprintln!(
            "{name}: optimize_huffman on jpeg-encoder q50: {:.1} ms ({:.0} MP/s), {} -> {} bytes ({:.1}% smaller)",
            t,
            (w * h) as f64 / t / 1000.0,
            q50.len(),
            out.len(),
            100.0 * (1.0 - out.len() as f64 / q50.len() as f64)
        );
        match info(&orig).unwrap().unsupported {
            Some(why) => eprintln!("{name}: requantize refused: {why}"),
            None => {
                let (t, rq) = best(&|| requantize(&orig, 50).unwrap().jpeg);
                let pix = optimize_huffman(&q50).unwrap();
                let (pr, pp) = (psnr(&px, &decode(&rq).2), psnr(&px, &decode(&pix).2));
                eprintln!(
                    "{name}: requantize q50: {:.1} ms ({:.0} MP/s), {} bytes {:.2} dB; pixel path {} bytes {:.2} dB (size ratio {:.3})",
                    t,
                    (w * h) as f64 / t / 1000.0,
                    rq.len(),
                    pr,
                    pix.len(),
                    pp,
                    rq.len() as f64 / pix.len() as f64
                );
            }
        }
    }
}

/// Progressive files with successive approximation (which jpeg-encoder does not write), made by
/// libjpeg's cjpeg when it is installed; skipped otherwise.
#[test]
fn successive_approximation_from_cjpeg() {
    let dir = std::env::temp_dir().join(format!("jpegtest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (w, h) = (101u32, 67u32);
    let rgb = photo(w, h, 5);
    let ppm = dir.join("in.ppm");
    let mut data = format!("P6\n{w} {h}\n255\n").into_bytes();
    data.extend_from_slice(&rgb);
    std::fs::write(&ppm, data).unwrap();
    for args in [
        vec!["-progressive"],
        vec!["-progressive", "-sample", "1x1"],
        vec!["-progressive", "-sample", "2x1", "-restart", "1"],
        vec!["-progressive", "-grayscale"],
        vec!["-progressive", "-quality", "30", "-restart", "2B"],
        // Dense blocks: most coefficients get correction bits.
        vec!["-progressive", "-quality", "100", "-sample", "2x1"],
    ] {
        let out = match std::process::Command::new("cjpeg")
            .args(&args)
            .arg(&ppm)
            .output()
        {
            Ok(o) if o.status.success() => o.stdout,
            _ => {
                // cjpeg comes with djpeg (libjpeg-turbo-progs), which CI requires.
                if std::env::var_os("IMGBATCH_REQUIRE_DJPEG").is_some() {
                    panic!("cjpeg {args:?} failed and IMGBATCH_REQUIRE_DJPEG is set");
                }
                eprintln!("cjpeg not available; skipping");
                return;
            }
        };
        let label = format!("cjpeg {args:?}");
        assert!(info(&out).unwrap().progressive);
        assert_refinement_paths_agree(&out, &label);
        let opt = assert_lossless(&out, &label);
        assert!(!info(&opt).unwrap().progressive);
        let r = requantize(&out, 20).unwrap();
        assert!(psnr(&decode(&out).2, &decode(&r.jpeg).2) > 25.0, "{label}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The BMI2 refinement path (where the CPU has it) and the portable one read the same
/// coefficients, and fail on the same corrupt files.
fn assert_refinement_paths_agree(jpeg: &[u8], label: &str) {
    let read = |portable: bool, data: &[u8]| {
        super::decode::tests::PORTABLE_ONLY.set(portable);
        let img = parse::read_coefficients(data);
        super::decode::tests::PORTABLE_ONLY.set(false);
        img.map(|i| i.comps.into_iter().map(|c| c.coeffs).collect::<Vec<_>>())
    };
    assert_eq!(read(false, jpeg), read(true, jpeg), "{label}");
    let mut rng = Rng(4242);
    for _ in 0..40 {
        let mut d = jpeg.to_vec();
        let i = jpeg.len() / 2 + (rng.next() % (jpeg.len() as u64 / 2)) as usize;
        d[i] ^= 1 << (rng.next() % 8);
        assert_eq!(
            read(false, &d),
            read(true, &d),
            "{label}: flipped a bit at {i}"
        );
    }
}

#[test]
fn truncated_and_corrupt_progressive_fail_cleanly() {
    let o = Enc {
        progressive: true,
        q: 75,
        sampling: SamplingFactor::F_2_2,
        restart: Some(1),
        grayscale: false,
    };
    let input = encode_case(24, 20, o);
    for len in 0..input.len() {
        assert!(
            optimize_huffman(&input[..len]).is_err(),
            "truncated to {len} accepted"
        );
    }
    let mut rng = Rng(777);
    for _ in 0..2000 {
        let mut d = input.clone();
        let i = (rng.next() % d.len() as u64) as usize;
        d[i] ^= 1 << (rng.next() % 8);
        if let Ok(out) = optimize_huffman(&d) {
            optimize_huffman(&out).unwrap();
        }
    }
}

/// 4:4:4, 4:2:2 and 4:4:0 inputs: requantize halves their chroma in the DCT domain
/// (`resample`), and must then do as well as decoding and encoding the pixels at 4:2:0, with
/// the bounds of `requantize_matches_pixel_reencode`.
#[test]
fn downsampled_chroma_matches_pixel_reencode() {
    const MAX_BYTES_RATIO: f64 = 1.03;
    const MAX_PSNR_LOSS: f64 = 0.1;
    let sizes = [
        (1u16, 1u16),
        (7, 5),
        (17, 9),
        (257, 131),
        (333, 211),
        (512, 384),
    ];
    let mut failures = Vec::new();
    let (mut worst_ratio, mut worst_loss) = ((0f64, String::new()), (f64::MIN, String::new()));
    let mut n = 0;
    for &(w, h) in &sizes {
        for &(sampling, sname) in &SAMPLINGS[1..4] {
            for progressive in [false, true] {
                for q in [30u8, 50, 65, 75, 85, 90, 97] {
                    let o = Enc {
                        progressive,
                        q,
                        sampling,
                        restart: None,
                        grayscale: false,
                    };
                    let label = format!("{w}x{h} {sname} prog={progressive} q{q}");
                    let input = encode_case(w, h, o);
                    let (_, _, src_px) = decode(&input);
                    let r = requantize(&input, 50).unwrap_or_else(|e| panic!("{label}: {e}"));
                    let i = info(&r.jpeg).unwrap();
                    let sampling: Vec<_> = i.components.iter().map(|c| (c.h, c.v)).collect();
                    assert_eq!(sampling, [(2, 2), (1, 1), (1, 1)], "{label}");
                    let (_, _, fast_px) = decode(&r.jpeg);
                    let pix = pixel_path(&src_px, w, h, 50, false);
                    let (_, _, pix_px) = decode(&pix);
                    let (pf, pp) = (psnr(&src_px, &fast_px), psnr(&src_px, &pix_px));
                    let ratio = r.jpeg.len() as f64 / pix.len() as f64;
                    let loss = pp - pf;
                    eprintln!(
                        "{label}: fast {} B {pf:.2} dB, pixel {} B {pp:.2} dB, \
                         bytes ratio {ratio:.3}, psnr diff {:+.2} dB",
                        r.jpeg.len(),
                        pix.len(),
                        -loss
                    );
                    // A 1x1 image is 3 samples: one level of rounding in one of them moves
                    // PSNR by 3-6 dB either way (measured -3.0 to +6.0 dB), so only its size
                    // and structure count.
                    let loss = if (w, h) == (1, 1) { 0.0 } else { loss };
                    n += 1;
                    if ratio > worst_ratio.0 {
                        worst_ratio = (ratio, label.clone());
                    }
                    if loss > worst_loss.0 {
                        worst_loss = (loss, label.clone());
                    }
                    if ratio > MAX_BYTES_RATIO || loss > MAX_PSNR_LOSS {
                        failures.push(format!(
                            "{label}: bytes ratio {ratio:.3}, psnr {pf:.2} vs {pp:.2} dB"
                        ));
                    }
                }
            }
        }
    }
    eprintln!(
        "{n} cases: worst bytes ratio {:.3} ({}), worst psnr loss {:.2} dB ({})",
        worst_ratio.0, worst_ratio.1, worst_loss.0, worst_loss.1
    );
    assert!(failures.is_empty(), "over the bounds: {failures:#?}");
}

/// The pixel encoder (`encode_pixels`) against the one it replaced (`pixel_path`: jpeg-encoder
/// plus our Huffman pass), on generated pictures of awkward sizes: same quality, same size, in
/// gray, RGB and RGBX, and every output readable by `image`.
fn fastest(quality: u8) -> Target {
    Target::new(quality, Effort::FASTEST)
}

#[test]
fn pixel_encoder_matches_the_one_it_replaced() {
    for (w, h) in [(1u16, 1u16), (17, 9), (77, 45), (256, 170)] {
        let rgb = photo(u32::from(w), u32::from(h), u64::from(w) * 7 + u64::from(h));
        for grayscale in [false, true] {
            let px = if grayscale { gray(&rgb) } else { rgb.clone() };
            for q in [30u8, 50, 75, 90] {
                let old = pixel_path(&px, w, h, q, grayscale);
                let layout = if grayscale {
                    PixelLayout::Gray
                } else {
                    PixelLayout::Rgb
                };
                let new = encode_pixels(px.clone(), w, h, layout, fastest(q)).unwrap();
                let (dw, dh, decoded) = decode(&new);
                assert_eq!((dw, dh), (u32::from(w), u32::from(h)));
                let label = format!("{w}x{h} gray={grayscale} q{q}");
                if !grayscale {
                    let rgbx: Vec<u8> = px.chunks(3).flat_map(|p| [p[0], p[1], p[2], 9]).collect();
                    let x = encode_pixels(rgbx, w, h, PixelLayout::Rgbx, fastest(q)).unwrap();
                    assert_eq!(x, new, "{label}: RGBX and RGB differ");
                }
                if w * h < 1000 {
                    continue; // too few pixels for sizes to compare meaningfully
                }
                let (p_old, p_new) = (psnr(&px, &decode(&old).2), psnr(&px, &decoded));
                let ratio = new.len() as f64 / old.len() as f64;
                assert!(p_new > p_old - 0.1, "{label}: {p_new:.2} dB vs {p_old:.2}");
                assert!(
                    ratio < 1.02,
                    "{label}: {} vs {} bytes",
                    new.len(),
                    old.len()
                );
            }
        }
    }
}

/// The same comparison on real photos, with timings: `cargo test --release --lib
/// pixel_encoder_on_photos -- --ignored --nocapture` (images from `PIXEL_BENCH_DIR`, default
/// /work/shared/bench-images; every file `image` decodes).
#[test]
#[ignore = "benchmark; needs the bench images and a release build"]
fn pixel_encoder_on_photos() {
    let dir = std::env::var("PIXEL_BENCH_DIR").unwrap_or("/work/shared/bench-images".into());
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let time = |f: &mut dyn FnMut() -> Vec<u8>| {
        let mut best = f64::MAX;
        let mut out = Vec::new();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            out = f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        (out, best)
    };
    let (mut sum_old, mut sum_new) = (0.0, 0.0);
    for path in paths {
        let Ok(img) = image::open(&path) else {
            continue;
        };
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (w, h) = (img.width() as u16, img.height() as u16);
        let px = img.to_rgb8().into_raw();
        let mp = f64::from(w) * f64::from(h) / 1e6;
        for q in [30u8, 50, 75, 90] {
            let (old, t_old) = time(&mut || pixel_path(&px, w, h, q, false));
            let (new, t_new) = time(&mut || {
                encode_pixels(px.clone(), w, h, PixelLayout::Rgb, fastest(q)).unwrap()
            });
            // The copy is part of neither encoder's work.
            let copy = time(&mut || px.clone()).1;
            let t_new = (t_new - copy).max(1e-9);
            sum_old += t_old;
            sum_new += t_new;
            let (p_old, p_new) = (psnr(&px, &decode(&old).2), psnr(&px, &decode(&new).2));
            println!(
                "{name} q{q}: bytes {:.4}x ({} -> {}), PSNR {:+.3} dB ({p_old:.2} -> {p_new:.2}), \
                 {:.0} -> {:.0} MP/s",
                new.len() as f64 / old.len() as f64,
                old.len(),
                new.len(),
                p_new - p_old,
                mp / t_old,
                mp / t_new
            );
        }
    }
    println!("total encode time: {sum_old:.3} s -> {sum_new:.3} s");
}

/// The scaled decoder reads a sequential file an MCU row at a time and a progressive one
/// whole: the same coefficients must give the same pixels either way, at every scale, with
/// restart markers, odd sizes and every sampling.
#[test]
fn scaled_decode_row_by_row_matches_the_whole_frame() {
    let samplings = [
        ("420", SamplingFactor::F_2_2, false),
        ("422", SamplingFactor::F_2_1, false),
        ("444", SamplingFactor::F_1_1, false),
        ("gray", SamplingFactor::F_1_1, true),
    ];
    for (w, h) in [(8u16, 8u16), (37, 29), (130, 67)] {
        for &(sname, sampling, grayscale) in &samplings {
            for restart in [None, Some(1), Some(5)] {
                let o = |progressive| Enc {
                    progressive,
                    q: 80,
                    sampling,
                    restart,
                    grayscale,
                };
                let label = format!("{w}x{h} {sname} rst={restart:?}");
                // Our lossless re-encode keeps the coefficients and writes one sequential
                // scan without restart markers: read whole (progressive) against row by row,
                // and row by row with restarts against without.
                let progressive = encode_case(w, h, o(true));
                let from_progressive = optimize_huffman(&progressive).unwrap();
                let sequential = encode_case(w, h, o(false));
                let from_sequential = optimize_huffman(&sequential).unwrap();
                assert!(!info(&progressive).unwrap().streams, "{label}");
                for f in [&from_progressive, &sequential, &from_sequential] {
                    assert!(info(f).unwrap().streams, "{label}");
                }
                for d in [2, 4, 8] {
                    for (a, b) in [
                        (&progressive, &from_progressive),
                        (&sequential, &from_sequential),
                    ] {
                        let (a, b) = (decode_scaled(a, d).unwrap(), decode_scaled(b, d).unwrap());
                        assert_eq!((a.width, a.height), (b.width, b.height), "{label} 1/{d}");
                        assert!(a.data == b.data, "{label} 1/{d}");
                    }
                }
            }
        }
    }
}

/// Cut short or damaged, a sequential file read row by row fails with an error, never a
/// panic, whatever rows were already handed on.
#[test]
fn scaled_decode_of_broken_sequential_files_fails_cleanly() {
    let o = Enc {
        progressive: false,
        q: 75,
        sampling: SamplingFactor::F_2_2,
        restart: Some(2),
        grayscale: false,
    };
    let input = encode_case(48, 40, o);
    for len in 0..input.len() {
        assert!(
            decode_scaled(&input[..len], 2).is_err(),
            "truncated to {len} accepted"
        );
    }
    let mut rng = Rng(4242);
    for _ in 0..2000 {
        let mut d = input.clone();
        let i = (rng.next() % d.len() as u64) as usize;
        d[i] ^= 1 << (rng.next() % 8);
        if let Ok(p) = decode_scaled(&d, 2) {
            let size = p.width as usize * p.height as usize * usize::from(p.channels);
            assert_eq!(p.data.len(), size);
        }
    }
}

/// Full-range BT.601 Y, Cb, Cr of an RGB pixel, as JPEG codes them.
fn ycbcr_of(p: &[u8]) -> [f64; 3] {
    let (r, g, b) = (f64::from(p[0]), f64::from(p[1]), f64::from(p[2]));
    [
        0.299 * r + 0.587 * g + 0.114 * b,
        128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b,
        128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b,
    ]
}

#[test]
fn yuv420_decode_matches_a_full_decode_converted_and_halved() {
    let samplings = [
        ("420", SamplingFactor::F_2_2, false),
        ("422", SamplingFactor::F_2_1, false),
        ("440", SamplingFactor::F_1_2, false),
        ("444", SamplingFactor::F_1_1, false),
        ("gray", SamplingFactor::F_1_1, true),
    ];
    for (w, h) in [(8u16, 8u16), (37, 29), (130, 67)] {
        for &(sname, sampling, grayscale) in &samplings {
            for progressive in [false, true] {
                let label = format!("{w}x{h} {sname} progressive={progressive}");
                let jpeg = encode_case(
                    w,
                    h,
                    Enc {
                        progressive,
                        q: 90,
                        sampling,
                        restart: None,
                        grayscale,
                    },
                );
                let (w, h) = (w as usize, h as usize);
                let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
                // Strides wider than the rows, as libwebp's planes may be.
                let (ys, cs) = (w + 3, cw + 5);
                let (mut y, mut u, mut v) = (vec![0; ys * h], vec![7; cs * ch], vec![7; cs * ch]);
                let color = decode_yuv420(
                    &jpeg,
                    &mut Yuv420Planes {
                        y: &mut y,
                        y_stride: ys,
                        u: &mut u,
                        v: &mut v,
                        uv_stride: cs,
                    },
                )
                .unwrap();
                assert_eq!(color, !grayscale, "{label}");
                // The reference: a full decode, converted, chroma averaged over 2x2.
                let (_, _, full) = decode(&jpeg);
                let rgb: Vec<u8> = if grayscale {
                    full.iter().flat_map(|&g| [g, g, g]).collect()
                } else {
                    full
                };
                let at = |x: usize, yy: usize| ycbcr_of(&rgb[(yy * w + x) * 3..][..3]);
                let mut luma = (Vec::new(), Vec::new());
                for yy in 0..h {
                    for x in 0..w {
                        luma.0.push(y[yy * ys + x]);
                        luma.1.push(at(x, yy)[0].round() as u8);
                    }
                }
                let db = psnr(&luma.0, &luma.1);
                assert!(db > 38.0, "{label}: luma {db:.1} dB");
                if grayscale {
                    continue;
                }
                for (k, plane) in [(1, &u), (2, &v)] {
                    let (mut got, mut want) = (Vec::new(), Vec::new());
                    for cy in 0..ch {
                        for cx in 0..cw {
                            let mut sum = 0.0;
                            let mut n = 0.0;
                            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                                let (x, yy) = (2 * cx + dx, 2 * cy + dy);
                                if x < w && yy < h {
                                    sum += at(x, yy)[k];
                                    n += 1.0;
                                }
                            }
                            got.push(plane[cy * cs + cx]);
                            want.push((sum / n).round() as u8);
                        }
                    }
                    let db = psnr(&got, &want);
                    assert!(db > 33.0, "{label}: chroma {k} {db:.1} dB");
                }
            }
        }
    }
    // Chroma coarser than 4:2:0 across would need upsampling: refused, for the pixel path.
    let jpeg = encode_case(
        64,
        16,
        Enc {
            progressive: false,
            q: 90,
            sampling: SamplingFactor::F_4_1,
            restart: None,
            grayscale: false,
        },
    );
    let (mut y, mut u, mut v) = (vec![0; 64 * 16], vec![0; 32 * 8], vec![0; 32 * 8]);
    let planes = &mut Yuv420Planes {
        y: &mut y,
        y_stride: 64,
        u: &mut u,
        v: &mut v,
        uv_stride: 32,
    };
    assert!(decode_yuv420(&jpeg, planes).is_err());
    // Planes too small for the picture are refused, never written past.
    let mut small = vec![0; 10];
    let planes = &mut Yuv420Planes {
        y: &mut small,
        y_stride: 64,
        u: &mut u,
        v: &mut v,
        uv_stride: 32,
    };
    assert!(decode_yuv420(
        &encode_case(
            64,
            16,
            Enc {
                sampling: SamplingFactor::F_2_2,
                ..o_default()
            }
        ),
        planes
    )
    .is_err());
}

fn o_default() -> Enc {
    Enc {
        progressive: false,
        q: 90,
        sampling: SamplingFactor::F_2_2,
        restart: None,
        grayscale: false,
    }
}

fn effort(level: u8) -> Effort {
    Effort::new(level).unwrap()
}

/// The effort-1 target with the same tables as effort 2 at `quality`: rounding against
/// trellis with nothing else different.
fn rounding_twin(quality: u8) -> Target {
    let want = Target::new(quality, effort(2)).luma();
    (1..=100)
        .map(|q| Target::new(q, effort(1)))
        .find(|t| t.luma() == want)
        .expect("an effort-1 setting with the same table")
}

/// Effort 3 writes exactly effort 2's coefficients, progressively where that is smaller (and
/// never more than a scan's padding larger), and decoders show the same pixels; effort 2's
/// trellis makes outputs smaller than effort 1's rounding.
#[test]
fn progressive_output_keeps_every_coefficient() {
    let sizes = [(1, 1), (17, 9), (77, 45), (257, 131), (480, 320)];
    let (mut progressive, mut cases) = (0, 0);
    for (label, w, h, o) in fast_path_cases(&sizes, &[90]) {
        let input = encode_case(w, h, o);
        for q in [30, 60] {
            let label = format!("{label} -> q{q}");
            let rounded = requantize_to(&input, rounding_twin(q)).unwrap();
            let baseline = requantize_to(&input, Target::new(q, effort(2))).unwrap();
            let best = requantize_to(&input, Target::new(q, effort(3))).unwrap();
            assert_same_coeffs(&baseline.jpeg, &best.jpeg, &label);
            assert!(!info(&baseline.jpeg).unwrap().progressive, "{label}");
            assert!(best.jpeg.len() <= baseline.jpeg.len() + 16, "{label}");
            if u32::from(w) * u32::from(h) >= 1000 {
                assert!(baseline.jpeg.len() < rounded.jpeg.len(), "{label}");
            }
            if info(&best.jpeg).unwrap().progressive {
                progressive += 1;
                assert!(best.jpeg.len() < baseline.jpeg.len(), "{label}");
                assert!(
                    decode(&best.jpeg) == decode(&baseline.jpeg),
                    "{label}: pixels"
                );
            }
            cases += 1;
        }
    }
    assert!(
        progressive > 0 && progressive < cases,
        "{progressive} of {cases} progressive"
    );
}

/// The pixel path at effort 3: the same coefficients as effort 2 (so the same pixels), in
/// whichever layout is smaller; gray and colour.
#[test]
fn pixel_path_efforts_agree_on_coefficients() {
    let (w, h) = (301u16, 203u16);
    let rgb = photo(u32::from(w), u32::from(h), 5);
    for (px, layout) in [
        (gray(&rgb), PixelLayout::Gray),
        (rgb.clone(), PixelLayout::Rgb),
    ] {
        let two = encode_pixels(px.clone(), w, h, layout, Target::new(50, effort(2))).unwrap();
        let three = encode_pixels(px.clone(), w, h, layout, Target::new(50, effort(3))).unwrap();
        let one = encode_pixels(px, w, h, layout, rounding_twin(50)).unwrap();
        assert_same_coeffs(&two, &three, &format!("{layout:?}"));
        assert!(two.len() < one.len(), "{layout:?}: trellis saved nothing");
        assert!(decode(&two) == decode(&three));
    }
}

/// Outputs at the highest effort, progressive ones included, decode in libjpeg-turbo without
/// a warning, to the pixels zune-jpeg gives.
#[test]
fn highest_effort_outputs_decode_cleanly_in_libjpeg() {
    if !djpeg_present("highest_effort_outputs_decode_cleanly_in_libjpeg") {
        return;
    }
    let sizes = [(1, 1), (17, 9), (77, 45), (480, 320)];
    let mut progressive = 0;
    for (label, w, h, o) in fast_path_cases(&sizes, &[90]) {
        let input = encode_case(w, h, o);
        for q in [20, 50, 85] {
            let out = requantize_to(&input, Target::new(q, effort(Effort::MAX))).unwrap();
            progressive += usize::from(info(&out.jpeg).unwrap().progressive);
            let d = djpeg(&out.jpeg);
            assert!(d.ok && d.stderr.is_empty(), "{label} q{q}: {}", d.stderr);
            let (dw, dh, ours) = decode(&out.jpeg);
            assert_eq!((d.width, d.height), (dw, dh), "{label} q{q}");
            assert!(psnr(&d.samples, &ours) > 40.0, "{label} q{q}");
        }
    }
    assert!(progressive > 0);
}
