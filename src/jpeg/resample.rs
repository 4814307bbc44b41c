//! Chroma downsampling in the DCT domain: 4:4:4, 4:2:2 and 4:4:0 frames become 4:2:0, as the
//! pixel path would make them, without leaving coefficients.
//!
//! Two neighbouring blocks A, B along one direction are together 16 samples. The 8 lowest
//! coefficients of their orthonormal 16-point DCT, scaled by 1/sqrt(2), are the 8-point DCT of
//! that signal ideally low-passed and decimated by 2 (the DC comes out as the mean of each
//! pair). Since A's and B's samples are themselves inverse 8-point DCTs, the whole step is one
//! fixed 8x16 matrix on the two blocks' dequantised coefficients, applied to every row (or
//! column) of the pair; 4:4:4 takes it along rows, then along columns.

use super::parse::{Component, Image};
use super::{Target, ZIGZAG};

/// Halves the chroma of a 4:4:4, 4:2:2 or 4:4:0 YCbCr frame in place, quantised straight to
/// `target`'s chroma table (so `requantize_image` leaves chroma alone), and makes
/// the frame 4:2:0: luma 2x2 with its block grid padded to whole 16x16 MCUs. Other frames are
/// left as they are.
pub(crate) fn chroma_to_420(img: &mut Image, target: Target) {
    let Some((halve_x, halve_y)) = halved_directions(img) else {
        return;
    };
    let (w, h) = (usize::from(img.width), usize::from(img.height));
    let (mcux, mcuy) = (w.div_ceil(16), h.div_ceil(16));
    let target = target.chroma();
    let m = Halve::new();
    for c in &mut img.comps[1..] {
        // Output chroma is ceil(w / 2) x ceil(h / 2) samples: exactly mcux x mcuy blocks, so
        // the chroma grid has no padding blocks.
        c.coeffs = halve(c, (halve_x, halve_y), (mcux, mcuy), &target, &m);
        c.qt = target;
        (c.h, c.v) = (1, 1);
        (c.bw, c.bh, c.w_blocks, c.h_blocks) = (mcux, mcuy, mcux, mcuy);
    }
    pad_luma(&mut img.comps[0], 2 * mcux, 2 * mcuy);
    (img.comps[0].h, img.comps[0].v) = (2, 2);
    (img.mcux, img.mcuy) = (mcux, mcuy);
}

/// (halve horizontally, halve vertically) for the samplings this module converts.
fn halved_directions(img: &Image) -> Option<(bool, bool)> {
    let [y, cb, cr] = img.comps.as_slice() else {
        return None;
    };
    if (cb.h, cb.v, cr.h, cr.v) != (1, 1, 1, 1) {
        return None;
    }
    match (y.h, y.v) {
        (1, 1) => Some((true, true)),
        (2, 1) => Some((false, true)),
        (1, 2) => Some((true, false)),
        _ => None,
    }
}

/// The 8x16 matrix split by input block and transposed, so that one input coefficient scales
/// one contiguous row of 8 output contributions: `a[j]` is what frequency j of the first block
/// adds to each output frequency, `b[j]` the same for the second, and `edge[j]` for a first
/// block without a partner.
struct Halve {
    a: [[f32; 8]; 8],
    b: [[f32; 8]; 8],
    edge: [[f32; 8]; 8],
}

impl Halve {
    fn new() -> Self {
        use std::f64::consts::PI;
        let dct = |n: usize, k: usize, x: usize| {
            let scale = if k == 0 {
                1.0 / n as f64
            } else {
                2.0 / n as f64
            };
            scale.sqrt() * (PI * (2 * x + 1) as f64 * k as f64 / (2 * n) as f64).cos()
        };
        let mut m = Halve {
            a: [[0.0; 8]; 8],
            b: [[0.0; 8]; 8],
            edge: [[0.0; 8]; 8],
        };
        for j in 0..8 {
            for k in 0..8 {
                let (mut a, mut b) = (0.0, 0.0);
                for x in 0..8 {
                    a += dct(16, k, x) * dct(8, j, x);
                    b += dct(16, k, x + 8) * dct(8, j, x);
                }
                let (a, b) = (a * FRAC_1_SQRT_2, b * FRAC_1_SQRT_2);
                m.a[j][k] = a as f32;
                m.b[j][k] = b as f32;
                // The missing partner is the first block mirrored at their common edge (so the
                // image edge is not smeared into a discontinuity); mirroring a block negates
                // its odd frequencies.
                let mirrored = if j % 2 == 0 { b } else { -b };
                m.edge[j][k] = (a + mirrored) as f32;
            }
        }
        m
    }
}

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// Where zigzag position `zz` lands in a block stored row-major (frequency v * 8 + u), and in
/// one stored transposed (u * 8 + v), which puts vertical frequencies in contiguous rows.
const fn layouts() -> ([usize; 64], [usize; 64]) {
    let mut natural = [0; 64];
    let mut transposed = [0; 64];
    let mut zz = 0;
    while zz < 64 {
        let n = ZIGZAG[zz] as usize;
        natural[zz] = n;
        transposed[zz] = (n % 8) * 8 + n / 8;
        zz += 1;
    }
    (natural, transposed)
}

