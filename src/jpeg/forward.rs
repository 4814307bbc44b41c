//! The pixel path's front end: 8-bit gray, RGB or RGBX pixels to quantised DCT coefficients in
//! the same [`Image`] the fast path fills, so that one writer (`encode::write_baseline`,
//! optimal Huffman tables, one interleaved scan) codes both paths.
//!
//! The steps are libjpeg's (the Independent JPEG Group's software, as libjpeg-turbo keeps it):
//! RGB to YCbCr with jccolor.c's 16-bit fixed-point constants, 4:2:0 chroma by averaging each
//! 2x2 block with jcsample.c's alternating rounding bias, the "islow" integer forward DCT of
//! jfdctint.c (Loeffler-Ligtenberg-Moschytz, 13-bit constants), and quantisation by
//! libjpeg-turbo's reciprocal multiplication (jcdctmgr.c `compute_reciprocal`). One difference,
//! for SIMD's sake: the DCT's first pass runs down the columns and the second along the rows
//! (libjpeg: rows first). The arithmetic is the same, only which direction keeps the extra
//! PASS1_BITS of precision differs, so quality is the same and the vector code needs one
//! transpose instead of two.
//!
//! Every kernel has a scalar form, which is the reference: the AVX2 kernels (`forward_x86`,
//! chosen at run time) compute the same integers and a test holds them to it bit for bit.
//!
//! Memory: coefficients are computed an MCU row at a time from the bottom of the picture up,
//! and the pixel buffer is cut down behind them, so a 12 MP photo never holds both its pixels
//! and its coefficients (36 MB each) at once; the zeroed coefficient buffers are only paged in
//! as they are written.

use super::encode::write;
use super::parse::{Component, Image};
use super::trellis::Quantiser;
use super::{err, JpegError, Target, ZIGZAG};

/// How the pixels handed to [`encode_pixels`] are laid out (8 bits a sample, rows packed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelLayout {
    Gray,
    Rgb,
    /// RGB and one ignored byte (alpha already flattened).
    Rgbx,
}

impl PixelLayout {
    fn bytes_per_pixel(self) -> usize {
        match self {
            PixelLayout::Gray => 1,
            PixelLayout::Rgb => 3,
            PixelLayout::Rgbx => 4,
        }
    }
}

/// Encodes `pixels` (`width` x `height`, rows packed) as a baseline JPEG with `target`'s
/// tables: gray stays one component, colour becomes YCbCr 4:2:0. The buffer is consumed (and
/// freed as it is used).
pub fn encode_pixels(
    pixels: Vec<u8>,
    width: u16,
    height: u16,
    layout: PixelLayout,
    target: Target,
) -> Result<Vec<u8>, JpegError> {
    if width == 0 || height == 0 {
        return err("empty image");
    }
    let expected = usize::from(width) * usize::from(height) * layout.bytes_per_pixel();
    if pixels.len() != expected {
        return err(format!(
            "{} bytes of pixels for {width}x{height} {layout:?}",
            pixels.len()
        ));
    }
    let img = coefficients(pixels, width, height, layout, target);
    write(&img, target)
}

/// The quantised coefficients of `pixels`, with the best kernels this CPU has.
pub(crate) fn coefficients(
    pixels: Vec<u8>,
    width: u16,
    height: u16,
    layout: PixelLayout,
    target: Target,
) -> Image {
    #[cfg(target_arch = "x86_64")]
    if let Some(k) = super::forward_x86::Avx2::detect() {
        return Front::new(pixels, width, height, layout, target).run(&k);
    }
    Front::new(pixels, width, height, layout, target).run(&Scalar)
}

/// Every component's coefficients made with the kernels `k`, for tests comparing kernels on
/// whole pictures (edges and padding included).
#[cfg(test)]
pub(crate) fn coefficients_with<K: Kernels>(
    pixels: Vec<u8>,
    width: u16,
    height: u16,
    layout: PixelLayout,
    target: Target,
    k: &K,
) -> Vec<Vec<i16>> {
    let img = Front::new(pixels, width, height, layout, target).run(k);
    img.comps.into_iter().map(|c| c.coeffs).collect()
}

