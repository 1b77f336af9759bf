"""Capture dates from an image's XMP packet (``photoshop:DateCreated``, ``xmp:CreateDate``).

Editors (Lightroom, Photoshop, phones' gallery apps, scanners) often keep the capture time only
in XMP. ``Image.getxmp()`` would need ``defusedxml``; we parse the packet with the standard
library instead, safely: a packet with a DTD (``<!DOCTYPE``/``<!ENTITY``, the only way to
declare the entities behind "billion laughs" or external-entity attacks) or above 1 MiB is
refused unread, and expat never fetches anything. Never raises: a broken packet reads as none.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

from PIL import Image

PHOTOSHOP_NS = "http://ns.adobe.com/photoshop/1.0/"
XMP_NS = "http://ns.adobe.com/xap/1.0/"
# (name recorded as captured_at_source, Clark name in the packet), in order of preference
# (MWG: photoshop:DateCreated is the capture time, xmp:CreateDate the digitisation time).
DATE_PROPERTIES = (
    ("photoshop:DateCreated", f"{{{PHOTOSHOP_NS}}}DateCreated"),
    ("xmp:CreateDate", f"{{{XMP_NS}}}CreateDate"),
)
MAX_PACKET_BYTES = 1 << 20
_DTD_RE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
# XMP dates (ISO 8601 subset): a day at least; minutes, seconds, fractions and a zone optional.
_XMP_DATE_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?)?\s*(Z|[+-]\d{2}:?\d{2})?"
)


def xmp_packet(img: Image.Image) -> bytes | None:
    """The raw XMP packet Pillow (or pillow-heif) found in the file, if any."""
    for key in ("xmp", "XML:com.adobe.xmp"):
        value = img.info.get(key)
        if isinstance(value, str):
            value = value.encode("utf-8", "replace")
        if isinstance(value, bytes) and value.strip(b"\x00 \r\n\t"):
            return value
    return None


def xmp_values(packet: bytes) -> dict[str, str]:
    """The date properties of ``DATE_PROPERTIES`` present in the packet (as attributes or
    elements), by their short name. Empty for a refused or unparsable packet."""
    if len(packet) > MAX_PACKET_BYTES or _DTD_RE.search(packet):
        return {}
    try:
        root = ET.fromstring(packet.strip(b"\x00 \r\n\t"))
    except (ET.ParseError, ValueError):
        return {}
    wanted = dict((clark, short) for short, clark in DATE_PROPERTIES)
    found: dict[str, str] = {}
    for element in root.iter():
        for clark, short in wanted.items():
            text = element.attrib.get(clark)
            if text is None and element.tag == clark:
                text = element.text
            if text and text.strip() and short not in found:
                found[short] = text.strip()[:64]
    return found


def parse_xmp_date(text: str) -> datetime | None:
    """An XMP date as a datetime (tz-aware when it carries a zone); None unless it names a real day."""
    m = _XMP_DATE_RE.fullmatch(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second = (int(x) if x else 0 for x in m.groups()[:6])
    try:
        dt = datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None
    zone = m[7]
    if zone == "Z":
        return dt.replace(tzinfo=UTC)
    if zone:
        sign = -1 if zone[0] == "-" else 1
        hours, minutes = int(zone[1:3]), int(zone[-2:])
        if hours >= 24 or minutes >= 60:
            return dt
        return dt.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
    return dt


def xmp_dates(img: Image.Image) -> list[tuple[str, datetime]]:
    """(property, date) of every valid capture date in the image's XMP, best first."""
    packet = xmp_packet(img)
    if packet is None:
        return []
    values = xmp_values(packet)
    out = []
    for short, _ in DATE_PROPERTIES:
        dt = parse_xmp_date(values[short]) if short in values else None
        if dt is not None:
            out.append((short, dt))
    return out
