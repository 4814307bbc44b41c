//! PNG's five row filters, undone in place.
//!
//! Photos are almost all Paeth rows (the bench PNGs: 90-98% of rows), and Paeth is a chain: each
//! pixel's predictor needs the pixel just decoded to its left. The `png` crate runs it a byte at
//! a time (42% of a 12 MP RGB PNG's decode-and-encode time here); on x86-64 the three or four
//! channels of a pixel go through one SSE2 register together instead, and a pair of Paeth rows is
//! decoded in one pass, the lower row one pixel behind the upper, so two independent pixels share
//! each step of the chain.

/// A row's filter type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Filter {
    None,
    Sub,
    Up,
    Avg,
    Paeth,
}

impl Filter {
    pub(super) fn from_byte(byte: u8) -> Option<Filter> {
        Some(match byte {
            0 => Filter::None,
            1 => Filter::Sub,
            2 => Filter::Up,
            3 => Filter::Avg,
            4 => Filter::Paeth,
            _ => return None,
        })
    }
}

/// Undoes `filter` on `cur` (`bpp` bytes a pixel), given the row above already undone (all
/// zeros for the first row). Both rows have the same length, a multiple of `bpp`.
pub(super) fn unfilter(filter: Filter, bpp: usize, prev: &[u8], cur: &mut [u8]) {
    debug_assert_eq!(prev.len(), cur.len());
    match filter {
        Filter::None => {}
        Filter::Sub => {
            for i in bpp..cur.len() {
                cur[i] = cur[i].wrapping_add(cur[i - bpp]);
            }
        }
        Filter::Up => {
            for (c, &p) in cur.iter_mut().zip(prev) {
                *c = c.wrapping_add(p);
            }
        }
        Filter::Avg => {
            for i in 0..bpp.min(cur.len()) {
                cur[i] = cur[i].wrapping_add(prev[i] >> 1);
            }
            for i in bpp..cur.len() {
                let avg = (u16::from(cur[i - bpp]) + u16::from(prev[i])) >> 1;
                cur[i] = cur[i].wrapping_add(avg as u8);
            }
        }
        Filter::Paeth => paeth(bpp, prev, cur),
    }
}

/// Undoes Paeth on two consecutive rows: `upper` given the row above it (`prev`), then `lower`.
pub(super) fn paeth_pair(bpp: usize, prev: &[u8], upper: &mut [u8], lower: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if bpp == 3 || bpp == 4 {
            // SAFETY: SSE2 is part of the x86-64 baseline; the kernel checks its lengths.
            unsafe { sse2::paeth_pair(bpp, prev, upper, lower) };
            return;
        }
    }
    paeth(bpp, prev, upper);
    paeth(bpp, upper, lower);
}

fn paeth(bpp: usize, prev: &[u8], cur: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if bpp == 3 || bpp == 4 {
            // SAFETY: as in `paeth_pair`.
            unsafe { sse2::paeth_row(bpp, prev, cur) };
            return;
        }
    }
    paeth_scalar(bpp, prev, cur);
}

fn paeth_scalar(bpp: usize, prev: &[u8], cur: &mut [u8]) {
    for i in 0..bpp.min(cur.len()) {
        cur[i] = cur[i].wrapping_add(prev[i]);
    }
    for i in bpp..cur.len() {
        let p = predictor(cur[i - bpp].into(), prev[i].into(), prev[i - bpp].into());
        cur[i] = cur[i].wrapping_add(p);
    }
}