/// The per-pixel and per-block work, in a scalar and a vector form that compute the same.
pub(crate) trait Kernels {
    /// One row of packed RGB (3 bytes a pixel) or RGBX (4) to Y, Cb and Cr samples, as many as
    /// `y` is long.
    fn ycbcr_row(&self, src: &[u8], bpp: usize, y: &mut [u8], cb: &mut [u8], cr: &mut [u8]);
    /// Two rows of full-resolution chroma to one of half resolution in each direction.
    fn downsample_row(&self, a: &[u8], b: &[u8], out: &mut [u8]);
    /// The 8x8 block whose top-left sample is `plane[at]` (rows `stride` apart): forward DCT,
    /// quantised by `q`, written in zigzag order; and, for trellis quantisation, the DCT's
    /// output before quantisation into `raw` (output layout, 8 times the coefficient scale).
    fn fdct_quantize(
        &self,
        plane: &[u8],
        at: usize,
        stride: usize,
        q: &Divisors,
        out: &mut [i16],
        raw: Option<&mut [i32; 64]>,
    );
}

/// A quantisation table as divisors of the DCT's output (which is scaled up by 8), in
/// libjpeg-turbo's reciprocal form, per position of the DCT's output layout (transposed:
/// index u * 8 + v holds horizontal frequency u, vertical v).
pub(crate) struct Divisors {
    pub(crate) recip: [u32; 64],
    pub(crate) corr: [u32; 64],
    pub(crate) shift: [u32; 64],
}

impl Divisors {
    /// From a table in zigzag order (as DQT stores it).
    pub(crate) fn new(table_zigzag: &[u16; 64]) -> Self {
        let mut d = Divisors {
            recip: [0; 64],
            corr: [0; 64],
            shift: [0; 64],
        };
        for (zz, &step) in table_zigzag.iter().enumerate() {
            let natural = usize::from(ZIGZAG[zz]);
            let t = transposed(natural);
            let (recip, corr, shift) = reciprocal(u32::from(step) * 8);
            d.recip[t] = recip;
            d.corr[t] = corr;
            d.shift[t] = shift;
        }
        d
    }
}

/// The DCT output position of natural (row-major, v * 8 + u) index `n`.
#[inline]
const fn transposed(n: usize) -> usize {
    (n % 8) * 8 + n / 8
}

/// For zigzag position k, the index in the DCT's output layout that holds it.
pub(crate) const ZIGZAG_FROM_OUTPUT: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut k = 0;
    while k < 64 {
        t[k] = transposed(ZIGZAG[k] as usize) as u8;
        k += 1;
    }
    t
};

/// libjpeg-turbo's `compute_reciprocal` (jcdctmgr.c): `(|x| + corr) * recip >> shift` equals
/// libjpeg's rounded division `(|x| + d / 2) / d` for every |x| a DCT of 8-bit samples yields.
fn reciprocal(divisor: u32) -> (u32, u32, u32) {
    debug_assert!(divisor >= 8);
    let b = 31 - divisor.leading_zeros();
    let mut r = 16 + b;
    let mut fq = (1u32 << r) / divisor;
    let fr = (1u32 << r) % divisor;
    let mut c = divisor / 2;
    if fr == 0 {
        // A power of two: fq would need 17 bits.
        fq >>= 1;
        r -= 1;
    } else if fr <= divisor / 2 {
        c += 1;
    } else {
        fq += 1;
    }
    (fq, c, r)
}

/// Quantises one DCT output (scalar reference of the vector kernels).
#[inline]
pub(crate) fn quantize(x: i32, q: &Divisors, i: usize) -> i16 {
    let a = x.unsigned_abs();
    let v = ((a + q.corr[i]) * q.recip[i]) >> q.shift[i];
    let v = v as i32;
    (if x < 0 { -v } else { v }) as i16
}

// jfdctint.c's constants: FIX(x) = round(x * 2^13).
pub(crate) const CONST_BITS: i32 = 13;
pub(crate) const PASS1_BITS: i32 = 2;
pub(crate) const FIX_0_298631336: i32 = 2446;
pub(crate) const FIX_0_390180644: i32 = 3196;
pub(crate) const FIX_0_541196100: i32 = 4433;
pub(crate) const FIX_0_765366865: i32 = 6270;
pub(crate) const FIX_0_899976223: i32 = 7373;
pub(crate) const FIX_1_175875602: i32 = 9633;
pub(crate) const FIX_1_501321110: i32 = 12299;
pub(crate) const FIX_1_847759065: i32 = 15137;
pub(crate) const FIX_1_961570560: i32 = 16069;
pub(crate) const FIX_2_053119869: i32 = 16819;
pub(crate) const FIX_2_562915447: i32 = 20995;
pub(crate) const FIX_3_072711026: i32 = 25172;

