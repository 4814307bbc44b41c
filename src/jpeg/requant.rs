//! Requantisation: every coefficient rescaled from the input's step to the target table's.

use super::encode::nonzero_mask;
use super::parse::Image;
use super::trellis::Quantiser;
use super::Target;

/// Rescales every component's coefficients to `target`'s tables, keeping the
/// input's step wherever it is already coarser. With trellis quantisation, each rescaled block
/// is then revised against the input's own coefficients, which are the picture as exactly as
/// anything the service has: no pixels are needed to measure the error.
pub(crate) fn requantize_image(img: &mut Image, target: Target) {
    let luma = target.luma();
    let chroma = target.chroma();
    let trellis = target.trellis();
    for (ci, comp) in img.comps.iter_mut().enumerate() {
        let target = if ci == 0 { &luma } else { &chroma };
        let qin = comp.qt;
        let mut qout = qin;
        for (o, &t) in qout.iter_mut().zip(target) {
            *o = (*o).max(t);
        }
        if qout == qin {
            continue;
        }
        let rescaler = BlockRescaler::new(&qin, &qout);
        let mut trellis = trellis.then(|| Quantiser::new(&qout, ci != 0));
        for block in comp.coeffs.chunks_exact_mut(64) {
            let block: &mut [i16; 64] = block.try_into().expect("64 coefficients");
            match &mut trellis {
                None => rescaler.apply(block),
                Some(t) => {
                    let x: [f32; 64] =
                        std::array::from_fn(|k| f32::from(block[k]) * f32::from(qin[k]));
                    rescaler.apply(block);
                    t.apply(block, &x);
                }
            }
        }
        comp.qt = qout;
    }
}

/// Rescales whole blocks from one table to another.
pub(crate) struct BlockRescaler {
    /// Positions whose step changes; the others keep their coefficient.
    rescaled: u64,
    scalar: [Rescaler; 64],
    /// The same rescaling as f32 lanes, when every input step fits in 8 bits (see `Lanes`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    lanes: Option<Lanes>,
}

/// Per position: 2 num, den - 1 and 1 / (2 den) rounded up, for `rescale_sse2`.
///
/// Exact, not approximate: with |v| <= LANE_LIMIT and num <= 255 the numerator
/// n = 2 |v| num + den - 1 is an integer below 2^21, so it and every step to it are exact in
/// f32, and floor(n * r) with r = 1/(2 den) rounded up equals floor(n / (2 den)): an integer
/// quotient m comes out at least m (r is not below 1/(2 den), m is representable) and below
/// m + 1; any other quotient is at least 1/(2 den) away from an integer, which is more than
/// the two roundings' relative error (< 2^-22) times the quotient (< 2^20 / den) can cover.
struct Lanes {
    num2: [f32; 64],
    den_m1: [f32; 64],
    recip: [f32; 64],
}

/// Largest magnitude `Lanes` handles; larger values (never seen in 8-bit data, possible in a
/// corrupt file) take the scalar `Rescaler`.
const LANE_LIMIT: i16 = 2047;

impl BlockRescaler {
    pub(crate) fn new(qin: &[u16; 64], qout: &[u16; 64]) -> Self {
        let mut rescaled = 0u64;
        let mut scalar = [Rescaler::new(1, 1); 64];
        for k in 0..64 {
            if qout[k] != qin[k] {
                rescaled |= 1u64 << k;
                scalar[k] = Rescaler::new(u32::from(qin[k]), u32::from(qout[k]));
            }
        }
        let lanes = qin.iter().all(|&q| q <= 255).then(|| {
            let mut l = Lanes {
                num2: [0.0; 64],
                den_m1: [0.0; 64],
                recip: [0.0; 64],
            };
            for k in 0..64 {
                let d = 2 * u32::from(qout[k]);
                l.num2[k] = (2 * qin[k]) as f32;
                l.den_m1[k] = f32::from(qout[k] - 1);
                let mut r = 1.0f32 / d as f32;
                if f64::from(r) * f64::from(d) < 1.0 {
                    // The next f32 up (f32::next_up is newer than our MSRV); r is positive.
                    r = f32::from_bits(r.to_bits() + 1);
                }
                l.recip[k] = r;
            }
            l
        });
        BlockRescaler {
            rescaled,
            scalar,
            lanes,
        }
    }

