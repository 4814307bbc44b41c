//! AVX2 forms of the pixel path's kernels (`forward::Kernels`), chosen at run time. They
//! compute exactly the integers of the scalar reference: the DCT is the same `islow_1d!`
//! expression over eight 32-bit lanes, colour conversion and quantisation the same fixed-point
//! formulas, lane by lane.

use std::arch::x86_64::*;

use super::forward::{
    islow_1d, ycbcr, Divisors, Kernels, Scalar, CONST_BITS, FIX_0_298631336, FIX_0_390180644,
    FIX_0_541196100, FIX_0_765366865, FIX_0_899976223, FIX_1_175875602, FIX_1_501321110,
    FIX_1_847759065, FIX_1_961570560, FIX_2_053119869, FIX_2_562915447, FIX_3_072711026,
    PASS1_BITS, ZIGZAG_FROM_OUTPUT,
};

/// Proof that this CPU has AVX2: only [`Avx2::detect`] makes one.
#[derive(Clone, Copy)]
pub(crate) struct Avx2(());

impl Avx2 {
    pub(crate) fn detect() -> Option<Self> {
        is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }
}

impl Kernels for Avx2 {
    fn ycbcr_row(&self, src: &[u8], bpp: usize, y: &mut [u8], cb: &mut [u8], cr: &mut [u8]) {
        // SAFETY: an `Avx2` exists only where AVX2 was detected.
        let done = unsafe { ycbcr_row(src, bpp, y, cb, cr) };
        for i in done..y.len() {
            let p = &src[i * bpp..];
            let (a, b, c) = ycbcr(i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
            y[i] = a;
            cb[i] = b;
            cr[i] = c;
        }
    }

    fn downsample_row(&self, a: &[u8], b: &[u8], out: &mut [u8]) {
        // SAFETY: as above.
        let done = unsafe { downsample_row(a, b, out) };
        if done < out.len() {
            Scalar.downsample_row(&a[2 * done..], &b[2 * done..], &mut out[done..]);
        }
    }

    fn fdct_quantize(
        &self,
        plane: &[u8],
        at: usize,
        stride: usize,
        q: &Divisors,
        out: &mut [i16],
        raw: Option<&mut [i32; 64]>,
    ) {
        // The block must be inside the plane: checked here, once, for the unchecked loads.
        assert!(at + 7 * stride + 8 <= plane.len() && out.len() >= 64);
        // SAFETY: as above; and the bounds just checked.
        unsafe { fdct_quantize(plane, at, stride, q, out, raw) }
    }
}

/// Converts whole groups of 8 pixels; returns how many pixels it did (the caller does the
/// rest). The loads read 28 bytes (RGB) or 32 (RGBX) from the group's first pixel, so a group
/// runs only where that stays inside `src`.
#[target_feature(enable = "avx2")]
fn ycbcr_row(src: &[u8], bpp: usize, y: &mut [u8], cb: &mut [u8], cr: &mut [u8]) -> usize {
    let n = y.len().min(cb.len()).min(cr.len()).min(src.len() / bpp);
    let need = if bpp == 3 { 28 } else { 32 };
    if bpp != 3 && bpp != 4 {
        return 0;
    }
    let z = -128i8; // pshufb: a set top bit writes zero
    let mask = |c: i8| {
        if bpp == 3 {
            _mm256_setr_epi8(
                c,
                z,
                z,
                z,
                c + 3,
                z,
                z,
                z,
                c + 6,
                z,
                z,
                z,
                c + 9,
                z,
                z,
                z,
                c,
                z,
                z,
                z,
                c + 3,
                z,
                z,
                z,
                c + 6,
                z,
                z,
                z,
                c + 9,
                z,
                z,
                z,
            )
        } else {
            _mm256_setr_epi8(
                c,
                z,
                z,
                z,
                c + 4,
                z,
                z,
                z,
                c + 8,
                z,
                z,
                z,
                c + 12,
                z,
                z,
                z,
                c,
                z,
                z,
                z,
                c + 4,
                z,
                z,
                z,
                c + 8,
                z,
                z,
                z,
                c + 12,
                z,
                z,
                z,
            )
        }
    };
    let (mr, mg, mb) = (mask(0), mask(1), mask(2));
    // Low byte of each 32-bit lane to the first four bytes of its 128-bit half, then the two
    // halves' words together.
    let pick = _mm256_setr_epi8(
        0, 4, 8, 12, z, z, z, z, z, z, z, z, z, z, z, z, 0, 4, 8, 12, z, z, z, z, z, z, z, z, z, z,
        z, z,
    );
    let join = _mm256_setr_epi32(0, 4, 1, 1, 1, 1, 1, 1);
    let c = |v: i32| _mm256_set1_epi32(v);
    let half = c(1 << 15);
    let offset = c((128 << 16) + (1 << 15) - 1);
    let mut i = 0;
    while i + 8 <= n && i * bpp + need <= src.len() {
        let p = src[i * bpp..].as_ptr();
        // SAFETY: bytes p..p+need are inside `src` (loop condition); unaligned loads.
        let v = unsafe {
            if bpp == 3 {
                _mm256_loadu2_m128i(p.add(12).cast(), p.cast())
            } else {
                _mm256_loadu_si256(p.cast())
            }
        };
        let r = _mm256_shuffle_epi8(v, mr);
        let g = _mm256_shuffle_epi8(v, mg);
        let b = _mm256_shuffle_epi8(v, mb);
        let mul = _mm256_mullo_epi32;
        let add = _mm256_add_epi32;
        let sub = _mm256_sub_epi32;
        let yy = add(
            add(mul(r, c(19595)), mul(g, c(38470))),
            add(mul(b, c(7471)), half),
        );
        let cbv = add(
            sub(
                _mm256_slli_epi32::<15>(b),
                add(mul(r, c(11059)), mul(g, c(21709))),
            ),
            offset,
        );
        let crv = add(
            sub(
                _mm256_slli_epi32::<15>(r),
                add(mul(g, c(27439)), mul(b, c(5329))),
            ),
            offset,
        );
        let bytes = |v: __m256i| {
            let v = _mm256_permutevar8x32_epi32(
                _mm256_shuffle_epi8(_mm256_srli_epi32::<16>(v), pick),
                join,
            );
            _mm256_castsi256_si128(v)
        };
        // SAFETY: i + 8 <= n <= each output's length; unaligned 8-byte stores.
        unsafe {
            _mm_storel_epi64(y[i..].as_mut_ptr().cast(), bytes(yy));
            _mm_storel_epi64(cb[i..].as_mut_ptr().cast(), bytes(cbv));
            _mm_storel_epi64(cr[i..].as_mut_ptr().cast(), bytes(crv));
        }
        i += 8;
    }
    i
}

/// 2x2 averages with the alternating bias 1, 2, 16 outputs at a time; returns how many.
#[target_feature(enable = "avx2")]
fn downsample_row(a: &[u8], b: &[u8], out: &mut [u8]) -> usize {
    let n = out.len().min(a.len() / 2).min(b.len() / 2);
    let ones = _mm256_set1_epi8(1);
    let bias = _mm256_setr_epi16(1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2);
    let mut x = 0;
    while x + 16 <= n {
        // SAFETY: 2x + 32 <= 2n <= the rows' lengths; x + 16 <= out's length.
        unsafe {
            let ra = _mm256_loadu_si256(a[2 * x..].as_ptr().cast());
            let rb = _mm256_loadu_si256(b[2 * x..].as_ptr().cast());
            // Adjacent pairs summed into 16-bit lanes.
            let s = _mm256_add_epi16(
                _mm256_maddubs_epi16(ra, ones),
                _mm256_maddubs_epi16(rb, ones),
            );
            let v = _mm256_srli_epi16::<2>(_mm256_add_epi16(s, bias));
            let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi16(v, v));
            _mm_storeu_si128(out[x..].as_mut_ptr().cast(), _mm256_castsi256_si128(packed));
        }
        x += 16;
    }
    x
}

