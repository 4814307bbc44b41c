//! Decoding to pixels at 1/2, 1/4 or 1/8 of the size, in the DCT domain: each 8x8 block of
//! coefficients goes through a 4-, 2- or 1-point inverse DCT of its lowest frequencies, so a
//! 12 MP photo bound for a 1200-pixel box never exists as 12 MP of pixels.
//!
//! A block's lowest N x N coefficients, put through an N-point inverse DCT with the 8-point
//! transform's normalisation, give the block's picture low-passed and sampled at N x N points:
//! the mean is exact, and what is lost is detail the smaller picture cannot show anyway.
//! Subsampled chroma is decoded at a proportionally larger N (a 4:2:0 picture at 1/2 decodes
//! its chroma with the full 8-point transform), so every plane comes out at the output's
//! resolution and no chroma upsampling is needed.

use super::encode::nonzero_mask;
use super::parse;
use super::{err, JpegError, ZIGZAG};

/// A picture decoded at a reduced size: 8-bit gray (1 byte a pixel) or RGB (3).
pub struct ScaledPixels {
    pub data: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub channels: u8,
}

/// Decodes `jpeg` at 1/`denominator` of its size (2, 4 or 8), rounding up as libjpeg does.
///
/// Takes gray and YCbCr files whose sampling factors divide evenly at this scale; anything
/// else (CMYK, RGB-coded, odd sampling) is refused with a reason, for a full decode instead.
pub fn decode_scaled(jpeg: &[u8], denominator: u32) -> Result<ScaledPixels, JpegError> {
    if !matches!(denominator, 2 | 4 | 8) {
        return err(format!("cannot decode at 1/{denominator}"));
    }
    let n = 8 / denominator as usize;
    let mut planes: Vec<Plane> = Vec::new();
    let (mut w, mut h, mut channels) = (0usize, 0usize, 0usize);
    let mut out = Vec::new();
    let tables = YccTables::new();
    // Each MCU row is reduced as soon as its coefficients are final (a sequential file's are
    // never all held: see `parse::read_coefficient_rows`), and turned into output rows at
    // once: the planes hold one MCU row.
    parse::read_coefficient_rows(jpeg, &mut |img, uy| {
        if planes.is_empty() {
            planes = Plane::for_frame(img, n)?;
            w = usize::from(img.width).div_ceil(denominator as usize);
            h = usize::from(img.height).div_ceil(denominator as usize);
            channels = if planes.len() == 1 { 1 } else { 3 };
            out = vec![0u8; w * h * channels];
        }
        for (ci, plane) in planes.iter_mut().enumerate() {
            plane.decode_mcu_row(img.mcu_row(ci, uy));
        }
        // Every plane holds the same output rows: its blocks' rows times its samples a block.
        let rows = planes[0].rows;
        let first = uy * rows;
        for r in 0..rows.min(h.saturating_sub(first)) {
            let line = &mut out[(first + r) * w * channels..][..w * channels];
            match planes.as_slice() {
                [y] => line.copy_from_slice(&y.row(r)[..w]),
                [y, cb, cr] => {
                    tables.convert(&y.row(r)[..w], &cb.row(r)[..w], &cr.row(r)[..w], line)
                }
                _ => return err(format!("{} components", planes.len())),
            }
        }
        Ok(())
    })?;
    Ok(ScaledPixels {
        data: out,
        width: w as u32,
        height: h as u32,
        channels: channels as u8,
    })
}

/// Planes a full-size YCbCr 4:2:0 picture is decoded into (JPEG's full range): luma at the
/// picture's size, chroma at half of it rounded up, each with its own stride.
pub struct Yuv420Planes<'a> {
    pub y: &'a mut [u8],
    pub y_stride: usize,
    pub u: &'a mut [u8],
    pub v: &'a mut [u8],
    pub uv_stride: usize,
}

