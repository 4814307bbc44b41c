//! The decoder against the `png` crate (through `image`) on every layout and filter it takes,
//! and on damaged image data.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, ImageFormat};

use super::{chunk, push_chunk, Plain, PngError, SIGNATURE};

const FILTERS: [FilterType; 6] = [
    FilterType::NoFilter,
    FilterType::Sub,
    FilterType::Up,
    FilterType::Avg,
    FilterType::Paeth,
    FilterType::Adaptive,
];

/// A photo-like test card: gradients, a sharp edge and noise, in every channel.
fn card(width: u32, height: u32, channels: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    let mut out = Vec::with_capacity(width as usize * height as usize * channels);
    for y in 0..height {
        for x in 0..width {
            for ch in 0..channels as u32 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let base = (x * 255 / width.max(1) + y * 3 + ch * 60) % 256;
                let edge = if x > width / 2 { 90 } else { 0 };
                out.push((base + edge + (state % 9)) as u8);
            }
        }
    }
    out
}

/// Rows repeating every `period`: deflate copies them from that far back, which must still be
/// filtered bytes when it does.
fn repeating(width: u32, height: u32, channels: usize, period: u32) -> Vec<u8> {
    let row = width as usize * channels;
    // Uniform noise: incompressible but for the copies.
    let mut state = 0x1234_5678_u32;
    let pattern: Vec<u8> = (0..row * period as usize)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect();
    (0..height as usize)
        .flat_map(|y| pattern[(y % period as usize) * row..][..row].to_vec())
        .collect()
}

fn encode(
    pixels: &[u8],
    width: u32,
    height: u32,
    color: ExtendedColorType,
    filter: FilterType,
) -> Vec<u8> {
    let mut out = Vec::new();
    // Not `Fast`: its deflate copies only from a few bytes back.
    PngEncoder::new_with_quality(&mut out, CompressionType::Default, filter)
        .write_image(pixels, width, height, color)
        .unwrap();
    out
}

/// What the `png` crate decodes the file to.
fn reference(png: &[u8]) -> Vec<u8> {
    image::load_from_memory_with_format(png, ImageFormat::Png)
        .unwrap()
        .into_bytes()
}

fn decode(png: &[u8]) -> Result<Vec<u8>, PngError> {
    Plain::read(png)
        .expect("a file this decoder takes")
        .decode(png)
}

fn chunk_bytes(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    push_chunk(&mut out, kind, data);
    out
}

/// The file's chunks as (type, data).
fn chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
    let mut at = SIGNATURE.len();
    let mut out = Vec::new();
    while let Some(next) = chunk(png, at) {
        out.push((next.kind, png[next.data.clone()].to_vec()));
        at += next.len;
    }
    out
}

/// The file rebuilt: `header` changes IHDR's data, `extra` chunks go before the image data,
/// whose zlib stream `stream` may rewrite, cut into chunks of `piece` bytes (an empty chunk
/// first).
fn rebuild(
    png: &[u8],
    header: impl Fn(&mut Vec<u8>),
    extra: &[([u8; 4], Vec<u8>)],
    stream: impl Fn(Vec<u8>) -> Vec<u8>,
    piece: usize,
) -> Vec<u8> {
    let parts = chunks(png);
    let zlib: Vec<u8> = parts
        .iter()
        .filter(|(k, _)| k == b"IDAT")
        .flat_map(|(_, d)| d.clone())
        .collect();
    let zlib = stream(zlib);
    let mut out = SIGNATURE.to_vec();
    let mut ihdr = parts[0].1.clone();
    header(&mut ihdr);
    out.extend(chunk_bytes(b"IHDR", &ihdr));
    for (kind, data) in extra {
        out.extend(chunk_bytes(kind, data));
    }
    out.extend(chunk_bytes(b"IDAT", &[]));
    for data in zlib.chunks(piece) {
        out.extend(chunk_bytes(b"IDAT", data));
    }
    out.extend(chunk_bytes(b"IEND", &[]));
    out
}

/// A stream rewrite that changes the filtered rows with `f`.
fn rows(f: impl Fn(&mut Vec<u8>)) -> impl Fn(Vec<u8>) -> Vec<u8> {
    move |zlib| {
        let mut raw = fdeflate::decompress_to_vec(&zlib).unwrap();
        f(&mut raw);
        fdeflate::compress_to_vec(&raw)
    }
}

fn same_stream(zlib: Vec<u8>) -> Vec<u8> {
    zlib
}