#[target_feature(enable = "avx2")]
fn add(a: __m256i, b: __m256i) -> __m256i {
    _mm256_add_epi32(a, b)
}
#[target_feature(enable = "avx2")]
fn sub(a: __m256i, b: __m256i) -> __m256i {
    _mm256_sub_epi32(a, b)
}
#[target_feature(enable = "avx2")]
fn mul(a: __m256i, c: i32) -> __m256i {
    _mm256_mullo_epi32(a, _mm256_set1_epi32(c))
}
#[target_feature(enable = "avx2")]
fn even1(a: __m256i) -> __m256i {
    _mm256_slli_epi32::<PASS1_BITS>(a)
}
#[target_feature(enable = "avx2")]
fn odd1(a: __m256i) -> __m256i {
    const N: i32 = CONST_BITS - PASS1_BITS;
    _mm256_srai_epi32::<N>(_mm256_add_epi32(a, _mm256_set1_epi32(1 << (N - 1))))
}
#[target_feature(enable = "avx2")]
fn even2(a: __m256i) -> __m256i {
    _mm256_srai_epi32::<PASS1_BITS>(_mm256_add_epi32(
        a,
        _mm256_set1_epi32(1 << (PASS1_BITS - 1)),
    ))
}
#[target_feature(enable = "avx2")]
fn odd2(a: __m256i) -> __m256i {
    const N: i32 = CONST_BITS + PASS1_BITS;
    _mm256_srai_epi32::<N>(_mm256_add_epi32(a, _mm256_set1_epi32(1 << (N - 1))))
}

