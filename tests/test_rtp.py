from __future__ import annotations

import struct

import pytest

from rtcore.media.rtp import MAX_RTP_PACKET_SIZE, RtpPacket, check_slin16, unpack_slin16
from rtcore.media.seqnum import uint16_add, uint16_diff, uint16_gt, uint16_gte, uint32_add, uint32_diff

# First packet of /work/shared/ari/traces/seed-topology-call.rtp-headers.jsonl (Asterisk 22, slin16).
ASTERISK_HEADER = bytes.fromhex("80766d820000014021398419")
PAYLOAD = bytes(range(256)) * 2 + bytes(128)  # 640 bytes: 320 samples, 20 ms
ASTERISK_PACKET = ASTERISK_HEADER + PAYLOAD

# V=2 P=1 X=1 CC=2, M=1 PT=118, seq 65535, ts 2^32-1, two CSRC, a one-word extension, 4-byte payload,
# 3 bytes of padding (the last one counting them).
FULL_PACKET = bytes.fromhex(
    "b2f6ffffffffffff21398419" "0000000100000002" "bede0001" "10aabbcc" "01020304" "000003")


def test_asterisk_packet_parses() -> None:
    packet = RtpPacket.parse(ASTERISK_PACKET)
    assert (packet.payload_type, packet.marker, packet.sequence_number, packet.timestamp, packet.ssrc) == (
        118, 0, 0x6D82, 320, 0x21398419)
    assert packet.csrc == [] and packet.extension is None and packet.padding_size == 0
    assert packet.payload == PAYLOAD
    assert repr(packet) == "RtpPacket(seq=28034, ts=320, ssrc=0x21398419, pt=118, 640 bytes)"
    assert packet.serialize() == ASTERISK_PACKET
    check_slin16(packet, 118)


def test_packet_with_csrc_extension_and_padding_round_trips() -> None:
    packet = RtpPacket.parse(FULL_PACKET)
    assert (packet.payload_type, packet.marker, packet.sequence_number, packet.timestamp) == (118, 1, 65535, 0xFFFFFFFF)
    assert packet.csrc == [1, 2]
    assert packet.extension_profile == 0xBEDE and packet.extension == bytes.fromhex("10aabbcc")
    assert packet.payload == bytes.fromhex("01020304") and packet.padding_size == 3
    assert packet.serialize() == FULL_PACKET


def test_serialize_builds_what_parse_reads() -> None:
    packet = RtpPacket(payload_type=118, marker=1, sequence_number=7, timestamp=2240, ssrc=0xDEADBEEF,
                       payload=b"\x00\x01" * 4, csrc=[9], extension_profile=0x1000, extension=b"",
                       padding_size=1)
    data = packet.serialize()
    again = RtpPacket.parse(data)
    assert again.serialize() == data
    assert again.extension == b"" and again.csrc == [9] and again.payload == b"\x00\x01" * 4


@pytest.mark.parametrize("data, message", [
    (b"", "RTP packet length is less than 12 bytes"),
    (ASTERISK_HEADER[:11], "RTP packet length is less than 12 bytes"),
    (ASTERISK_HEADER + bytes(MAX_RTP_PACKET_SIZE - 11), "RTP packet length is 4097 bytes, more than 4096"),
    (b"\x40" + ASTERISK_PACKET[1:], "RTP packet has version 1, expected 2"),
    (b"\x00" + ASTERISK_PACKET[1:], "RTP packet has version 0, expected 2"),
    (b"\xc0" + ASTERISK_PACKET[1:], "RTP packet has version 3, expected 2"),
    (b"\x82" + ASTERISK_HEADER[1:] + bytes(7), "RTP packet has truncated CSRC"),
    (b"\x90" + ASTERISK_HEADER[1:] + bytes(3), "RTP packet has truncated extension profile / length"),
    (b"\x91" + ASTERISK_HEADER[1:] + bytes(4) + b"\xbe\xde", "RTP packet has truncated extension profile / length"),
    (b"\x90" + ASTERISK_HEADER[1:] + b"\xbe\xde\x00\x02" + bytes(7), "RTP packet has truncated extension value"),
    (b"\xa0" + ASTERISK_HEADER[1:] + PAYLOAD[:-1] + b"\x00", "RTP packet padding length is invalid"),
    (b"\xa0" + ASTERISK_HEADER[1:] + bytes(3) + b"\x05", "RTP packet padding length is invalid"),
    (b"\xb0" + ASTERISK_HEADER[1:] + b"\xbe\xde\x00\x00" + b"\x05", "RTP packet padding length is invalid"),
])
def test_malformed_packets_are_rejected_with_the_reason(data: bytes, message: str) -> None:
    with pytest.raises(ValueError) as info:
        RtpPacket.parse(data)
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        unpack_slin16(data, 118)
    assert str(info.value) == message


