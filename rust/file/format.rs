//! The on-disk format of an EDN file: one header line that EDN readers
//! skip, then the body.
//!
//! ```text
//! ;duratom/v2 version=7 length=1234 crc32=0a1b2c3d
//! {:the "value"}
//! ```
//!
//! `version` counts commits and is the store's version token; `length` is
//! the body's size. `crc32` covers the header's own `version=.. length=..`
//! text and then the body, so a damaged count or length is caught as well as
//! a damaged value. Files without the line (written by the original library,
//! or by hand) load as version 0. A first line one byte away from a tag, or a
//! file that is a cut-off piece of a tag, is a damaged header rather than
//! plain EDN.
//!
//! Files that earlier builds wrote with a `;duratom/v1` line (same layout,
//! but its `crc32` covers only the body) still load, so a user's state
//! survives the upgrade; the next commit writes v2. A v1 line is read as
//! strictly as v1 allows: exactly as the v1 writer wrote it, length and body
//! checksum checked. Only a digit of its `version` changed into another digit
//! goes unseen, since v1 checksummed no number; the value is still exactly
//! the stored one.

/// The tag of the header line we write.
pub(super) const HEADER_TAG: &[u8] = b";duratom/v2 ";
/// The tag earlier builds wrote: still read, never written.
pub(super) const HEADER_TAG_V1: &[u8] = b";duratom/v1 ";
/// Longer than any header we write (two u64 numbers and the checksum).
const HEADER_MAX: usize = 128;

const DAMAGED_HEADER: &str = "the first line is a damaged duratom header (expected \
     `;duratom/v2 version=N length=N crc32=HEX`, or `;duratom/v1 ...` as earlier builds wrote it)";

/// How a file's first bytes read.
#[derive(Debug, PartialEq, Clone, Copy)]
pub(super) enum Lead {
    /// Our header tag.
    V2,
    /// The tag earlier builds wrote.
    V1,
    /// No header: plain EDN (the original library's, or hand-written).
    Plain,
    /// A tag with one byte changed, or a file cut off inside a tag.
    Damaged,
}

pub(super) fn lead_of(bytes: &[u8]) -> Lead {
    let tags = [HEADER_TAG, HEADER_TAG_V1];
    if bytes.len() < HEADER_TAG.len() {
        return if tags.iter().any(|t| t.starts_with(bytes)) { Lead::Damaged } else { Lead::Plain };
    }
    let lead = &bytes[..HEADER_TAG.len()];
    if lead == HEADER_TAG {
        return Lead::V2;
    }
    if lead == HEADER_TAG_V1 {
        return Lead::V1;
    }
    let one_off = |tag: &[u8]| lead.iter().zip(tag).filter(|(a, b)| a != b).count() == 1;
    if tags.iter().any(|t| one_off(t)) {
        Lead::Damaged
    } else {
        Lead::Plain
    }
}

/// The header line for `body` stored as `version`.
pub(super) fn header(version: u64, body: &[u8]) -> Vec<u8> {
    let numbers = format!("version={version} length={}", body.len());
    let crc = checksum(numbers.as_bytes(), body);
    let mut line = HEADER_TAG.to_vec();
    line.extend_from_slice(format!("{numbers} crc32={crc:08x}\n").as_bytes());
    line
}

/// CRC-32 of the header's numbers text and the body: any one damaged byte in
/// either changes it.
fn checksum(numbers: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(numbers);
    h.update(body);
    h.finalize()
}

