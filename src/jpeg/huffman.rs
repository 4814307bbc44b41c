//! Huffman tables: decoding (table-driven), optimal length-limited construction, encoding.

use super::bitread::Window;
use super::{err, JpegError};

/// Bits resolved by one table lookup; codes up to this length (nearly all of them in practice)
/// decode with a single lookup, longer ones fall back to a canonical-code walk. 11 rather
/// than the usual 8-9: more AC codes of high-quality photos resolve together with their
/// extra bits in `fast_ac`. Measured (q50 re-encode, bench test, builds alternated, best of
/// 3): against 9, x3 -3%, l1 -3.5%, m2 and m3 level; 12 gained a little more on the large
/// photos but cost m2 13% (its tables no longer stay in L1).
const LOOKAHEAD: u32 = 11;

/// A DHT table as transmitted: number of codes per length 1-16 and the symbols in code order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HuffSpec {
    pub(crate) counts: [u8; 16],
    pub(crate) symbols: Vec<u8>,
}

/// Decoding form of a table.
#[derive(Clone)]
pub(crate) struct DecodeTable {
    /// Indexed by the next LOOKAHEAD bits: (code length << 8) | symbol, 0 if the code is longer.
    lookup: Box<[u16; 1 << LOOKAHEAD]>,
    /// Indexed the same way, for AC use: a run/size code and its extra bits resolved in one
    /// lookup when both fit in the lookahead and the value does in 8 bits (size <= 7,
    /// |value| <= 127), as (value << 8) | (run << 4) | bits used; 0 otherwise (and for
    /// end-of-band and zero-run codes). Common small coefficients of photos take this path,
    /// which skips the separate extra-bit read and sign extension. 16-bit entries keep it at
    /// 4 KB (8 KB with `lookup`), so a luma and a chroma table stay in L1 beside the rest.
    fast_ac: Box<[i16; 1 << LOOKAHEAD]>,
    /// For lengths 1..=16: largest code of that length (-1 if none).
    maxcode: [i32; 18],
    /// For lengths 1..=16: index into `symbols` of the first code of that length, minus that
    /// code's value.
    valoffset: [i32; 17],
    symbols: Vec<u8>,
}