const LAYOUTS: ([usize; 64], [usize; 64]) = layouts();

/// The downsampled coefficients of one chroma component, quantised to `target`.
fn halve(
    c: &Component,
    (halve_x, halve_y): (bool, bool),
    (mcux, mcuy): (usize, usize),
    target: &[u16; 64],
    m: &Halve,
) -> Vec<i16> {
    // Halving along rows of 8 values is the cheap direction (it skips zero coefficients one by
    // one); vertical-only halving reads its blocks transposed to get it.
    let layout = if halve_x { &LAYOUTS.0 } else { &LAYOUTS.1 };
    let mut step = [0f32; 64];
    let mut recip = [0f32; 64];
    for zz in 0..64 {
        step[layout[zz]] = f32::from(c.qt[zz]);
        recip[layout[zz]] = 1.0 / f32::from(target[zz]);
    }
    let block = |bx: usize, by: usize| -> Option<[f32; 64]> {
        if bx >= c.w_blocks || by >= c.h_blocks {
            return None;
        }
        let off = (by * c.bw + bx) * 64;
        let coeffs = &c.coeffs[off..off + 64];
        // Zigzag order puts the zeros at the end: stop at the last non-zero coefficient.
        let end = coeffs.iter().rposition(|&q| q != 0).map_or(0, |p| p + 1);
        let mut out = [0f32; 64];
        for (&q, &pos) in coeffs[..end].iter().zip(layout) {
            out[pos] = f32::from(q) * step[pos];
        }
        Some(out)
    };
    // The first block of every pair exists: mcux = ceil(w_blocks / 2) when halving x.
    let pair = |bx: usize, by: usize, dx: usize, dy: usize| {
        let first = block(bx, by).expect("first block of a pair is inside the image");
        halve_rows(m, &first, block(bx + dx, by + dy).as_ref())
    };
    let mut out = vec![0i16; mcux * mcuy * 64];
    for (i, dst) in out.chunks_exact_mut(64).enumerate() {
        let (x, y) = (i % mcux, i / mcux);
        let res = match (halve_x, halve_y) {
            (true, false) => pair(2 * x, y, 1, 0),
            (false, true) => pair(x, 2 * y, 0, 1),
            _ => {
                let top = pair(2 * x, 2 * y, 1, 0);
                let bottom = (2 * y + 1 < c.h_blocks).then(|| pair(2 * x, 2 * y + 1, 1, 0));
                halve_columns(m, &top, bottom.as_ref())
            }
        };
        // Halves round away from zero here, unlike `Rescaler::apply`: pair means land on
        // exact halves whenever the input and target steps are equal, and rounding those
        // toward zero lost 0.1-0.14 dB against the pixel path for 4% fewer bytes (4:2:2 q50
        // -> q50). Adding the half and truncating does it without a call to roundf (6% of
        // the fast path's instructions on a 4:4:4 photo). The cast saturates; the writer
        // refuses what is outside baseline range.
        for (d, &pos) in dst.iter_mut().zip(layout) {
            let v = res[pos] * recip[pos];
            *d = (v + 0.5f32.copysign(v)) as i16;
        }
    }
    out
}

/// Halves along the 8 values of each row of `a` (and its partner `b` to the right).
fn halve_rows(m: &Halve, a: &[f32; 64], b: Option<&[f32; 64]>) -> [f32; 64] {
    let mut out = [0f32; 64];
    let ma = if b.is_some() { &m.a } else { &m.edge };
    for (r, o) in out.chunks_exact_mut(8).enumerate() {
        let o: &mut [f32; 8] = o.try_into().expect("8 values");
        add_row(o, row(a, r), ma);
        if let Some(b) = b {
            add_row(o, row(b, r), &m.b);
        }
    }
    out
}

#[inline(always)]
fn row(x: &[f32; 64], r: usize) -> &[f32; 8] {
    x[r * 8..r * 8 + 8].try_into().expect("8 values")
}

/// Adds `x` times the matrix `m` to `out`. A row is skipped only when it is all zeros (the high
/// vertical frequencies of most blocks): skipping single zero coefficients was a branch per
/// coefficient, mispredicted half the time in the dense blocks of high-quality inputs, where
/// multiplying through is cheaper. The sums are taken in the same order either way (adding a
/// zero product leaves a sum unchanged), so the outputs are the same.
#[inline]
fn add_row(out: &mut [f32; 8], x: &[f32; 8], m: &[[f32; 8]; 8]) {
    if x.iter().fold(0u32, |z, v| z | v.to_bits()) == 0 {
        return;
    }
    for (&v, mj) in x.iter().zip(m) {
        for (o, &c) in out.iter_mut().zip(mj) {
            *o += v * c;
        }
    }
}

