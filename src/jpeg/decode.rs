//! Entropy decoding of one scan into the frame's coefficient buffers.

use super::bitread::{BitReader, Window};
use super::encode::nonzero_mask;
use super::huffman::DecodeTable;
use super::parse::{Image, RowSink};
use super::{err, JpegError};

pub(crate) struct ScanParams<'a> {
    /// Frame component indices, in scan order.
    pub(crate) comps: &'a [usize],
    pub(crate) dc: &'a [Option<&'a DecodeTable>],
    pub(crate) ac: &'a [Option<&'a DecodeTable>],
    pub(crate) ss: u8,
    pub(crate) se: u8,
    pub(crate) ah: u8,
    pub(crate) al: u8,
    pub(crate) restart_interval: u16,
}

/// Where each MCU's blocks live: for every block of the MCU, (scan component slot, offset in
/// blocks from the MCU origin within that component's buffer). Precomputed once per scan so
/// the MCU loop does no index arithmetic beyond one add.
struct McuLayout {
    /// (slot, row offset in blocks, column offset in blocks)
    blocks: Vec<(usize, usize, usize)>,
}

/// Where a scan walks: its units (MCUs, or blocks for a single-component scan), the blocks of
/// each unit, and the tables of each scan slot.
struct Geometry<'a> {
    mode: Mode,
    units_x: usize,
    units_y: usize,
    layout: McuLayout,
    /// Unit size in blocks, per slot.
    unit: Vec<(usize, usize)>,
    /// Blocks per buffer row, per slot.
    bws: Vec<usize>,
    tables: Vec<(Option<&'a DecodeTable>, Option<&'a DecodeTable>)>,
    /// Refinement scans take `decode_units_bmi2` (see `decode_ac_refine`).
    bmi2: bool,
}

/// What carries from one unit to the next: DC predictions, the end-of-band run, the next
/// restart marker expected.
#[derive(Default)]
struct Carry {
    pred: [i32; 4],
    eobrun: u32,
    expected_rst: u8,
}

/// Decodes one scan into the frame's buffers. When the frame is read row by row
/// (`img.rolling`), each MCU row is handed to `rows` as soon as it is decoded, then its buffer
/// is cleared for the next.
pub(crate) fn decode_scan(
    img: &mut Image,
    p: &ScanParams,
    r: &mut BitReader,
    rows: Option<RowSink<'_, '_>>,
) -> Result<(), JpegError> {
    let g = geometry(img, p)?;
    let mut carry = Carry::default();
    match rows {
        Some(sink) if img.rolling => {
            for uy in 0..g.units_y {
                decode_units(img, p, r, &g, &mut carry, uy)?;
                sink(img, uy)?;
                for &ci in p.comps {
                    img.comps[ci].coeffs.fill(0);
                }
            }
        }
        _ => {
            for uy in 0..g.units_y {
                decode_units(img, p, r, &g, &mut carry, uy)?;
            }
        }
    }
    r.check_not_overrun()
}