impl DecodeTable {
    /// `ac`: the table codes AC run/size symbols, so `fast_ac` is filled too (DC tables never
    /// use it: it stays all zero, "not resolved", which is also what any misuse would see).
    pub(crate) fn new(spec: &HuffSpec, ac: bool) -> Result<Self, JpegError> {
        let total: usize = spec.counts.iter().map(|&c| c as usize).sum();
        if total > 256 || total != spec.symbols.len() {
            return err("invalid Huffman table");
        }
        let mut lookup = Box::new([0u16; 1 << LOOKAHEAD]);
        let mut fast_ac = Box::new([0i16; 1 << LOOKAHEAD]);
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut code: u32 = 0;
        let mut k = 0usize;
        for len in 1..=16u32 {
            let n = u32::from(spec.counts[len as usize - 1]);
            valoffset[len as usize] = k as i32 - code as i32;
            for _ in 0..n {
                // Canonical codes must fit in `len` bits; an over-full table is corrupt.
                if code >= (1 << len) {
                    return err("invalid Huffman table (over-subscribed)");
                }
                let symbol = spec.symbols[k];
                if len <= LOOKAHEAD {
                    let shift = LOOKAHEAD - len;
                    let start = (code << shift) as usize;
                    lookup[start..start + (1 << shift)]
                        .fill(((len as u16) << 8) | u16::from(symbol));
                    if ac {
                        fill_fast_ac(&mut fast_ac, code, len, symbol);
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[len as usize] = code as i32 - 1;
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX; // sentinel
        Ok(DecodeTable {
            lookup,
            fast_ac,
            maxcode,
            valoffset,
            symbols: spec.symbols.clone(),
        })
    }

    /// Decodes one symbol. The window must hold at least 16 valid bits (refill first).
    #[inline(always)]
    pub(crate) fn decode(&self, w: &mut Window) -> Result<u8, JpegError> {
        let bits = w.peek16();
        let e = self.lookup[(bits >> (16 - LOOKAHEAD)) as usize];
        if e != 0 {
            w.consume(u32::from(e >> 8));
            return Ok(e as u8);
        }
        let (len, symbol) = self.decode_long(bits)?;
        w.consume(len);
        Ok(symbol)
    }

    /// (zero run, coefficient) of the next AC code if `fast_ac` resolves it, consuming its
    /// bits; None leaves the window as it was. The window must hold at least 16 valid bits.
    #[inline(always)]
    pub(crate) fn take_fast_ac(&self, w: &mut Window) -> Option<(usize, i32)> {
        let f = self.fast_ac[(w.peek16() >> (16 - LOOKAHEAD)) as usize];
        if f == 0 {
            return None;
        }
        w.consume((f & 15) as u32);
        Some((((f >> 4) & 15) as usize, i32::from(f >> 8)))
    }

    /// (length, symbol) of a code longer than the lookahead, from the next 16 bits. Takes no
    /// reader, so that calling it does not make the caller's bit buffer live in memory.
    #[cold]
    #[inline(never)]
    fn decode_long(&self, bits: u32) -> Result<(u32, u8), JpegError> {
        for len in (LOOKAHEAD + 1)..=16 {
            let code = (bits >> (16 - len)) as i32;
            if code <= self.maxcode[len as usize] {
                let idx = self.valoffset[len as usize] + code;
                return match self.symbols.get(idx as usize) {
                    Some(&s) => Ok((len, s)),
                    None => err("invalid Huffman code"),
                };
            }
        }
        err("invalid Huffman code")
    }
}

/// Fills the `fast_ac` entries of the AC code `code` (`len` bits, symbol `rs`): when the code
/// and its extra bits fit in the lookahead, each value of the extra bits owns a range of
/// entries. A range fill per value, not a pass over the whole table: small images decode
/// few enough blocks for a per-entry pass over 2048 entries to show.
fn fill_fast_ac(fast_ac: &mut [i16; 1 << LOOKAHEAD], code: u32, len: u32, rs: u8) {
    let (run, size) = (i16::from(rs >> 4), u32::from(rs & 15));
    // size <= 7: the value (|v| < 128) fits the entry's top byte.
    if size == 0 || size > 7 || len + size > LOOKAHEAD {
        return;
    }
    let shift = LOOKAHEAD - len - size;
    for extra in 0..1u32 << size {
        let value = ((extend(extra, size) as i16) << 8) | (run << 4) | (len + size) as i16;
        let start = (((code << size) | extra) << shift) as usize;
        fast_ac[start..start + (1 << shift)].fill(value);
    }
}

/// T.81 F.2.2.1 EXTEND: `s` extra bits `v` as a signed value.
#[inline]
pub(crate) fn extend(v: u32, s: u32) -> i32 {
    let v = v as i32;
    if s > 0 && v < (1 << (s - 1)) {
        v - (1 << s) + 1
    } else {
        v
    }
}

/// Encoding form of a table: code and length per symbol.
pub(crate) struct EncodeTable {
    pub(crate) code: [u16; 256],
    pub(crate) len: [u8; 256],
}

impl EncodeTable {
    pub(crate) fn new(spec: &HuffSpec) -> Self {
        let mut t = EncodeTable {
            code: [0; 256],
            len: [0; 256],
        };
        let mut code: u32 = 0;
        let mut k = 0;
        for len in 1..=16u8 {
            for _ in 0..spec.counts[len as usize - 1] {
                let s = spec.symbols[k] as usize;
                t.code[s] = code as u16;
                t.len[s] = len;
                code += 1;
                k += 1;
            }
            code <<= 1;
        }
        t
    }
}

/// Builds an optimal Huffman table limited to 16-bit codes from symbol frequencies, following
/// T.81 Annex K.2 (as libjpeg's jchuff.c does): Huffman's algorithm with a reserved extra
/// symbol of frequency 1, so that no real symbol gets the all-ones code, then lengths above 16
/// are folded back (K.3) and the reserved code is dropped.
pub(crate) fn build_optimal(freq: &[u32; 256]) -> HuffSpec {
    const N: usize = 257;
    let mut f = [0u64; N];
    for (d, &s) in f.iter_mut().zip(freq.iter()) {
        *d = u64::from(s);
    }
    if f[..256].iter().all(|&x| x == 0) {
        // Keep the table non-empty: some decoders reject empty DHT tables.
        f[0] = 1;
    }
    f[256] = 1;
    let mut codesize = [0usize; N];
    let mut others = [usize::MAX; N];
    loop {
        // c1 = least frequent, c2 = next least; ties go to the larger symbol value, as in K.2.
        let mut c1 = usize::MAX;
        let mut v = u64::MAX;
        for (i, &x) in f.iter().enumerate() {
            if x != 0 && x <= v {
                v = x;
                c1 = i;
            }
        }
        let mut c2 = usize::MAX;
        v = u64::MAX;
        for (i, &x) in f.iter().enumerate() {
            if x != 0 && x <= v && i != c1 {
                v = x;
                c2 = i;
            }
        }
        if c2 == usize::MAX {
            break;
        }
        f[c1] += f[c2];
        f[c2] = 0;
        codesize[c1] += 1;
        while others[c1] != usize::MAX {
            c1 = others[c1];
            codesize[c1] += 1;
        }
        others[c1] = c2;
        codesize[c2] += 1;
        while others[c2] != usize::MAX {
            c2 = others[c2];
            codesize[c2] += 1;
        }
    }
    // Count codes per length; lengths can exceed 16 (up to 256 in theory).
    let mut bits = [0u32; N + 1];
    for &cs in codesize.iter() {
        if cs > 0 {
            bits[cs] += 1;
        }
    }
    // K.3 Adjust_BITS: move pairs of the longest codes up until nothing is longer than 16.
    let mut i = N;
    while i > 16 {
        while bits[i] > 0 {
            let mut j = i - 2;
            while bits[j] == 0 {
                j -= 1;
            }
            bits[i] -= 2;
            bits[i - 1] += 1;
            bits[j + 1] += 2;
            bits[j] -= 1;
        }
        i -= 1;
    }
    // Drop the reserved symbol's code: it is one of the longest.
    let mut i = 16;
    while bits[i] == 0 {
        i -= 1;
    }
    bits[i] -= 1;

    let mut counts = [0u8; 16];
    for l in 1..=16 {
        counts[l - 1] = bits[l] as u8;
    }
    // Symbols sorted by their (unadjusted) code length, then value: the adjustment preserves
    // that order, which is what makes the reassignment by position valid.
    let mut symbols = Vec::with_capacity(256);
    for l in 1..N {
        for (s, &cs) in codesize[..256].iter().enumerate() {
            if cs == l {
                symbols.push(s as u8);
            }
        }
    }
    HuffSpec { counts, symbols }
}