/// Decodes `jpeg` at its full size into YCbCr 4:2:0 `planes`, for an encoder that wants
/// exactly that (WebP): luma through the 8-point inverse DCT; chroma in the DCT domain at
/// half the luma's resolution, so a 4:2:0 file's chroma is decoded as coded and a 4:4:4 or
/// 4:2:2 one's is halved by a 4-point transform where it is full, and no plane is ever
/// upsampled and averaged down again. Returns false for a gray file, whose chroma planes are
/// left for the caller to fill. Refuses what [`decode_scaled`] refuses, and samplings whose
/// chroma is coarser than 4:2:0 in either direction.
pub fn decode_yuv420(jpeg: &[u8], planes: &mut Yuv420Planes<'_>) -> Result<bool, JpegError> {
    let mut decoders: Vec<Plane> = Vec::new();
    let (mut w, mut h) = (0usize, 0usize);
    parse::read_coefficient_rows(jpeg, &mut |img, uy| {
        if decoders.is_empty() {
            decoders = Plane::for_yuv420(img)?;
            w = usize::from(img.width);
            h = usize::from(img.height);
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            let fits = |len: usize, stride: usize, width: usize, rows: usize| {
                stride >= width && len >= stride * (rows - 1) + width
            };
            if !fits(planes.y.len(), planes.y_stride, w, h)
                || (decoders.len() == 3
                    && !(fits(planes.u.len(), planes.uv_stride, cw, ch)
                        && fits(planes.v.len(), planes.uv_stride, cw, ch)))
            {
                return err("the planes are smaller than the picture");
            }
        }
        for (ci, plane) in decoders.iter_mut().enumerate() {
            plane.decode_mcu_row(img.mcu_row(ci, uy));
        }
        let outputs: [(&mut [u8], usize, usize, usize); 3] = [
            (&mut *planes.y, planes.y_stride, w, h),
            (
                &mut *planes.u,
                planes.uv_stride,
                w.div_ceil(2),
                h.div_ceil(2),
            ),
            (
                &mut *planes.v,
                planes.uv_stride,
                w.div_ceil(2),
                h.div_ceil(2),
            ),
        ];
        for (plane, (out, stride, width, height)) in decoders.iter().zip(outputs) {
            let first = uy * plane.rows;
            for r in 0..plane.rows.min(height.saturating_sub(first)) {
                out[(first + r) * stride..][..width].copy_from_slice(&plane.row(r)[..width]);
            }
        }
        Ok(())
    })?;
    if decoders.is_empty() {
        return err("no frame");
    }
    Ok(decoders.len() == 3)
}

/// One component's samples at the output's scale (whole blocks, so at least the picture's
/// size), and the reduced inverse DCT that makes them from its blocks.
struct Plane {
    /// One MCU row's samples: `rows` rows of `stride`.
    data: Vec<u8>,
    stride: usize,
    rows: usize,
    /// Output samples per block, across and down.
    nx: usize,
    ny: usize,
    /// Blocks per row, and block rows per MCU row.
    bw: usize,
    v: usize,
    /// mx[u][x]: the row basis, transposed; my[y][v]: the column basis.
    mx: [[f32; 8]; 8],
    my: [[f32; 8]; 8],
    /// Dequantisation step of each coefficient (zigzag order, as the blocks are).
    q: [f32; 64],
    /// For each row v < ny of the transform's input: the zigzag positions of its first nx
    /// coefficients, as a mask over a block's nonzero mask.
    row_masks: [u64; 8],
}

impl Plane {
    fn row(&self, y: usize) -> &[u8] {
        &self.data[y * self.stride..(y + 1) * self.stride]
    }

    /// A plane for each component, each decoded at the scale that brings it to the output's
    /// resolution. Refuses sampling factors that do not divide at 1/(8/n).
    fn for_frame(img: &parse::Image, n: usize) -> Result<Vec<Plane>, JpegError> {
        let hmax = img.comps.iter().map(|c| c.h).max().unwrap_or(1) as usize;
        let vmax = img.comps.iter().map(|c| c.v).max().unwrap_or(1) as usize;
        let mut planes = Vec::with_capacity(img.comps.len());
        for c in &img.comps {
            let (h, v) = (c.h as usize, c.v as usize);
            if !(n * hmax).is_multiple_of(h) || !(n * vmax).is_multiple_of(v) {
                return err("sampling factors do not divide at this scale");
            }
            let (nx, ny) = (n * hmax / h, n * vmax / v);
            if nx > 8 || ny > 8 {
                return err("chroma is subsampled more than this scale can undo");
            }
            planes.push(Plane::new(c, nx, ny));
        }
        Ok(planes)
    }

