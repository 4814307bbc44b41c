//! Marker parsing and the top-level read loop: headers, tables, and each scan handed to
//! `decode` to fill the per-component coefficient buffers.

use super::bitread::BitReader;
use super::decode::{decode_scan, ScanParams};
use super::huffman::{DecodeTable, HuffSpec};
use super::{err, ComponentInfo, Info, JpegError};

/// A component and its coefficients.
pub(crate) struct Component {
    pub(crate) id: u8,
    pub(crate) h: u8,
    pub(crate) v: u8,
    pub(crate) tq: u8,
    /// Quantisation table (zigzag order) in effect for this component's first scan.
    pub(crate) qt: [u16; 64],
    pub(crate) qt_set: bool,
    /// Blocks per row / rows of blocks in the buffer: whole MCUs, including the padding blocks
    /// an interleaved scan codes at the right and bottom edges.
    pub(crate) bw: usize,
    pub(crate) bh: usize,
    /// Blocks that hold image samples: ceil(component width / 8) etc. A non-interleaved scan
    /// codes exactly these.
    pub(crate) w_blocks: usize,
    pub(crate) h_blocks: usize,
    /// 64 coefficients per block in zigzag order, blocks row-major, `bw` per row: all of
    /// them, or one MCU row's (`v` block rows) when the image is read row by row.
    pub(crate) coeffs: Vec<i16>,
}

/// A frame with all its coefficients.
pub(crate) struct Image {
    pub(crate) width: u16,
    pub(crate) height: u16,
    pub(crate) progressive: bool,
    pub(crate) mcux: usize,
    pub(crate) mcuy: usize,
    pub(crate) comps: Vec<Component>,
    /// The buffers hold one MCU row, decoded, handed on and cleared in turn (see
    /// [`read_coefficient_rows`]).
    pub(crate) rolling: bool,
}

impl Image {
    /// Component `ci`'s blocks of MCU row `uy`: `v` rows of `bw` blocks.
    pub(crate) fn mcu_row(&self, ci: usize, uy: usize) -> &[i16] {
        let c = &self.comps[ci];
        let len = c.bw * c.v as usize * 64;
        let start = if self.rolling { 0 } else { uy * len };
        &c.coeffs[start..start + len]
    }
}

/// Called with the image and an MCU row's index once that row's coefficients are final.
pub(crate) type RowSink<'s, 'f> = &'s mut (dyn FnMut(&Image, usize) -> Result<(), JpegError> + 'f);

/// Header state accumulated while walking the markers.
struct State {
    info: Info,
    dc_tables: [Option<DecodeTable>; 4],
    ac_tables: [Option<DecodeTable>; 4],
    restart_interval: u16,
    frame: Option<Image>,
    saw_app14_rgb_ids: bool,
    /// ICC_PROFILE chunks seen so far: (sequence number, count, payload).
    icc_chunks: Vec<(u8, u8, Vec<u8>)>,
}

/// Skips the fill bytes (any number of 0xFF) at `pos` and reads the marker code after them:
/// the code and the offset just past it, or None if the data ends first.
pub(super) fn read_marker_code(data: &[u8], mut pos: usize) -> Option<(u8, usize)> {
    while pos < data.len() && data[pos] == 0xFF {
        pos += 1;
    }
    let &marker = data.get(pos)?;
    Some((marker, pos + 1))
}

/// Why the length field of a marker segment cannot be followed. Kept apart because the strict
/// reader and the structure check judge them differently.
pub(super) enum BadSegment {
    /// The data ends inside the length field.
    NoLength,
    /// A length under 2, which cannot even cover itself: corruption, not truncation.
    TooShort,
    /// The segment runs past the end of the data.
    PastEnd,
}

/// The payload of the segment whose length field is at `pos`, and the offset after it.
pub(super) fn read_segment(data: &[u8], pos: usize) -> Result<(&[u8], usize), BadSegment> {
    let Some(b) = data.get(pos..pos + 2) else {
        return Err(BadSegment::NoLength);
    };
    let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
    if len < 2 {
        return Err(BadSegment::TooShort);
    }
    if pos + len > data.len() {
        return Err(BadSegment::PastEnd);
    }
    Ok((&data[pos + 2..pos + len], pos + len))
}

