//! Baseline writer: gathers symbol statistics, builds optimal tables, entropy-codes one
//! interleaved scan.

use super::bitread::has_ff;
use super::huffman::{build_optimal, EncodeTable, HuffSpec};
use super::parse::Image;
use super::{err, JpegError};

/// Accumulates bits MSB-first and emits bytes with 0xFF stuffing.
pub(super) struct BitWriter {
    pub(super) out: Vec<u8>,
    /// Pending bits at the low end; above them, bits already emitted or garbage that the next
    /// shifts push out.
    acc: u64,
    /// Bits still free in `acc` (1-64).
    free: u32,
}

impl BitWriter {
    pub(super) fn new(out: Vec<u8>) -> Self {
        BitWriter {
            out,
            acc: 0,
            free: 64,
        }
    }

    /// Appends the low `len` bits of `bits` (len <= 32; higher bits of `bits` must be zero).
    #[inline(always)]
    fn put(&mut self, bits: u32, len: u32) {
        if len < self.free {
            self.acc = (self.acc << len) | u64::from(bits);
            self.free -= len;
        } else {
            // Fill the word, emit it, keep the rest. Here free <= len <= 32, so no shift is
            // by 64; emitting eight bytes at a time halves the flushes (and their
            // mispredicted branch) against four.
            let spill = len - self.free;
            let word = (self.acc << self.free) | (u64::from(bits) >> spill);
            self.emit(word);
            self.acc = u64::from(bits);
            self.free = 64 - spill;
        }
    }

    #[inline(always)]
    fn emit(&mut self, word: u64) {
        let b = word.to_be_bytes();
        // Stuff a zero after every 0xFF; 0xFF bytes are rare, so test the word first.
        if has_ff(word) {
            for &x in &b {
                self.out.push(x);
                if x == 0xFF {
                    self.out.push(0);
                }
            }
        } else {
            self.out.extend_from_slice(&b);
        }
    }

    /// Pads the last byte with 1 bits, as T.81 requires, and flushes.
    pub(super) fn finish(&mut self) {
        let pad = (64 - self.free) % 8;
        let pad = (8 - pad) % 8;
        self.put((1 << pad) - 1, pad);
        let mut pending = 64 - self.free;
        while pending >= 8 {
            pending -= 8;
            let x = (self.acc >> pending) as u8;
            self.out.push(x);
            if x == 0xFF {
                self.out.push(0);
            }
        }
        self.free = 64;
    }
}

/// Receives the symbol stream of a scan; implemented once for counting, once for writing.
pub(super) trait Sink {
    fn dc(&mut self, table: usize, size: u32, bits: u32);
    fn ac(&mut self, table: usize, rs: u8, size: u32, bits: u32);
}

pub(super) struct Counter {
    pub(super) dc: [[u32; 256]; 2],
    pub(super) ac: [[u32; 256]; 2],
}

impl Sink for Counter {
    #[inline]
    fn dc(&mut self, t: usize, size: u32, _: u32) {
        self.dc[t][size as usize] += 1;
    }
    #[inline]
    fn ac(&mut self, t: usize, rs: u8, _: u32, _: u32) {
        self.ac[t][rs as usize] += 1;
    }
}

pub(super) struct Writer<'a> {
    pub(super) w: BitWriter,
    pub(super) dc: [&'a EncodeTable; 2],
    pub(super) ac: [&'a EncodeTable; 2],
}

impl Sink for Writer<'_> {
    #[inline]
    fn dc(&mut self, t: usize, size: u32, bits: u32) {
        let tab = self.dc[t];
        let s = size as usize;
        let code = (u32::from(tab.code[s]) << size) | bits;
        self.w.put(code, u32::from(tab.len[s]) + size);
    }
    #[inline]
    fn ac(&mut self, t: usize, rs: u8, size: u32, bits: u32) {
        let tab = self.ac[t];
        let s = rs as usize;
        let code = (u32::from(tab.code[s]) << size) | bits;
        self.w.put(code, u32::from(tab.len[s]) + size);
    }
}

