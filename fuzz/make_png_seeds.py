"""Writes the PNG fuzzer's seed files into fuzz/corpus/png: small 8-bit gray, gray+alpha, RGB
and RGBA images whose rows use every filter type (chosen per row), image data split over
several IDAT chunks, and a few damaged ones. `python3 fuzz/make_png_seeds.py` (no packages)."""
import os, random, struct, zlib

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "png")

def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

def paeth(a, b, c):
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)

def filtered(rows, bpp, choose):
    out, prev = bytearray(), bytes(len(rows[0]))
    for y, row in enumerate(rows):
        f = choose(y)
        out.append(f)
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][f]
            out.append((x - pred) & 0xFF)
        prev = row
    return bytes(out)

def png(width, height, color, bpp, choose, piece, rng, level=9):
    rows = []
    for y in range(height):
        rows.append(bytes((x * 7 + y * 13 + ch * 50 + rng.randrange(12)) & 0xFF
                          for x in range(width) for ch in range(bpp)))
    data = zlib.compress(filtered(rows, bpp, choose), level)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0))
    for i in range(0, len(data), piece):
        out += chunk(b"IDAT", data[i:i + piece])
    return out + chunk(b"IEND", b"")

def main():
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(20261204)
    n = 0
    def write(name, data):
        nonlocal n
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        n += 1
    for color, bpp in [(0, 1), (4, 2), (2, 3), (6, 4)]:
        for (w, h) in [(1, 1), (3, 2), (7, 5), (16, 9)]:
            for f in range(5):
                write(f"c{color}_{w}x{h}_f{f}.png", png(w, h, color, bpp, lambda y, f=f: f, 1 << 20, rng))
            write(f"c{color}_{w}x{h}_mixed_split.png",
                  png(w, h, color, bpp, lambda y: (y * 3 + 4) % 5, 17, rng))
    base = png(12, 6, 2, 3, lambda y: 4, 1 << 20, rng)
    write("cut_short.png", base[:-30])
    raw = zlib.decompress(base[8 + 25 + 8:-12 - 4])
    write("few_rows.png", base[:8 + 25] + chunk(b"IDAT", zlib.compress(raw[:3 * 37])) + chunk(b"IEND", b""))
    write("filter_7.png", base[:8 + 25] + chunk(b"IDAT", zlib.compress(b"\x07" + raw[1:])) + chunk(b"IEND", b""))
    write("extra_rows.png", base[:8 + 25] + chunk(b"IDAT", zlib.compress(raw + raw[:40])) + chunk(b"IEND", b""))
    print(f"wrote {n} files to {OUT}")

main()
