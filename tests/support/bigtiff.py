"""Minimal BigTIFF files (magic ``II+\\0`` / ``MM\\0+``) built byte by byte.

Pillow writes little-endian BigTIFF itself (``save(..., big_tiff=True)``), but the big-endian
files it writes do not open again, so both byte orders are built here from the specification:
a 16-byte header (byte order, 43, offset size 8, 0, first IFD offset as 8 bytes), one IFD whose
entries are 20 bytes (tag, type, 8-byte count, 8-byte value or offset), then one uncompressed
RGB strip.
"""

from __future__ import annotations

import struct

from PIL import Image

SHORT, LONG8 = 3, 16


def bigtiff_bytes(img: Image.Image, byte_order: str = "II") -> bytes:
    """``img`` (converted to RGB) as an uncompressed single-strip BigTIFF."""
    e = {"II": "<", "MM": ">"}[byte_order]
    rgb = img.convert("RGB")
    width, height = rgb.size
    pixels = rgb.tobytes()
    header = byte_order.encode() + struct.pack(e + "HHHQ", 43, 8, 0, 16)
    entries = [  # sorted by tag, values left-justified in their 8-byte field
        (256, LONG8, 1, struct.pack(e + "Q", width)),  # ImageWidth
        (257, LONG8, 1, struct.pack(e + "Q", height)),  # ImageLength
        (258, SHORT, 3, struct.pack(e + "HHH", 8, 8, 8)),  # BitsPerSample
        (259, SHORT, 1, struct.pack(e + "H", 1)),  # Compression: none
        (262, SHORT, 1, struct.pack(e + "H", 2)),  # PhotometricInterpretation: RGB
        (273, LONG8, 1, None),  # StripOffsets: filled in below
        (277, SHORT, 1, struct.pack(e + "H", 3)),  # SamplesPerPixel
        (278, LONG8, 1, struct.pack(e + "Q", height)),  # RowsPerStrip: one strip
        (279, LONG8, 1, struct.pack(e + "Q", len(pixels))),  # StripByteCounts
        (284, SHORT, 1, struct.pack(e + "H", 1)),  # PlanarConfiguration: chunky
    ]
    ifd_size = 8 + 20 * len(entries) + 8
    strip_offset = len(header) + ifd_size
    ifd = struct.pack(e + "Q", len(entries))
    for tag, typ, count, value in entries:
        if value is None:
            value = struct.pack(e + "Q", strip_offset)
        ifd += struct.pack(e + "HHQ", tag, typ, count) + value.ljust(8, b"\0")
    ifd += struct.pack(e + "Q", 0)  # no next IFD
    return header + ifd + pixels
