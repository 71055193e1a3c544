//! The packed record batch: Ferry's one data format, built by clients, checked and stored as it is by brokers,
//! served as it is to consumers. All fields are little-endian and fixed width; docs/design.md has the diagram.
//!
//! ```text
//! offset size field              CRC  set by
//!      0    8 base_offset u64     no   broker (offset of the first record)
//!      8    4 raft_term u32       no   broker (Raft term of the entry)
//!     12    4 stamp_crc u32       no   broker (checksum of bytes 0..12 and 16..32, see crate::stamp)
//!     16    8 raft_index u64      no   broker (Raft index of the entry)
//!     24    4 batch_len u32       no   client (whole batch, header included)
//!     28    4 crc u32             -    client (crc32 of bytes 32..batch_len)
//!     32    1 magic u8 = 1        yes
//!     33    1 reserved u8 = 0     yes
//!     34    2 attributes u16      yes  bits 0-2 compression (0 = none), bit 4 control batch
//!     36    4 record_count u32    yes
//!     40    8 base_timestamp i64  yes  (ms since the Unix epoch)
//!     48    8 max_timestamp i64   yes
//!     56    8 producer_id i64     yes  (-1: none)
//!     64    2 producer_epoch i16  yes
//!     66    4 base_sequence i32   yes  (-1: none)
//!     70      records             yes
//! ```
//!
//! The broker stamps `base_offset`, `raft_term` and `raft_index` when it appends, which the batch CRC does not
//! cover (as Kafka's base offset), so appending never re-encodes and the client's CRC is checked end to end.
//! The stamp has a checksum of its own ([`crate::stamp`]), over the stamp, `batch_len` and the CRC: a stored
//! batch is covered whole.
//!
//! Each record:
//! ```text
//!      0    4 record_len u32      bytes after this field
//!      4    4 offset_delta u32    offset - base_offset
//!      8    4 timestamp_delta i32 timestamp - base_timestamp (ms)
//!     12    4 key_len i32         -1: no key
//!     16    k key
//!   16+k    4 value_len u32
//!           v value
//!           2 header_count u16
//!             per header: key_len u16, key (UTF-8), value_len u32, value
//! ```
//! A control batch (attribute bit 4) carries Ferry's and Raft's own entries; it holds no records, takes no
//! offsets and is never shown to consumers. Its body is one entry-type byte followed by the entry's data.

use bytes::{BufMut, Bytes, BytesMut};

/// Size of the fixed batch header (bytes).
pub const HEADER_LEN: usize = 70;
pub use crate::stamp::STAMP_LEN;
/// Start of the CRC-covered region.
const CRC_START: usize = 32;
/// The batch format version this code reads and writes.
pub const MAGIC: u8 = 1;
/// Attribute bits that select the compression codec.
pub const ATTR_COMPRESSION_MASK: u16 = 0b111;
/// Compression codec values (attribute bits 0-2).
pub const CODEC_NONE: u16 = 0;
/// LZ4 block format: the body after the header is the uncompressed body's length (u32 LE) followed by one
/// LZ4 block.
pub const CODEC_LZ4: u16 = 1;

/// How a producer compresses its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
}