/// What a file's bytes hold: `None` when empty, else the version and body.
/// The error says how the bytes are damaged.
pub(super) fn decode(mut bytes: Vec<u8>) -> Result<Option<(u64, Vec<u8>)>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let tag = match lead_of(&bytes) {
        Lead::Plain => return Ok(Some((0, bytes))),
        Lead::Damaged => return Err(DAMAGED_HEADER.into()),
        Lead::V2 => HEADER_TAG,
        Lead::V1 => HEADER_TAG_V1,
    };
    let h = parse_header(&bytes, tag).ok_or(DAMAGED_HEADER)?;
    let body = &bytes[h.body_start..];
    if body.len() as u64 > h.length && tag == HEADER_TAG && bytes[h.body_start..].get(h.length as usize..).is_some_and(|r| r.starts_with(RECORD_TAG)) {
        return Err(format!(
            "the file holds change records written in log mode (`:log? true`); open it in log mode, which \
             reads them, or compact it there (duratom.core/compact!) to plain EDN"
        ));
    }
    if body.len() as u64 != h.length {
        return Err(format!("header says {} bytes, file holds {}", h.length, body.len()));
    }
    let crc = if tag == HEADER_TAG_V1 {
        crc32fast::hash(body) // v1 checksummed the body only
    } else {
        checksum(&bytes[h.numbers.clone()], body)
    };
    if crc != h.crc32 {
        return Err(format!("checksum {crc:08x} does not match the header's {:08x}", h.crc32));
    }
    bytes.drain(..h.body_start);
    Ok(Some((h.version, bytes)))
}

struct Header {
    version: u64,
    length: u64,
    crc32: u32,
    /// Where the `version=.. length=..` text lies in the file.
    numbers: std::ops::Range<usize>,
    body_start: usize,
}

/// Parses `<tag>version=N length=N crc32=HEX\n` exactly as `header` (and,
/// with the v1 tag, the v1 writer) writes it: decimal numbers without a
/// leading zero, eight lower-case hex digits, single spaces. `None` when it
/// is anything else.
fn parse_header(bytes: &[u8], tag: &[u8]) -> Option<Header> {
    if !bytes.starts_with(tag) {
        return None;
    }
    let end = bytes.iter().take(HEADER_MAX).position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&bytes[tag.len()..end]).ok()?;
    let (numbers, crc) = line.split_once(" crc32=")?;
    let (version, length) = numbers.strip_prefix("version=")?.split_once(" length=")?;
    if crc.len() != 8 || !crc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    Some(Header {
        version: decimal(version)?,
        length: decimal(length)?,
        crc32: u32::from_str_radix(crc, 16).ok()?,
        numbers: tag.len()..tag.len() + numbers.len(),
        body_start: end + 1,
    })
}

/// A decimal number as the header writes it. Canonical only: for v1, whose
/// checksum leaves the version out, a digit damaged into a leading zero is
/// at least caught.
pub(super) fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

/// A file as the v1 writer (the build before v2) wrote it: its header line,
/// whose checksum covers the body only, then the body. Tests only: v1 is
/// read, never written.
#[cfg(test)]
pub(super) fn v1_file(version: u64, body: &[u8]) -> Vec<u8> {
    let line = format!(";duratom/v1 version={version} length={} crc32={:08x}\n", body.len(), crc32fast::hash(body));
    [line.as_bytes(), body].concat()
}


/// The tag of a change record's line (log mode).
pub(super) const RECORD_TAG: &[u8] = b";duratom/r ";

/// A change record as appended after the base: its line, `payload`, and a
/// newline, so that the file reads as a sequence of EDN forms. The line's
/// `crc32` covers its `version=.. length=..` text and the payload.
pub(super) fn record(version: u64, payload: &[u8]) -> Vec<u8> {
    let numbers = format!("version={version} length={}", payload.len());
    let crc = checksum(numbers.as_bytes(), payload);
    let mut r = RECORD_TAG.to_vec();
    r.extend_from_slice(format!("{numbers} crc32={crc:08x}\n").as_bytes());
    r.extend_from_slice(payload);
    r.push(b'\n');
    r
}

/// A log-mode file read: the base and its intact records.
#[derive(Debug, PartialEq)]
pub(super) struct Log {
    /// The version of the last intact record (the base's when none).
    pub version: u64,
    /// Where the base body starts and where the last intact record ends:
    /// the bytes between are the base and the records, as EDN forms.
    pub start: usize,
    pub end: usize,
    /// Where the file's last non-zero byte ends: past `end` when a record
    /// cut short lies there. The zeros after it are space reserved for
    /// appends, or the part of a cut-short append that never reached the disk.
    pub data_end: usize,
    /// Change records after the base.
    pub records: u64,
    /// Whether the file has a v2 header, so that records can follow it.
    pub appendable: bool,
}

/// Damage in a log-mode file: what is wrong and at which byte offset.
pub(super) struct Damage {
    pub offset: usize,
    pub detail: String,
}