/// Reads headers up to the first scan, for path decisions.
pub(crate) fn read_info(data: &[u8]) -> Result<Info, JpegError> {
    let st = walk(data, false, None)?;
    Ok(st.info)
}

/// Reads the whole file into coefficient buffers, refusing what we cannot re-encode as a
/// baseline YCbCr/grayscale JPEG without changing its meaning.
pub(crate) fn read_coefficients(data: &[u8]) -> Result<Image, JpegError> {
    finished(walk(data, true, None)?)
}

/// Reads the frame and hands its coefficients to `each_row` an MCU row at a time, top to
/// bottom. A sequential file whose first scan codes every component (nearly every baseline
/// JPEG) is decoded a row at a time, so only one MCU row of coefficients is ever held (192 KB
/// for a 4000-pixel-wide 4:2:0 photo, against 36 MB for all of them); any other (progressive,
/// or components in separate scans) is read whole, then handed on row by row.
pub(crate) fn read_coefficient_rows(
    data: &[u8],
    each_row: RowSink<'_, '_>,
) -> Result<(), JpegError> {
    let img = finished(walk(data, true, Some(&mut *each_row))?)?;
    if !img.rolling {
        for uy in 0..img.mcuy {
            each_row(&img, uy)?;
        }
    }
    Ok(())
}

fn finished(st: State) -> Result<Image, JpegError> {
    if let Some(why) = st.info.unsupported {
        return err(why);
    }
    let img = match st.frame {
        Some(f) => f,
        None => return err("no frame"),
    };
    for c in &img.comps {
        if !c.qt_set {
            return err("component never appears in a scan");
        }
    }
    Ok(img)
}

fn walk<'f>(
    data: &[u8],
    decode: bool,
    mut rows: Option<RowSink<'_, 'f>>,
) -> Result<State, JpegError> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 {
        return err("not a JPEG (no SOI marker)");
    }
    let mut st = State {
        info: Info {
            width: 0,
            height: 0,
            components: Vec::new(),
            progressive: false,
            precision: 8,
            quant_tables: [None; 4],
            adobe_transform: None,
            exif_orientation: None,
            icc_profile: None,
            unsupported: None,
            streams: false,
        },
        dc_tables: [None, None, None, None],
        ac_tables: [None, None, None, None],
        restart_interval: 0,
        frame: None,
        saw_app14_rgb_ids: false,
        icc_chunks: Vec::new(),
    };
    let mut pos = 2;
    let mut scans = 0usize;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        if pos >= data.len() {
            return err("missing EOI marker");
        }
        if data[pos] != 0xFF {
            return err(format!("expected a marker at offset {pos}"));
        }
        let Some((marker, next)) = read_marker_code(data, pos) else {
            return err("missing EOI marker");
        };
        pos = next;
        match marker {
            0xD9 => break,
            0xD0..=0xD7 | 0x01 => continue, // stray standalone markers: nothing to do
            0xD8 => return err("unexpected SOI marker"),
            _ => {}
        }
        let seg = match read_segment(data, pos) {
            Ok((seg, next)) => {
                pos = next;
                seg
            }
            Err(BadSegment::NoLength) => return err("unexpected end of data"),
            Err(BadSegment::TooShort | BadSegment::PastEnd) => {
                return err("marker segment runs past the end of data")
            }
        };
        match marker {
            0xC0..=0xC2 => {
                if st.frame.is_some() {
                    return err("more than one frame");
                }
                read_sof(&mut st, seg, marker == 0xC2)?;
            }
            0xC3 | 0xC5..=0xC7 | 0xCB | 0xCD..=0xCF => {
                return err("lossless or hierarchical JPEG is not supported")
            }
            0xC9 | 0xCA => return err("arithmetic-coded JPEG is not supported"),
            0xCC => return err("arithmetic coding conditioning (DAC) is not supported"),
            0xC4 => read_dht(&mut st, seg)?,
            0xDB => read_dqt(&mut st, seg)?,
            0xDD => {
                if seg.len() < 2 {
                    return err("bad DRI segment");
                }
                st.restart_interval = u16::from_be_bytes([seg[0], seg[1]]);
            }
            0xDC => return err("DNL marker is not supported"),
            0xEE => read_app14(&mut st, seg),
            0xE1 => read_app1(&mut st, seg),
            0xE2 => read_app2(&mut st, seg),
            0xDA => {
                if st.frame.is_none() {
                    return err("scan before frame header");
                }
                finalize_support(&mut st);
                assemble_icc(&mut st);
                if scans == 0 {
                    let frame = st.frame.as_ref().expect("checked above");
                    st.info.streams = !frame.progressive
                        && usize::from(seg.first().copied().unwrap_or(0)) == frame.comps.len();
                }
                if !decode {
                    return Ok(st);
                }
                if let Some(why) = &st.info.unsupported {
                    return err(why.clone());
                }
                scans += 1;
                if scans > 1000 {
                    return err("too many scans");
                }
                pos = read_scan(&mut st, data, seg, pos, rows.as_deref_mut())?;
            }
            _ => {} // APPn, COM, JPGn and unknown segments are skipped (and not copied).
        }
    }
    if st.frame.is_none() {
        return err("no frame");
    }
    if scans == 0 && decode {
        return err("no scan");
    }
    finalize_support(&mut st);
    assemble_icc(&mut st);
    Ok(st)
}

