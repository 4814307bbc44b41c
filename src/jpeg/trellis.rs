//! Rate-distortion ("trellis") quantisation of a block's AC coefficients.
//!
//! Rounding each coefficient to the nearest step is the least distortion, not the best trade:
//! a lone ±1 far down the zigzag can cost a dozen bits (its run, its category, and the EOB it
//! pushes back) for a sliver of error. For each block this chooses, among each coefficient's
//! rounded value and the smaller magnitudes that end a lower category (1, 3, 7, ...), or zero,
//! the assignment that minimises bits + weight x squared error, by dynamic programming over
//! "the last nonzero coefficient so far" (mozjpeg's `quantize_trellis`, T.81's run-length
//! symbols as the rate). Error is counted in steps squared, weighted less in busy blocks,
//! where the eye masks it: weight = 2^14.75 / (2^10.5 + mean AC energy), mozjpeg's defaults.
//!
//! The rate of each symbol comes from T.81 Annex K's typical AC tables (the writer then fits
//! its own tables to what comes out, as mozjpeg's first trellis pass does). DC is left as it
//! was rounded: its cost depends on the neighbour, and its error shows as block contrast.

use super::encode::nonzero_mask;
use super::huffman::{build_optimal, EncodeTable};

/// Bits of each AC symbol's code, per table (0 luma, 1 chroma); 0 = no such symbol.
pub(crate) struct Rates([[u8; 256]; 2]);

/// The code lengths T.81 Annex K (tables K.5 and K.6) gives: `BITS` counts codes of length
/// 1-16, the symbols listed are the ones with codes shorter than 16 bits, in code order;
/// every other run/size symbol has a 16-bit code.
const LUMA_BITS: [u8; 15] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1];
const LUMA_SHORT: [u8; 37] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
    0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0,
    0x24, 0x33, 0x62, 0x72, 0x82,
];
const CHROMA_BITS: [u8; 15] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2];
const CHROMA_SHORT: [u8; 43] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
    0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0,
    0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1,
];

const fn annex_k(bits: &[u8; 15], short: &[u8]) -> [u8; 256] {
    let mut len = [0u8; 256];
    // Every AC symbol: EOB, ZRL, and run 0-15 with size 1-10.
    len[0x00] = 16;
    len[0xF0] = 16;
    let mut run = 0;
    while run < 16 {
        let mut size = 1;
        while size <= 10 {
            len[run * 16 + size] = 16;
            size += 1;
        }
        run += 1;
    }
    let (mut l, mut i) = (0, 0);
    while l < 15 {
        let mut n = 0;
        while n < bits[l] {
            len[short[i] as usize] = l as u8 + 1;
            i += 1;
            n += 1;
        }
        l += 1;
    }
    len
}

/// Annex K's rates, for luma (table 0) and chroma (table 1).
pub(crate) static ANNEX_K: Rates = Rates([
    annex_k(&LUMA_BITS, &LUMA_SHORT),
    annex_k(&CHROMA_BITS, &CHROMA_SHORT),
]);

/// One component's quantiser for trellis decisions.
pub(crate) struct Quantiser {
    /// 1 / step per zigzag position.
    recip: [f32; 64],
    /// Bits of each AC symbol's code, as the writer will most likely code it.
    rates: [u8; 256],
    /// The same as f32, and infinite for symbols with no code, which are never chosen.
    cost: [f32; 256],
    /// Symbols chosen so far, and when to refit `rates` to them.
    counts: [u32; 256],
    blocks: u32,
    refit_at: u32,
}

/// Blocks coded before the rates are first fitted to the image's own symbols (then again
/// after `REFIT_GROWTH` times as many, and so on: each fit is a Huffman construction, and
/// statistics settle quickly).
const FIRST_REFIT: u32 = 256;

/// The most two candidates' rates can differ by at one position: 1-16 bits of code plus 1-10
/// of magnitude.
const MAX_RATE_SPREAD: f32 = 25.0;

