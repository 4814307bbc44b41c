//! Entropy decoding of one scan into the frame's coefficient buffers.

use super::bitread::BitReader;
use super::huffman::DecodeTable;
use super::parse::Image;
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

pub(crate) fn decode_scan(
    img: &mut Image,
    p: &ScanParams,
    r: &mut BitReader,
) -> Result<(), JpegError> {
    if img.progressive {
        return err("progressive scans are not supported yet");
    }
    let ns = p.comps.len();
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
    // Unit size in blocks, per slot.
    let unit: Vec<(usize, usize)> = p
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
    let bws: Vec<usize> = p.comps.iter().map(|&ci| img.comps[ci].bw).collect();
    let mut tables = Vec::with_capacity(ns);
    for slot in 0..ns {
        match (p.dc[slot], p.ac[slot]) {
            (Some(d), Some(a)) => tables.push((d, a)),
            _ => return err("missing Huffman table"),
        }
    }
    // Split borrows: collect mutable slices of each scanned component's buffer.
    let mut bufs: Vec<&mut [i16]> = Vec::with_capacity(ns);
    {
        let mut rest: Vec<Option<&mut [i16]>> =
            img.comps.iter_mut().map(|c| Some(&mut c.coeffs[..])).collect();
        for &ci in p.comps {
            match rest[ci].take() {
                Some(b) => bufs.push(b),
                None => return err("component twice in one scan"),
            }
        }
    }
    let mut pred = [0i32; 4];
    let total = units_x * units_y;
    let ri = p.restart_interval as usize;
    let mut expected_rst = 0u8;
    for mcu in 0..total {
        if ri > 0 && mcu > 0 && mcu % ri == 0 {
            let (m, _) = r.next_marker()?;
            if m != 0xD0 + expected_rst {
                return err("missing or out-of-order restart marker");
            }
            expected_rst = (expected_rst + 1) & 7;
            pred = [0; 4];
        }
        let (ux, uy) = (mcu % units_x, mcu / units_x);
        for &(slot, oy, ox) in &layout.blocks {
            let (uw, uh) = unit[slot];
            let bx = ux * uw + ox;
            let by = uy * uh + oy;
            let off = (by * bws[slot] + bx) * 64;
            let Some(block) = bufs[slot].get_mut(off..off + 64) else {
                return err("block outside component buffer");
            };
            let (dct, act) = tables[slot];
            decode_block_baseline(r, dct, act, &mut pred[slot], block)?;
        }
    }
    r.check_not_overrun()
}

/// Decodes one sequential-mode block (DC difference + AC run/size codes) into `block`
/// (zigzag order). `block` is all zero on entry except when a file codes a block twice.
#[inline]
fn decode_block_baseline(
    r: &mut BitReader,
    dc: &DecodeTable,
    ac: &DecodeTable,
    pred: &mut i32,
    block: &mut [i16],
) -> Result<(), JpegError> {
    if r.bits_left() < 32 {
        r.refill();
    }
    let s = u32::from(dc.decode(r)?);
    if s > 11 {
        return err("DC difference out of range");
    }
    let diff = r.receive_extend(s);
    *pred = pred.wrapping_add(diff);
    block[0] = *pred as i16;
    let mut k = 1usize;
    while k < 64 {
        if r.bits_left() < 32 {
            r.refill();
        }
        let rs = ac.decode(r)?;
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
        block[k] = r.receive_extend(size) as i16;
        k += 1;
    }
    Ok(())
}
