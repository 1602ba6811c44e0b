"""RTP packets (RFC 3550 §5.1): parsing, serialisation, and the checks our slin16 stream must pass.

Asterisk's externalMedia sends slin16 as payload type 118 (configurable: `rtp_payload_type`), one
640-byte payload (320 big-endian int16 samples, 20 ms) per packet, with the plain 12-byte header: no
CSRC, no extension, no padding. `parse` nevertheless accepts every well-formed RTP packet, so that a
sender that adds a header extension or padding still gets through, and rejects a malformed one with
a ValueError that says what is wrong. RTP of another payload type raises PayloadTypeError, a
ValueError the capture counts apart: a sender's DTMF events or comfort noise, or a wrong
`rtp_payload_type`, rather than garbage.

`unpack_slin16` is the capture's entry point: it takes the plain-header case without building a
packet object (it runs 50 000 times a second at 1000 calls) and falls back to `parse` otherwise.
"""

from __future__ import annotations

from struct import Struct

RTP_VERSION = 2
RTP_HEADER = Struct("!BBHII")  # V/P/X/CC, M/PT, sequence number, timestamp, SSRC
RTP_HEADER_SIZE = RTP_HEADER.size  # 12
CSRC_SIZE = 4
EXTENSION_HEADER = Struct("!HH")  # profile, length in 32-bit words
EXTENSION_HEADER_SIZE = EXTENSION_HEADER.size  # 4
# Far above what a sender of 20 ms slin16 sends (652 bytes), far below a UDP datagram's limit:
# anything bigger is not our stream, and a bound keeps a packet's samples within any ring.
MAX_RTP_PACKET_SIZE = 4096
SLIN16_SAMPLE_BYTES = 2

# First header byte of the plain header: version 2, no padding, no extension, no CSRC.
_PLAIN_FIRST_BYTE = RTP_VERSION << 6
_PADDING_BIT = 0x20
_EXTENSION_BIT = 0x10
_CSRC_COUNT_MASK = 0x0F
_MARKER_BIT = 0x80
_PAYLOAD_TYPE_MASK = 0x7F