/// Reads a log-mode file: the base as `decode` reads it, then its change
/// records. The zeros that end a file are not records (see `Log::data_end`).
/// A record cut short where the file's data ends (a crash during its
/// append: never acknowledged) ends the log there; any other damage is an
/// error naming its offset. `None` when the file is empty.
pub(super) fn decode_log(bytes: &[u8]) -> Result<Option<Log>, Damage> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let at_start = |detail: String| Damage { offset: 0, detail };
    let (tag, appendable) = match lead_of(bytes) {
        Lead::Plain => {
            return Ok(Some(Log { version: 0, start: 0, end: bytes.len(), data_end: bytes.len(), records: 0, appendable: false }));
        }
        Lead::Damaged => return Err(at_start(DAMAGED_HEADER.into())),
        Lead::V2 => (HEADER_TAG, true),
        Lead::V1 => (HEADER_TAG_V1, false),
    };
    let h = parse_header(bytes, tag).ok_or_else(|| at_start(DAMAGED_HEADER.into()))?;
    let base_end = h.body_start as u64 + h.length;
    if base_end > bytes.len() as u64 {
        return Err(at_start(format!("header says {} bytes, file holds {}", h.length, bytes.len() - h.body_start)));
    }
    let base_end = base_end as usize;
    let body = &bytes[h.body_start..base_end];
    let crc = if appendable { checksum(&bytes[h.numbers.clone()], body) } else { crc32fast::hash(body) };
    if crc != h.crc32 {
        return Err(at_start(format!("checksum {crc:08x} does not match the header's {:08x}", h.crc32)));
    }
    if !appendable && base_end != bytes.len() {
        return Err(at_start(format!("header says {} bytes, file holds {}", h.length, bytes.len() - h.body_start)));
    }
    let data_end = base_end + bytes[base_end..].iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let bytes = &bytes[..data_end];
    let mut log = Log { version: h.version, start: h.body_start, end: base_end, data_end, records: 0, appendable };
    while log.end < bytes.len() {
        match next_record(bytes, log.end, log.version) {
            Next::Record(end) => {
                log.end = end;
                log.version += 1;
                log.records += 1;
            }
            Next::Torn => break,
            Next::Damaged(detail) => return Err(Damage { offset: log.end, detail }),
        }
    }
    Ok(Some(log))
}

enum Next {
    /// An intact record, ending there.
    Record(usize),
    /// The end of the file's data is a record cut short.
    Torn,
    Damaged(String),
}

/// The record at `at` of `bytes` (the file up to its last non-zero byte),
/// which must carry version `previous + 1`. A crash leaves the last append
/// cut short, or its end as zeros (power lost before its fdatasync), which
/// `bytes` leaves out: either way the record runs past the end of `bytes`.
fn next_record(bytes: &[u8], at: usize, previous: u64) -> Next {
    let rest = &bytes[at..];
    if rest.len() < RECORD_TAG.len() && RECORD_TAG.starts_with(rest) {
        return Next::Torn;
    }
    if !rest.starts_with(RECORD_TAG) {
        return Next::Damaged("expected a change record (`;duratom/r ...`)".into());
    }
    let Some(line_end) = rest.iter().take(HEADER_MAX).position(|&b| b == b'\n') else {
        return if rest.len() < HEADER_MAX && !rest.contains(&b'\n') { Next::Torn } else { Next::Damaged("a damaged change record line".into()) };
    };
    let Some(h) = parse_header(rest, RECORD_TAG) else { return Next::Damaged("a damaged change record line".into()) };
    if h.version != previous.wrapping_add(1) {
        return Next::Damaged(format!("a change record numbered {} follows version {previous}", h.version));
    }
    let total = (line_end as u64 + 1).saturating_add(h.length).saturating_add(1);
    if total > rest.len() as u64 {
        return Next::Torn;
    }
    let total = total as usize;
    let payload = &rest[line_end + 1..total - 1];
    let crc = checksum(&rest[h.numbers.clone()], payload);
    if crc == h.crc32 && rest[total - 1] == b'\n' {
        return Next::Record(at + total);
    }
    Next::Damaged(format!("change record checksum {crc:08x} does not match its line's {:08x}", h.crc32))
}
