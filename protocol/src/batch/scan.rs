//! The layout of one record in a batch body, checked without copying.

use super::error::BatchError;
use super::format::{u16_at, u32_at, HEADER_LEN, RECORD_FIXED_LEN};

/// Where the parts of one record lie in its batch (byte ranges), found without copying or slicing.
pub(super) struct RecordSpan {
    pub(super) offset_delta: u32,
    pub(super) timestamp_delta: i32,
    pub(super) key: Option<(usize, usize)>,
    pub(super) value: (usize, usize),
    pub(super) header_count: u16,
    pub(super) headers_start: usize,
    pub(super) end: usize,
}

/// Checks the record starting at `start` and returns where its parts are.
pub(super) fn scan_record(b: &[u8], start: usize) -> Result<RecordSpan, &'static str> {
    if b.len() - start < RECORD_FIXED_LEN {
        return Err("truncated record header");
    }
    let record_len = u32_at(b, start) as usize;
    let end = start + 4 + record_len;
    if record_len < RECORD_FIXED_LEN - 4 || end > b.len() {
        return Err("record length out of bounds");
    }
    let key_len = u32_at(b, start + 12) as i32;
    let mut p = start + 16;
    let key = if key_len < 0 {
        None
    } else {
        let k = key_len as usize;
        if p + k + 4 > end {
            return Err("key out of bounds");
        }
        p += k;
        Some((p - k, p))
    };
    if p + 4 > end {
        return Err("value length out of bounds");
    }
    let value_len = u32_at(b, p) as usize;
    p += 4;
    if p + value_len + 2 > end {
        return Err("value out of bounds");
    }
    let value = (p, p + value_len);
    p += value_len;
    let header_count = u16_at(b, p);
    p += 2;
    let headers_start = p;
    for _ in 0..header_count {
        if p + 2 > end {
            return Err("header key length out of bounds");
        }
        let kl = usize::from(u16_at(b, p));
        p += 2;
        if p + kl + 4 > end {
            return Err("header key out of bounds");
        }
        if std::str::from_utf8(&b[p..p + kl]).is_err() {
            return Err("header key is not UTF-8");
        }
        p += kl;
        let vl = u32_at(b, p) as usize;
        p += 4;
        if p + vl > end {
            return Err("header value out of bounds");
        }
        p += vl;
    }
    if p != end {
        return Err("record length does not match its fields");
    }
    Ok(RecordSpan {
        offset_delta: u32_at(b, start + 4),
        timestamp_delta: u32_at(b, start + 8) as i32,
        key,
        value,
        header_count,
        headers_start,
        end,
    })
}

/// Walks every record of a data batch without building any: (records found, end position).
pub(super) fn walk_records(b: &[u8], declared: u32) -> Result<(u32, usize), BatchError> {
    let mut pos = HEADER_LEN;
    let mut index = 0u32;
    while index < declared && pos < b.len() {
        let span = scan_record(b, pos).map_err(|why| BatchError::BadRecord { index, why })?;
        if span.offset_delta != index {
            return Err(BatchError::BadRecord {
                index,
                why: "offset deltas must count up from 0",
            });
        }
        pos = span.end;
        index += 1;
    }
    Ok((index, pos))
}