fn geometry<'a>(img: &Image, p: &ScanParams<'a>) -> Result<Geometry<'a>, JpegError> {
    let ns = p.comps.len();
    let mode = if !img.progressive {
        Mode::Baseline
    } else {
        // T.81 G.1.1.1.1: DC scans carry only the DC coefficient, AC scans one component.
        if p.se > 63 || p.ss > p.se || (p.ss == 0 && p.se != 0) || (p.ss > 0 && ns != 1) {
            return err("bad spectral selection in a progressive scan");
        }
        if p.al > 13 || p.ah > 13 {
            return err("bad successive approximation in a progressive scan");
        }
        match (p.ss == 0, p.ah == 0) {
            (true, true) => Mode::DcFirst,
            (true, false) => Mode::DcRefine,
            (false, true) => Mode::AcFirst,
            (false, false) => Mode::AcRefine,
        }
    };
    // Geometry: an interleaved scan walks MCUs (padding blocks included); a single-component
    // scan walks that component's real blocks one at a time.
    let (units_x, units_y, layout) = if ns == 1 {
        let c = &img.comps[p.comps[0]];
        (
            c.w_blocks,
            c.h_blocks,
            McuLayout {
                blocks: vec![(0, 0, 0)],
            },
        )
    } else {
        let mut blocks = Vec::new();
        for (slot, &ci) in p.comps.iter().enumerate() {
            let c = &img.comps[ci];
            for by in 0..c.v as usize {
                for bx in 0..c.h as usize {
                    blocks.push((slot, by, bx));
                }
            }
        }
        (img.mcux, img.mcuy, McuLayout { blocks })
    };
    let unit = p
        .comps
        .iter()
        .map(|&ci| {
            let c = &img.comps[ci];
            if ns == 1 {
                (1, 1)
            } else {
                (c.h as usize, c.v as usize)
            }
        })
        .collect();
    let bws = p.comps.iter().map(|&ci| img.comps[ci].bw).collect();
    // Tables a scan does not use may be absent; parse.rs checked the ones it needs.
    let tables = (0..ns).map(|slot| (p.dc[slot], p.ac[slot])).collect();
    Ok(Geometry {
        mode,
        units_x,
        units_y,
        layout,
        unit,
        bws,
        tables,
        bmi2: matches!(mode, Mode::AcRefine) && bmi2_available(),
    })
}

