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
    for sampling in [SamplingFactor::F_2_2, SamplingFactor::F_1_1] {
        for grayscale in [false, true] {
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

#[test]
fn requantize_matches_pixel_reencode() {
    let (w, h) = (512u16, 384u16);
    let rgb = photo(w as u32, h as u32, 99);
    for src_q in [85u8, 95] {
        for target in [40u8, 50, 70] {
            let input = enc(
                &rgb,
                w,
                h,
                Enc {
                    progressive: false,
                    q: src_q,
                    sampling: SamplingFactor::F_2_2,
                    restart: None,
                    grayscale: false,
                },
            );
            let (_, _, src_px) = decode(&input);
            let r = requantize(&input, target).unwrap();
            let (_, _, fast_px) = decode(&r.jpeg);
            // Pixel path: decode, re-encode with jpeg-encoder, then optimise its tables.
            let pix = enc(
                &src_px,
                w,
                h,
                Enc {
                    progressive: false,
                    q: target,
                    sampling: SamplingFactor::F_2_2,
                    restart: None,
                    grayscale: false,
                },
            );
            let pix = optimize_huffman(&pix).unwrap();
            let (_, _, pix_px) = decode(&pix);
            let (pf, pp) = (psnr(&src_px, &fast_px), psnr(&src_px, &pix_px));
            let ratio = r.jpeg.len() as f64 / pix.len() as f64;
            eprintln!(
                "q{src_q}->q{target}: fast {} B {pf:.2} dB, pixel {} B {pp:.2} dB, size ratio {ratio:.3}",
                r.jpeg.len(),
                pix.len()
            );
            // Smaller is fine as long as quality holds (ties rounded toward zero can beat the
            // pixel path); larger must stay within a few percent.
            assert!(ratio < 1.06, "size ratio {ratio}");
            assert!(pf > pp - 0.15, "psnr {pf} vs {pp}");
        }
    }
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
fn rescale_rounds_half_toward_zero() {
    assert_eq!(rescale(3, 1, 2), 1); // 1.5 -> 1
    assert_eq!(rescale(-3, 1, 2), -1);
    assert_eq!(rescale(5, 2, 4), 2); // 2.5 -> 2
    assert_eq!(rescale(-5, 2, 4), -2);
    assert_eq!(rescale(7, 2, 4), 3); // 3.5 -> 3
    assert_eq!(rescale(11, 1, 4), 3); // 2.75 -> 3

    assert_eq!(rescale(7, 3, 10), 2); // 2.1 -> 2
    assert_eq!(rescale(1, 1, 3), 0);
    // The reciprocal matches exact integer division everywhere it can be used.
    let mut rng = Rng(42);
    for _ in 0..200_000 {
        let v = (rng.next() % 65536) as u16 as i16;
        let num = 1 + (rng.next() % 65535) as u32;
        let den = 1 + (rng.next() % 65535) as u32;
        let a = v.unsigned_abs() as u64 * num as u64;
        let q = ((2 * a + den as u64 - 1) / (2 * den as u64)) as i32;
        let want = (if v < 0 { -q } else { q }) as i16;
        assert_eq!(rescale(v, num, den), want, "{v} {num} {den}");
    }
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
    ] {
        let out = match std::process::Command::new("cjpeg")
            .args(&args)
            .arg(&ppm)
            .output()
        {
            Ok(o) if o.status.success() => o.stdout,
            _ => {
                eprintln!("cjpeg not available; skipping");
                return;
            }
        };
        let label = format!("cjpeg {args:?}");
        assert!(info(&out).unwrap().progressive);
        let opt = assert_lossless(&out, &label);
        assert!(!info(&opt).unwrap().progressive);
        let r = requantize(&out, 20).unwrap();
        assert!(psnr(&decode(&out).2, &decode(&r.jpeg).2) > 25.0, "{label}");
    }
    let _ = std::fs::remove_dir_all(&dir);
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
