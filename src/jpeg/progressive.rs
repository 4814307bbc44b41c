//! Progressive writer with spectral selection, its bands chosen for size.
//!
//! A progressive file codes the DC coefficients of every component in one scan, then each
//! component's AC coefficients in bands of the zigzag order, one scan per band, each with its
//! own Huffman table. Two things make that smaller than one baseline scan: a table fitted to
//! each band's statistics, and end-of-band runs (EOBRUN), one symbol for a whole run of blocks
//! with nothing in the band, where baseline pays an EOB per block. Which split pays depends on
//! the picture (measured with jpegtran scan scripts on the bench photos: luma split after the
//! first two coefficients saved 2.2% on average, up to 9%, and cost up to 2% on others), so
//! the planner counts every candidate band exactly, prices it with the table it would get, and
//! picks per component the cheapest split, or baseline when nothing beats it.
//!
//! Successive approximation (coding coefficients bit-plane by bit-plane) is not used: it only
//! paid with jpegtran's default script on none of the bench photos at these qualities.

use super::encode::{
    baseline_specs, block_at, category, dc_symbol, frame_headers, nonzero_mask, push_dht,
    push_segment, walk, BitWriter, Counter, Sink, Writer,
};
use super::huffman::{build_optimal, EncodeTable, HuffSpec};
use super::parse::{Component, Image};
use super::{err, JpegError};

/// Candidate bands, as (first, last) zigzag positions.
const BANDS: [(u8, u8); 3] = [(1, 63), (1, 2), (3, 63)];

/// Candidate splits of 1-63, as indices into `BANDS`: all of it in one scan, or the first
/// horizontal and vertical frequencies apart from the rest. (Measured with jpegtran on the
/// bench photos at q50 after trellis: splitting after 2 saved 2.2% on average; after 1, 3, 5
/// or 8, or in three bands, less; a best-of over six scripts 2.6%.)
const SPLITS: [&[usize]; 2] = [&[0], &[1, 2]];

/// Longest end-of-band run one symbol codes (EOB14 with 14 extra bits).
const MAX_EOBRUN: u32 = 0x7FFF;

/// Each component's AC bands, in coding order, with their symbol counts.
pub(super) struct Plan {
    bands: Vec<Vec<((u8, u8), Freq)>>,
}

/// Counts one symbol stream; the table index is ignored (one table per scan).
#[derive(Clone)]
struct Freq([u32; 256]);

impl Sink for Freq {
    fn dc(&mut self, _: usize, _: u32, _: u32) {}
    #[inline]
    fn ac(&mut self, _: usize, rs: u8, _: u32, _: u32) {
        self.0[usize::from(rs)] += 1;
    }
}

/// Extra bits that follow AC symbol `rs`: the coefficient's magnitude, or an EOBRUN's low bits.
fn extra_bits(rs: usize) -> u64 {
    match (rs >> 4, rs & 15) {
        (15, 0) => 0, // ZRL
        (n, 0) => n as u64,
        (_, size) => size as u64,
    }
}

/// Bits a table fitted to `freq` codes the stream in, and the table.
fn priced(freq: &[u32; 256]) -> (u64, HuffSpec) {
    let spec = build_optimal(freq);
    let len = EncodeTable::new(&spec).len;
    let bits = (0..256)
        .map(|s| u64::from(freq[s]) * (u64::from(len[s]) + extra_bits(s)))
        .sum();
    (bits, spec)
}

/// Bytes a DHT segment holding `specs` takes, with a scan header of `comps` components.
fn overhead(specs: &[&HuffSpec], comps: usize) -> u64 {
    let dht: usize = specs.iter().map(|s| 17 + s.symbols.len()).sum();
    (4 + dht + 6 + 2 * comps + 3) as u64
}

/// The end-of-band run so far, as one symbol.
#[inline]
fn flush_eobrun<S: Sink>(sink: &mut S, eobrun: &mut u32) {
    if *eobrun > 0 {
        let n = 31 - eobrun.leading_zeros();
        sink.ac(0, (n << 4) as u8, n, *eobrun & ((1 << n) - 1));
        *eobrun = 0;
    }
}