    /// Planes for [`decode_yuv420`]: the first component at the picture's size, the others
    /// at half of it.
    fn for_yuv420(img: &parse::Image) -> Result<Vec<Plane>, JpegError> {
        let hmax = img.comps.iter().map(|c| c.h).max().unwrap_or(1) as usize;
        let vmax = img.comps.iter().map(|c| c.v).max().unwrap_or(1) as usize;
        if !matches!(img.comps.len(), 1 | 3) {
            return err(format!("{} components", img.comps.len()));
        }
        let mut planes = Vec::with_capacity(img.comps.len());
        for (ci, c) in img.comps.iter().enumerate() {
            let (h, v) = (c.h as usize, c.v as usize);
            // Output samples per block, across and down: 8 for luma at full size; chroma
            // is wanted at half the size, so 4 times its subsampling.
            let n = if ci == 0 { 8 } else { 4 };
            if !(n * hmax).is_multiple_of(h) || !(n * vmax).is_multiple_of(v) {
                return err("sampling factors do not divide for 4:2:0");
            }
            let (nx, ny) = (n * hmax / h, n * vmax / v);
            if nx > 8 || ny > 8 || (ci == 0 && (nx, ny) != (8, 8)) {
                return err("sampling cannot be brought to 4:2:0 without upsampling");
            }
            planes.push(Plane::new(c, nx, ny));
        }
        Ok(planes)
    }

    fn new(c: &parse::Component, nx: usize, ny: usize) -> Plane {
        let bx = basis(nx);
        let by = basis(ny);
        let mut mx = [[0f32; 8]; 8];
        let mut my = [[0f32; 8]; 8];
        for u in 0..nx {
            for x in 0..nx {
                mx[u][x] = bx[x * 8 + u];
            }
        }
        for y in 0..ny {
            for v in 0..ny {
                my[y][v] = by[y * 8 + v];
            }
        }
        let q = c.qt.map(f32::from);
        let mut row_masks = [0u64; 8];
        for (zz, &k) in ZIGZAG.iter().enumerate() {
            let (v, u) = (usize::from(k / 8), usize::from(k % 8));
            if v < ny && u < nx {
                row_masks[v] |= 1 << zz;
            }
        }
        let stride = c.bw * nx;
        Plane {
            data: vec![0u8; stride * c.v as usize * ny],
            stride,
            rows: c.v as usize * ny,
            nx,
            ny,
            bw: c.bw,
            v: c.v as usize,
            mx,
            my,
            q,
            row_masks,
        }
    }

    /// The reduced inverse DCT of every block of an MCU row (`blocks`: `v` rows of `bw`).
    /// Works from the block's nonzero coefficients (a photo's blocks hold a handful of the 64,
    /// often only the DC): each adds its basis row to one row of `tmp`, over 8 lanes whatever
    /// N is (the basis is zero beyond N), so the compiler vectorises it; a block with only a
    /// DC is one flat value. Gathering all N×N coefficients and testing rows for zeros took a
    /// third of a 12 MP box job.
    fn decode_mcu_row(&mut self, blocks: &[i16]) {
        let (nx, ny, stride) = (self.nx, self.ny, self.stride);
        for by in 0..self.v {
            for bx in 0..self.bw {
                let block: &[i16; 64] = blocks[(by * self.bw + bx) * 64..][..64]
                    .try_into()
                    .expect("64 coefficients");
                let base = by * ny * stride + bx * nx;
                let mask = nonzero_mask(block);
                if mask & !1 == 0 {
                    // The same products as below with only F[0][0]: tmp[0][x] = f·mx[0][x],
                    // then 128 + tmp[0][x]·my[y][0], equal for every x and y.
                    let f = f32::from(block[0]) * self.q[0];
                    let a = 128.0 + (f * self.mx[0][0]) * self.my[0][0];
                    let px = to_sample(a);
                    for y in 0..ny {
                        self.data[base + y * stride..][..nx].fill(px);
                    }
                    continue;
                }
                // Rows: tmp[v][x] = sum over u of F[v][u] * mx[u][x], nonzero F only, each
                // row summed in registers.
                let mut tmp = [[0f32; 8]; 8];
                let mut live = 0u32;
                for (v, &row) in self.row_masks[..ny].iter().enumerate() {
                    let mut bits = mask & row;
                    if bits == 0 {
                        continue;
                    }
                    live |= 1 << v;
                    let mut t = [0f32; 8];
                    while bits != 0 {
                        let zz = bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        let f = f32::from(block[zz]) * self.q[zz];
                        let basis = &self.mx[usize::from(ZIGZAG[zz] & 7)];
                        for (t, &m) in t.iter_mut().zip(basis) {
                            *t += f * m;
                        }
                    }
                    tmp[v] = t;
                }
                // Columns, then the level shift.
                for y in 0..ny {
                    let mut acc = [128f32; 8];
                    let mut rows = live;
                    while rows != 0 {
                        let v = rows.trailing_zeros() as usize;
                        rows &= rows - 1;
                        let m = self.my[y][v];
                        for (a, &t) in acc.iter_mut().zip(&tmp[v]) {
                            *a += t * m;
                        }
                    }
                    let px = to_samples(&acc);
                    self.data[base + y * stride..][..nx].copy_from_slice(&px[..nx]);
                }
            }
        }
    }
}

