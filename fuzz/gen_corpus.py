#!/usr/bin/env python3
"""Writes the seed corpus of the batch_decode fuzz target: a few small, valid record batches.

Why a script and not the Rust `BatchBuilder`: running the builder needs a second, non-fuzzing build of
ferry-protocol and its gRPC dependencies; this needs only Python's standard library. It writes the layout of
protocol/src/batch.rs byte for byte (little-endian, CRC-32 of bytes 32.. as crc32fast computes it), so it
must change when that format does. The fuzz target's round-trip oracle re-encodes every seed with
`BatchBuilder`, so a seed that drifts from the format shows up as a seed the decoder rejects (docs/fuzzing.md
has the check).

Usage: python3 fuzz/gen_corpus.py [OUT_DIR]
Without OUT_DIR it writes the seeds to fuzz/corpus/batch_decode/ and the regression inputs to
fuzz/regressions/batch_decode/; with OUT_DIR, only the seeds, there.
"""

import os
import struct
import sys
import zlib

HEADER_LEN = 70
MAGIC = 1
ATTR_CONTROL = 1 << 4
NO_PRODUCER = (-1, -1, -1)


def record(index, ts_delta, key, value, headers):
    """One record: length-prefixed, offset delta = its index in the batch."""
    body = struct.pack("<Ii", index, ts_delta)
    body += struct.pack("<i", -1) if key is None else struct.pack("<i", len(key)) + key
    body += struct.pack("<I", len(value)) + value
    body += struct.pack("<H", len(headers))
    for hk, hv in headers:
        hk = hk.encode("utf-8")
        body += struct.pack("<H", len(hk)) + hk + struct.pack("<I", len(hv)) + hv
    return struct.pack("<I", len(body)) + body


def batch(body, record_count, base_ts, max_ts, attributes=0, producer=NO_PRODUCER, stamp=(0, 0, 0)):
    """Header (with length and CRC) + body, as BatchBuilder::finish or control_batch writes it."""
    producer_id, producer_epoch, base_sequence = producer
    covered = struct.pack(
        "<BBHIqqqhi",
        MAGIC, 0, attributes, record_count, base_ts, max_ts, producer_id, producer_epoch, base_sequence,
    ) + body
    batch_len = 32 + len(covered)
    assert batch_len == HEADER_LEN + len(body)
    return struct.pack("<QQQII", *stamp, batch_len, zlib.crc32(covered)) + covered


def data_batch(base_ts, recs, producer=NO_PRODUCER, stamp=(0, 0, 0)):
    """A data batch of `recs` = [(timestamp_ms, key, value, headers)], timestamps as deltas from base_ts."""
    body = b"".join(record(i, ts - base_ts, k, v, h) for i, (ts, k, v, h) in enumerate(recs))
    max_ts = max([base_ts] + [ts for ts, _, _, _ in recs])
    return batch(body, len(recs), base_ts, max_ts, producer=producer, stamp=stamp)


def seeds():
    t = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
    return {
        "seed-one-record": data_batch(t, [(t, b"k", b"hello", [])]),
        "seed-no-key-headers": data_batch(
            t,
            [
                (t + 5, None, b"v1", [("trace-id", b"abc123"), ("", b"")]),
                (t - 7, None, b"", [("content-type", b"application/json")]),
            ],
        ),
        "seed-producer": data_batch(
            t,
            [(t + i * 1000, b"user-%d" % i, bytes(range(i * 8)), []) for i in range(6)],
            producer=(42, 3, 100),
        ),
        "seed-stamped": data_batch(
            0, [(-(2**31), b"", b"x", []), (2**31 - 1, b"key", b"y" * 40, [("h", b"\x00\xff")])],
            stamp=(1_000_000, 7, 9),
        ),
        "seed-control": batch(bytes([2]) + b"conf", 0, t, t, attributes=ATTR_CONTROL),
        # Valid to the decoder, but base + delta wraps i64 (i64::MIN - 1 decodes as i64::MAX), so the
        # round-trip oracle must skip its timestamp: BatchBuilder cannot write such a record.
        "seed-timestamp-wrap": batch(record(0, -1, None, b"w", []), 1, -(2**63), -(2**63)),
    }


def regressions():
    """Inputs that once made the target fail, kept so run.sh replays them before fuzzing."""
    return {
        # Records::next (and BatchHeader::next_offset) add to base_offset unchecked, and base_offset is not
        # covered by the CRC: at u64::MAX the second record overflows, a panic where overflow checks are on.
        # Found by the fuzzer within seconds of its first run.
        "offset-overflow": data_batch(0, [(0, None, b"", []), (0, None, b"", [])], stamp=(2**64 - 1, 0, 0)),
    }


def write(out, files):
    os.makedirs(out, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print(f"{os.path.join(out, name)}: {len(data)} bytes")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus", "batch_decode")
    write(out, seeds())
    if len(sys.argv) <= 1:
        write(os.path.join(here, "regressions", "batch_decode"), regressions())


if __name__ == "__main__":
    main()