/// Magnitude category and the extra bits that encode `v` (T.81 F.1.2.1).
#[inline]
pub(super) fn category(v: i32) -> (u32, u32) {
    let a = v.unsigned_abs();
    let size = 32 - a.leading_zeros();
    // v - 1 for negative v, without a branch on the (random) sign.
    let bits = (v + (v >> 31)) as u32;
    (size, bits & ((1u32 << size) - 1))
}

/// Bit k set = `block[k]` nonzero. Scanning a block coefficient by coefficient was a third of
/// the writer's time; SSE2 compares eight at a time.
#[inline]
pub(crate) fn nonzero_mask(block: &[i16; 64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        nonzero_mask_sse2(block)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        nonzero_mask_portable(block)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn nonzero_mask_sse2(block: &[i16; 64]) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi16, _mm_loadu_si128, _mm_movemask_epi8, _mm_packs_epi16,
        _mm_setzero_si128,
    };
    let p = block.as_ptr().cast::<__m128i>();
    let mut zeros = 0u64;
    for i in 0..4 {
        // SAFETY: SSE2 is part of the x86_64 baseline. The two unaligned 16-byte loads read
        // coefficients 16i..16i+16, inside the 64-coefficient array.
        let bytes = unsafe {
            let a = _mm_loadu_si128(p.add(2 * i));
            let b = _mm_loadu_si128(p.add(2 * i + 1));
            let z = _mm_setzero_si128();
            // Saturating pack keeps 0 and -1 as they are: one byte per coefficient.
            _mm_movemask_epi8(_mm_packs_epi16(
                _mm_cmpeq_epi16(a, z),
                _mm_cmpeq_epi16(b, z),
            ))
        };
        zeros |= u64::from(bytes as u16) << (16 * i);
    }
    !zeros
}

#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
pub(crate) fn nonzero_mask_portable(block: &[i16; 64]) -> u64 {
    block
        .iter()
        .enumerate()
        .fold(0, |m, (k, &c)| m | (u64::from(c != 0) << k))
}

/// The 64 coefficients of the block starting at `off`.
#[inline]
pub(super) fn block_at(coeffs: &[i16], off: usize) -> &[i16; 64] {
    coeffs[off..off + 64].try_into().expect("64 coefficients")
}

/// Emits the DC difference of one block. Returns false if it is outside baseline range.
#[inline]
pub(super) fn dc_symbol<S: Sink>(
    sink: &mut S,
    t: usize,
    block: &[i16; 64],
    pred: &mut i32,
) -> bool {
    let dc = i32::from(block[0]);
    let (size, bits) = category(dc - *pred);
    *pred = dc;
    if size > 11 {
        return false;
    }
    sink.dc(t, size, bits);
    true
}

/// Emits the symbols of one block. Returns false if a value is outside baseline range.
#[inline]
fn block_symbols<S: Sink>(sink: &mut S, t: usize, block: &[i16; 64], pred: &mut i32) -> bool {
    if !dc_symbol(sink, t, block, pred) {
        return false;
    }
    // Walking the set bits skips the zero runs directly.
    let mut mask = nonzero_mask(block) & !1;
    let mut last = 0u32; // index of the previous nonzero coefficient
    while mask != 0 {
        let k = mask.trailing_zeros();
        mask &= mask - 1;
        let mut run = k - last - 1;
        while run >= 16 {
            sink.ac(t, 0xF0, 0, 0);
            run -= 16;
        }
        let (size, bits) = category(i32::from(block[k as usize]));
        if size > 10 {
            return false;
        }
        sink.ac(t, ((run << 4) | size) as u8, size, bits);
        last = k;
    }
    if last != 63 {
        sink.ac(t, 0x00, 0, 0);
    }
    true
}