    #[inline]
    pub(crate) fn apply(&self, block: &mut [i16; 64]) {
        let m = nonzero_mask(block) & self.rescaled;
        if m == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(lanes) = &self.lanes {
            // Only the groups of 8 up to the last coefficient that changes.
            let groups = (64 - m.leading_zeros() as usize).div_ceil(8);
            self.rescale_sse2(block, lanes, groups);
            return;
        }
        self.rescale_scalar(block, m);
    }

    /// Coefficient by coefficient, visiting only the nonzero ones in `m`.
    #[inline]
    fn rescale_scalar(&self, block: &mut [i16; 64], mut m: u64) {
        while m != 0 {
            let k = m.trailing_zeros() as usize;
            m &= m - 1;
            block[k] = self.scalar[k].apply(block[k]);
        }
    }

    /// Eight coefficients at a time; positions whose step does not change come out unchanged
    /// (num = den), so no mask is needed. Dense blocks of high-quality photos made the scalar
    /// loop, with its data-dependent trip count, a sixth of the fast path's time.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn rescale_sse2(&self, block: &mut [i16; 64], l: &Lanes, groups: usize) {
        use std::arch::x86_64::{
            __m128, __m128i, _mm_add_ps, _mm_cmpgt_epi16, _mm_cmplt_epi16, _mm_cvtepi32_ps,
            _mm_cvttps_epi32, _mm_loadu_ps, _mm_loadu_si128, _mm_movemask_epi8, _mm_mul_ps,
            _mm_or_si128, _mm_packs_epi32, _mm_set1_epi16, _mm_setzero_si128, _mm_srai_epi16,
            _mm_storeu_si128, _mm_sub_epi16, _mm_unpackhi_epi16, _mm_unpacklo_epi16, _mm_xor_si128,
        };
        for g in 0..groups.min(8) {
            let k = 8 * g;
            // SAFETY: SSE2 is part of the x86_64 baseline. k + 8 <= 64, so every load and the
            // store stay inside the 64-element arrays.
            unsafe {
                let p = block.as_mut_ptr().add(k).cast::<__m128i>();
                let v = _mm_loadu_si128(p);
                let outside = _mm_or_si128(
                    _mm_cmpgt_epi16(v, _mm_set1_epi16(LANE_LIMIT)),
                    _mm_cmplt_epi16(v, _mm_set1_epi16(-LANE_LIMIT)),
                );
                if _mm_movemask_epi8(outside) != 0 {
                    self.rescale_scalar(block, nonzero_mask(block) & self.rescaled & (0xFF << k));
                    continue;
                }
                let sign = _mm_srai_epi16(v, 15);
                let abs = _mm_sub_epi16(_mm_xor_si128(v, sign), sign);
                let zero = _mm_setzero_si128();
                let quotient = |a: __m128, k: usize| {
                    let n = _mm_add_ps(
                        _mm_mul_ps(a, _mm_loadu_ps(l.num2.as_ptr().add(k))),
                        _mm_loadu_ps(l.den_m1.as_ptr().add(k)),
                    );
                    _mm_cvttps_epi32(_mm_mul_ps(n, _mm_loadu_ps(l.recip.as_ptr().add(k))))
                };
                let lo = quotient(_mm_cvtepi32_ps(_mm_unpacklo_epi16(abs, zero)), k);
                let hi = quotient(_mm_cvtepi32_ps(_mm_unpackhi_epi16(abs, zero)), k + 4);
                // Quotients are at most |v| (num <= den), so the saturating pack is exact.
                let q = _mm_packs_epi32(lo, hi);
                _mm_storeu_si128(p, _mm_sub_epi16(_mm_xor_si128(q, sign), sign));
            }
        }
    }
}

/// round(v * num / den), rounding halves toward zero (see below), with the division done as
/// a multiplication by a precomputed reciprocal: a hardware divide per nonzero coefficient
/// was a fifth of the run time on high-bitrate 12 MP inputs.
#[derive(Clone, Copy)]
struct Rescaler {
    num: u64,
    den: u64,
    /// floor(2^SHIFT / (2 den)) + 1: exact floor division for numerators below 2^34
    /// (Granlund-Montgomery: 2^SHIFT >= 2^34 * 2den needs SHIFT >= 34 + 18).
    magic: u128,
}

const SHIFT: u32 = 52;