/// What [`check_structure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StructureProblem {
    /// No EOI marker after the last scan: the data ends inside a segment or a scan.
    Truncated,
    /// A sequential (SOF0/SOF1) frame with a scan that codes fewer components than the frame
    /// has.
    NonInterleaved,
}

/// Walks every segment and scan of a file that starts with SOI, for the two problems the pixel
/// path must catch before its decoder sees them (see `compress::decode`). Much more lenient
/// than [`walk`]: stray bytes between segments and repeated SOIs are skipped, and anything
/// corrupt but not truncated passes, because the decoder that runs next reports it better.
/// Scans are skipped without decoding them.
pub(crate) fn check_structure(data: &[u8]) -> Result<(), StructureProblem> {
    use StructureProblem::{NonInterleaved, Truncated};
    let len = data.len();
    // Components in the frame, if it is a Huffman sequential (non-progressive) one.
    let mut sequential_components: Option<u8> = None;
    let mut pos = 2;
    loop {
        match data[pos.min(len)..].iter().position(|&b| b == 0xFF) {
            Some(offset) => pos += offset,
            None => return Err(Truncated),
        }
        let (marker, next) = read_marker_code(data, pos).ok_or(Truncated)?;
        pos = next;
        match marker {
            0xD9 => return Ok(()),
            // No length field: TEM, RSTn, a repeated SOI, and 0x00, which only means "escaped
            // FF" but may turn up in garbage between segments.
            0x00 | 0x01 | 0xD0..=0xD8 => continue,
            _ => {}
        }
        let seg = match read_segment(data, pos) {
            Ok((seg, next)) => {
                pos = next;
                seg
            }
            Err(BadSegment::TooShort) => return Ok(()),
            Err(BadSegment::NoLength | BadSegment::PastEnd) => return Err(Truncated),
        };
        match (marker, seg) {
            // SOF payload: precision, height (2), width (2), component count, ...
            (0xC0 | 0xC1, &[_, _, _, _, _, components, ..]) => {
                sequential_components = Some(components);
            }
            // SOS payload: component count in this scan, ...
            (0xDA, &[scan_components, ..])
                if sequential_components.is_some_and(|frame| scan_components < frame) =>
            {
                return Err(NonInterleaved);
            }
            _ => {}
        }
        if marker == 0xDA {
            pos = skip_entropy_coded_data(data, pos).ok_or(Truncated)?;
        }
    }
}

/// The offset of the marker that ends the scan starting at `pos`, or None if the data ends
/// first. Inside a scan `FF 00` is an escaped data byte and `FF D0`..`FF D7` are restart
/// markers; any other `FF xx` ends the scan.
pub(super) fn skip_entropy_coded_data(data: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        pos += data.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        match *data.get(pos + 1)? {
            0x00 | 0xD0..=0xD7 => pos += 2,
            0xFF => pos += 1, // a fill byte: look at the next one
            _ => return Some(pos),
        }
    }
}