/// One 1-D islow DCT over eight values, written once for every lane type: `$add`, `$sub`,
/// `$mul` (by a constant), `$even` (outputs 0 and 4: exact) and `$odd` (the others: rounded)
/// are the operations, so the scalar and vector forms cannot drift apart.
macro_rules! islow_1d {
    ($d:expr, $add:path, $sub:path, $mul:path, $even:path, $odd:path) => {{
        let d = $d;
        let tmp0 = $add(d[0], d[7]);
        let tmp7 = $sub(d[0], d[7]);
        let tmp1 = $add(d[1], d[6]);
        let tmp6 = $sub(d[1], d[6]);
        let tmp2 = $add(d[2], d[5]);
        let tmp5 = $sub(d[2], d[5]);
        let tmp3 = $add(d[3], d[4]);
        let tmp4 = $sub(d[3], d[4]);

        // Even part.
        let tmp10 = $add(tmp0, tmp3);
        let tmp13 = $sub(tmp0, tmp3);
        let tmp11 = $add(tmp1, tmp2);
        let tmp12 = $sub(tmp1, tmp2);
        let o0 = $even($add(tmp10, tmp11));
        let o4 = $even($sub(tmp10, tmp11));
        let z1 = $mul($add(tmp12, tmp13), FIX_0_541196100);
        let o2 = $odd($add(z1, $mul(tmp13, FIX_0_765366865)));
        let o6 = $odd($add(z1, $mul(tmp12, -FIX_1_847759065)));

        // Odd part.
        let z1 = $add(tmp4, tmp7);
        let z2 = $add(tmp5, tmp6);
        let z3 = $add(tmp4, tmp6);
        let z4 = $add(tmp5, tmp7);
        let z5 = $mul($add(z3, z4), FIX_1_175875602);
        let tmp4 = $mul(tmp4, FIX_0_298631336);
        let tmp5 = $mul(tmp5, FIX_2_053119869);
        let tmp6 = $mul(tmp6, FIX_3_072711026);
        let tmp7 = $mul(tmp7, FIX_1_501321110);
        let z1 = $mul(z1, -FIX_0_899976223);
        let z2 = $mul(z2, -FIX_2_562915447);
        let z3 = $add($mul(z3, -FIX_1_961570560), z5);
        let z4 = $add($mul(z4, -FIX_0_390180644), z5);
        let o7 = $odd($add($add(tmp4, z1), z3));
        let o5 = $odd($add($add(tmp5, z2), z4));
        let o3 = $odd($add($add(tmp6, z2), z3));
        let o1 = $odd($add($add(tmp7, z1), z4));
        [o0, o1, o2, o3, o4, o5, o6, o7]
    }};
}
pub(crate) use islow_1d;

/// The portable kernels, and the reference the vector ones are tested against.
pub(crate) struct Scalar;

mod scalar_ops {
    use super::{CONST_BITS, PASS1_BITS};

    #[inline(always)]
    pub(super) fn add(a: i32, b: i32) -> i32 {
        a + b
    }
    #[inline(always)]
    pub(super) fn sub(a: i32, b: i32) -> i32 {
        a - b
    }
    #[inline(always)]
    pub(super) fn mul(a: i32, c: i32) -> i32 {
        a * c
    }
    #[inline(always)]
    pub(super) fn even1(a: i32) -> i32 {
        a << PASS1_BITS
    }
    #[inline(always)]
    pub(super) fn odd1(a: i32) -> i32 {
        const N: i32 = CONST_BITS - PASS1_BITS;
        (a + (1 << (N - 1))) >> N
    }
    #[inline(always)]
    pub(super) fn even2(a: i32) -> i32 {
        (a + (1 << (PASS1_BITS - 1))) >> PASS1_BITS
    }
    #[inline(always)]
    pub(super) fn odd2(a: i32) -> i32 {
        const N: i32 = CONST_BITS + PASS1_BITS;
        (a + (1 << (N - 1))) >> N
    }
}