/// 8x8 transpose of 32-bit lanes.
#[target_feature(enable = "avx2")]
fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256::<0x20>(u0, u4),
        _mm256_permute2x128_si256::<0x20>(u1, u5),
        _mm256_permute2x128_si256::<0x20>(u2, u6),
        _mm256_permute2x128_si256::<0x20>(u3, u7),
        _mm256_permute2x128_si256::<0x31>(u0, u4),
        _mm256_permute2x128_si256::<0x31>(u1, u5),
        _mm256_permute2x128_si256::<0x31>(u2, u6),
        _mm256_permute2x128_si256::<0x31>(u3, u7),
    ]
}

/// # Safety
/// `plane[at + y * stride .. + 8]` for y in 0..8 must be in bounds, `out` at least 64 long.
#[target_feature(enable = "avx2")]
unsafe fn fdct_quantize(
    plane: &[u8],
    at: usize,
    stride: usize,
    q: &Divisors,
    out: &mut [i16],
    raw: Option<&mut [i32; 64]>,
) {
    let base = plane.as_ptr().add(at);
    let center = _mm256_set1_epi32(128);
    let mut rows = [_mm256_setzero_si256(); 8];
    for (y, r) in rows.iter_mut().enumerate() {
        // SAFETY: the caller's bounds; an 8-byte load.
        let v = _mm_loadl_epi64(base.add(y * stride).cast());
        *r = _mm256_sub_epi32(_mm256_cvtepu8_epi32(v), center);
    }
    // Pass 1 down the columns: register v holds vertical frequency v of every column.
    let p1 = islow_1d!(rows, add, sub, mul, even1, odd1);
    // Register x: column x's vertical frequencies; pass 2 across them gives register u =
    // horizontal frequency u, lanes vertical frequencies: the layout `Divisors` uses.
    let p2 = islow_1d!(transpose(p1), add, sub, mul, even2, odd2);
    if let Some(raw) = raw {
        for (i, r) in p2.iter().enumerate() {
            // SAFETY: 8 lanes at i * 8 of a 64-entry array.
            _mm256_storeu_si256(raw[i * 8..].as_mut_ptr().cast(), *r);
        }
    }
    let mut buf = [0i16; 64];
    for pair in 0..4 {
        let quant = |i: usize| {
            let x = p2[i];
            // SAFETY: 8 lanes at i * 8 of 64-entry arrays; unaligned loads.
            let (recip, corr, shift) = unsafe {
                (
                    _mm256_loadu_si256(q.recip[i * 8..].as_ptr().cast()),
                    _mm256_loadu_si256(q.corr[i * 8..].as_ptr().cast()),
                    _mm256_loadu_si256(q.shift[i * 8..].as_ptr().cast()),
                )
            };
            let a = _mm256_add_epi32(_mm256_abs_epi32(x), corr);
            // (|x| + corr) * recip < 2^32: the low half of the product is the whole of it.
            let v = _mm256_srlv_epi32(_mm256_mullo_epi32(a, recip), shift);
            _mm256_sign_epi32(v, x)
        };
        let packed = _mm256_permute4x64_epi64::<0b1101_1000>(_mm256_packs_epi32(
            quant(2 * pair),
            quant(2 * pair + 1),
        ));
        // SAFETY: 16 lanes at pair * 16 of a 64-entry array.
        _mm256_storeu_si256(buf[pair * 16..].as_mut_ptr().cast(), packed);
    }
    for (k, o) in out[..64].iter_mut().enumerate() {
        *o = buf[usize::from(ZIGZAG_FROM_OUTPUT[k])];
    }
}