/// The Paeth predictor of left `a`, above `b` and upper-left `c`, without branches: the form
/// stb_image uses, equal to the specification's for all inputs (`tests::predictor_is_paeth`).
/// The vector kernel computes exactly this, lane by lane.
#[inline(always)]
fn predictor(a: i16, b: i16, c: i16) -> u8 {
    let thresh = c * 3 - (a + b);
    let lo = a.min(b);
    let hi = a.max(b);
    let t0 = if hi <= thresh { lo } else { c };
    let t1 = if thresh <= lo { hi } else { t0 };
    t1 as u8
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// One pixel's `BPP` bytes at `at`, widened to 16-bit lanes (lanes past `BPP` zero).
    #[inline(always)]
    unsafe fn load<const BPP: usize>(row: &[u8], at: usize) -> __m128i {
        let mut word = [0u8; 4];
        word[..BPP].copy_from_slice(&row[at..at + BPP]);
        _mm_unpacklo_epi8(
            _mm_cvtsi32_si128(i32::from_le_bytes(word)),
            _mm_setzero_si128(),
        )
    }

    #[inline(always)]
    unsafe fn store<const BPP: usize>(row: &mut [u8], at: usize, pixel: __m128i) {
        let word = _mm_cvtsi128_si32(_mm_packus_epi16(pixel, pixel)).to_le_bytes();
        row[at..at + BPP].copy_from_slice(&word[..BPP]);
    }

    /// `filtered` plus the Paeth prediction from `a`, `b`, `c`, per 16-bit lane, wrapped to a
    /// byte. The lanes are independent, so a register may hold two pixels. `BLENDV`: select
    /// with SSE4.1's one-instruction blend (only where the caller enabled SSE4.1), which
    /// shortens the chain from one pixel to the next by two steps.
    #[inline(always)]
    unsafe fn step<const BLENDV: bool>(
        a: __m128i,
        b: __m128i,
        c: __m128i,
        filtered: __m128i,
    ) -> __m128i {
        let thresh = _mm_sub_epi16(_mm_add_epi16(c, _mm_add_epi16(c, c)), _mm_add_epi16(a, b));
        let lo = _mm_min_epi16(a, b);
        let hi = _mm_max_epi16(a, b);
        // t0 = hi <= thresh ? lo : c
        let t0 = select::<BLENDV>(_mm_cmpgt_epi16(hi, thresh), c, lo);
        // t1 = thresh <= lo ? hi : t0
        let t1 = select::<BLENDV>(_mm_cmpgt_epi16(thresh, lo), t0, hi);
        // Byte-wise: each lane's high byte is zero in both, so the low byte wraps alone.
        _mm_add_epi8(filtered, t1)
    }

    /// `yes` where `mask` is set, else `no` (masks are whole lanes).
    #[inline(always)]
    unsafe fn select<const BLENDV: bool>(mask: __m128i, yes: __m128i, no: __m128i) -> __m128i {
        if BLENDV {
            _mm_blendv_epi8(no, yes, mask)
        } else {
            _mm_or_si128(_mm_and_si128(mask, yes), _mm_andnot_si128(mask, no))
        }
    }

    /// # Safety
    /// Needs SSE2 (always there on x86-64).
    pub(super) unsafe fn paeth_row(bpp: usize, prev: &[u8], cur: &mut [u8]) {
        match (bpp, sse41()) {
            (3, false) => row::<3, false>(prev, cur),
            (4, false) => row::<4, false>(prev, cur),
            (3, true) => row_sse41::<3>(prev, cur),
            (4, true) => row_sse41::<4>(prev, cur),
            _ => unreachable!("only 3 and 4 bytes a pixel come here"),
        }
    }

    /// Whether this CPU has SSE4.1 (detected once).
    fn sse41() -> bool {
        static SSE41: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        #[cfg(test)]
        if super::tests::SSE2_ONLY.with(|only| only.get()) {
            return false;
        }
        *SSE41.get_or_init(|| is_x86_feature_detected!("sse4.1"))
    }

    #[target_feature(enable = "sse4.1")]
    unsafe fn row_sse41<const BPP: usize>(prev: &[u8], cur: &mut [u8]) {
        row::<BPP, true>(prev, cur)
    }

    #[target_feature(enable = "sse4.1")]
    unsafe fn pair_sse41<const BPP: usize>(prev: &[u8], upper: &mut [u8], lower: &mut [u8]) {
        pair::<BPP, true>(prev, upper, lower)
    }

    #[inline(always)]
    unsafe fn row<const BPP: usize, const BLENDV: bool>(prev: &[u8], cur: &mut [u8]) {
        let n = cur.len().min(prev.len()) / BPP;
        let (mut a, mut c) = (_mm_setzero_si128(), _mm_setzero_si128());
        for x in (0..n).map(|i| i * BPP) {
            let b = load::<BPP>(prev, x);
            a = step::<BLENDV>(a, b, c, load::<BPP>(cur, x));
            store::<BPP>(cur, x, a);
            c = b;
        }
    }

    /// # Safety
    /// Needs SSE2 (always there on x86-64).
    pub(super) unsafe fn paeth_pair(bpp: usize, prev: &[u8], upper: &mut [u8], lower: &mut [u8]) {
        match (bpp, sse41()) {
            (3, false) => pair::<3, false>(prev, upper, lower),
            (4, false) => pair::<4, false>(prev, upper, lower),
            (3, true) => pair_sse41::<3>(prev, upper, lower),
            (4, true) => pair_sse41::<4>(prev, upper, lower),
            _ => unreachable!("only 3 and 4 bytes a pixel come here"),
        }
    }

    /// Both rows in one register, the upper's pixel `i` in the low lanes, the lower's pixel
    /// `i - 1` in the high lanes: the lower row's above (`b`) is then the upper's previous
    /// result, and its upper-left (`c`) the one before.
    #[inline(always)]
    unsafe fn pair<const BPP: usize, const BLENDV: bool>(
        prev: &[u8],
        upper: &mut [u8],
        lower: &mut [u8],
    ) {
        let n = upper.len().min(lower.len()).min(prev.len()) / BPP;
        if n == 0 {
            return;
        }
        let zero = _mm_setzero_si128();
        // The last result (both rows), the upper row's results one and two pixels back (the
        // lower row's `b` and `c`), and the row above's previous pixel (the upper row's `c`).
        // At i = 0 the lower lanes compute 0 + predictor(0, 0, 0) = 0, which is the left
        // neighbour its first pixel needs at i = 1.
        let (mut a, mut upper_1, mut upper_2, mut c_up) = (zero, zero, zero, zero);
        for i in 0..n {
            let x = i * BPP;
            let b_up = load::<BPP>(prev, x);
            let f_low = if i == 0 {
                zero
            } else {
                load::<BPP>(lower, x - BPP)
            };
            let out = step::<BLENDV>(
                a,
                _mm_unpacklo_epi64(b_up, upper_1),
                _mm_unpacklo_epi64(c_up, upper_2),
                _mm_unpacklo_epi64(load::<BPP>(upper, x), f_low),
            );
            store::<BPP>(upper, x, out);
            if i > 0 {
                store::<BPP>(lower, x - BPP, _mm_unpackhi_epi64(out, out));
            }
            upper_2 = upper_1;
            upper_1 = out;
            a = out;
            c_up = b_up;
        }
        // The lower row's last pixel: left is the last result's high lanes (zero when the row
        // is one pixel wide: `a`'s high lanes were computed from zeros).
        let x = (n - 1) * BPP;
        let out = step::<BLENDV>(
            _mm_unpackhi_epi64(a, a),
            upper_1,
            upper_2,
            load::<BPP>(lower, x),
        );
        store::<BPP>(lower, x, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Makes this thread take the SSE2 kernels even where SSE4.1 is there.
        pub(super) static SSE2_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Runs `check` on every kernel this machine has.
    fn on_every_kernel(check: impl Fn()) {
        for only in [false, true] {
            SSE2_ONLY.with(|flag| flag.set(only));
            check();
        }
        SSE2_ONLY.with(|flag| flag.set(false));
    }

    fn spec_paeth(a: u8, b: u8, c: u8) -> u8 {
        let p = i16::from(a) + i16::from(b) - i16::from(c);
        let (pa, pb, pc) = (
            (p - i16::from(a)).abs(),
            (p - i16::from(b)).abs(),
            (p - i16::from(c)).abs(),
        );
        if pa <= pb && pa <= pc {
            a
        } else if pb <= pc {
            b
        } else {
            c
        }
    }

    #[test]
    fn predictor_is_paeth() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                for c in 0..=255u8 {
                    assert_eq!(
                        predictor(a.into(), b.into(), c.into()),
                        spec_paeth(a, b, c),
                        "a={a} b={b} c={c}"
                    );
                }
            }
        }
    }

    /// The specification's unfiltering, byte by byte.
    fn reference(filter: Filter, bpp: usize, prev: &[u8], cur: &mut [u8]) {
        for i in 0..cur.len() {
            let a = if i >= bpp { cur[i - bpp] } else { 0 };
            let c = if i >= bpp { prev[i - bpp] } else { 0 };
            let b = prev[i];
            let add = match filter {
                Filter::None => 0,
                Filter::Sub => a,
                Filter::Up => b,
                Filter::Avg => ((u16::from(a) + u16::from(b)) / 2) as u8,
                Filter::Paeth => spec_paeth(a, b, c),
            };
            cur[i] = cur[i].wrapping_add(add);
        }
    }

    fn noise(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                // Mostly small residuals, as in a photo, with every byte value appearing.
                let v = (*seed >> 32) as u8;
                if (*seed).is_multiple_of(4) {
                    v
                } else {
                    v % 7
                }
            })
            .collect()
    }

    #[test]
    fn every_filter_matches_the_specification() {
        on_every_kernel(every_filter_once);
    }

    fn every_filter_once() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for bpp in 1..=4 {
            for pixels in [0, 1, 2, 3, 5, 17, 64, 333] {
                let len = pixels * bpp;
                for filter in [
                    Filter::None,
                    Filter::Sub,
                    Filter::Up,
                    Filter::Avg,
                    Filter::Paeth,
                ] {
                    let prev = noise(&mut seed, len);
                    let filtered = noise(&mut seed, len);
                    let mut want = filtered.clone();
                    reference(filter, bpp, &prev, &mut want);
                    let mut got = filtered.clone();
                    unfilter(filter, bpp, &prev, &mut got);
                    assert_eq!(got, want, "{filter:?} bpp {bpp} pixels {pixels}");
                    let mut got = filtered.clone();
                    paeth_scalar(bpp, &prev, &mut got);
                    let mut want = filtered;
                    reference(Filter::Paeth, bpp, &prev, &mut want);
                    assert_eq!(got, want, "scalar Paeth bpp {bpp} pixels {pixels}");
                }
            }
        }
    }

    #[test]
    fn paeth_pairs_match_two_rows() {
        on_every_kernel(paeth_pairs_once);
    }

    fn paeth_pairs_once() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        for bpp in 1..=4 {
            for pixels in [0, 1, 2, 3, 4, 9, 100, 257] {
                let len = pixels * bpp;
                let prev = noise(&mut seed, len);
                let upper = noise(&mut seed, len);
                let lower = noise(&mut seed, len);
                let (mut want_up, mut want_low) = (upper.clone(), lower.clone());
                reference(Filter::Paeth, bpp, &prev, &mut want_up);
                reference(Filter::Paeth, bpp, &want_up, &mut want_low);
                let (mut up, mut low) = (upper, lower);
                paeth_pair(bpp, &prev, &mut up, &mut low);
                assert_eq!(up, want_up, "upper, bpp {bpp} pixels {pixels}");
                assert_eq!(low, want_low, "lower, bpp {bpp} pixels {pixels}");
            }
        }
    }
}