fn costs(rates: &[u8; 256]) -> [f32; 256] {
    std::array::from_fn(|s| match rates[s] {
        0 => f32::INFINITY,
        l => f32::from(l),
    })
}

/// How many of the nearest nonzero positions may precede a coefficient (see `choose`).
const LOOKBACK: usize = 4;
const REFIT_GROWTH: u32 = 8;

/// mozjpeg's `lambda_log_scale1` and `lambda_log_scale2` less 6 (its coefficients are 8 times
/// ours, their energy 64 times).
const LAMBDA_SCALE: f32 = 26_910.0; // 2^14.75
const LAMBDA_FLOOR: f32 = 1_448.2; // 2^10.5

impl Quantiser {
    /// For steps `table` (zigzag), with the luma (`chroma` false) or chroma rates.
    pub(crate) fn new(table: &[u16; 64], chroma: bool) -> Self {
        let mut recip = [0f32; 64];
        for (r, &q) in recip.iter_mut().zip(table) {
            *r = 1.0 / f32::from(q.max(1));
        }
        Quantiser {
            recip,
            rates: ANNEX_K.0[usize::from(chroma)],
            cost: costs(&ANNEX_K.0[usize::from(chroma)]),
            counts: [0; 256],
            blocks: 0,
            refit_at: FIRST_REFIT,
        }
    }

    /// The code lengths optimal tables would give the symbols counted so far. Every symbol
    /// keeps a code (count + 1), so no choice is ruled out for having been rare so far.
    fn refit(&mut self) {
        let mut freq = [0u32; 256];
        for (s, f) in freq.iter_mut().enumerate() {
            if ANNEX_K.0[0][s] != 0 {
                *f = self.counts[s].saturating_add(1);
            }
        }
        let spec = build_optimal(&freq);
        let table = EncodeTable::new(&spec);
        self.rates = table.len;
        self.cost = costs(&self.rates);
    }

    /// Counts the AC symbols of `block` as the writer will code them.
    fn count(&mut self, block: &[i16; 64]) {
        let mut m = nonzero_mask(block) & !1;
        let mut last = 0u32;
        while m != 0 {
            let k = m.trailing_zeros();
            m &= m - 1;
            let mut run = k - last - 1;
            while run >= 16 {
                self.counts[0xF0] += 1;
                run -= 16;
            }
            let size = 16 - block[k as usize].unsigned_abs().leading_zeros();
            self.counts[((run << 4) | size) as usize & 0xFF] += 1;
            last = k;
        }
        if last != 63 {
            self.counts[0] += 1;
        }
        self.blocks += 1;
        if self.blocks == self.refit_at {
            self.refit();
            self.refit_at = self.refit_at.saturating_mul(REFIT_GROWTH);
        }
    }

    /// Rewrites `block`'s AC coefficients (zigzag; as rounded, and the signs they have) to the
    /// rate-distortion optimum. `x` holds the block's unquantised coefficients on the same
    /// scale (coefficient x step), zigzag. Only lowers magnitudes or zeroes, so the result
    /// always fits where the rounded block did.
    pub(crate) fn apply(&mut self, block: &mut [i16; 64], x: &[f32; 64]) {
        self.choose(block, x);
        self.count(block);
    }