/// Walks the frame in output order: interleaved MCUs for several components, plain block
/// order for one.
pub(super) fn walk<S: Sink>(
    img: &Image,
    sink: &mut S,
    each: fn(&mut S, usize, &[i16; 64], &mut i32) -> bool,
) -> Result<(), JpegError> {
    let mut pred = [0i32; 4];
    let ok = if img.comps.len() == 1 {
        let c = &img.comps[0];
        let mut ok = true;
        for by in 0..c.h_blocks {
            for bx in 0..c.w_blocks {
                let off = (by * c.bw + bx) * 64;
                ok &= each(sink, 0, block_at(&c.coeffs, off), &mut pred[0]);
            }
        }
        ok
    } else {
        let mut ok = true;
        for my in 0..img.mcuy {
            for mx in 0..img.mcux {
                for (ci, c) in img.comps.iter().enumerate() {
                    let t = usize::from(ci != 0);
                    let (h, v) = (c.h as usize, c.v as usize);
                    for oy in 0..v {
                        let row = (my * v + oy) * c.bw;
                        for ox in 0..h {
                            let off = (row + mx * h + ox) * 64;
                            ok &= each(sink, t, block_at(&c.coeffs, off), &mut pred[ci]);
                        }
                    }
                }
            }
        }
        ok
    };
    if ok {
        Ok(())
    } else {
        err("coefficient out of baseline range")
    }
}

pub(super) fn push_segment(out: &mut Vec<u8>, marker: u8, payload: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload);
}

/// The symbol statistics of `img` coded as one baseline interleaved scan: the writer's first
/// pass, and the progressive planner's yardstick.
pub(super) fn baseline_counts(img: &Image) -> Result<Counter, JpegError> {
    let nc = img.comps.len();
    if nc != 1 && nc != 3 {
        return err(format!("cannot write {nc} components"));
    }
    let mut counter = Counter {
        dc: [[0; 256]; 2],
        ac: [[0; 256]; 2],
    };
    walk(img, &mut counter, block_symbols)?;
    Ok(counter)
}

/// Writes `img` as a baseline JPEG with one interleaved scan and optimal Huffman tables.
pub(crate) fn write_baseline(img: &Image) -> Result<Vec<u8>, JpegError> {
    let counter = baseline_counts(img)?;
    write_baseline_counted(img, &counter)
}

/// Writes `img` as `target` asks: baseline, or the smaller of baseline and progressive.
pub(crate) fn write(img: &Image, target: super::Target) -> Result<Vec<u8>, JpegError> {
    if target.progressive() {
        write_smallest(img)
    } else {
        write_baseline(img)
    }
}

/// Writes `img` as whichever is smaller: a baseline JPEG, or a progressive one whose spectral
/// bands are chosen for size (`progressive`). Same coefficients, so the same pixels.
pub(crate) fn write_smallest(img: &Image) -> Result<Vec<u8>, JpegError> {
    let counter = baseline_counts(img)?;
    match super::progressive::plan(img, &counter)? {
        Some(plan) => super::progressive::write(img, &counter, &plan),
        None => write_baseline_counted(img, &counter),
    }
}

/// The optimal DC and AC tables for `counter`'s statistics (one pair for gray, two for colour).
pub(super) fn baseline_specs(img: &Image, counter: &Counter) -> (Vec<HuffSpec>, Vec<HuffSpec>) {
    let ntab = if img.comps.len() == 1 { 1 } else { 2 };
    let dc = (0..ntab).map(|t| build_optimal(&counter.dc[t])).collect();
    let ac = (0..ntab).map(|t| build_optimal(&counter.ac[t])).collect();
    (dc, ac)
}

/// SOI, DQT and the frame header (`sof`: 0xC0 baseline, 0xC2 progressive).
pub(super) fn frame_headers(img: &Image, sof_marker: u8) -> Result<Vec<u8>, JpegError> {
    let nc = img.comps.len();
    // Quantisation tables: deduplicate per-component tables into at most 4 slots (after
    // requantisation, components that shared an input table may no longer share one).
    let mut qtabs: Vec<[u16; 64]> = Vec::new();
    let mut comp_tq = Vec::with_capacity(nc);
    for c in &img.comps {
        let idx = match qtabs.iter().position(|q| *q == c.qt) {
            Some(i) => i,
            None => {
                qtabs.push(c.qt);
                qtabs.len() - 1
            }
        };
        comp_tq.push(idx as u8);
    }
    if qtabs.len() > 4 {
        return err("too many quantisation tables");
    }

    let mut out = Vec::with_capacity(estimate_size(img));
    out.extend_from_slice(&[0xFF, 0xD8]);
    let mut dqt = Vec::new();
    for (i, q) in qtabs.iter().enumerate() {
        // 16-bit precision only when a step needs it (possible only if the input had it).
        let wide = q.iter().any(|&v| v > 255);
        dqt.push(((wide as u8) << 4) | i as u8);
        for &v in q {
            if wide {
                dqt.extend_from_slice(&v.to_be_bytes());
            } else {
                dqt.push(v as u8);
            }
        }
    }
    push_segment(&mut out, 0xDB, &dqt);
    let mut sof = vec![8];
    sof.extend_from_slice(&img.height.to_be_bytes());
    sof.extend_from_slice(&img.width.to_be_bytes());
    sof.push(nc as u8);
    for (c, &tq) in img.comps.iter().zip(&comp_tq) {
        sof.extend_from_slice(&[c.id, (c.h << 4) | c.v, tq]);
    }
    push_segment(&mut out, sof_marker, &sof);
    Ok(out)
}