/// Whether refinement scans take the BMI2 path: the CPU has BMI1, BMI2 and POPCNT (what
/// `decode_units_bmi2` is compiled with), and its `pdep` is fast.
fn bmi2_available() -> bool {
    #[cfg(test)]
    if tests::PORTABLE_ONLY.with(std::cell::Cell::get) {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        static FAST_PDEP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FAST_PDEP.get_or_init(|| {
            std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("bmi2")
                && std::arch::is_x86_feature_detected!("popcnt")
                && !slow_pdep()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AMD's Zen 1 and Zen 2 (family 0x17) and Hygon's Dhyana (0x18, a Zen 1) run `pdep` in
/// microcode, tens to hundreds of cycles with dense masks like ours: there the portable path
/// is faster. Zen 3 (0x19) and later, and Intel since Haswell, do it in 3 cycles.
#[cfg(target_arch = "x86_64")]
fn slow_pdep() -> bool {
    use std::arch::x86_64::__cpuid;
    // CPUID leaves 0 and 1 exist on every x86-64 CPU (the intrinsic is safe there).
    let (vendor, signature) = (__cpuid(0), __cpuid(1).eax);
    let mut name = [0u8; 12];
    name[..4].copy_from_slice(&vendor.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&vendor.edx.to_le_bytes());
    name[8..].copy_from_slice(&vendor.ecx.to_le_bytes());
    let base = (signature >> 8) & 0xF;
    let family = if base == 0xF {
        base + ((signature >> 20) & 0xFF)
    } else {
        base
    };
    matches!(&name, b"AuthenticAMD" | b"HygonGenuine") && family < 0x19
}

/// Decodes the units of row `uy`, into the row's place in the buffers (the first row when
/// they hold one row).
fn decode_units(
    img: &mut Image,
    p: &ScanParams,
    r: &mut BitReader,
    g: &Geometry,
    carry: &mut Carry,
    uy: usize,
) -> Result<(), JpegError> {
    // The reader's window in a local for the row (see `bitread::Window`), back in the reader
    // on every way out.
    let mut w = r.w;
    let result = match g.bmi2 {
        // SAFETY: `g.bmi2` is set only where the CPU has BMI1, BMI2 and POPCNT, the features
        // `decode_units_bmi2` is compiled with (`bmi2_available`).
        #[cfg(target_arch = "x86_64")]
        true => unsafe { decode_units_bmi2(img, p, r, &mut w, g, carry, uy) },
        _ => decode_units_in::<false>(img, p, r, &mut w, g, carry, uy),
    };
    r.w = w;
    result
}

/// [`decode_units_in`] compiled with BMI2 (and POPCNT, which every BMI2 CPU has), so that
/// `pdep` and `popcnt` inline into the refinement loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi1,bmi2,popcnt")]
fn decode_units_bmi2(
    img: &mut Image,
    p: &ScanParams,
    r: &mut BitReader,
    w: &mut Window,
    g: &Geometry,
    carry: &mut Carry,
    uy: usize,
) -> Result<(), JpegError> {
    // The window in this function's own local: behind the reference it was stored and
    // reloaded around every symbol (this function is not inlined into its caller).
    let mut local = *w;
    let result = decode_units_in::<true>(img, p, r, &mut local, g, carry, uy);
    *w = local;
    result
}

/// `BMI2`: the caller runs with BMI2 enabled (see `decode_ac_refine`).
#[inline(always)]
fn decode_units_in<const BMI2: bool>(
    img: &mut Image,
    p: &ScanParams,
    r: &mut BitReader,
    w: &mut Window,
    g: &Geometry,
    carry: &mut Carry,
    uy: usize,
) -> Result<(), JpegError> {
    let ns = p.comps.len();
    let row_base = if img.rolling { uy } else { 0 };
    // Split borrows: collect mutable slices of each scanned component's buffer.
    let mut bufs: Vec<&mut [i16]> = Vec::with_capacity(ns);
    {
        let mut rest: Vec<Option<&mut [i16]>> = img
            .comps
            .iter_mut()
            .map(|c| Some(&mut c.coeffs[..]))
            .collect();
        for &ci in p.comps {
            match rest[ci].take() {
                Some(b) => bufs.push(b),
                None => return err("component twice in one scan"),
            }
        }
    }
    let ri = p.restart_interval as usize;
    for ux in 0..g.units_x {
        let mcu = uy * g.units_x + ux;
        if ri > 0 && mcu > 0 && mcu.is_multiple_of(ri) {
            let (m, _) = r.next_marker_in(w)?;
            if m != 0xD0 + carry.expected_rst {
                return err("missing or out-of-order restart marker");
            }
            carry.expected_rst = (carry.expected_rst + 1) & 7;
            carry.pred = [0; 4];
            carry.eobrun = 0;
        }
        for &(slot, oy, ox) in &g.layout.blocks {
            let (uw, uh) = g.unit[slot];
            let bx = ux * uw + ox;
            let by = (uy - row_base) * uh + oy;
            let off = (by * g.bws[slot] + bx) * 64;
            let Some(Ok(block)) = bufs[slot]
                .get_mut(off..off + 64)
                .map(<&mut [i16; 64]>::try_from)
            else {
                return err("block outside component buffer");
            };
            let (dct, act) = g.tables[slot];
            let missing = || JpegError("missing Huffman table".into());
            let pred = &mut carry.pred[slot];
            match g.mode {
                Mode::Baseline => decode_block_baseline(
                    r,
                    w,
                    dct.ok_or_else(missing)?,
                    act.ok_or_else(missing)?,
                    pred,
                    block,
                )?,
                Mode::DcFirst => {
                    decode_dc_first(r, w, dct.ok_or_else(missing)?, pred, p.al, block)?
                }
                Mode::DcRefine => {
                    r.ensure_in(w);
                    if w.get_bits(1) != 0 {
                        block[0] |= 1 << p.al;
                    }
                }
                Mode::AcFirst => {
                    decode_ac_first(r, w, act.ok_or_else(missing)?, p, &mut carry.eobrun, block)?
                }
                Mode::AcRefine => decode_ac_refine::<BMI2>(
                    r,
                    w,
                    act.ok_or_else(missing)?,
                    p,
                    &mut carry.eobrun,
                    block,
                )?,
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Mode {
    Baseline,
    DcFirst,
    DcRefine,
    AcFirst,
    AcRefine,
}

/// First DC scan of a progressive frame: like baseline DC, scaled by the point transform.
#[inline(always)]
fn decode_dc_first(
    r: &mut BitReader,
    w: &mut Window,
    dc: &DecodeTable,
    pred: &mut i32,
    al: u8,
    block: &mut [i16; 64],
) -> Result<(), JpegError> {
    r.ensure_in(w);
    let s = u32::from(dc.decode(w)?);
    if s > 11 {
        return err("DC difference out of range");
    }
    *pred = pred.wrapping_add(w.receive_extend(s));
    block[0] = pred.wrapping_shl(u32::from(al)) as i16;
    Ok(())
}

/// First AC scan of a band (T.81 G.1.2.2): run/size codes as in baseline, plus end-of-band
/// runs that cover many blocks at once.
#[inline(always)]
fn decode_ac_first(
    r: &mut BitReader,
    w: &mut Window,
    ac: &DecodeTable,
    p: &ScanParams,
    eobrun: &mut u32,
    block: &mut [i16; 64],
) -> Result<(), JpegError> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = p.ss as usize;
    let se = p.se as usize;
    while k <= se {
        r.ensure_in(w);
        if let Some((run, value)) = ac.take_fast_ac(w) {
            k += run;
            if k > 63 {
                return err("AC coefficient index out of range");
            }
            block[k] = value.wrapping_shl(u32::from(p.al)) as i16;
            k += 1;
            continue;
        }
        let rs = ac.decode(w)?;
        let run = u32::from(rs >> 4);
        let size = u32::from(rs & 15);
        if size == 0 {
            if run < 15 {
                // EOBn: this block and the next 2^run - 1 + extra bits blocks end here.
                *eobrun = (1 << run) - 1 + w.get_bits(run);
                break;
            }
            k += 16;
            continue;
        }
        k += run as usize;
        if k > 63 {
            return err("AC coefficient index out of range");
        }
        block[k] = w.receive_extend(size).wrapping_shl(u32::from(p.al)) as i16;
        k += 1;
    }
    Ok(())
}

/// AC refinement scan (T.81 G.1.2.3): one more bit for every coefficient already nonzero, and
/// newly nonzero coefficients of magnitude 1 << al placed among the zero ones.
///
/// Works on the block's nonzero mask rather than coefficient by coefficient: a run of `r`
/// zeros ends at the (r+1)-th clear bit at or after `k`, and the correction bits of the
/// nonzero coefficients passed on the way are read in one go. High-quality progressive files
/// spend most of their decoding time here.
///
/// With `BMI2` (the caller is compiled with it and the CPU has it), `pdep` does both bit
/// manipulations in one instruction each: selecting the (r+1)-th clear bit, and scattering a
/// run of correction bits onto the positions they belong to, collected in a mask that is
/// applied once at the end of the block (`apply_corrections`). Without it, a broadword select
/// and a loop over the coefficients (`refine_bits`) give the same coefficients.
#[inline(always)]
fn decode_ac_refine<const BMI2: bool>(
    r: &mut BitReader,
    w: &mut Window,
    ac: &DecodeTable,
    p: &ScanParams,
    eobrun: &mut u32,
    block: &mut [i16; 64],
) -> Result<(), JpegError> {
    let p1: i16 = 1i16.wrapping_shl(u32::from(p.al));
    let se = u32::from(p.se);
    let band = band_mask(u32::from(p.ss), se);
    let nonzero = nonzero_mask(block) & band;
    let mut k = u32::from(p.ss);
    // Coefficients whose correction bit is 1 (BMI2 only).
    let mut corrections = 0u64;
    let mut correct = |r: &mut BitReader, w: &mut Window, block: &mut [i16; 64], mask: u64| {
        if BMI2 {
            corrections |= gather_bits(r, w, mask);
        } else {
            refine_bits(r, w, block, mask, p1);
        }
    };
    if *eobrun == 0 {
        while k <= se {
            r.ensure_in(w);
            // Newly nonzero coefficients are run/size codes of size 1 followed by a sign bit:
            // `fast_ac` resolves both at once.
            let (run, value) = if let Some((run, v)) = ac.take_fast_ac(w) {
                if v.unsigned_abs() != 1 {
                    return err("bad AC refinement code");
                }
                (run as u32, if v > 0 { p1 } else { p1.wrapping_neg() })
            } else {
                let rs = ac.decode(w)?;
                let run = u32::from(rs >> 4);
                match rs & 15 {
                    0 if run != 15 => {
                        *eobrun = (1 << run) + w.get_bits(run);
                        break;
                    }
                    0 => (run, 0),
                    1 if w.get_bits(1) != 0 => (run, p1),
                    1 => (run, p1.wrapping_neg()),
                    _ => return err("bad AC refinement code"),
                }
            };
            // The zero that ends the run (or receives `value`) is the (run+1)-th zero from k;
            // none if there are not that many in the band.
            let ahead = band & (u64::MAX << k);
            let stop = if BMI2 {
                pdep(1u64 << run, !nonzero & ahead)
            } else {
                nth_set_bit(!nonzero & ahead, run)
            };
            // stop - 1: the bits below it, or all of them when there is no stop.
            correct(r, w, block, nonzero & ahead & stop.wrapping_sub(1));
            let at = stop.trailing_zeros();
            if value != 0 {
                if at > se {
                    return err("AC refinement past the end of the band");
                }
                block[at as usize] = value;
            }
            k = at + 1;
        }
    }
    if *eobrun > 0 {
        // Inside an end-of-band run: only correction bits remain for this block.
        if k <= se {
            correct(r, w, block, nonzero & (u64::MAX << k));
        }
        *eobrun -= 1;
    }
    if BMI2 {
        // The positions are ones that were nonzero before this block's scan, and new values
        // only go to zero positions, so applying the bits last changes nothing else.
        apply_corrections(block, corrections, p1);
    }
    Ok(())
}

/// The next `mask.count_ones()` bits of the stream, the first at the lowest position of `mask`,
/// the next at the next, and so on (BMI2 callers only).
#[inline(always)]
fn gather_bits(r: &mut BitReader, w: &mut Window, mut mask: u64) -> u64 {
    let mut out = 0u64;
    while mask != 0 {
        r.ensure_in(w);
        // At most 32 bits per refill: the positions of the first 32 set bits of `mask`.
        let n = mask.count_ones();
        let chunk = if n <= 32 {
            mask
        } else {
            mask & pdep(1 << 32, mask).wrapping_sub(1)
        };
        // The stream's next bit (the window's top bit) becomes bit 0, for the lowest position.
        out |= pdep(u64::from(w.peek32().reverse_bits()), chunk);
        w.consume(n.min(32));
        mask &= !chunk;
    }
    out
}

/// `pdep`: the low bits of `src` deposited, in order, at the set bits of `mask`. Callers are
/// compiled with BMI2 and run only where the CPU has it (`Geometry::bmi2`).
#[inline(always)]
fn pdep(src: u64, mask: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: reached only through `decode_units_bmi2`, entered only when
        // `bmi2_available()` said the CPU has BMI2.
        unsafe { std::arch::x86_64::_pdep_u64(src, mask) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Never called here (`BMI2` is false off x86-64); kept so the generic code compiles.
        let (mut out, mut m, mut s) = (0u64, mask, src);
        while m != 0 {
            let low = m & m.wrapping_neg();
            if s & 1 != 0 {
                out |= low;
            }
            s >>= 1;
            m &= m - 1;
        }
        out
    }
}

/// Adds 1 << al to the magnitude of every coefficient in `mask` whose magnitude does not have
/// that bit yet (as `refine_bits` does for each bit that is 1).
#[inline(always)]
fn apply_corrections(block: &mut [i16; 64], mut mask: u64, p1: i16) {
    while mask != 0 {
        let k = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let c = block[k];
        let sign = c >> 15; // 0 or -1
        let step = (p1 ^ sign).wrapping_sub(sign); // p1 with c's sign
        block[k] = c.wrapping_add(step & i16::from(c & p1 == 0).wrapping_neg());
    }
}

/// Bits ss..=se set (ss <= se <= 63).
#[inline]
fn band_mask(ss: u32, se: u32) -> u64 {
    (u64::MAX >> (63 - se)) & (u64::MAX << ss)
}

/// The `n`-th (from 0, n < 64) lowest set bit of `x` as a mask, 0 if `x` has no more than n.
///
/// Broadword select: prefix sums of the bytes' bit counts find the byte, a table the bit in
/// it. Clearing the lowest bit n times instead ended in a mispredicted branch on most AC
/// refinement symbols.
#[inline]
fn nth_set_bit(x: u64, n: u32) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let s = x - ((x >> 1) & 0x5555_5555_5555_5555);
    let s = (s & 0x3333_3333_3333_3333) + ((s >> 2) & 0x3333_3333_3333_3333);
    let s = (s + (s >> 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    // Byte i: set bits in bytes 0..=i (at most 64, so no carries between bytes).
    let upto = s.wrapping_mul(ONES);
    // High bit of byte i set where upto_i <= n: a prefix of the bytes, as long as the one
    // holding the bit is.
    let n = u64::from(n);
    let le = ((n * ONES) | HIGH).wrapping_sub(upto) & HIGH;
    let byte = ((le >> 7).wrapping_mul(ONES) >> 56) as u32;
    if byte >= 8 || n >= 64 {
        return 0;
    }
    let before = ((upto << 8) >> (8 * byte)) & 0xFF;
    let in_byte = ((x >> (8 * byte)) & 0xFF) as usize;
    let bit = SELECT_IN_BYTE[in_byte * 8 + (n - before) as usize];
    1u64 << (8 * byte + u32::from(bit))
}

/// SELECT_IN_BYTE[b * 8 + i]: position of the i-th set bit of byte b (0 where there is none).
const SELECT_IN_BYTE: [u8; 2048] = {
    let mut t = [0u8; 2048];
    let mut b = 0;
    while b < 256 {
        let (mut i, mut bit) = (0, 0);
        while bit < 8 {
            if b & (1 << bit) != 0 {
                t[b * 8 + i] = bit as u8;
                i += 1;
            }
            bit += 1;
        }
        b += 1;
    }
    t
};

/// Reads one correction bit per coefficient in `mask` (in coefficient order) and applies it:
/// a set bit adds 1 << al to the magnitude, unless that bit of the magnitude is already set.
#[inline(always)]
fn refine_bits(r: &mut BitReader, w: &mut Window, block: &mut [i16; 64], mut mask: u64, p1: i16) {
    while mask != 0 {
        r.ensure_in(w);
        // Up to 32 bits per refill, the first coefficient's bit at the top.
        let mut bits = w.peek32();
        let mut used = 0;
        while mask != 0 && used < 32 {
            let k = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let c = block[k];
            // Branch-free: the bits are random, a branch on them mispredicts half the time.
            let sign = c >> 15; // 0 or -1
            let step = (p1 ^ sign).wrapping_sub(sign); // p1 with c's sign
            let bit = (bits >> 31) as i16;
            let unset = i16::from(c & p1 == 0);
            block[k] = c.wrapping_add(step & (bit & unset).wrapping_neg());
            bits <<= 1;
            used += 1;
        }
        w.consume(used);
    }
}

/// Decodes one sequential-mode block (DC difference + AC run/size codes) into `block`
/// (zigzag order). `block` is all zero on entry except when a file codes a block twice.
/// Always inlined: as a call per block, its window went through memory (the BMI2 copy of the
/// unit loop had tipped the compiler's inlining budget: +9% decoding instructions on m2).
#[inline(always)]
fn decode_block_baseline(
    r: &mut BitReader,
    w: &mut Window,
    dc: &DecodeTable,
    ac: &DecodeTable,
    pred: &mut i32,
    block: &mut [i16; 64],
) -> Result<(), JpegError> {
    r.ensure_in(w);
    let s = u32::from(dc.decode(w)?);
    if s > 11 {
        return err("DC difference out of range");
    }
    let diff = w.receive_extend(s);
    *pred = pred.wrapping_add(diff);
    block[0] = *pred as i16;
    let mut k = 1usize;
    while k < 64 {
        r.ensure_in(w);
        if let Some((run, value)) = ac.take_fast_ac(w) {
            k += run;
            if k > 63 {
                return err("AC coefficient index out of range");
            }
            block[k] = value as i16;
            k += 1;
            continue;
        }
        let rs = ac.decode(w)?;
        let run = (rs >> 4) as usize;
        let size = u32::from(rs & 15);
        if size == 0 {
            if run == 15 {
                k += 16;
                continue;
            }
            break; // EOB
        }
        k += run;
        if k > 63 {
            return err("AC coefficient index out of range");
        }
        block[k] = w.receive_extend(size) as i16;
        k += 1;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::{band_mask, nth_set_bit};

    thread_local! {
        /// Makes this thread's scans take the portable refinement path, so tests can compare
        /// it with the BMI2 one (decoding runs on the caller's thread).
        pub(in crate::jpeg) static PORTABLE_ONLY: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }

    fn nth_set_bit_naive(mut x: u64, n: u32) -> u64 {
        for _ in 0..n {
            x &= x.wrapping_sub(1);
        }
        x & x.wrapping_neg()
    }

    #[test]
    fn nth_set_bit_matches_clearing_low_bits() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Dense, sparse and edge words.
            let w = match i % 4 {
                0 => x,
                1 => x & (x >> 3) & (x >> 7),
                2 => !(x & (x >> 5)),
                _ => [0, u64::MAX, 1, 1 << 63][(i / 4) % 4],
            };
            for n in 0..64 {
                assert_eq!(nth_set_bit(w, n), nth_set_bit_naive(w, n), "{w:#x} {n}");
            }
        }
    }

    /// The BMI2 correction path (`gather_bits` then `apply_corrections`) against the portable
    /// one (`refine_bits`) on random blocks, masks of 0-64 positions (so the more-than-32
    /// branch runs) and random stream bytes: same coefficients, same bits consumed.
    #[test]
    fn bmi2_corrections_match_refine_bits() {
        use super::super::bitread::BitReader;
        use super::{apply_corrections, bmi2_available, gather_bits, refine_bits};
        if !bmi2_available() {
            eprintln!("no BMI2 (or slow pdep) on this CPU: only the portable path runs here");
            return;
        }
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut long_masks = 0;
        for round in 0..3000 {
            let data: Vec<u8> = (0..24).map(|_| (next() & 0xFE) as u8).collect(); // no 0xFF
            let mut block = [0i16; 64];
            let al = (round % 4) as u32;
            // Some magnitudes already have bit `al` (a file refining twice): left as they are.
            for c in block.iter_mut() {
                *c = ((next() % 17) as i16 - 8) << al;
            }
            let nonzero = super::nonzero_mask(&block);
            let mask = (nonzero & next()) | if round % 5 == 0 { nonzero } else { 0 };
            long_masks += usize::from(mask.count_ones() > 32);
            let p1 = 1i16 << al;
            let (mut a, mut b) = (block, block);
            let mut ra = BitReader::new(&data, 0);
            let mut wa = ra.w;
            refine_bits(&mut ra, &mut wa, &mut a, mask, p1);
            let mut rb = BitReader::new(&data, 0);
            let mut wb = rb.w;
            // gather_bits executes pdep: only after bmi2_available() said the CPU has it.
            let corrections = gather_bits(&mut rb, &mut wb, mask);
            apply_corrections(&mut b, corrections, p1);
            assert_eq!(a, b, "round {round}, mask {mask:#x}");
            assert_eq!(
                wa.peek32(),
                wb.peek32(),
                "round {round}: bits consumed differ"
            );
        }
        assert!(
            long_masks > 100,
            "only {long_masks} masks of more than 32 positions"
        );
    }

    #[test]
    fn band_masks() {
        assert_eq!(band_mask(0, 63), u64::MAX);
        assert_eq!(band_mask(1, 5), 0b11_1110);
        assert_eq!(band_mask(63, 63), 1 << 63);
        assert_eq!(band_mask(0, 0), 1);
    }
}