#[cfg(test)]
mod tests {
    use super::super::forward::{Divisors, Kernels, Scalar};
    use super::Avx2;
    use crate::jpeg::scaled_table;

    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    #[test]
    fn avx2_kernels_equal_the_scalar_ones() {
        let Some(k) = Avx2::detect() else {
            eprintln!("no AVX2 here: nothing to compare");
            return;
        };
        let mut x = 0xDEAD_BEEF_CAFE_F00Du64;
        // Random blocks, and the extremes (flat 0 and 255, a checkerboard), at every quality
        // that changes the tables' shape.
        for quality in [1u8, 10, 30, 50, 75, 90, 100] {
            let q = Divisors::new(&scaled_table(&crate::jpeg::STD_LUMA_QT, quality));
            for case in 0..300 {
                let stride = 8 + (case % 3) * 5;
                let plane: Vec<u8> = (0..8 * stride)
                    .map(|i| match case {
                        0 => 0,
                        1 => 255,
                        2 => ((i + i / stride) % 2 * 255) as u8,
                        _ => xorshift(&mut x) as u8,
                    })
                    .collect();
                let (mut a, mut b) = ([0i16; 64], [0i16; 64]);
                Scalar.fdct_quantize(&plane, 0, stride, &q, &mut a, None);
                k.fdct_quantize(&plane, 0, stride, &q, &mut b, None);
                assert_eq!(a, b, "q{quality} case {case}");
            }
        }
        for bpp in [3usize, 4] {
            for n in [1usize, 7, 8, 9, 10, 17, 33, 100] {
                let src: Vec<u8> = (0..n * bpp).map(|_| xorshift(&mut x) as u8).collect();
                let mut s = vec![vec![0u8; n]; 3];
                let mut v = vec![vec![0u8; n]; 3];
                let [sy, scb, scr] = &mut s[..] else {
                    unreachable!()
                };
                Scalar.ycbcr_row(&src, bpp, sy, scb, scr);
                let [vy, vcb, vcr] = &mut v[..] else {
                    unreachable!()
                };
                k.ycbcr_row(&src, bpp, vy, vcb, vcr);
                assert_eq!(s, v, "bpp {bpp} n {n}");
            }
        }
        // Whole pictures, odd sizes: the strip loop, the padding and the tails of each row.
        use super::super::forward::{coefficients_with, PixelLayout};
        let q75 = crate::jpeg::Target::new(75, crate::jpeg::Effort::FASTEST);
        for (w, h) in [(1u16, 1u16), (37, 21), (77, 45)] {
            for (layout, bpp) in [
                (PixelLayout::Gray, 1),
                (PixelLayout::Rgb, 3),
                (PixelLayout::Rgbx, 4),
            ] {
                let n = usize::from(w) * usize::from(h) * bpp;
                let px: Vec<u8> = (0..n).map(|_| xorshift(&mut x) as u8).collect();
                assert!(
                    coefficients_with(px.clone(), w, h, layout, q75, &Scalar)
                        == coefficients_with(px, w, h, layout, q75, &k),
                    "{w}x{h} {layout:?}"
                );
            }
        }
        for n in [1usize, 15, 16, 17, 40] {
            let a: Vec<u8> = (0..2 * n).map(|_| xorshift(&mut x) as u8).collect();
            let b: Vec<u8> = (0..2 * n).map(|_| xorshift(&mut x) as u8).collect();
            let (mut s, mut v) = (vec![0u8; n], vec![0u8; n]);
            Scalar.downsample_row(&a, &b, &mut s);
            k.downsample_row(&a, &b, &mut v);
            assert_eq!(s, v, "n {n}");
        }
    }
}