fn read_sof(st: &mut State, seg: &[u8], progressive: bool) -> Result<(), JpegError> {
    if seg.len() < 6 {
        return err("bad SOF segment");
    }
    let precision = seg[0];
    let height = u16::from_be_bytes([seg[1], seg[2]]);
    let width = u16::from_be_bytes([seg[3], seg[4]]);
    let nc = seg[5] as usize;
    st.info.precision = precision;
    st.info.width = width;
    st.info.height = height;
    st.info.progressive = progressive;
    if precision != 8 {
        return err(format!("{precision}-bit JPEG is not supported"));
    }
    if width == 0 || height == 0 {
        return err("zero image dimension (DNL) is not supported");
    }
    if nc != 1 && nc != 3 && nc != 4 {
        return err(format!("{nc}-component JPEG is not supported"));
    }
    if seg.len() < 6 + 3 * nc {
        return err("bad SOF segment");
    }
    let mut comps = Vec::with_capacity(nc);
    for i in 0..nc {
        let c = &seg[6 + 3 * i..9 + 3 * i];
        let (h, v) = (c[1] >> 4, c[1] & 15);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
            return err("bad component in SOF");
        }
        if comps.iter().any(|x: &ComponentInfo| x.id == c[0]) {
            return err("duplicate component id");
        }
        comps.push(ComponentInfo {
            id: c[0],
            h,
            v,
            tq: c[2],
        });
    }
    // With one component the MCU is one block whatever the sampling factors say.
    let (hmax, vmax) = if nc == 1 {
        (1, 1)
    } else {
        (
            comps.iter().map(|c| c.h).max().unwrap_or(1) as usize,
            comps.iter().map(|c| c.v).max().unwrap_or(1) as usize,
        )
    };
    let (w, hgt) = (width as usize, height as usize);
    let mcux = w.div_ceil(8 * hmax);
    let mcuy = hgt.div_ceil(8 * vmax);
    let mut frame_comps = Vec::with_capacity(nc);
    for c in &comps {
        let (ch, cv) = if nc == 1 {
            (1, 1)
        } else {
            (c.h as usize, c.v as usize)
        };
        let cw = (w * ch).div_ceil(hmax);
        let chh = (hgt * cv).div_ceil(vmax);
        let (bw, bh) = (mcux * ch, mcuy * cv);
        frame_comps.push(Component {
            id: c.id,
            h: ch as u8,
            v: cv as u8,
            tq: c.tq,
            qt: [0; 64],
            qt_set: false,
            bw,
            bh,
            w_blocks: cw.div_ceil(8),
            h_blocks: chh.div_ceil(8),
            coeffs: Vec::new(),
        });
    }
    st.saw_app14_rgb_ids =
        nc == 3 && comps[0].id == b'R' && comps[1].id == b'G' && comps[2].id == b'B';
    st.info.components = comps;
    st.frame = Some(Image {
        width,
        height,
        progressive,
        mcux,
        mcuy,
        comps: frame_comps,
        rolling: false,
    });
    Ok(())
}

/// Decides, once the headers are known, whether the frame can be re-encoded as baseline
/// YCbCr/grayscale. Records the reason in `info.unsupported` if not.
fn finalize_support(st: &mut State) {
    if st.info.unsupported.is_some() {
        return;
    }
    let nc = st.info.components.len();
    let why = if nc == 4 {
        Some("4-component (CMYK/YCCK) JPEG is not supported".to_string())
    } else if nc == 3 && st.info.adobe_transform == Some(0) {
        Some("Adobe RGB-transform JPEG is not supported".to_string())
    } else if nc == 3 && st.info.adobe_transform.is_none() && st.saw_app14_rgb_ids {
        Some("RGB JPEG (component ids R,G,B) is not supported".to_string())
    } else if nc == 3 && st.info.components.iter().map(|c| c.h * c.v).sum::<u8>() > 10 {
        Some("sampling factors too large for one interleaved scan".to_string())
    } else {
        None
    };
    st.info.unsupported = why;
}