/// Attribute bit of a control batch.
pub const ATTR_CONTROL: u16 = 1 << 4;
/// Every attribute bit this version defines.
const ATTR_KNOWN: u16 = ATTR_COMPRESSION_MASK | ATTR_CONTROL;
/// Fixed bytes of one record besides key, value and headers.
const RECORD_FIXED_LEN: usize = 4 + 4 + 4 + 4 + 4 + 2;

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("batch header says {declared} bytes but {available} are present")]
    LengthMismatch { declared: u32, available: usize },
    #[error("unknown batch format version (magic {0}); this broker reads version {MAGIC}")]
    BadMagic(u8),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown batch attributes {0:#06x}")]
    BadAttributes(u16),
    #[error("compression codec {0} is not supported by this version")]
    UnsupportedCompression(u16),
    #[error("compressed batch body is damaged: {0}")]
    BadCompression(String),
    #[error("batch record {index} is malformed: {why}")]
    BadRecord { index: u32, why: &'static str },
    #[error("batch declares {declared} records but holds {found}")]
    RecordCount { declared: u32, found: u32 },
    #[error("batch has {0} records; the limit is {max}", max = crate::limits::BATCH_RECORDS_MAX)]
    TooManyRecords(u32),
    #[error("batch offsets overflow: base offset {0} plus its records passes the largest offset")]
    OffsetOverflow(u64),
    #[error("a data batch needs at least one record")]
    Empty,
    #[error("control batch claims {0} records; control batches hold none")]
    ControlWithRecords(u32),
    #[error("broker stamp checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    StampMismatch { stored: u32, computed: u32 },
    #[error("raft term {0} does not fit the stamp's 32 bits")]
    TermOverflow(u64),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub raft_term: u64,
    /// Checksum of the broker stamp ([`crate::stamp`]); 0 in a batch a client sent.
    pub stamp_crc: u32,
    pub raft_index: u64,
    pub batch_len: u32,
    pub crc: u32,
    pub magic: u8,
    pub attributes: u16,
    pub record_count: u32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchHeader {
    /// Reads the header without checking the CRC (use [`validate`] for that).
    pub fn parse(b: &[u8]) -> Result<Self, BatchError> {
        if b.len() < HEADER_LEN {
            return Err(BatchError::TooShort(b.len()));
        }
        Ok(BatchHeader {
            base_offset: u64_at(b, 0),
            raft_term: u64::from(u32_at(b, 8)),
            stamp_crc: u32_at(b, 12),
            raft_index: u64_at(b, 16),
            batch_len: u32_at(b, 24),
            crc: u32_at(b, 28),
            magic: b[32],
            attributes: u16_at(b, 34),
            record_count: u32_at(b, 36),
            base_timestamp: u64_at(b, 40) as i64,
            max_timestamp: u64_at(b, 48) as i64,
            producer_id: u64_at(b, 56) as i64,
            producer_epoch: u16_at(b, 64) as i16,
            base_sequence: u32_at(b, 66) as i32,
        })
    }

    /// Whether this is a control batch (never shown to consumers).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// The offset after the last record of this batch.
    pub fn next_offset(&self) -> u64 {
        // Wrapping: a corrupt stamp (not covered by the CRC) must not panic; validate() refuses it anyway.
        self.base_offset.wrapping_add(u64::from(self.record_count))
    }
}

/// The CRC of a batch as it should be stored in its header.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32fast::hash(&batch[CRC_START..])
}

/// Checks that `b` is exactly one whole, intact batch of a known version: length, magic, attributes and CRC.
/// A control batch must claim no records. Records are not walked (see [`validate_records`]).
pub fn validate(b: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = BatchHeader::parse(b)?;
    if h.batch_len as usize != b.len() || (h.batch_len as usize) < HEADER_LEN {
        return Err(BatchError::LengthMismatch {
            declared: h.batch_len,
            available: b.len(),
        });
    }
    if h.magic != MAGIC {
        return Err(BatchError::BadMagic(h.magic));
    }
    let computed = compute_crc(b);
    if computed != h.crc {
        return Err(BatchError::CrcMismatch {
            stored: h.crc,
            computed,
        });
    }
    if h.attributes & !ATTR_KNOWN != 0 {
        return Err(BatchError::BadAttributes(h.attributes));
    }
    // A control batch takes a Raft index but no offset: readers skip it and the log's next offset does not
    // move. One claiming records would move the log's end past offsets nothing serves (found by fuzzing).
    if h.is_control() && h.record_count != 0 {
        return Err(BatchError::ControlWithRecords(h.record_count));
    }
    if h.base_offset
        .checked_add(u64::from(h.record_count))
        .is_none()
    {
        return Err(BatchError::OffsetOverflow(h.base_offset));
    }
    Ok(h)
}

/// [`validate`] for a batch read back from storage: the broker stamp's checksum too.
pub fn validate_stored(b: &[u8]) -> Result<BatchHeader, BatchError> {
    crate::stamp::check(b)?;
    validate(b)
}

/// Full check of a client batch before a broker accepts it: [`validate`], no control bit, no compression this
/// version cannot read, and every record well formed and counted.
pub fn validate_records(b: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = validate(b)?;
    if h.is_control() {
        return Err(BatchError::BadAttributes(h.attributes));
    }
    if h.record_count == 0 {
        return Err(BatchError::Empty);
    }
    if h.record_count > crate::limits::BATCH_RECORDS_MAX {
        return Err(BatchError::TooManyRecords(h.record_count));
    }
    let plain;
    let b = if h.attributes & ATTR_COMPRESSION_MASK == CODEC_NONE {
        b
    } else {
        plain = decompress(b, &h)?;
        &plain[..]
    };
    let (found, end) = walk_records(b, h.record_count)?;
    if found != h.record_count || end != b.len() {
        return Err(BatchError::RecordCount {
            declared: h.record_count,
            found,
        });
    }
    Ok(h)
}

/// The batch with its body decompressed (header bytes kept as they are, so offsets and timestamps read the
/// same); an uncompressed batch is returned as it is. The uncompressed size is bounded by
/// [`crate::limits::BATCH_BYTES_HARD_MAX`], so a hostile batch cannot make a reader allocate more.
pub fn decompressed(batch: &Bytes, h: &BatchHeader) -> Result<Bytes, BatchError> {
    if h.attributes & ATTR_COMPRESSION_MASK == CODEC_NONE {
        return Ok(batch.clone());
    }
    decompress(batch, h).map(Bytes::from)
}

fn decompress(b: &[u8], h: &BatchHeader) -> Result<Vec<u8>, BatchError> {
    let codec = h.attributes & ATTR_COMPRESSION_MASK;
    if codec != CODEC_LZ4 {
        return Err(BatchError::UnsupportedCompression(codec));
    }
    let body = &b[HEADER_LEN..];
    if body.len() < 4 {
        return Err(BatchError::BadCompression("no length prefix".into()));
    }
    let len = u32_at(body, 0) as usize;
    let max = crate::limits::BATCH_BYTES_HARD_MAX as usize;
    if len > max {
        return Err(BatchError::BadCompression(format!(
            "uncompressed body of {len} bytes exceeds {max}"
        )));
    }
    let mut out = vec![0u8; HEADER_LEN + len];
    out[..HEADER_LEN].copy_from_slice(&b[..HEADER_LEN]);
    let n = lz4_flex::block::decompress_into(&body[4..], &mut out[HEADER_LEN..])
        .map_err(|e| BatchError::BadCompression(e.to_string()))?;
    if n != len {
        return Err(BatchError::BadCompression(format!(
            "body decompressed to {n} bytes, not the {len} declared"
        )));
    }
    Ok(out)
}

/// The stamp a broker writes in front of batch `h`'s remaining bytes (`batch[STAMP_LEN..]`): see
/// [`crate::stamp::stamp`].
pub fn stamp(
    h: &BatchHeader,
    base_offset: u64,
    raft_term: u64,
    raft_index: u64,
) -> Result<[u8; STAMP_LEN], BatchError> {
    crate::stamp::stamp(base_offset, raft_term, raft_index, h.batch_len, h.crc)
}

/// One header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Bytes,
}