    fn choose(&self, block: &mut [i16; 64], x: &[f32; 64]) {
        let nonzero = nonzero_mask(block) & !1;
        if nonzero == 0 {
            return;
        }
        // Error of zeroing position k, in squared steps, summed over 1..=k; and the energy.
        // Squares first, in lanes of 8 (independent, so they vectorise), then the sums.
        let mut sq = [0f32; 64];
        let mut lanes = [0f32; 8];
        for (g, (sq, x)) in sq.chunks_exact_mut(8).zip(x.chunks_exact(8)).enumerate() {
            for i in 0..8 {
                let m = x[i] * self.recip[8 * g + i];
                sq[i] = m * m;
                lanes[i] += x[i] * x[i];
            }
        }
        let energy = lanes.iter().sum::<f32>() - x[0] * x[0];
        let mut zero_err = [0f32; 64];
        let mut acc = 0f32;
        for k in 1..64 {
            acc += sq[k];
            zero_err[k] = acc;
        }
        let weight = LAMBDA_SCALE / (LAMBDA_FLOOR + energy / 63.0);
        let rates = &self.cost;
        let (eob, zrl) = (rates[0x00], rates[0xF0]);

        // cost[i]: least cost of coding positions 1..=i with i the last nonzero one;
        // from[i] the nonzero before it (0: none), value[i] its magnitude.
        let mut cost = [0f32; 64];
        let mut from = [0u8; 64];
        let mut value = [0i16; 64];
        let mut m = nonzero;
        let mut prior = 1u64; // positions that may precede: the start, then each nonzero
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            let rounded = block[i].unsigned_abs();
            let size = 16 - rounded.leading_zeros();
            if size > 10 {
                // Outside baseline range: the writer reports it; nothing to decide here.
                return;
            }
            let target = x[i].abs() * self.recip[i];
            // Candidates: the largest magnitude of each category up to the rounded one's,
            // which has the least error in its category (smaller ones only add error).
            // A candidate whose error exceeds the rounded value's by more than any symbol's
            // rate can differ (codes of 1-16 bits plus 1-10 magnitude bits) never wins: skip.
            let e = f32::from(rounded) - target;
            let least = e * e * weight;
            // (value, category, category bits + error)
            let mut cand = [(0i16, 0usize, 0f32); 10];
            let mut n = 0;
            for s in 0..size as usize {
                let v = if s + 1 == size as usize {
                    rounded as i16
                } else {
                    (2i16 << s) - 1
                };
                let e = f32::from(v) - target;
                let err = e * e * weight;
                if err <= least + MAX_RATE_SPREAD {
                    cand[n] = (v, s + 1, (s + 1) as f32 + err);
                    n += 1;
                }
            }
            let cand = &cand[..n];
            let mut best = (f32::INFINITY, 0u8, 0i16);
            // Predecessors: the nearest `LOOKBACK` nonzero positions, and the start. Zeroing a
            // longer stretch of coefficients that rounding keeps, with more kept after it, is
            // never worth its error in practice, and looking further made dense blocks (a q92
            // photo taken to q57) cost quadratic time: 2.5x the whole job's.
            let mut p = prior;
            let mut looked = 0;
            while p != 0 {
                let j = if looked < LOOKBACK {
                    63 - p.leading_zeros() as usize
                } else {
                    0
                };
                p = if j == 0 { 0 } else { p & !(1u64 << j) };
                looked += 1;
                let gap = i - 1 - j;
                let base =
                    cost[j] + (zero_err[i - 1] - zero_err[j]) * weight + (gap >> 4) as f32 * zrl;
                let run = (gap & 15) << 4;
                for &(v, s, cost) in cand {
                    let c = base + rates[run | s] + cost;
                    if c < best.0 {
                        best = (c, j as u8, v);
                    }
                }
            }
            cost[i] = best.0;
            from[i] = best.1;
            value[i] = best.2;
            prior |= 1u64 << i;
        }
        // Where the block ends: after the best last nonzero, or nothing but the EOB.
        let mut end = (zero_err[63] * weight + eob, 0usize);
        let mut p = nonzero;
        while p != 0 {
            let i = p.trailing_zeros() as usize;
            p &= p - 1;
            let tail = if i < 63 { eob } else { 0.0 };
            let c = cost[i] + (zero_err[63] - zero_err[i]) * weight + tail;
            if c < end.0 {
                end = (c, i);
            }
        }
        let signs: [bool; 64] = std::array::from_fn(|k| block[k] < 0);
        block[1..].fill(0);
        let mut i = end.1;
        while i != 0 {
            block[i] = if signs[i] { -value[i] } else { value[i] };
            i = usize::from(from[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// The objective `apply` minimises, for a block it could output.
    fn cost(q: &Quantiser, block: &[i16; 64], x: &[f32; 64]) -> f32 {
        let energy: f32 = x[1..].iter().map(|v| v * v).sum();
        let weight = LAMBDA_SCALE / (LAMBDA_FLOOR + energy / 63.0);
        let mut total = 0f32;
        let mut last = 0;
        for k in 1..64 {
            let e = f32::from(block[k]) - x[k] * q.recip[k];
            total += e * e * weight;
            if block[k] != 0 {
                let mut run = k - last - 1;
                while run >= 16 {
                    total += f32::from(q.rates[0xF0]);
                    run -= 16;
                }
                let size = 16 - block[k].unsigned_abs().leading_zeros() as usize;
                total += f32::from(q.rates[(run << 4) | size]) + size as f32;
                last = k;
            }
        }
        if last != 63 {
            total += f32::from(q.rates[0]);
        }
        total
    }

    /// Random sparse blocks: a few nonzero coefficients anywhere, with values near rounding
    /// boundaries and category edges, where the choice is close.
    fn random_block(x: &mut u64, q: &[u16; 64]) -> ([i16; 64], [f32; 64]) {
        let mut raw = [0f32; 64];
        raw[0] = (xorshift(x) % 2000) as f32 - 1000.0;
        let n = 1 + xorshift(x) % 4;
        for _ in 0..n {
            let k = 1 + (xorshift(x) % 63) as usize;
            let steps = match xorshift(x) % 4 {
                0 => 0.5 + (xorshift(x) % 100) as f32 / 100.0,
                1 => (xorshift(x) % 40) as f32 / 4.0,
                2 => 3.5 + (xorshift(x) % 20) as f32 / 20.0,
                _ => (xorshift(x) % 400) as f32 / 7.0,
            };
            let sign = if xorshift(x).is_multiple_of(2) {
                1.0
            } else {
                -1.0
            };
            raw[k] = sign * steps * f32::from(q[k]);
        }
        // Sub-step noise elsewhere: zero when rounded, but it counts as error.
        for (k, v) in raw.iter_mut().enumerate().skip(1) {
            if *v == 0.0 {
                *v = ((xorshift(x) % 81) as f32 - 40.0) / 100.0 * f32::from(q[k]);
            }
        }
        let rounded = std::array::from_fn(|k| (raw[k] / f32::from(q[k])).round() as i16);
        (rounded, raw)
    }

    /// Every block `apply` may choose among: each nonzero keeps its value, takes the top of a
    /// lower category, or becomes zero.
    fn all_choices(block: &[i16; 64]) -> Vec<[i16; 64]> {
        let mut out = vec![*block];
        for k in 1..64 {
            let v = block[k];
            if v == 0 {
                continue;
            }
            let size = 16 - v.unsigned_abs().leading_zeros();
            let mut options = vec![0i16, v];
            for s in 0..size - 1 {
                options.push(v.signum() * ((2i16 << s) - 1));
            }
            out = out
                .into_iter()
                .flat_map(|b| {
                    options.iter().map(move |&o| {
                        let mut b = b;
                        b[k] = o;
                        b
                    })
                })
                .collect();
        }
        out
    }

    #[test]
    fn trellis_finds_the_cheapest_block() {
        let table = crate::jpeg::scaled_table(&crate::jpeg::KLEIN, 50);
        for chroma in [false, true] {
            let q = Quantiser::new(&table, chroma);
            let mut x = 0x1234_5678_9ABC_DEF1u64;
            let mut changed = 0;
            for _ in 0..3000 {
                let (rounded, raw) = random_block(&mut x, &table);
                let mut got = rounded;
                q.choose(&mut got, &raw);
                assert_eq!(got[0], rounded[0], "DC is left alone");
                for k in 1..64 {
                    // Never larger, never flipped.
                    assert!(got[k].unsigned_abs() <= rounded[k].unsigned_abs());
                    assert!(got[k] == 0 || got[k].signum() == rounded[k].signum());
                }
                let best = all_choices(&rounded)
                    .iter()
                    .map(|b| cost(&q, b, &raw))
                    .fold(f32::INFINITY, f32::min);
                let c = cost(&q, &got, &raw);
                assert!(
                    c <= best + 1e-3 * best.abs().max(1.0),
                    "{c} > {best}: {got:?}"
                );
                changed += usize::from(got != rounded);
            }
            // The test would pass for a trellis that never changes anything only if rounding
            // were always best; it is not.
            assert!(changed > 300, "only {changed} blocks changed");
        }
    }

    /// Dense blocks (more nonzeros than `LOOKBACK`): never costlier than plain rounding, and
    /// within the allowed moves.
    #[test]
    fn dense_blocks_never_cost_more_than_rounding() {
        let table = crate::jpeg::scaled_table(&crate::jpeg::KLEIN, 57);
        let q = Quantiser::new(&table, false);
        let mut x = 99u64;
        for _ in 0..5000 {
            let raw: [f32; 64] = std::array::from_fn(|k| {
                let spread = 3000.0 / (1.0 + k as f32);
                ((xorshift(&mut x) % 2001) as f32 / 1000.0 - 1.0) * spread
            });
            let rounded: [i16; 64] =
                std::array::from_fn(|k| (raw[k] / f32::from(table[k])).round() as i16);
            let mut got = rounded;
            q.choose(&mut got, &raw);
            assert!(cost(&q, &got, &raw) <= cost(&q, &rounded, &raw) + 1e-3);
            for k in 1..64 {
                assert!(got[k].unsigned_abs() <= rounded[k].unsigned_abs());
                assert!(got[k] == 0 || got[k].signum() == rounded[k].signum());
            }
        }
    }

    #[test]
    fn a_lone_far_coefficient_goes_and_a_strong_one_stays() {
        let table = crate::jpeg::scaled_table(&crate::jpeg::KLEIN, 50);
        let q = Quantiser::new(&table, false);
        let mut raw = [0f32; 64];
        raw[0] = 400.0;
        raw[1] = 20.0 * f32::from(table[1]);
        raw[50] = 0.6 * f32::from(table[50]);
        let mut block: [i16; 64] =
            std::array::from_fn(|k| (raw[k] / f32::from(table[k])).round() as i16);
        assert_eq!((block[1], block[50]), (20, 1));
        q.choose(&mut block, &raw);
        assert_eq!((block[1], block[50]), (20, 0));
    }

    #[test]
    fn rates_follow_the_symbols_chosen() {
        let table = [8u16; 64];
        let mut q = Quantiser::new(&table, false);
        let before = q.rates;
        // Only (run 0, size 1) then EOB, over and over: their codes must get short.
        let mut block = [0i16; 64];
        block[1] = 1;
        let raw: [f32; 64] = std::array::from_fn(|k| if k == 1 { 8.0 } else { 0.0 });
        for _ in 0..FIRST_REFIT {
            let mut b = block;
            q.apply(&mut b, &raw);
            assert_eq!(b, block);
        }
        assert_ne!(q.rates, before);
        assert!(q.rates[0x01] <= 2 && q.rates[0x00] <= 2);
        // Every symbol keeps a code.
        assert!((1..=10).all(|size| q.rates[0xF0 | size] > 0 && q.rates[size] > 0));
    }

    #[test]
    fn annex_k_rates_are_a_complete_prefix_code() {
        for (t, rates) in ANNEX_K.0.iter().enumerate() {
            let used: Vec<u8> = rates.iter().copied().filter(|&l| l > 0).collect();
            assert_eq!(used.len(), 162, "table {t}");
            // Kraft sum of a full table is 1 (Annex K leaves the all-ones code unused).
            let kraft: f64 = used.iter().map(|&l| 0.5f64.powi(i32::from(l))).sum();
            assert!(
                (kraft - (1.0 - 0.5f64.powi(16))).abs() < 1e-12,
                "table {t}: {kraft}"
            );
        }
        assert_eq!(ANNEX_K.0[0][0x00], 4); // luma EOB: 1010
        assert_eq!(ANNEX_K.0[0][0x01], 2);
        assert_eq!(ANNEX_K.0[1][0x00], 2); // chroma EOB: 00
        assert_eq!(ANNEX_K.0[0][0xF0], 11);
    }
}