class RtpPacket:
    """One RTP packet. `payload` excludes padding; `extension` is None when the X bit is clear."""

    __slots__ = (
        "csrc",
        "extension",
        "extension_profile",
        "marker",
        "padding_size",
        "payload",
        "payload_type",
        "sequence_number",
        "ssrc",
        "timestamp",
    )

    def __init__(self, payload_type: int = 0, marker: int = 0, sequence_number: int = 0, timestamp: int = 0,
                 ssrc: int = 0, payload: bytes = b"", csrc: list[int] | None = None,
                 extension_profile: int = 0, extension: bytes | None = None, padding_size: int = 0) -> None:
        self.payload_type = payload_type
        self.marker = marker
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.csrc = csrc if csrc is not None else []
        self.extension_profile = extension_profile
        self.extension = extension
        self.payload = payload
        self.padding_size = padding_size

    def __repr__(self) -> str:
        return (f"RtpPacket(seq={self.sequence_number}, ts={self.timestamp}, ssrc={self.ssrc:#010x}, "
                f"pt={self.payload_type}, {len(self.payload)} bytes)")

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        size = len(data)
        if size < RTP_HEADER_SIZE:
            raise ValueError(f"RTP packet length is less than {RTP_HEADER_SIZE} bytes")
        if size > MAX_RTP_PACKET_SIZE:
            raise ValueError(f"RTP packet length is {size} bytes, more than {MAX_RTP_PACKET_SIZE}")
        first, second, sequence_number, timestamp, ssrc = RTP_HEADER.unpack_from(data)
        version = first >> 6
        if version != RTP_VERSION:
            raise ValueError(f"RTP packet has version {version}, expected {RTP_VERSION}")
        pos = RTP_HEADER_SIZE

        csrc: list[int] = []
        csrc_count = first & _CSRC_COUNT_MASK
        if csrc_count:
            end = pos + csrc_count * CSRC_SIZE
            if end > size:
                raise ValueError("RTP packet has truncated CSRC")
            csrc = list(Struct(f"!{csrc_count}I").unpack_from(data, pos))
            pos = end

        extension_profile = 0
        extension: bytes | None = None
        if first & _EXTENSION_BIT:
            if pos + EXTENSION_HEADER_SIZE > size:
                raise ValueError("RTP packet has truncated extension profile / length")
            extension_profile, words = EXTENSION_HEADER.unpack_from(data, pos)
            pos += EXTENSION_HEADER_SIZE
            end = pos + words * 4
            if end > size:
                raise ValueError("RTP packet has truncated extension value")
            extension = data[pos:end]
            pos = end

        padding_size = 0
        end = size
        if first & _PADDING_BIT:
            padding_size = data[-1]
            # The count includes itself, so 0 is malformed; it may not reach into the header.
            if padding_size == 0 or padding_size > size - pos:
                raise ValueError("RTP packet padding length is invalid")
            end -= padding_size

        return cls(payload_type=second & _PAYLOAD_TYPE_MASK, marker=second >> 7,
                   sequence_number=sequence_number, timestamp=timestamp, ssrc=ssrc, payload=data[pos:end],
                   csrc=csrc, extension_profile=extension_profile, extension=extension, padding_size=padding_size)

    def serialize(self) -> bytes:
        first = RTP_VERSION << 6 | len(self.csrc)
        if self.padding_size:
            first |= _PADDING_BIT
        if self.extension is not None:
            first |= _EXTENSION_BIT
        parts = [RTP_HEADER.pack(first, self.marker << 7 | self.payload_type, self.sequence_number,
                                 self.timestamp, self.ssrc)]
        if self.csrc:
            parts.append(Struct(f"!{len(self.csrc)}I").pack(*self.csrc))
        if self.extension is not None:
            if len(self.extension) % 4:
                raise ValueError(f"RTP extension length {len(self.extension)} is not a multiple of 4")
            parts.append(EXTENSION_HEADER.pack(self.extension_profile, len(self.extension) // 4))
            parts.append(self.extension)
        parts.append(self.payload)
        if self.padding_size:
            if not 0 < self.padding_size < 256:
                raise ValueError(f"RTP padding size {self.padding_size} is not in 1..255")
            parts.append(bytes(self.padding_size - 1) + bytes((self.padding_size,)))
        return b"".join(parts)


class PayloadTypeError(ValueError):
    """A well-formed RTP packet of another payload type than our stream's."""


def check_slin16(packet: RtpPacket, payload_type: int) -> None:
    """Raise ValueError unless the packet carries slin16 samples as our stream does
    (PayloadTypeError for another payload type)."""
    if packet.payload_type != payload_type:
        raise PayloadTypeError(f"RTP packet has payload type {packet.payload_type}, expected {payload_type}")
    length = len(packet.payload)
    if length == 0:
        raise ValueError("RTP packet has an empty payload")
    if length % SLIN16_SAMPLE_BYTES:
        raise ValueError(f"RTP packet has an odd payload length {length} (slin16 samples are 2 bytes)")


def unpack_slin16(data: bytes, payload_type: int) -> tuple[int, int, int, int, int]:
    """(sequence number, timestamp, SSRC, payload start, payload end) of a valid slin16 packet, else
    ValueError with `parse`'s or `check_slin16`'s message. Same verdicts as parse + check_slin16."""
    size = len(data)
    # The plain header Asterisk sends: one byte test instead of a packet object.
    if (RTP_HEADER_SIZE < size <= MAX_RTP_PACKET_SIZE and not size & 1
            and data[0] == _PLAIN_FIRST_BYTE and data[1] & _PAYLOAD_TYPE_MASK == payload_type):
        _, _, sequence_number, timestamp, ssrc = RTP_HEADER.unpack_from(data)
        return sequence_number, timestamp, ssrc, RTP_HEADER_SIZE, size
    packet = RtpPacket.parse(data)
    check_slin16(packet, payload_type)
    end = size - packet.padding_size
    return packet.sequence_number, packet.timestamp, packet.ssrc, end - len(packet.payload), end
