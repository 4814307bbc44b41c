//! Bit reader over an entropy-coded segment.
//!
//! Bits sit MSB-first in a 64-bit buffer, refilled to at least 57 valid bits, so one refill
//! covers a Huffman code (<= 16 bits) plus its extra bits (<= 11) several times over. Stuffed
//! `FF 00` pairs become `FF`; at a marker (or the end of input) the reader stops consuming bytes
//! and feeds zero bits, counting them, so that decoding never runs off the slice and the caller
//! can tell afterwards whether it used bits that were not there (truncated or corrupt data).

use super::huffman::extend;
use super::{err, JpegError};

pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    /// The bit buffer and the next unread byte.
    pub(super) w: Window,
    /// Zero bytes fed after hitting a marker or the end of the data.
    fake_bytes: u32,
    at_marker: bool,
}

/// The part of a [`BitReader`] that changes on every symbol. A decoding loop copies it into a
/// local ([`BitReader::ensure_in`]) so that the compiler keeps it in registers: reached
/// through the reader, whose slow refill is a call that may write it, the buffer was stored
/// and reloaded around every symbol, a store-to-load round trip on the loop's critical path.
#[derive(Clone, Copy)]
pub(crate) struct Window {
    buf: u64,
    /// Valid bits at the top of `buf`.
    nbits: u32,
    /// Next unread byte.
    pos: usize,
}

/// True if any byte of `w` is 0xFF (bit trick: a zero byte in `!w`).
#[inline(always)]
pub(crate) fn has_ff(w: u64) -> bool {
    let x = !w;
    (x.wrapping_sub(0x0101_0101_0101_0101) & !x & 0x8080_8080_8080_8080) != 0
}

impl Window {
    /// Top 16 bits of the buffer (valid after a refill).
    #[inline(always)]
    pub(crate) fn peek16(&self) -> u32 {
        (self.buf >> 48) as u32
    }

    /// Top 32 bits of the buffer (valid after `BitReader::ensure_in`).
    #[inline(always)]
    pub(crate) fn peek32(&self) -> u32 {
        (self.buf >> 32) as u32
    }

    #[inline(always)]
    pub(crate) fn consume(&mut self, n: u32) {
        // Callers `ensure_in` before each symbol and take at most 32 bits after it, so n <= nbits
        // and n < 64; the min only keeps a broken caller from wrapping `nbits`.
        let n = n.min(self.nbits);
        self.buf = self.buf.wrapping_shl(n);
        self.nbits -= n;
    }

    /// Reads `n` (0-16) raw bits.
    #[inline(always)]
    pub(crate) fn get_bits(&mut self, n: u32) -> u32 {
        // Two shifts so that n = 0 needs no branch (a shift by 64 would).
        let v = (self.buf >> 1 >> (63 - n)) as u32;
        self.consume(n);
        v
    }

    /// Reads `s` extra bits and sign-extends them as T.81 F.2.2.1 EXTEND does.
    #[inline(always)]
    pub(crate) fn receive_extend(&mut self, s: u32) -> i32 {
        let v = self.get_bits(s);
        extend(v, s)
    }

    /// The fast refill: eight bytes without 0xFF appended wholesale. Bits below the valid
    /// region are then the true next bits, so OR-ing the same bytes in later is harmless.
    /// False when the bytes ahead need the byte-at-a-time refill.
    #[inline(always)]
    fn refill_fast(&mut self, data: &[u8]) -> bool {
        let Some(next) = data.get(self.pos..self.pos + 8) else {
            return false;
        };
        let w = u64::from_be_bytes(next.try_into().expect("eight bytes"));
        if has_ff(w) {
            return false;
        }
        self.buf |= w >> self.nbits;
        let k = (63 - self.nbits) / 8;
        self.pos += k as usize;
        self.nbits += k * 8;
        true
    }
}

impl<'a> BitReader<'a> {
    pub(crate) fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader {
            data,
            w: Window {
                buf: 0,
                nbits: 0,
                pos,
            },
            fake_bytes: 0,
            at_marker: false,
        }
    }

    /// Makes sure `w`, this reader's window held in a caller's local, has at least 32 bits
    /// buffered. The window goes back into the reader only for the rare slow refill.
    #[inline(always)]
    pub(crate) fn ensure_in(&mut self, w: &mut Window) {
        if w.nbits < 32 && !w.refill_fast(self.data) {
            self.w = *w;
            self.refill_slow();
            *w = self.w;
        }
    }

    #[cold]
    #[inline(never)]
    fn refill_slow(&mut self) {
        let w = &mut self.w;
        while w.nbits <= 56 {
            let mut byte = 0u8;
            if !self.at_marker && w.pos < self.data.len() {
                let b = self.data[w.pos];
                if b != 0xFF {
                    byte = b;
                    w.pos += 1;
                } else if self.data.get(w.pos + 1) == Some(&0) {
                    byte = 0xFF;
                    w.pos += 2;
                } else {
                    // A marker (or FF at the very end): stop here, leave `pos` on the FF.
                    self.at_marker = true;
                    self.fake_bytes += 1;
                }
            } else {
                self.fake_bytes += 1;
            }
            w.buf |= u64::from(byte) << (56 - w.nbits);
            w.nbits += 8;
        }
    }

    /// [`Self::next_marker`] for a caller holding the window in `w`.
    pub(crate) fn next_marker_in(&mut self, w: &mut Window) -> Result<(u8, usize), JpegError> {
        self.w = *w;
        let marker = self.next_marker();
        *w = self.w;
        marker
    }

    /// Ok if every bit consumed so far was real data, Err if decoding ran into a marker or
    /// past the end of the input.
    pub(crate) fn check_not_overrun(&self) -> Result<(), JpegError> {
        if self.fake_bytes * 8 > self.w.nbits {
            return err("entropy-coded data is truncated or corrupt");
        }
        Ok(())
    }

    /// Drops the buffered bits and positions on the next marker, returning (marker, position
    /// after it). Used at restart intervals and at the end of a scan.
    pub(crate) fn next_marker(&mut self) -> Result<(u8, usize), JpegError> {
        self.check_not_overrun()?;
        self.w.buf = 0;
        self.w.nbits = 0;
        self.fake_bytes = 0;
        self.at_marker = false;
        // Only padding bits can be left; anything but fill bytes before the marker means the
        // data was corrupt.
        let d = self.data;
        let mut p = self.w.pos;
        while p < d.len() && d[p] == 0xFF && d.get(p + 1) == Some(&0xFF) {
            p += 1;
        }
        if p + 1 >= d.len() {
            return err("entropy-coded data is truncated");
        }
        if d[p] != 0xFF || d[p + 1] == 0 {
            return err("extraneous bytes in entropy-coded data");
        }
        self.w.pos = p + 2;
        Ok((d[p + 1], p + 2))
    }
}