fn read_dqt(st: &mut State, mut seg: &[u8]) -> Result<(), JpegError> {
    while !seg.is_empty() {
        let pq = seg[0] >> 4;
        let tq = (seg[0] & 15) as usize;
        if tq > 3 || pq > 1 {
            return err("bad DQT segment");
        }
        let n = if pq == 0 { 64 } else { 128 };
        if seg.len() < 1 + n {
            return err("bad DQT segment");
        }
        let mut t = [0u16; 64];
        for (k, v) in t.iter_mut().enumerate() {
            *v = if pq == 0 {
                u16::from(seg[1 + k])
            } else {
                u16::from_be_bytes([seg[1 + 2 * k], seg[2 + 2 * k]])
            };
            if *v == 0 {
                return err("zero quantisation step");
            }
        }
        st.info.quant_tables[tq] = Some(t);
        seg = &seg[1 + n..];
    }
    Ok(())
}

fn read_dht(st: &mut State, mut seg: &[u8]) -> Result<(), JpegError> {
    while !seg.is_empty() {
        if seg.len() < 17 {
            return err("bad DHT segment");
        }
        let tc = seg[0] >> 4;
        let th = (seg[0] & 15) as usize;
        if tc > 1 || th > 3 {
            return err("bad DHT segment");
        }
        let mut counts = [0u8; 16];
        counts.copy_from_slice(&seg[1..17]);
        let n: usize = counts.iter().map(|&c| c as usize).sum();
        if seg.len() < 17 + n {
            return err("bad DHT segment");
        }
        let spec = HuffSpec {
            counts,
            symbols: seg[17..17 + n].to_vec(),
        };
        let table = DecodeTable::new(&spec, tc == 1)?;
        if tc == 0 {
            st.dc_tables[th] = Some(table);
        } else {
            st.ac_tables[th] = Some(table);
        }
        seg = &seg[17 + n..];
    }
    Ok(())
}

/// The ICC profile is split over APP2 segments tagged `ICC_PROFILE\0`, each with its sequence
/// number (from 1) and the chunk count. Kept until the first scan, then assembled once.
fn read_app2(st: &mut State, seg: &[u8]) {
    const TAG: &[u8] = b"ICC_PROFILE\0";
    if seg.len() < TAG.len() + 2 || &seg[..TAG.len()] != TAG {
        return;
    }
    // Bounded: at most 255 chunks of < 64 KiB each can be declared, and a repeated sequence
    // number is a broken file, not a second profile.
    let (seq, count) = (seg[TAG.len()], seg[TAG.len() + 1]);
    if st.icc_chunks.iter().all(|c| c.0 != seq) {
        st.icc_chunks
            .push((seq, count, seg[TAG.len() + 2..].to_vec()));
    }
}

/// Joins the ICC chunks in sequence order. A profile with missing or inconsistent chunks is
/// still handed on (as the bytes that are there): the colour code decides what a broken profile
/// means, and must see that there was one.
fn assemble_icc(st: &mut State) {
    if st.icc_chunks.is_empty() || st.info.icc_profile.is_some() {
        return;
    }
    st.icc_chunks.sort_by_key(|c| c.0);
    let mut icc = Vec::with_capacity(st.icc_chunks.iter().map(|c| c.2.len()).sum());
    for (_, _, chunk) in st.icc_chunks.drain(..) {
        icc.extend_from_slice(&chunk);
    }
    st.info.icc_profile = Some(icc);
}

fn read_app14(st: &mut State, seg: &[u8]) {
    if seg.len() >= 12 && &seg[..5] == b"Adobe" {
        st.info.adobe_transform = Some(seg[11]);
    }
}