@pytest.mark.parametrize("data, message", [
    (b"\x80\x00" + ASTERISK_PACKET[2:], "RTP packet has payload type 0, expected 118"),
    (b"\x80\xf5" + ASTERISK_PACKET[2:], "RTP packet has payload type 117, expected 118"),
    (ASTERISK_HEADER, "RTP packet has an empty payload"),
    (b"\xa0" + ASTERISK_HEADER[1:] + b"\x00\x02", "RTP packet has an empty payload"),
    (ASTERISK_PACKET[:-1], "RTP packet has an odd payload length 639 (slin16 samples are 2 bytes)"),
    (ASTERISK_HEADER + b"\x01", "RTP packet has an odd payload length 1 (slin16 samples are 2 bytes)"),
])
def test_packets_that_are_not_our_slin16_stream_are_rejected(data: bytes, message: str) -> None:
    packet = RtpPacket.parse(data)  # well-formed RTP ...
    with pytest.raises(ValueError) as info:
        check_slin16(packet, 118)  # ... but not our stream
    assert str(info.value) == message
    with pytest.raises(ValueError) as info:
        unpack_slin16(data, 118)
    assert str(info.value) == message


def test_unpack_slin16_takes_the_plain_header_and_the_general_case() -> None:
    assert unpack_slin16(ASTERISK_PACKET, 118) == (0x6D82, 320, 0x21398419, 12, 652)
    # Marker bit set: still ours.
    assert unpack_slin16(b"\x80\xf6" + ASTERISK_PACKET[2:], 118) == (0x6D82, 320, 0x21398419, 12, 652)
    # Extension and padding: the payload is found where parse finds it.
    seq, ts, ssrc, start, end = unpack_slin16(FULL_PACKET, 118)
    assert (seq, ts, ssrc) == (65535, 0xFFFFFFFF, 0x21398419)
    assert FULL_PACKET[start:end] == bytes.fromhex("01020304")
    assert unpack_slin16(b"\x80\x0b" + ASTERISK_PACKET[2:], 11)[:3] == (0x6D82, 320, 0x21398419)


def test_serialize_rejects_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError, match="RTP extension length 3 is not a multiple of 4"):
        RtpPacket(extension=b"abc").serialize()
    with pytest.raises(ValueError, match="RTP padding size 256 is not in 1..255"):
        RtpPacket(padding_size=256).serialize()


def test_header_struct_matches_the_trace() -> None:
    first, second, seq, ts, ssrc = struct.unpack("!BBHII", ASTERISK_HEADER)
    assert (first >> 6, second & 0x7F, seq, ts, ssrc) == (2, 118, 28034, 320, 0x21398419)


def test_sequence_arithmetic_wraps() -> None:
    assert uint16_add(65535, 1) == 0 and uint16_add(0, -1) == 65535
    assert uint16_diff(1, 65534) == 3 and uint16_diff(65534, 1) == -3
    assert uint16_diff(32767, 0) == 32767 and uint16_diff(32768, 0) == -32768
    assert uint16_gt(0, 65535) and not uint16_gt(65535, 0) and not uint16_gt(5, 5)
    assert uint16_gte(5, 5) and uint16_gte(1, 65535) and not uint16_gte(65535, 1)
    assert uint32_add(0xFFFFFFFF, 321) == 320
    assert uint32_diff(320, 0xFFFFFFC0) == 384 and uint32_diff(0, 320) == -320