/// jccolor.c's fixed-point RGB to YCbCr (SCALEBITS 16).
#[inline(always)]
pub(crate) fn ycbcr(r: i32, g: i32, b: i32) -> (u8, u8, u8) {
    const HALF: i32 = 1 << 15;
    const OFFSET: i32 = 128 << 16;
    let y = (19595 * r + 38470 * g + 7471 * b + HALF) >> 16;
    let cb = (-11059 * r - 21709 * g + 32768 * b + OFFSET + HALF - 1) >> 16;
    let cr = (32768 * r - 27439 * g - 5329 * b + OFFSET + HALF - 1) >> 16;
    (y as u8, cb as u8, cr as u8)
}

impl Kernels for Scalar {
    fn ycbcr_row(&self, src: &[u8], bpp: usize, y: &mut [u8], cb: &mut [u8], cr: &mut [u8]) {
        for (i, p) in src.chunks_exact(bpp).take(y.len()).enumerate() {
            let (a, b, c) = ycbcr(i32::from(p[0]), i32::from(p[1]), i32::from(p[2]));
            y[i] = a;
            cb[i] = b;
            cr[i] = c;
        }
    }

    fn downsample_row(&self, a: &[u8], b: &[u8], out: &mut [u8]) {
        // jcsample.c h2v2_downsample: the bias alternates 1, 2 so that rounding has no drift.
        for (x, o) in out.iter_mut().enumerate() {
            let s = u32::from(a[2 * x])
                + u32::from(a[2 * x + 1])
                + u32::from(b[2 * x])
                + u32::from(b[2 * x + 1]);
            *o = ((s + 1 + (x as u32 & 1)) >> 2) as u8;
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
        use scalar_ops::*;
        let mut cols = [[0i32; 8]; 8]; // cols[x][y]
        for y in 0..8 {
            let row = &plane[at + y * stride..at + y * stride + 8];
            for x in 0..8 {
                cols[x][y] = i32::from(row[x]) - 128;
            }
        }
        // Pass 1, down each column: t[x][v] = vertical frequency v of column x.
        let mut t = [[0i32; 8]; 8];
        for x in 0..8 {
            t[x] = islow_1d!(cols[x], add, sub, mul, even1, odd1);
        }
        // Pass 2, along each row of vertical frequency v: f[u][v].
        let mut f = [0i32; 64];
        for v in 0..8 {
            let row = [
                t[0][v], t[1][v], t[2][v], t[3][v], t[4][v], t[5][v], t[6][v], t[7][v],
            ];
            let o = islow_1d!(row, add, sub, mul, even2, odd2);
            for u in 0..8 {
                f[u * 8 + v] = o[u];
            }
        }
        for (k, o) in out.iter_mut().enumerate().take(64) {
            let i = usize::from(ZIGZAG_FROM_OUTPUT[k]);
            *o = quantize(f[i], q, i);
        }
        if let Some(raw) = raw {
            *raw = f;
        }
    }
}

/// The state of one encode: the pixels still to be used, the coefficients made so far.
struct Front {
    pixels: Vec<u8>,
    width: usize,
    height: usize,
    bpp: usize,
    img: Image,
    luma: Divisors,
    chroma: Divisors,
    /// Trellis quantisers for luma and chroma, when the target asks for them.
    trellis: Option<[Quantiser; 2]>,
}

impl Front {
    fn new(pixels: Vec<u8>, width: u16, height: u16, layout: PixelLayout, target: Target) -> Self {
        let (w, h) = (usize::from(width), usize::from(height));
        let luma_t = target.luma();
        let chroma_t = target.chroma();
        let (mcux, mcuy, comps) = if layout == PixelLayout::Gray {
            let (bw, bh) = (w.div_ceil(8), h.div_ceil(8));
            (bw, bh, vec![component(1, 1, 0, luma_t, bw, bh, bw, bh)])
        } else {
            let (mx, my) = (w.div_ceil(16), h.div_ceil(16));
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            (
                mx,
                my,
                vec![
                    component(
                        1,
                        2,
                        0,
                        luma_t,
                        2 * mx,
                        2 * my,
                        w.div_ceil(8),
                        h.div_ceil(8),
                    ),
                    component(2, 1, 1, chroma_t, mx, my, cw.div_ceil(8), ch.div_ceil(8)),
                    component(3, 1, 1, chroma_t, mx, my, cw.div_ceil(8), ch.div_ceil(8)),
                ],
            )
        };
        Front {
            pixels,
            width: w,
            height: h,
            bpp: layout.bytes_per_pixel(),
            img: Image {
                width,
                height,
                progressive: false,
                mcux,
                mcuy,
                comps,
                rolling: false,
            },
            luma: Divisors::new(&luma_t),
            chroma: Divisors::new(&chroma_t),
            trellis: target.trellis().then(|| {
                [
                    Quantiser::new(&luma_t, false),
                    Quantiser::new(&chroma_t, true),
                ]
            }),
        }
    }
}

/// A component whose coefficient buffer is `bw` x `bh` blocks (whole MCUs), zeroed: `vec!` of
/// zeros is a fresh zeroed mapping for large sizes, paged in only as blocks are written.
#[allow(clippy::too_many_arguments)]
fn component(
    id: u8,
    factor: u8,
    tq: u8,
    qt: [u16; 64],
    bw: usize,
    bh: usize,
    w_blocks: usize,
    h_blocks: usize,
) -> Component {
    Component {
        id,
        h: factor,
        v: factor,
        tq,
        qt,
        qt_set: true,
        bw,
        bh,
        w_blocks,
        h_blocks,
        coeffs: vec![0; bw * bh * 64],
    }
}

/// Shrink the pixel buffer once this much of it (or an eighth of it, if more) is used up:
/// often enough to keep pixels and coefficients from piling up, rarely enough that an
/// allocator that copies on shrinking (glibc moves the mapping's end instead) copies little.
const SHRINK_STEP: usize = 1 << 20;

impl Front {
    fn run<K: Kernels>(mut self, k: &K) -> Image {
        let (w, h, bpp) = (self.width, self.height, self.bpp);
        let gray = self.img.comps.len() == 1;
        // Strip buffers: one MCU row of samples, padded right to whole MCUs by repeating the
        // last column (and down by repeating the last row), as libjpeg pads.
        let rows = if gray { 8 } else { 16 };
        let pw = self.img.mcux * rows;
        let mut ys = vec![0u8; rows * pw];
        let (mut cbf, mut crf) = if gray {
            (Vec::new(), Vec::new())
        } else {
            (vec![0u8; rows * pw], vec![0u8; rows * pw])
        };
        let half = pw / 2;
        let (mut cbs, mut crs) = if gray {
            (Vec::new(), Vec::new())
        } else {
            (vec![0u8; 8 * half], vec![0u8; 8 * half])
        };
        let row_bytes = w * bpp;
        let mut shrunk_at = self.pixels.capacity();
        for my in (0..self.img.mcuy).rev() {
            let y0 = my * rows;
            for r in 0..rows {
                let sy = (y0 + r).min(h - 1);
                let src = &self.pixels[sy * row_bytes..(sy + 1) * row_bytes];
                let line = r * pw..(r + 1) * pw;
                if gray {
                    ys[line.start..line.start + w].copy_from_slice(src);
                } else {
                    k.ycbcr_row(
                        src,
                        bpp,
                        &mut ys[line.start..line.start + w],
                        &mut cbf[line.start..line.start + w],
                        &mut crf[line.start..line.start + w],
                    );
                    pad_right(&mut cbf[line.clone()], w);
                    pad_right(&mut crf[line.clone()], w);
                }
                pad_right(&mut ys[line], w);
            }
            if !gray {
                for r in 0..8 {
                    let (a, b) = ((2 * r) * pw, (2 * r + 1) * pw);
                    let out = r * half..(r + 1) * half;
                    k.downsample_row(&cbf[a..a + pw], &cbf[b..b + pw], &mut cbs[out.clone()]);
                    k.downsample_row(&crf[a..a + pw], &crf[b..b + pw], &mut crs[out]);
                }
            }
            // Blocks of this MCU row.
            let (luma, chroma) = (&self.luma, &self.chroma);
            let mut trellis = self.trellis.as_mut();
            let mut raw = [0i32; 64];
            let mut block = |plane: &[u8], at, stride, q, t: usize, out: &mut [i16]| {
                let Some(tq) = trellis.as_mut() else {
                    return k.fdct_quantize(plane, at, stride, q, out, None);
                };
                k.fdct_quantize(plane, at, stride, q, out, Some(&mut raw));
                let x: [f32; 64] =
                    std::array::from_fn(|z| raw[usize::from(ZIGZAG_FROM_OUTPUT[z])] as f32 * 0.125);
                tq[t].apply(out.try_into().expect("64 coefficients"), &x);
            };
            let y_comp = &mut self.img.comps[0];
            let per_row = rows / 8;
            for by in 0..per_row {
                let brow = my * per_row + by;
                for bx in 0..y_comp.bw {
                    let off = (brow * y_comp.bw + bx) * 64;
                    block(
                        &ys,
                        by * 8 * pw + bx * 8,
                        pw,
                        luma,
                        0,
                        &mut y_comp.coeffs[off..off + 64],
                    );
                }
            }
            if !gray {
                for (ci, plane) in [(1, &cbs), (2, &crs)] {
                    let c = &mut self.img.comps[ci];
                    for bx in 0..c.bw {
                        let off = (my * c.bw + bx) * 64;
                        block(plane, bx * 8, half, chroma, 1, &mut c.coeffs[off..off + 64]);
                    }
                }
            }
            // These pixel rows are done: give their memory back.
            let keep = y0.min(h) * row_bytes;
            self.pixels.truncate(keep);
            if shrunk_at - keep >= SHRINK_STEP.max(shrunk_at / 8) {
                self.pixels.shrink_to_fit();
                shrunk_at = self.pixels.capacity();
            }
        }
        self.img
    }
}

/// Repeats the sample at `w - 1` to the end of `line`.
#[inline]
fn pad_right(line: &mut [u8], w: usize) {
    let last = line[w - 1];
    line[w..].fill(last);
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// libjpeg's division, which the reciprocal must reproduce.
    fn divide(x: i32, d: i32) -> i32 {
        let q = (x.abs() + d / 2) / d;
        if x < 0 {
            -q
        } else {
            q
        }
    }

    #[test]
    fn reciprocal_quantisation_is_libjpegs_rounded_division() {
        for step in 1..=255u16 {
            let q = Divisors::new(&[step; 64]);
            let d = i32::from(step) * 8;
            for x in -16384..=16384 {
                assert_eq!(
                    i32::from(quantize(x, &q, 5)),
                    divide(x, d),
                    "x={x} step={step}"
                );
            }
        }
    }

    #[test]
    fn ycbcr_matches_the_float_formula() {
        for (r, g, b) in [
            (0, 0, 0),
            (255, 255, 255),
            (255, 0, 0),
            (0, 255, 0),
            (0, 0, 255),
        ] {
            let (y, cb, cr) = ycbcr(r, g, b);
            let (r, g, b) = (f64::from(r), f64::from(g), f64::from(b));
            let fy = 0.299 * r + 0.587 * g + 0.114 * b;
            let fcb = -0.168_735_892 * r - 0.331_264_108 * g + 0.5 * b + 128.0;
            let fcr = 0.5 * r - 0.418_687_589 * g - 0.081_312_411 * b + 128.0;
            assert!((f64::from(y) - fy).abs() <= 0.5 + 1e-3);
            assert!((f64::from(cb) - fcb.min(255.0)).abs() <= 1.0);
            assert!((f64::from(cr) - fcr.min(255.0)).abs() <= 1.0);
        }
    }

    /// The islow DCT against the DCT's definition (scaled by 8), before quantisation.
    #[test]
    fn islow_is_close_to_the_exact_dct() {
        let mut x = 0x1234_5678_9ABC_DEF0u64;
        let one = Divisors::new(&[1; 64]);
        for _ in 0..200 {
            let block: Vec<u8> = (0..64).map(|_| xorshift(&mut x) as u8).collect();
            let mut out = [0i16; 64];
            Scalar.fdct_quantize(&block, 0, 8, &one, &mut out, None);
            for (zz, &got) in out.iter().enumerate() {
                let n = usize::from(ZIGZAG[zz]);
                let (v, u) = (n / 8, n % 8);
                let c = |k: usize| if k == 0 { (0.5f64).sqrt() } else { 1.0 };
                let mut s = 0.0;
                for yy in 0..8 {
                    for xx in 0..8 {
                        let p = f64::from(block[yy * 8 + xx]) - 128.0;
                        s += p
                            * (((2 * xx + 1) as f64 * u as f64 * std::f64::consts::PI) / 16.0)
                                .cos()
                            * (((2 * yy + 1) as f64 * v as f64 * std::f64::consts::PI) / 16.0)
                                .cos();
                    }
                }
                // Step 1 means a divisor of 8: the output is the DCT itself, rounded.
                let exact = 0.25 * c(u) * c(v) * s;
                assert!(
                    (f64::from(got) - exact).abs() <= 1.01,
                    "u={u} v={v}: {got} vs {exact}"
                );
            }
        }
    }
}