/// Pulls the orientation tag out of an EXIF APP1 segment; silently ignores anything malformed.
fn read_app1(st: &mut State, seg: &[u8]) {
    if seg.len() < 14 || &seg[..6] != b"Exif\0\0" {
        return;
    }
    let t = &seg[6..];
    let le = match &t[..2] {
        b"II" => true,
        b"MM" => false,
        _ => return,
    };
    let r16 = |p: usize| -> Option<u16> {
        let b = t.get(p..p + 2)?;
        Some(if le {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let r32 = |p: usize| -> Option<u32> {
        let b = t.get(p..p + 4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let Some(ifd) = r32(4) else { return };
    let ifd = ifd as usize;
    let Some(n) = r16(ifd) else { return };
    for i in 0..n as usize {
        let e = ifd + 2 + 12 * i;
        if r16(e) == Some(0x0112) {
            if let Some(v) = r16(e + 8) {
                st.info.exif_orientation = Some(v);
            }
            return;
        }
    }
}

/// Parses an SOS header at `seg` and decodes its entropy-coded data starting at `pos`.
/// Returns the position of the marker that ends the scan.
fn read_scan(
    st: &mut State,
    data: &[u8],
    seg: &[u8],
    pos: usize,
    rows: Option<RowSink<'_, '_>>,
) -> Result<usize, JpegError> {
    let frame = st.frame.as_mut().expect("checked by caller");
    let ns = *seg.first().unwrap_or(&0) as usize;
    if ns == 0 || ns > 4 || seg.len() < 1 + 2 * ns + 3 {
        return err("bad SOS segment");
    }
    let mut comp_idx = Vec::with_capacity(ns);
    let mut dc = Vec::with_capacity(ns);
    let mut ac = Vec::with_capacity(ns);
    for i in 0..ns {
        let id = seg[1 + 2 * i];
        let tables = seg[2 + 2 * i];
        let Some(ci) = frame.comps.iter().position(|c| c.id == id) else {
            return err("scan refers to an unknown component");
        };
        if comp_idx.contains(&ci) {
            return err("component twice in one scan");
        }
        comp_idx.push(ci);
        dc.push((tables >> 4) as usize);
        ac.push((tables & 15) as usize);
    }
    let p = 1 + 2 * ns;
    let (ss, se, ah, al) = (seg[p], seg[p + 1], seg[p + 2] >> 4, seg[p + 2] & 15);
    if ns > 1 {
        let blocks: usize = comp_idx
            .iter()
            .map(|&ci| frame.comps[ci].h as usize * frame.comps[ci].v as usize)
            .sum();
        if blocks > 10 {
            return err("too many blocks per MCU");
        }
    }
    if !frame.progressive && (ss != 0 || se != 63 || ah != 0 || al != 0) {
        return err("bad spectral selection in a sequential scan");
    }
    // Row by row only when this first scan completes every component's coefficients.
    let first = frame.comps.iter().all(|c| !c.qt_set);
    if first && rows.is_some() && st.info.streams {
        frame.rolling = true;
    } else if frame.rolling {
        // T.81 codes each component of a sequential frame in exactly one scan; the rows
        // handed on are final.
        return err("a sequential frame with a scan after the one that coded every component");
    }
    // Snapshot quantisation tables and allocate buffers at each component's first scan.
    for &ci in &comp_idx {
        let c = &mut frame.comps[ci];
        if !c.qt_set {
            let Some(q) = st.info.quant_tables[c.tq as usize] else {
                return err("missing quantisation table");
            };
            c.qt = q;
            c.qt_set = true;
            let block_rows = if frame.rolling { c.v as usize } else { c.bh };
            c.coeffs = vec![0i16; c.bw * block_rows * 64];
        }
    }
    let mut dc_t = Vec::with_capacity(ns);
    let mut ac_t = Vec::with_capacity(ns);
    for i in 0..ns {
        let need_dc = ss == 0 && ah == 0;
        let need_ac = se > 0;
        let d = st.dc_tables.get(dc[i]).and_then(|t| t.as_ref());
        let a = st.ac_tables.get(ac[i]).and_then(|t| t.as_ref());
        if (need_dc && d.is_none()) || (need_ac && a.is_none()) {
            return err("missing Huffman table");
        }
        dc_t.push(d);
        ac_t.push(a);
    }
    let params = ScanParams {
        comps: &comp_idx,
        dc: &dc_t,
        ac: &ac_t,
        ss,
        se,
        ah,
        al,
        restart_interval: st.restart_interval,
    };
    let mut reader = BitReader::new(data, pos);
    let rows = if frame.rolling { rows } else { None };
    decode_scan(frame, &params, &mut reader, rows)?;
    let (_, after) = reader.next_marker()?;
    // Hand back the position of the marker itself to the marker loop.
    Ok(after - 2)
}