/// One decoded record; key, value and header values are slices of the batch, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<RecordHeader>,
}

/// Iterator over the records of a validated batch (decompressing a compressed one first).
pub struct Records {
    batch: Bytes,
    header: BatchHeader,
    pos: usize,
    index: u32,
    /// Why a compressed body could not be read (reported by the first `next`).
    broken: Option<BatchError>,
}

impl Records {
    /// Iterates `batch`, whose header is `header` (from [`validate`]).
    pub fn new(batch: Bytes, header: BatchHeader) -> Self {
        // A control batch or an empty one has no records to decompress.
        let (batch, broken) = if header.is_control() || header.record_count == 0 {
            (batch, None)
        } else {
            match decompressed(&batch, &header) {
                Ok(b) => (b, None),
                Err(e) => (batch, Some(e)),
            }
        };
        let pos = if header.is_control() {
            batch.len()
        } else {
            HEADER_LEN
        };
        Records {
            batch,
            header,
            pos,
            index: 0,
            broken,
        }
    }

    fn bad(&mut self, why: &'static str) -> Option<Result<Record, BatchError>> {
        let index = self.index;
        self.pos = self.batch.len();
        Some(Err(BatchError::BadRecord { index, why }))
    }
}

/// Where the parts of one record lie in its batch (byte ranges), found without copying or slicing.
struct RecordSpan {
    offset_delta: u32,
    timestamp_delta: i32,
    key: Option<(usize, usize)>,
    value: (usize, usize),
    header_count: u16,
    headers_start: usize,
    end: usize,
}