#[test]
fn every_layout_and_filter_decodes_as_the_png_crate_does() {
    let layouts = [
        (ExtendedColorType::L8, 1),
        (ExtendedColorType::La8, 2),
        (ExtendedColorType::Rgb8, 3),
        (ExtendedColorType::Rgba8, 4),
    ];
    // One pixel, one column, one row, odd sizes, and one past deflate's 32 KB window.
    let sizes = [(1, 1), (1, 9), (9, 1), (2, 2), (33, 17), (301, 67)];
    let mut checked = 0;
    for (color, channels) in layouts {
        for (w, h) in sizes {
            let pixels = card(w, h, channels, w * h);
            for filter in FILTERS {
                let png = encode(&pixels, w, h, color, filter);
                let plain = Plain::read(&png).expect("taken");
                assert_eq!((plain.width(), plain.height()), (w, h));
                assert_eq!(usize::from(plain.channels()), channels);
                let want = reference(&png);
                assert_eq!(want, pixels, "the reference round-trips");
                let got = plain.decode(&png).unwrap();
                assert!(got == want, "{color:?} {w}x{h} {filter:?}");
                // Many small IDAT chunks (and an empty one) are the same stream.
                let split = rebuild(&png, |_| {}, &[], same_stream, 97);
                assert!(
                    decode(&split).unwrap() == want,
                    "{color:?} {w}x{h} {filter:?} split"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 4 * 6 * 6);
}

#[test]
fn copies_from_the_far_end_of_deflates_window_read_filtered_bytes() {
    // 904-byte rows repeating every 35 rows: copies from 31.6 KB back, just inside the window;
    // 361 KB of rows, more than one stretch of the inflater even in one chunk.
    let (w, h) = (301, 400);
    let pixels = repeating(w, h, 3, 35);
    for filter in [FilterType::NoFilter, FilterType::Up, FilterType::Paeth] {
        let png = encode(&pixels, w, h, ExtendedColorType::Rgb8, filter);
        // Far copies are what made the file small.
        assert!(
            png.len() < pixels.len() / 2,
            "{filter:?}: {} bytes",
            png.len()
        );
        assert!(decode(&png).unwrap() == pixels, "{filter:?}");
        // In small chunks, so that rows are unfiltered while the stream is still being read.
        let split = rebuild(&png, |_| {}, &[], same_stream, 1000);
        assert!(decode(&split).unwrap() == pixels, "{filter:?} split");
    }
}

#[test]
fn what_it_does_not_take_is_left_to_the_png_crate() {
    let pixels = card(20, 10, 3, 7);
    let png = encode(
        &pixels,
        20,
        10,
        ExtendedColorType::Rgb8,
        FilterType::Adaptive,
    );
    assert!(Plain::read(&png).is_some());
    let with_ihdr =
        |byte: usize, value: u8| rebuild(&png, |h| h[byte] = value, &[], same_stream, 1 << 20);
    // 16-bit, palette, interlaced.
    assert!(Plain::read(&with_ihdr(8, 16)).is_none());
    assert!(Plain::read(&with_ihdr(9, 3)).is_none());
    assert!(Plain::read(&with_ihdr(12, 1)).is_none());
    // A colour key (transparency the `png` crate expands to alpha).
    let keyed = rebuild(
        &png,
        |_| {},
        &[(*b"tRNS", vec![0, 1, 0, 2, 0, 3])],
        same_stream,
        1 << 20,
    );
    assert!(Plain::read(&keyed).is_none());
    // A damaged IDAT checksum, a file cut short, no IEND, a zero-sized header, not a PNG.
    let mut bad_crc = png.clone();
    let idat_at = png.windows(4).position(|w| w == b"IDAT").unwrap();
    bad_crc[idat_at + 6] ^= 1;
    assert!(Plain::read(&bad_crc).is_none());
    assert!(Plain::read(&png[..png.len() - 20]).is_none());
    assert!(Plain::read(&png[..png.len() - 12]).is_none());
    assert!(Plain::read(&with_ihdr(3, 0)).is_none());
    assert!(Plain::read(b"GIF89a").is_none());
    assert!(Plain::read(&png[..8]).is_none());
    // Other chunks before and after the image data are skipped.
    let annotated = rebuild(
        &png,
        |_| {},
        &[(*b"tEXt", b"Comment\0hi".to_vec())],
        same_stream,
        1 << 20,
    );
    assert!(decode(&annotated).unwrap() == pixels);
}

#[test]
fn damaged_image_data_is_an_error() {
    let (w, h) = (64, 40);
    let pixels = card(w, h, 3, 3);
    let png = encode(&pixels, w, h, ExtendedColorType::Rgb8, FilterType::Paeth);
    let stride = w as usize * 3 + 1;

    // The stream ends early (valid checksums, so the chunk walk takes it).
    let cut = rebuild(&png, |_| {}, &[], |z| z[..z.len() / 2].to_vec(), 1 << 20);
    assert!(matches!(
        decode(&cut),
        Err(PngError::Truncated { .. } | PngError::Inflate(_))
    ));
    // A complete stream of too few rows.
    let short = rebuild(
        &png,
        |_| {},
        &[],
        rows(|r| r.truncate(stride * 10)),
        1 << 20,
    );
    match decode(&short) {
        Err(PngError::Truncated { got, want }) => {
            assert_eq!((got, want), (stride * 10, stride * 40))
        }
        other => panic!("{other:?}"),
    }
    // A row with filter type 5.
    let filter = rebuild(&png, |_| {}, &[], rows(|r| r[stride * 7] = 5), 1 << 20);
    match decode(&filter) {
        Err(PngError::Filter { filter, row }) => assert_eq!((filter, row), (5, 7)),
        other => panic!("{other:?}"),
    }
    // Not deflate at all.
    let noise = rebuild(
        &png,
        |_| {},
        &[],
        |z| z.iter().map(|b| b ^ 0x5a).collect(),
        1 << 20,
    );
    assert!(decode(&noise).is_err());
    // More rows than the header says: the extra is ignored, as libpng does.
    let long = rebuild(
        &png,
        |_| {},
        &[],
        rows(|r| r.extend_from_slice(&vec![0; stride * 3])),
        1 << 20,
    );
    assert!(decode(&long).unwrap() == pixels);
}