impl Rescaler {
    fn new(num: u32, den: u32) -> Self {
        let d2 = 2 * u128::from(den);
        Rescaler {
            num: u64::from(num),
            den: u64::from(den),
            magic: (1u128 << SHIFT) / d2 + 1,
        }
    }

    #[inline]
    fn apply(&self, v: i16) -> i16 {
        let a = u64::from(v.unsigned_abs()) * self.num;
        // Ties go toward zero. The true DCT value behind a tie is equally likely to lie on
        // either side, and a tie happens for every odd value when the steps double (e.g. q85
        // -> q70); rounding those away from zero kept noise a pixel re-encode would drop:
        // measured +27% bytes for +0.07 dB, against -21% bytes for +0.01 dB toward zero.
        let n = 2 * a + self.den - 1; // < 2^34 since |v| <= 2^15 and num, den <= 2^16
        let q = ((u128::from(n) * self.magic) >> SHIFT) as i32;
        (if v < 0 { -q } else { q }) as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rescale(v: i16, num: u32, den: u32) -> i16 {
        Rescaler::new(num, den).apply(v)
    }

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
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
        let mut x = 42u64;
        for _ in 0..200_000 {
            let v = (xorshift(&mut x) % 65536) as u16 as i16;
            let num = 1 + (xorshift(&mut x) % 65535) as u32;
            let den = 1 + (xorshift(&mut x) % 65535) as u32;
            let a = v.unsigned_abs() as u64 * num as u64;
            let q = ((2 * a + den as u64 - 1) / (2 * den as u64)) as i32;
            let want = (if v < 0 { -q } else { q }) as i16;
            assert_eq!(rescale(v, num, den), want, "{v} {num} {den}");
        }
    }

    fn scalar_block(r: &BlockRescaler, block: &[i16; 64]) -> [i16; 64] {
        let mut b = *block;
        let m = nonzero_mask(&b) & r.rescaled;
        r.rescale_scalar(&mut b, m);
        b
    }

    #[test]
    fn lanes_match_scalar_on_random_blocks() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || xorshift(&mut x);
        for round in 0..20_000 {
            let mut qin = [0u16; 64];
            let mut qout = [0u16; 64];
            for k in 0..64 {
                qin[k] = 1 + (next() % 255) as u16;
                // Mostly coarser targets, some equal (kept) positions.
                qout[k] = if next() % 4 == 0 {
                    qin[k]
                } else {
                    qin[k] + (next() % (256 - u64::from(qin[k]))) as u16
                };
            }
            let r = BlockRescaler::new(&qin, &qout);
            assert!(r.lanes.is_some());
            let mut block = [0i16; 64];
            for c in block.iter_mut() {
                *c = match next() % 10 {
                    0..=4 => 0,
                    5 => i16::MIN + (next() % 3) as i16,
                    6 => (next() % 4095) as i16 - 2047,
                    // Values around the lane limit, one side of which takes the scalar path.
                    7 => (next() % 9) as i16 + 2043,
                    _ => (next() % 64) as i16 - 32,
                };
            }
            if round % 7 == 0 {
                // Sparse blocks, where only the first groups are visited.
                for c in block[(next() % 64) as usize..].iter_mut() {
                    *c = 0;
                }
            }
            let want = scalar_block(&r, &block);
            let mut got = block;
            r.apply(&mut got);
            assert_eq!(got, want, "qin {qin:?} qout {qout:?} block {block:?}");
        }
    }

    /// Every pair of 8-bit steps (every 5th input step in unoptimised builds, which take 10 s
    /// for all of them), every value the lanes take: the exactness argument of `Lanes`, checked.
    #[test]
    fn lanes_exact_for_every_step_pair_and_value() {
        let stride = if cfg!(debug_assertions) { 5 } else { 1 };
        for qin in (1..=255u16).step_by(stride) {
            for qout in qin + 1..=255u16 {
                let r = BlockRescaler::new(&[qin; 64], &[qout; 64]);
                let mut v = -LANE_LIMIT;
                while v <= LANE_LIMIT {
                    let mut block = [0i16; 64];
                    for (i, c) in block.iter_mut().enumerate() {
                        *c = (v + i as i16).min(LANE_LIMIT);
                    }
                    let want = scalar_block(&r, &block);
                    r.apply(&mut block);
                    assert_eq!(block, want, "{qin} {qout} {v}");
                    v += 64;
                }
            }
        }
    }
}