/// Checks the record starting at `start` and returns where its parts are.
fn scan_record(b: &[u8], start: usize) -> Result<RecordSpan, &'static str> {
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
fn walk_records(b: &[u8], declared: u32) -> Result<(u32, usize), BatchError> {
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

impl Iterator for Records {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.broken.take() {
            self.pos = self.batch.len();
            return Some(Err(e));
        }
        if self.index >= self.header.record_count || self.pos >= self.batch.len() {
            return None;
        }
        let span = match scan_record(&self.batch, self.pos) {
            Ok(span) => span,
            Err(why) => return self.bad(why),
        };
        if span.offset_delta != self.index {
            return self.bad("offset deltas must count up from 0");
        }
        let b = &self.batch;
        let mut headers = Vec::with_capacity(usize::from(span.header_count));
        let mut p = span.headers_start;
        for _ in 0..span.header_count {
            // Bounds and UTF-8 were checked by scan_record.
            let kl = usize::from(u16_at(b, p));
            let key = std::str::from_utf8(&b[p + 2..p + 2 + kl])
                .unwrap_or_default()
                .to_owned();
            p += 2 + kl;
            let vl = u32_at(b, p) as usize;
            headers.push(RecordHeader {
                key,
                value: b.slice(p + 4..p + 4 + vl),
            });
            p += 4 + vl;
        }
        let record = Record {
            offset: self
                .header
                .base_offset
                .wrapping_add(u64::from(span.offset_delta)),
            timestamp_ms: self
                .header
                .base_timestamp
                .wrapping_add(i64::from(span.timestamp_delta)),
            key: span.key.map(|(s, e)| b.slice(s..e)),
            value: b.slice(span.value.0..span.value.1),
            headers,
        };
        self.pos = span.end;
        self.index += 1;
        Some(Ok(record))
    }
}

/// Producer identity carried by a batch, for idempotent publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerStamp {
    /// No producer identity: the batch is not deduplicated.
    pub const NONE: ProducerStamp = ProducerStamp {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// Builds a batch record by record into one buffer; [`BatchBuilder::finish`] writes the header and CRC.
pub struct BatchBuilder {
    buf: BytesMut,
    count: u32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer: ProducerStamp,
}

impl BatchBuilder {
    /// A builder whose records' timestamps are stored relative to `base_timestamp` (ms).
    pub fn new(base_timestamp: i64) -> Self {
        Self::with_capacity(base_timestamp, 16 * 1024)
    }

    /// Like [`BatchBuilder::new`], reserving `bytes` up front.
    pub fn with_capacity(base_timestamp: i64, bytes: usize) -> Self {
        let mut buf = BytesMut::with_capacity(bytes.max(HEADER_LEN));
        buf.put_bytes(0, HEADER_LEN);
        BatchBuilder {
            buf,
            count: 0,
            base_timestamp,
            max_timestamp: base_timestamp,
            producer: ProducerStamp::NONE,
        }
    }

    /// Sets the producer identity and first sequence number of this batch.
    pub fn producer(&mut self, stamp: ProducerStamp) -> &mut Self {
        self.producer = stamp;
        self
    }

    /// Bytes the batch has so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Number of records added.
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Whether no record has been added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes one record with these parts takes in a batch.
    pub fn record_size(key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]) -> usize {
        RECORD_FIXED_LEN
            + key.map_or(0, <[u8]>::len)
            + value.len()
            + headers
                .iter()
                .map(|(k, v)| 2 + k.len() + 4 + v.len())
                .sum::<usize>()
    }

    /// Appends a record. Timestamps within ±24 days of the base fit; others are clamped.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        let size = Self::record_size(key, value, headers);
        let delta = timestamp_ms
            .saturating_sub(self.base_timestamp)
            .clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        self.max_timestamp = self
            .max_timestamp
            .max(self.base_timestamp + i64::from(delta));
        let b = &mut self.buf;
        b.reserve(size);
        b.put_u32_le((size - 4) as u32);
        b.put_u32_le(self.count);
        b.put_i32_le(delta);
        match key {
            Some(k) => {
                b.put_i32_le(k.len() as i32);
                b.put_slice(k);
            }
            None => b.put_i32_le(-1),
        }
        b.put_u32_le(value.len() as u32);
        b.put_slice(value);
        b.put_u16_le(headers.len() as u16);
        for (k, v) in headers {
            b.put_u16_le(k.len() as u16);
            b.put_slice(k.as_bytes());
            b.put_u32_le(v.len() as u32);
            b.put_slice(v);
        }
        self.count += 1;
    }

    /// Writes the header and CRC and returns the finished batch.
    /// Like [`BatchBuilder::finish`], compressing the records with `compression` when that makes the batch
    /// smaller (otherwise it stays uncompressed).
    pub fn finish_with(self, compression: Compression) -> Bytes {
        if compression == Compression::None || self.buf.len() <= HEADER_LEN {
            return self.finish();
        }
        let body = &self.buf[HEADER_LEN..];
        let packed = lz4_flex::block::compress(body);
        if packed.len() + 4 >= body.len() {
            return self.finish();
        }
        let mut buf = BytesMut::with_capacity(HEADER_LEN + 4 + packed.len());
        buf.extend_from_slice(&[0u8; HEADER_LEN]);
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&packed);
        write_header(
            &mut buf,
            CODEC_LZ4,
            self.count,
            self.base_timestamp,
            self.max_timestamp,
            self.producer,
        );
        buf.freeze()
    }

    /// Writes the header and CRC; the batch is done.
    pub fn finish(self) -> Bytes {
        let mut buf = self.buf;
        write_header(
            &mut buf,
            0,
            self.count,
            self.base_timestamp,
            self.max_timestamp,
            self.producer,
        );
        buf.freeze()
    }
}