/// Emits band `ss..=se` of one block (whose nonzero positions are `nonzero`) in a first AC
/// scan. False if a value is outside range.
#[inline]
fn band_symbols<S: Sink>(
    sink: &mut S,
    block: &[i16; 64],
    nonzero: u64,
    (ss, se): (u8, u8),
    eobrun: &mut u32,
) -> bool {
    let band = (u64::MAX >> (63 - se)) & !((1u64 << ss) - 1);
    let mut mask = nonzero & band;
    if mask == 0 {
        *eobrun += 1;
        if *eobrun == MAX_EOBRUN {
            flush_eobrun(sink, eobrun);
        }
        return true;
    }
    flush_eobrun(sink, eobrun);
    let mut last = u32::from(ss) - 1;
    while mask != 0 {
        let k = mask.trailing_zeros();
        mask &= mask - 1;
        let mut run = k - last - 1;
        while run >= 16 {
            sink.ac(0, 0xF0, 0, 0);
            run -= 16;
        }
        let (size, bits) = category(i32::from(block[k as usize]));
        if size > 10 {
            return false;
        }
        sink.ac(0, ((run << 4) | size) as u8, size, bits);
        last = k;
    }
    if last < u32::from(se) {
        *eobrun += 1;
        if *eobrun == MAX_EOBRUN {
            flush_eobrun(sink, eobrun);
        }
    }
    true
}

/// Codes every band of `bands` for component `c`, in the order a non-interleaved scan visits
/// its blocks (only those holding samples, row by row).
fn component_bands<S: Sink>(sinks: &mut [S], c: &Component, bands: &[(u8, u8)]) -> bool {
    let mut runs = vec![0u32; bands.len()];
    let mut ok = true;
    for by in 0..c.h_blocks {
        for bx in 0..c.w_blocks {
            let block = block_at(&c.coeffs, (by * c.bw + bx) * 64);
            let nonzero = nonzero_mask(block);
            for ((sink, &band), run) in sinks.iter_mut().zip(bands).zip(runs.iter_mut()) {
                ok &= band_symbols(sink, block, nonzero, band, run);
            }
        }
    }
    for (sink, run) in sinks.iter_mut().zip(runs.iter_mut()) {
        flush_eobrun(sink, run);
    }
    ok
}

/// The cheapest progressive layout of `img`, if it is smaller than one baseline scan with
/// `counter`'s statistics.
pub(super) fn plan(img: &Image, counter: &Counter) -> Result<Option<Plan>, JpegError> {
    let (dc_specs, ac_specs) = baseline_specs(img, counter);
    let mut baseline = 0u64;
    let mut progressive = 0u64;
    for t in 0..dc_specs.len() {
        let (dc_bits, _) = priced_dc(&counter.dc[t]);
        let (ac_bits, _) = priced(&counter.ac[t]);
        baseline += dc_bits + ac_bits;
        progressive += dc_bits;
    }
    let nc = img.comps.len();
    let all: Vec<&HuffSpec> = dc_specs.iter().chain(&ac_specs).collect();
    baseline += 8 * overhead(&all, nc);
    let dcs: Vec<&HuffSpec> = dc_specs.iter().collect();
    progressive += 8 * overhead(&dcs, nc);

    let mut bands = Vec::with_capacity(nc);
    for c in &img.comps {
        let mut freqs: Vec<Freq> = BANDS.iter().map(|_| Freq([0; 256])).collect();
        if !component_bands(&mut freqs, c, &BANDS) {
            return err("coefficient out of baseline range");
        }
        let cost: Vec<u64> = freqs
            .iter()
            .map(|f| {
                let (bits, spec) = priced(&f.0);
                bits + 8 * overhead(&[&spec], 1)
            })
            .collect();
        let (best, bits) = SPLITS
            .iter()
            .map(|split| (split, split.iter().map(|&b| cost[b]).sum::<u64>()))
            .min_by_key(|&(_, bits)| bits)
            .expect("candidate splits");
        progressive += bits;
        bands.push(best.iter().map(|&b| (BANDS[b], freqs[b].clone())).collect());
    }
    Ok((progressive < baseline).then_some(Plan { bands }))
}

/// Bits a DC table fitted to `freq` codes its differences in.
fn priced_dc(freq: &[u32; 256]) -> (u64, HuffSpec) {
    let spec = build_optimal(freq);
    let len = EncodeTable::new(&spec).len;
    let bits = (0..256)
        .map(|s| u64::from(freq[s]) * (u64::from(len[s]) + s as u64))
        .sum();
    (bits, spec)
}