/// Eight transform outputs (level-shifted) as samples, with a loop the compiler turns into a
/// few vector instructions.
#[inline(always)]
fn to_samples(acc: &[f32; 8]) -> [u8; 8] {
    let mut px = [0u8; 8];
    for (o, &a) in px.iter_mut().zip(acc) {
        *o = to_sample(a);
    }
    px
}

/// A transform output (level-shifted) as a sample: clamped to 0-255, rounded half up. Not a
/// saturating `as`, whose NaN and range checks on each lane were most of the transform's
/// instructions.
#[inline(always)]
fn to_sample(a: f32) -> u8 {
    // Compare-and-select, which is what maxps/minps do. The order matters for the unsafe
    // conversion below: a NaN fails `a > 0.0` and becomes 0, infinities become 0 or 255
    // (`f32::max`/`min` would pass a NaN through).
    let a = if a > 0.0 { a } else { 0.0 };
    let a = if a < 255.0 { a } else { 255.0 };
    // SAFETY: after the two selects `a + 0.5` is within 0.5..=255.5, which an i32 holds.
    unsafe { (a + 0.5).to_int_unchecked::<i32>() as u8 }
}

/// The N-point inverse DCT's basis with the 8-point transform's scale: `m[x * 8 + u]` =
/// C(u)/2 · cos((2x+1)uπ / 2N), C(0) = 1/√2, so that a block's mean survives any N.
fn basis(n: usize) -> [f32; 64] {
    let mut m = [0f32; 64];
    for x in 0..n {
        for u in 0..n {
            let c = if u == 0 {
                std::f64::consts::FRAC_1_SQRT_2
            } else {
                1.0
            };
            let angle = (2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / (2 * n) as f64;
            m[x * 8 + u] = (c / 2.0 * angle.cos()) as f32;
        }
    }
    m
}

/// JFIF's YCbCr to RGB, in fixed point with tables as libjpeg does it.
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl YccTables {
    fn new() -> YccTables {
        const ONE: f64 = (1 << 16) as f64;
        let fix = |x: f64| (x * ONE + 0.5) as i32;
        let mut t = YccTables {
            cr_r: [0; 256],
            cb_b: [0; 256],
            cr_g: [0; 256],
            cb_g: [0; 256],
        };
        for i in 0..256 {
            let x = i as i32 - 128;
            t.cr_r[i] = (fix(1.402) * x + (1 << 15)) >> 16;
            t.cb_b[i] = (fix(1.772) * x + (1 << 15)) >> 16;
            t.cr_g[i] = -fix(0.714_136_286) * x;
            t.cb_g[i] = -fix(0.344_136_286) * x + (1 << 15);
        }
        t
    }

    /// One row: `y`, `cb`, `cr` (a sample a pixel each) into `out` (3 bytes a pixel).
    fn convert(&self, y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        for (((px, &l), &b), &r) in out.chunks_exact_mut(3).zip(y).zip(cb).zip(cr) {
            let (l, b, r) = (i32::from(l), b as usize, r as usize);
            px[0] = clamp(l + self.cr_r[r]);
            px[1] = clamp(l + ((self.cb_g[b] + self.cr_g[r]) >> 16));
            px[2] = clamp(l + self.cb_b[b]);
        }
    }
}