fn write_header(
    buf: &mut BytesMut,
    attributes: u16,
    record_count: u32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer: ProducerStamp,
) {
    let len = buf.len() as u32;
    let h = &mut buf[..HEADER_LEN];
    h[0..24].fill(0);
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[32] = MAGIC;
    h[33] = 0;
    h[34..36].copy_from_slice(&attributes.to_le_bytes());
    h[36..40].copy_from_slice(&record_count.to_le_bytes());
    h[40..48].copy_from_slice(&base_timestamp.to_le_bytes());
    h[48..56].copy_from_slice(&max_timestamp.to_le_bytes());
    h[56..64].copy_from_slice(&producer.producer_id.to_le_bytes());
    h[64..66].copy_from_slice(&producer.producer_epoch.to_le_bytes());
    h[66..70].copy_from_slice(&producer.base_sequence.to_le_bytes());
    let crc = compute_crc(buf);
    buf[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// `batch` with its producer fields set to `stamp` and its CRC recomputed. Idempotent producers stamp a
/// batch when they send it (the sequence number depends on what went before), not when it is built. Copies
/// only if the bytes are shared.
pub fn with_producer(batch: Bytes, stamp: ProducerStamp) -> Result<Bytes, BatchError> {
    BatchHeader::parse(&batch)?;
    let mut buf = match batch.try_into_mut() {
        Ok(m) => m,
        Err(shared) => BytesMut::from(&shared[..]),
    };
    buf[56..64].copy_from_slice(&stamp.producer_id.to_le_bytes());
    buf[64..66].copy_from_slice(&stamp.producer_epoch.to_le_bytes());
    buf[66..70].copy_from_slice(&stamp.base_sequence.to_le_bytes());
    let crc = compute_crc(&buf);
    buf[28..32].copy_from_slice(&crc.to_le_bytes());
    Ok(buf.freeze())
}

/// Builds a control batch holding one entry of type `entry_type` (a Raft entry type) with `data`.
pub fn control_batch(entry_type: u8, data: &[u8], timestamp_ms: i64) -> BytesMut {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + 1 + data.len());
    buf.put_bytes(0, HEADER_LEN);
    buf.put_u8(entry_type);
    buf.put_slice(data);
    write_header(
        &mut buf,
        ATTR_CONTROL,
        0,
        timestamp_ms,
        timestamp_ms,
        ProducerStamp::NONE,
    );
    buf
}

/// The entry type and data of a control batch (`batch` validated, control bit set).
pub fn control_payload(batch: &Bytes) -> Result<(u8, Bytes), BatchError> {
    if batch.len() < HEADER_LEN + 1 {
        return Err(BatchError::TooShort(batch.len()));
    }
    Ok((batch[HEADER_LEN], batch.slice(HEADER_LEN + 1..)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn lz4_batches_round_trip_and_damage_is_caught() {
        let mut b = BatchBuilder::new(10);
        for i in 0..200u32 {
            b.push(
                10 + i64::from(i),
                Some(b"key"),
                format!("value value value {i}").as_bytes(),
                &[("h", b"x")],
            );
        }
        let plain_len = {
            let mut p = BatchBuilder::new(10);
            p.push(10, None, b"v", &[]);
            p.finish().len()
        };
        let packed = b.finish_with(Compression::Lz4);
        let h = validate_records(&packed).unwrap();
        assert_eq!(h.attributes & ATTR_COMPRESSION_MASK, CODEC_LZ4);
        assert!(packed.len() > plain_len);
        let recs: Vec<Record> = Records::new(packed.clone(), h)
            .map(Result::unwrap)
            .collect();
        assert_eq!(recs.len(), 200);
        assert_eq!(&recs[199].value[..], b"value value value 199");
        assert_eq!(recs[199].timestamp_ms, 209);
        // A body that decompresses wrong is refused, even with a valid CRC.
        let mut bad = BytesMut::from(&packed[..]);
        let n = bad.len();
        bad[n - 3] ^= 0xff;
        let crc = compute_crc(&bad);
        bad[28..32].copy_from_slice(&crc.to_le_bytes());
        assert!(validate_records(&bad).is_err());
        // A declared size beyond the hard limit is refused before allocating.
        let mut bomb = BytesMut::from(&packed[..]);
        bomb[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = compute_crc(&bomb);
        bomb[28..32].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            validate_records(&bomb),
            Err(BatchError::BadCompression(_))
        ));
        // Incompressible records stay uncompressed.
        let mut r = BatchBuilder::new(0);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        r.push(0, None, &noise, &[]);
        assert_eq!(
            BatchHeader::parse(&r.finish_with(Compression::Lz4))
                .unwrap()
                .attributes,
            0
        );
    }

    #[test]
    fn a_restamped_batch_validates_and_carries_the_stamp() {
        let mut b = BatchBuilder::new(5);
        b.push(5, Some(b"k"), b"v", &[]);
        let plain = b.finish();
        let shared = plain.clone(); // shared bytes are copied, not changed under the other owner
        let stamp = ProducerStamp {
            producer_id: 42,
            producer_epoch: 1,
            base_sequence: 7,
        };
        let stamped = with_producer(plain, stamp).unwrap();
        let h = validate_records(&stamped).unwrap();
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 1, 7)
        );
        assert_eq!(BatchHeader::parse(&shared).unwrap().producer_id, -1);
        assert!(with_producer(Bytes::from_static(b"short"), stamp).is_err());
    }

    use super::*;
    use proptest::prelude::*;

    type Rec = (i64, Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

    fn build(base_ts: i64, recs: &[Rec]) -> Bytes {
        let mut b = BatchBuilder::new(base_ts);
        for (ts, k, v, hs) in recs {
            let hs: Vec<(&str, &[u8])> =
                hs.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
            b.push(*ts, k.as_deref(), v, &hs);
        }
        b.finish()
    }

    proptest! {
        #[test]
        fn round_trip(
            base_ts in 0i64..4_000_000_000_000,
            recs in prop::collection::vec(
                (0i64..1_000_000, prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
                 prop::collection::vec(any::<u8>(), 0..200),
                 prop::collection::vec(("[a-z]{0,8}", prop::collection::vec(any::<u8>(), 0..16)), 0..3)),
                1..20),
            base_offset in 0u64..u64::MAX / 2,
        ) {
            let recs: Vec<Rec> = recs.into_iter().map(|(d, k, v, h)| (base_ts + d, k, v, h)).collect();
            let batch = build(base_ts, &recs);
            let h = validate_records(&batch).unwrap();
            prop_assert_eq!(h.record_count as usize, recs.len());
            // The broker's stamp does not disturb the CRC.
            let mut stored = stamp(&h, base_offset, 7, 9).unwrap().to_vec();
            stored.extend_from_slice(&batch[STAMP_LEN..]);
            let stored = Bytes::from(stored);
            let h = validate_stored(&stored).unwrap();
            prop_assert_eq!((h.base_offset, h.raft_term, h.raft_index), (base_offset, 7, 9));
            let got: Vec<Record> = Records::new(stored.clone(), h).map(Result::unwrap).collect();
            prop_assert_eq!(got.len(), recs.len());
            for (i, (r, (ts, k, v, hs))) in got.iter().zip(&recs).enumerate() {
                prop_assert_eq!(r.offset, base_offset + i as u64);
                prop_assert_eq!(r.timestamp_ms, *ts);
                prop_assert_eq!(r.key.as_deref(), k.as_deref());
                prop_assert_eq!(&r.value[..], &v[..]);
                prop_assert_eq!(r.headers.len(), hs.len());
                for (a, (hk, hv)) in r.headers.iter().zip(hs) {
                    prop_assert_eq!(&a.key, hk);
                    prop_assert_eq!(&a.value[..], &hv[..]);
                }
            }
        }

        #[test]
        fn any_flipped_byte_of_a_stored_batch_is_caught(pos in 0..200usize, bit in 0u8..8) {
            let batch = build(1000, &[(1000, Some(b"k".to_vec()), vec![7u8; 150], vec![])]);
            let h = BatchHeader::parse(&batch).unwrap();
            let mut stored = stamp(&h, 40, 2, 17).unwrap().to_vec();
            stored.extend_from_slice(&batch[STAMP_LEN..]);
            validate_stored(&stored).unwrap();
            let pos = pos % stored.len();
            stored[pos] ^= 1 << bit;
            prop_assert!(validate_stored(&stored).is_err(), "flip at {} passed", pos);
        }

        #[test]
        fn any_flipped_covered_byte_is_caught(pos in CRC_START..200usize, bit in 0u8..8) {
            let batch = build(1000, &[(1000, Some(b"k".to_vec()), vec![7u8; 150], vec![])]);
            let mut bad = batch.to_vec();
            let pos = pos.min(bad.len() - 1);
            bad[pos] ^= 1 << bit;
            prop_assert!(validate(&bad).is_err());
        }

        #[test]
        fn decoder_never_panics(data in prop::collection::vec(any::<u8>(), 0..300)) {
            let b = Bytes::from(data);
            if let Ok(h) = validate(&b) {
                for r in Records::new(b.clone(), h) { let _ = r; }
            }
            let _ = validate_records(&b);
        }
    }

    #[test]
    fn control_batches_hold_no_records() {
        let c = control_batch(2, b"conf", 5).freeze();
        let h = validate(&c).unwrap();
        assert!(h.is_control());
        assert_eq!(h.record_count, 0);
        assert_eq!(
            control_payload(&c).unwrap(),
            (2, Bytes::from_static(b"conf"))
        );
        assert_eq!(Records::new(c.clone(), h).count(), 0);
        assert!(
            validate_records(&c).is_err(),
            "clients may not send control batches"
        );
    }

    #[test]
    fn an_overflowing_stamp_is_refused_not_a_panic() {
        // Found by fuzzing (fuzz/regressions/batch_decode/offset-overflow): the stamp is outside the CRC.
        let batch = build(
            1,
            &[
                (1, None, b"a".to_vec(), vec![]),
                (1, None, b"b".to_vec(), vec![]),
            ],
        );
        let h = BatchHeader::parse(&batch).unwrap();
        let mut stored = stamp(&h, u64::MAX, 1, 1).unwrap().to_vec();
        stored.extend_from_slice(&batch[STAMP_LEN..]);
        assert_eq!(validate(&stored), Err(BatchError::OffsetOverflow(u64::MAX)));
        assert_eq!(
            validate_stored(&stored),
            Err(BatchError::OffsetOverflow(u64::MAX))
        );
        let h = BatchHeader::parse(&stored).unwrap();
        let _ = h.next_offset();
        let _: Vec<_> = Records::new(Bytes::from(stored), h).collect();
    }

    #[test]
    fn length_and_crc_errors() {
        let batch = build(1, &[(1, None, b"v".to_vec(), vec![])]);
        assert!(matches!(
            validate(&batch[..batch.len() - 1]),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(matches!(
            validate(&batch[..10]),
            Err(BatchError::TooShort(10))
        ));
        let mut bad = batch.to_vec();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(
            validate(&bad),
            Err(BatchError::CrcMismatch { .. })
        ));
    }
}