/// Writes `img` progressively: one interleaved DC scan (tables from `counter`), then the AC
/// bands of `plan`, component by component.
pub(super) fn write(img: &Image, counter: &Counter, plan: &Plan) -> Result<Vec<u8>, JpegError> {
    let nc = img.comps.len();
    let (dc_specs, _) = baseline_specs(img, counter);
    let mut out = frame_headers(img, 0xC2)?;
    let tables: Vec<(u8, usize, &HuffSpec)> = dc_specs
        .iter()
        .enumerate()
        .map(|(t, s)| (0, t, s))
        .collect();
    push_dht(&mut out, &tables);
    let mut sos = vec![nc as u8];
    for (ci, c) in img.comps.iter().enumerate() {
        sos.extend_from_slice(&[c.id, u8::from(ci != 0) << 4]);
    }
    sos.extend_from_slice(&[0, 0, 0]);
    push_segment(&mut out, 0xDA, &sos);
    let dc_enc: Vec<EncodeTable> = dc_specs.iter().map(EncodeTable::new).collect();
    let last = dc_enc.len() - 1;
    // The AC slots are unused in this scan; any table will do.
    let mut writer = Writer {
        w: BitWriter::new(out),
        dc: [&dc_enc[0], &dc_enc[last]],
        ac: [&dc_enc[0], &dc_enc[last]],
    };
    walk(img, &mut writer, dc_symbol)?;
    writer.w.finish();
    let mut out = writer.w.out;

    for (c, bands) in img.comps.iter().zip(&plan.bands) {
        for (band, freq) in bands {
            let band = *band;
            let spec = build_optimal(&freq.0);
            push_dht(&mut out, &[(1, 0, &spec)]);
            push_segment(&mut out, 0xDA, &[1, c.id, 0x00, band.0, band.1, 0]);
            let enc = EncodeTable::new(&spec);
            let mut writer = [Writer {
                w: BitWriter::new(out),
                dc: [&enc, &enc],
                ac: [&enc, &enc],
            }];
            if !component_bands(&mut writer, c, &[band]) {
                return err("coefficient out of baseline range");
            }
            let [mut writer] = writer;
            writer.w.finish();
            out = writer.w.out;
        }
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::encode::baseline_counts;
    use super::super::parse::read_coefficients;
    use super::*;

    /// A gray frame of `bw` x `bh` blocks whose AC is zero except in every `every`-th block.
    fn sparse(bw: usize, bh: usize, every: usize) -> Image {
        let mut coeffs = vec![0i16; bw * bh * 64];
        for (i, b) in coeffs.chunks_exact_mut(64).enumerate() {
            b[0] = (i % 37) as i16 - 18;
            if i % every == 0 {
                b[1] = 3;
                b[2 + i % 60] = -1;
                b[63] = if i % 2 == 0 { 1 } else { 0 };
            }
        }
        Image {
            width: (bw * 8) as u16,
            height: (bh * 8) as u16,
            progressive: false,
            mcux: bw,
            mcuy: bh,
            comps: vec![Component {
                id: 1,
                h: 1,
                v: 1,
                tq: 0,
                qt: [4; 64],
                qt_set: true,
                bw,
                bh,
                w_blocks: bw,
                h_blocks: bh,
                coeffs,
            }],
            rolling: false,
        }
    }

    /// Every split, written and read back: the coefficients survive, including end-of-band
    /// runs longer than one symbol can count (blocks with nothing in a band, 0x7FFF at most).
    #[test]
    fn every_split_reads_back() {
        for (bw, bh, every) in [(1, 1, 1), (3, 2, 2), (300, 250, 40_000), (181, 181, 7)] {
            let img = sparse(bw, bh, every);
            let counter = baseline_counts(&img).unwrap();
            for split in SPLITS {
                let bands: Vec<(u8, u8)> = split.iter().map(|&b| BANDS[b]).collect();
                let mut freqs = vec![Freq([0; 256]); bands.len()];
                assert!(component_bands(&mut freqs, &img.comps[0], &bands));
                let plan = Plan {
                    bands: vec![bands.into_iter().zip(freqs).collect()],
                };
                let out = write(&img, &counter, &plan).unwrap();
                let back = read_coefficients(&out).unwrap();
                assert!(back.progressive);
                assert!(
                    back.comps[0].coeffs == img.comps[0].coeffs,
                    "{bw}x{bh} {split:?}"
                );
            }
        }
    }

    #[test]
    fn the_planner_prefers_progressive_only_when_it_is_smaller() {
        // Mostly empty blocks: end-of-band runs win.
        let img = sparse(300, 250, 40_000);
        let counter = baseline_counts(&img).unwrap();
        let chosen = plan(&img, &counter)
            .unwrap()
            .expect("progressive is smaller");
        let prog = write(&img, &counter, &chosen).unwrap();
        let base = super::super::encode::write_baseline(&img).unwrap();
        assert!(prog.len() < base.len(), "{} vs {}", prog.len(), base.len());
        // One tiny block: the extra headers cost more than anything saved.
        let img = sparse(1, 1, 1);
        let counter = baseline_counts(&img).unwrap();
        assert!(plan(&img, &counter).unwrap().is_none());
    }

    #[test]
    fn extra_bits_follow_t81() {
        assert_eq!(extra_bits(0x00), 0); // EOB / EOB0
        assert_eq!(extra_bits(0xF0), 0); // ZRL
        assert_eq!(extra_bits(0xE0), 14); // EOB14
        assert_eq!(extra_bits(0x35), 5);
    }
}