/// A DHT segment defining `tables`: (class 0 DC / 1 AC, slot, table).
pub(super) fn push_dht(out: &mut Vec<u8>, tables: &[(u8, usize, &HuffSpec)]) {
    let mut dht = Vec::new();
    for &(class, slot, s) in tables {
        dht.push((class << 4) | slot as u8);
        dht.extend_from_slice(&s.counts);
        dht.extend_from_slice(&s.symbols);
    }
    push_segment(out, 0xC4, &dht);
}

fn write_baseline_counted(img: &Image, counter: &Counter) -> Result<Vec<u8>, JpegError> {
    let nc = img.comps.len();
    let (dc_specs, ac_specs) = baseline_specs(img, counter);
    let mut out = frame_headers(img, 0xC0)?;
    let tables: Vec<(u8, usize, &HuffSpec)> = (dc_specs.iter().enumerate().map(|(t, s)| (0, t, s)))
        .chain(ac_specs.iter().enumerate().map(|(t, s)| (1, t, s)))
        .collect();
    push_dht(&mut out, &tables);
    let mut sos = vec![nc as u8];
    for (ci, c) in img.comps.iter().enumerate() {
        let t = u8::from(ci != 0);
        sos.extend_from_slice(&[c.id, (t << 4) | t]);
    }
    sos.extend_from_slice(&[0, 63, 0]);
    push_segment(&mut out, 0xDA, &sos);

    // Pass 2: entropy-coded data.
    let dc_enc: Vec<EncodeTable> = dc_specs.iter().map(EncodeTable::new).collect();
    let ac_enc: Vec<EncodeTable> = ac_specs.iter().map(EncodeTable::new).collect();
    let last = dc_enc.len() - 1;
    let mut writer = Writer {
        w: BitWriter::new(out),
        dc: [&dc_enc[0], &dc_enc[last]],
        ac: [&ac_enc[0], &ac_enc[last]],
    };
    walk(img, &mut writer, block_symbols)?;
    writer.w.finish();
    let mut out = writer.w.out;
    out.extend_from_slice(&[0xFF, 0xD9]);
    Ok(out)
}

/// A rough output size so the buffer rarely reallocates: about a byte per 8 coefficients is
/// generous for photos at usual qualities.
fn estimate_size(img: &Image) -> usize {
    let coeffs: usize = img.comps.iter().map(|c| c.coeffs.len()).sum();
    1024 + coeffs / 8
}

#[cfg(test)]
mod mask_tests {
    use super::{nonzero_mask, nonzero_mask_portable};

    #[test]
    fn simd_mask_matches_portable() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2000 {
            let mut block = [0i16; 64];
            for c in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Mostly zeros, some extremes: the pack step must not saturate a nonzero to 0.
                *c = match x % 8 {
                    0 => i16::MIN,
                    1 => i16::MAX,
                    2 => (x >> 32) as i16,
                    3 => 1,
                    _ => 0,
                };
            }
            assert_eq!(nonzero_mask(&block), nonzero_mask_portable(&block));
        }
        assert_eq!(nonzero_mask(&[0; 64]), 0);
        assert_eq!(nonzero_mask(&[-1; 64]), u64::MAX);
    }
}