/// Halves along the 8 rows of `a` (and its partner `b` below).
fn halve_columns(m: &Halve, a: &[f32; 64], b: Option<&[f32; 64]>) -> [f32; 64] {
    let mut out = [0f32; 64];
    let ma = if b.is_some() { &m.a } else { &m.edge };
    add_columns(&mut out, a, ma);
    if let Some(b) = b {
        add_columns(&mut out, b, &m.b);
    }
    out
}

#[inline]
fn add_columns(out: &mut [f32; 64], x: &[f32; 64], m: &[[f32; 8]; 8]) {
    for (row, mj) in x.chunks_exact(8).zip(m) {
        if row.iter().all(|&v| v == 0.0) {
            continue;
        }
        for (o, &c) in out.chunks_exact_mut(8).zip(mj) {
            for (o, &v) in o.iter_mut().zip(row) {
                *o += c * v;
            }
        }
    }
}

/// Grows the luma block grid to `bw` x `bh` (whole 2x2-block MCUs). The new blocks lie outside
/// the image; each takes its left (or upper) neighbour's DC and no AC, which costs the fewest
/// bits.
fn pad_luma(c: &mut Component, bw: usize, bh: usize) {
    let (ow, oh) = (c.bw, c.bh);
    if (ow, oh) == (bw, bh) {
        return;
    }
    c.coeffs.resize(bw * bh * 64, 0);
    if ow != bw {
        // Rows move to their wider stride from the last one up, so none overwrites another
        // before it has moved.
        for row in (1..oh).rev() {
            c.coeffs
                .copy_within(row * ow * 64..(row + 1) * ow * 64, row * bw * 64);
        }
        for row in 0..oh {
            for x in ow..bw {
                let dc = c.coeffs[(row * bw + x - 1) * 64];
                flat_block(&mut c.coeffs, row * bw + x, dc);
            }
        }
    }
    for row in oh..bh {
        for x in 0..bw {
            let dc = c.coeffs[((row - 1) * bw + x) * 64];
            flat_block(&mut c.coeffs, row * bw + x, dc);
        }
    }
    (c.bw, c.bh) = (bw, bh);
}

fn flat_block(coeffs: &mut [i16], index: usize, dc: i16) {
    let b = &mut coeffs[index * 64..index * 64 + 64];
    b.fill(0);
    b[0] = dc;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Orthonormal 8-point DCT of `x`, straight from the definition.
    fn dct8(x: &[f64]) -> Vec<f64> {
        (0..8)
            .map(|k| {
                let s = if k == 0 { (1.0f64 / 8.0).sqrt() } else { 0.5 };
                s * (0..8)
                    .map(|n| {
                        x[n] * (std::f64::consts::PI * (2 * n + 1) as f64 * k as f64 / 16.0).cos()
                    })
                    .sum::<f64>()
            })
            .collect()
    }

    fn apply(m: &[[f32; 8]; 8], x: &[f64]) -> Vec<f64> {
        (0..8)
            .map(|k| (0..8).map(|j| m[j][k] as f64 * x[j]).sum())
            .collect()
    }

    #[test]
    fn halving_a_smooth_signal_is_decimating_it() {
        let m = Halve::new();
        // A signal of low frequencies only: halving it is taking the mean of each pair.
        let s: Vec<f64> = (0..16)
            .map(|n| 100.0 + 40.0 * (n as f64 * 0.15).cos())
            .collect();
        let (a, b) = (dct8(&s[..8]), dct8(&s[8..]));
        let got: Vec<f64> = apply(&m.a, &a)
            .iter()
            .zip(apply(&m.b, &b))
            .map(|(x, y)| x + y)
            .collect();
        let pairs: Vec<f64> = s.chunks(2).map(|p| (p[0] + p[1]) / 2.0).collect();
        let want = dct8(&pairs);
        assert!((got[0] - want[0]).abs() < 1e-3, "DC {got:?} vs {want:?}");
        for k in 0..8 {
            assert!((got[k] - want[k]).abs() < 0.5, "{k}: {got:?} vs {want:?}");
        }
        // A flat block without a partner stays flat at the same level.
        let flat = dct8(&[50.0; 8]);
        let e = apply(&m.edge, &flat);
        assert!((e[0] - flat[0]).abs() < 1e-3 && e[1..].iter().all(|v| v.abs() < 1e-3));
        // Mirroring the partner is the same as handing over the mirrored block.
        let ramp: Vec<f64> = (0..8).map(|n| n as f64 * 10.0).collect();
        let mirror: Vec<f64> = ramp.iter().rev().copied().collect();
        let (ra, rb) = (dct8(&ramp), dct8(&mirror));
        let pair: Vec<f64> = apply(&m.a, &ra)
            .iter()
            .zip(apply(&m.b, &rb))
            .map(|(x, y)| x + y)
            .collect();
        for (x, y) in apply(&m.edge, &ra).iter().zip(&pair) {
            assert!((x - y).abs() < 1e-3);
        }
    }
}
