//! Repairs the HTTP/2 `:authority` of etcd clients that send a whole URL.
//!
//! grpc-go dials a target it has no resolver for ("passthrough") with the
//! target string itself as `:authority`. etcdctl 3.4's per-endpoint calls
//! (`endpoint status`, `endpoint hashkv`, `member ...` via one endpoint) dial
//! `http://host:port` that way, so the request carries
//! `:authority: http://host:port`. etcd (Go's HTTP/2 server) accepts it; h2,
//! under tonic, refuses the stream as malformed (RST_STREAM PROTOCOL_ERROR)
//! before any service sees it, and no server setting changes that.
//!
//! [`AuthorityFix`] wraps an accepted connection and rewrites, in the bytes
//! the client sends, every `:authority` value that h2 would refuse but
//! that becomes valid once a leading `scheme://` and a trailing path are cut
//! (`http://127.0.0.1:2379/` → `127.0.0.1:2379`). Everything else passes
//! unchanged, and the bytes the server sends are not touched.
//!
//! # How, without decoding every header
//!
//! HPACK keeps a dynamic table per direction that the client's encoder and
//! the server's decoder must agree on. The filter mirrors the client's table
//! (names and sizes) and copies each header field representation through
//! unchanged, except literals carrying a malformed `:authority`, which it
//! re-emits with the repaired value (same representation kind, same name
//! index, a plain string). Indexed references are copied as they are: the
//! entry they name holds the repaired value in the server's table. That
//! table stays consistent with the client's because every rewritten entry is
//! shorter than the client's, so the server's table evicts no earlier than
//! the client's and index `i` names the same entry in both (RFC 7541 §4).
//! Header blocks are reframed (padding dropped) into frames of at most
//! [`MAX_OUT_FRAME_BYTES`].
//!
//! A byte stream that does not start with the HTTP/2 client preface is
//! passed through untouched (h2 then refuses it as before). A malformed
//! header block (bad HPACK, an index out of range, a block over
//! [`MAX_HEADER_BLOCK_BYTES`]) ends the connection with an I/O error, which
//! is what h2 does with it too (COMPRESSION_ERROR is a connection error).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of an HTTP/2 frame header.
const FRAME_HEADER_BYTES: usize = 9;
/// HEADERS frame type.
const TYPE_HEADERS: u8 = 0x1;
/// CONTINUATION frame type.
const TYPE_CONTINUATION: u8 = 0x9;
/// END_STREAM flag (HEADERS).
const FLAG_END_STREAM: u8 = 0x1;
/// END_HEADERS flag (HEADERS, CONTINUATION).
const FLAG_END_HEADERS: u8 = 0x4;
/// PADDED flag (HEADERS).
const FLAG_PADDED: u8 = 0x8;
/// PRIORITY flag (HEADERS).
const FLAG_PRIORITY: u8 = 0x20;
/// Largest header block (HEADERS plus CONTINUATION fragments) buffered,
/// in bytes; a larger one ends the connection. Far above what gRPC clients
/// send (hyper's server refuses header lists over 16 KiB anyway).
pub const MAX_HEADER_BLOCK_BYTES: usize = 256 * 1024;
/// Largest frame payload the filter emits when it reframes a header block:
/// the HTTP/2 minimum of SETTINGS_MAX_FRAME_SIZE, which every server accepts.
pub const MAX_OUT_FRAME_BYTES: usize = 16_384;
/// Largest HPACK dynamic table the client may use, in bytes: the HTTP/2
/// default SETTINGS_HEADER_TABLE_SIZE, which the server (h2 as configured
/// by tonic) does not change.
pub const MAX_TABLE_BYTES: usize = 4_096;
/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Per-entry overhead of an HPACK table entry (RFC 7541 §4.1).
const ENTRY_OVERHEAD_BYTES: usize = 32;

/// Why a client's byte stream could not be filtered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityFixError {
    /// A header block exceeds [`MAX_HEADER_BLOCK_BYTES`].
    #[error("HTTP/2 header block of {size} bytes exceeds the limit of {max}")]
    BlockTooLarge {
        /// Bytes buffered so far.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// HEADERS without END_HEADERS not followed by a CONTINUATION of the
    /// same stream.
    #[error("HTTP/2 protocol error: expected CONTINUATION of stream {stream}")]
    ExpectedContinuation {
        /// The stream whose header block is open.
        stream: u32,
    },
    /// A CONTINUATION with no open header block.
    #[error("HTTP/2 protocol error: CONTINUATION without HEADERS")]
    UnexpectedContinuation,
    /// Padding or priority fields longer than the frame.
    #[error("HTTP/2 protocol error: malformed HEADERS frame")]
    MalformedHeaders,
    /// Invalid HPACK.
    #[error("HPACK: {0}")]
    Hpack(&'static str),
}

impl From<AuthorityFixError> for io::Error {
    fn from(e: AuthorityFixError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

// ------------------------------------------------------------------ HPACK

/// Names of the HPACK static table (RFC 7541 Appendix A), index 1..=61.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// The HPACK Huffman code (RFC 7541 Appendix B) is canonical: codes are
/// assigned in order of length, then of symbol. So it is fully given by the
/// symbols of each code length, listed here from 5 to 30 bits (symbol 256 is
/// EOS).
const HUFFMAN_BY_LENGTH: [(u8, &[u16]); 21] = [
    (5, &[48, 49, 50, 97, 99, 101, 105, 111, 115, 116]),
    (
        6,
        &[
            32, 37, 45, 46, 47, 51, 52, 53, 54, 55, 56, 57, 61, 65, 95, 98, 100, 102, 103, 104,
            108, 109, 110, 112, 114, 117,
        ],
    ),
    (
        7,
        &[
            58, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86,
            87, 89, 106, 107, 113, 118, 119, 120, 121, 122,
        ],
    ),
    (8, &[38, 42, 44, 59, 88, 90]),
    (10, &[33, 34, 40, 41, 63]),
    (11, &[39, 43, 124]),
    (12, &[35, 62]),
    (13, &[0, 36, 64, 91, 93, 126]),
    (14, &[94, 125]),
    (15, &[60, 96, 123]),
    (19, &[92, 195, 208]),
    (20, &[128, 130, 131, 162, 184, 194, 224, 226]),
    (
        21,
        &[
            153, 161, 167, 172, 176, 177, 179, 209, 216, 217, 227, 229, 230,
        ],
    ),
    (
        22,
        &[
            129, 132, 133, 134, 136, 146, 154, 156, 160, 163, 164, 169, 170, 173, 178, 181, 185,
            186, 187, 189, 190, 196, 198, 228, 232, 233,
        ],
    ),
    (
        23,
        &[
            1, 135, 137, 138, 139, 140, 141, 143, 147, 149, 150, 151, 152, 155, 157, 158, 165, 166,
            168, 174, 175, 180, 182, 183, 188, 191, 197, 231, 239,
        ],
    ),
    (
        24,
        &[9, 142, 144, 145, 148, 159, 171, 206, 215, 225, 236, 237],
    ),
    (25, &[199, 207, 234, 235]),
    (
        26,
        &[
            192, 193, 200, 201, 202, 205, 210, 213, 218, 219, 238, 240, 242, 243, 255,
        ],
    ),
    (
        27,
        &[
            203, 204, 211, 212, 214, 221, 222, 223, 241, 244, 245, 246, 247, 248, 250, 251, 252,
            253, 254,
        ],
    ),
    (
        28,
        &[
            2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 23, 24, 25, 26, 27, 28,
            29, 30, 31, 127, 220, 249,
        ],
    ),
    (30, &[10, 13, 22, 256]),
];

/// Longest Huffman code, bits.
const HUFFMAN_MAX_BITS: usize = 30;
/// The end-of-string symbol.
const EOS: u16 = 256;

/// Canonical decoding tables: for each length, the first code, how many
/// codes, and where its symbols start in `symbols`.
struct Huffman {
    first: [u32; HUFFMAN_MAX_BITS + 1],
    count: [u32; HUFFMAN_MAX_BITS + 1],
    offset: [usize; HUFFMAN_MAX_BITS + 1],
    symbols: Vec<u16>,
}

impl Huffman {
    fn build() -> Huffman {
        let mut by_len: Vec<Vec<u16>> = vec![Vec::new(); HUFFMAN_MAX_BITS + 1];
        for (len, syms) in HUFFMAN_BY_LENGTH {
            by_len[usize::from(len)].extend_from_slice(syms);
        }
        let mut h = Huffman {
            first: [0; HUFFMAN_MAX_BITS + 1],
            count: [0; HUFFMAN_MAX_BITS + 1],
            offset: [0; HUFFMAN_MAX_BITS + 1],
            symbols: Vec::with_capacity(257),
        };
        let mut code: u32 = 0;
        for (len, syms) in by_len.iter().enumerate().skip(1) {
            code <<= 1;
            h.first[len] = code;
            h.count[len] = syms.len() as u32;
            h.offset[len] = h.symbols.len();
            h.symbols.extend_from_slice(syms);
            code += h.count[len];
        }
        h
    }

    /// Decodes a Huffman-coded string (RFC 7541 §5.2).
    fn decode(&self, input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthorityFixError> {
        let mut code: u32 = 0;
        let mut len: usize = 0;
        for &byte in input {
            for bit in (0..8).rev() {
                code = (code << 1) | u32::from((byte >> bit) & 1);
                len += 1;
                let idx = code.wrapping_sub(self.first[len]);
                if code >= self.first[len] && idx < self.count[len] {
                    let sym = self.symbols[self.offset[len] + idx as usize];
                    if sym == EOS {
                        return Err(AuthorityFixError::Hpack("EOS inside a Huffman string"));
                    }
                    // Symbols other than EOS are bytes.
                    out.push((sym & 0xff) as u8);
                    code = 0;
                    len = 0;
                } else if len >= HUFFMAN_MAX_BITS {
                    return Err(AuthorityFixError::Hpack("invalid Huffman code"));
                }
            }
        }
        // Padding: at most 7 bits, all ones (a prefix of EOS).
        if len > 7 || code != (1u32 << len) - 1 {
            return Err(AuthorityFixError::Hpack("invalid Huffman padding"));
        }
        Ok(())
    }
}

/// The HPACK dynamic table as the client's encoder holds it (names only,
/// plus each entry's accounted size).
#[derive(Default)]
struct Table {
    /// Newest first: (name, entry size).
    entries: std::collections::VecDeque<(Vec<u8>, usize)>,
    size: usize,
    max: usize,
}

impl Table {
    fn new() -> Table {
        Table {
            max: MAX_TABLE_BYTES,
            ..Table::default()
        }
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.entries.pop_back() {
                Some((_, s)) => self.size -= s,
                None => break,
            }
        }
    }

    fn set_max(&mut self, max: usize) -> Result<(), AuthorityFixError> {
        if max > MAX_TABLE_BYTES {
            return Err(AuthorityFixError::Hpack(
                "dynamic table size update above the allowed maximum",
            ));
        }
        self.max = max;
        self.evict_to(max);
        Ok(())
    }

    fn insert(&mut self, name: Vec<u8>, value_len: usize) {
        let size = name.len() + value_len + ENTRY_OVERHEAD_BYTES;
        if size > self.max {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - size);
        self.entries.push_front((name, size));
        self.size += size;
    }

    /// The name at HPACK index `index` (static then dynamic).
    fn name(&self, index: usize) -> Result<&[u8], AuthorityFixError> {
        match index {
            0 => Err(AuthorityFixError::Hpack("index 0")),
            1..=61 => Ok(STATIC_NAMES[index - 1].as_bytes()),
            _ => self
                .entries
                .get(index - 62)
                .map(|e| e.0.as_slice())
                .ok_or(AuthorityFixError::Hpack("index beyond the dynamic table")),
        }
    }
}

/// Reads an HPACK integer with an `n`-bit prefix (RFC 7541 §5.1) from
/// `buf[*pos..]`.
fn read_int(buf: &[u8], pos: &mut usize, n: u32) -> Result<usize, AuthorityFixError> {
    let truncated = AuthorityFixError::Hpack("truncated integer");
    let first = *buf.get(*pos).ok_or(truncated.clone())?;
    *pos += 1;
    let mask = (1u16 << n) - 1;
    let mut value = usize::from(u16::from(first) & mask);
    if value < usize::from(mask) {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos).ok_or(truncated.clone())?;
        *pos += 1;
        // Values here are lengths and indexes of a bounded block: more than
        // four continuation bytes (28 bits) cannot be valid.
        if shift > 21 {
            return Err(AuthorityFixError::Hpack("integer too large"));
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Writes an HPACK integer with an `n`-bit prefix, the prefix's high bits
/// set to `flags`.
fn write_int(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an HPACK string literal; `scratch` receives the decoded bytes.
fn read_string(
    huffman: &Huffman,
    buf: &[u8],
    pos: &mut usize,
    scratch: &mut Vec<u8>,
) -> Result<(), AuthorityFixError> {
    let coded = *buf
        .get(*pos)
        .ok_or(AuthorityFixError::Hpack("truncated string"))?
        & 0x80
        != 0;
    let len = read_int(buf, pos, 7)?;
    let end = pos
        .checked_add(len)
        .filter(|e| *e <= buf.len())
        .ok_or(AuthorityFixError::Hpack("string beyond the block"))?;
    scratch.clear();
    if coded {
        huffman.decode(&buf[*pos..end], scratch)?;
    } else {
        scratch.extend_from_slice(&buf[*pos..end]);
    }
    *pos = end;
    Ok(())
}

/// The repaired form of an `:authority` value h2 refuses, if cutting a
/// leading `scheme://` and a trailing path makes it valid.
fn repaired(value: &[u8]) -> Option<Vec<u8>> {
    if Authority::try_from(value).is_ok() {
        return None;
    }
    let at = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[at + 3..];
    let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
    let fixed = &rest[..end];
    if fixed.is_empty() || Authority::try_from(fixed).is_err() {
        return None;
    }
    Some(fixed.to_vec())
}

/// Mirrors the client's HPACK state and rewrites header blocks.
struct Rewriter {
    huffman: Huffman,
    table: Table,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Rewriter {
    fn new() -> Rewriter {
        Rewriter {
            huffman: Huffman::build(),
            table: Table::new(),
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Rewrites one complete header block into `out`.
    fn rewrite(&mut self, block: &[u8], out: &mut Vec<u8>) -> Result<(), AuthorityFixError> {
        let mut pos = 0;
        while pos < block.len() {
            let start = pos;
            let b = block[pos];
            if b & 0x80 != 0 {
                // Indexed field: must name an entry; copied as is.
                let index = read_int(block, &mut pos, 7)?;
                self.table.name(index)?;
                out.extend_from_slice(&block[start..pos]);
                continue;
            }
            if b & 0xe0 == 0x20 {
                let max = read_int(block, &mut pos, 5)?;
                self.table.set_max(max)?;
                out.extend_from_slice(&block[start..pos]);
                continue;
            }
            // Literals: with incremental indexing (01), without (0000) and
            // never indexed (0001).
            let (flags, prefix) = if b & 0xc0 == 0x40 {
                (0x40u8, 6u32)
            } else {
                (b & 0xf0, 4u32)
            };
            let index = read_int(block, &mut pos, prefix)?;
            if index == 0 {
                let mut name = std::mem::take(&mut self.name);
                let r = read_string(&self.huffman, block, &mut pos, &mut name);
                self.name = name;
                r?;
            } else {
                let name = self.table.name(index)?.to_vec();
                self.name = name;
            }
            let mut value = std::mem::take(&mut self.value);
            let r = read_string(&self.huffman, block, &mut pos, &mut value);
            self.value = value;
            r?;
            let fix = if self.name == b":authority" {
                repaired(&self.value)
            } else {
                None
            };
            match fix {
                Some(fixed) => {
                    write_int(out, flags, prefix, index);
                    if index == 0 {
                        write_int(out, 0, 7, self.name.len());
                        out.extend_from_slice(&self.name);
                    }
                    write_int(out, 0, 7, fixed.len());
                    out.extend_from_slice(&fixed);
                }
                None => out.extend_from_slice(&block[start..pos]),
            }
            if flags == 0x40 {
                // The client's table holds the original value's size.
                self.table.insert(self.name.clone(), self.value.len());
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------ framing

/// Where the filter is in the client's byte stream.
enum State {
    /// Checking the connection preface.
    Preface,
    /// At a frame boundary.
    FrameHeader,
    /// Copying `n` more payload bytes of a frame that is not touched.
    Pass(usize),
    /// Not HTTP/2 (or given up): everything passes.
    Transparent,
}

/// An open header block (HEADERS without END_HEADERS so far).
struct OpenBlock {
    stream: u32,
    /// END_STREAM, PRIORITY flags of the HEADERS frame.
    flags: u8,
    /// The 5 priority bytes, when PRIORITY was set.
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// The sans-IO filter: bytes from the client in, bytes for h2 out.
struct Filter {
    state: State,
    open: Option<OpenBlock>,
    rewriter: Rewriter,
    scratch: Vec<u8>,
}

impl Filter {
    fn new() -> Filter {
        Filter {
            state: State::Preface,
            open: None,
            rewriter: Rewriter::new(),
            scratch: Vec::new(),
        }
    }

    /// Consumes what it can of `input` (whole frames for header frames),
    /// appending the bytes for the server to `out`.
    fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<(), AuthorityFixError> {
        loop {
            match self.state {
                State::Transparent => {
                    out.extend_from_slice(input);
                    input.clear();
                    return Ok(());
                }
                State::Preface => {
                    let n = input.len().min(PREFACE.len());
                    if input[..n] != PREFACE[..n] {
                        self.state = State::Transparent;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    out.extend_from_slice(&input[..n]);
                    input.advance(n);
                    self.state = State::FrameHeader;
                }
                State::Pass(n) => {
                    let k = n.min(input.len());
                    out.extend_from_slice(&input[..k]);
                    input.advance(k);
                    if k < n {
                        self.state = State::Pass(n - k);
                        return Ok(());
                    }
                    self.state = State::FrameHeader;
                }
                State::FrameHeader => {
                    if input.len() < FRAME_HEADER_BYTES {
                        return Ok(());
                    }
                    let len = (usize::from(input[0]) << 16)
                        | (usize::from(input[1]) << 8)
                        | usize::from(input[2]);
                    let kind = input[3];
                    let flags = input[4];
                    let stream =
                        u32::from_be_bytes([input[5], input[6], input[7], input[8]]) & 0x7fff_ffff;
                    let is_header = kind == TYPE_HEADERS || kind == TYPE_CONTINUATION;
                    if let Some(open) = &self.open
                        && (kind != TYPE_CONTINUATION || stream != open.stream)
                    {
                        return Err(AuthorityFixError::ExpectedContinuation {
                            stream: open.stream,
                        });
                    }
                    if !is_header {
                        out.extend_from_slice(&input[..FRAME_HEADER_BYTES]);
                        input.advance(FRAME_HEADER_BYTES);
                        self.state = State::Pass(len);
                        continue;
                    }
                    let buffered = self.open.as_ref().map_or(0, |o| o.block.len());
                    if buffered + len > MAX_HEADER_BLOCK_BYTES {
                        return Err(AuthorityFixError::BlockTooLarge {
                            size: buffered + len,
                            max: MAX_HEADER_BLOCK_BYTES,
                        });
                    }
                    if input.len() < FRAME_HEADER_BYTES + len {
                        input.reserve(FRAME_HEADER_BYTES + len - input.len());
                        return Ok(());
                    }
                    input.advance(FRAME_HEADER_BYTES);
                    let payload = input.split_to(len);
                    if kind == TYPE_HEADERS {
                        self.open = Some(Self::open_block(stream, flags, &payload)?);
                    } else {
                        match &mut self.open {
                            Some(open) => open.block.extend_from_slice(&payload),
                            None => return Err(AuthorityFixError::UnexpectedContinuation),
                        }
                    }
                    if flags & FLAG_END_HEADERS != 0
                        && let Some(open) = self.open.take()
                    {
                        self.emit(open, out)?;
                    }
                }
            }
        }
    }

    /// Starts a header block from a HEADERS payload (padding removed).
    fn open_block(stream: u32, flags: u8, payload: &[u8]) -> Result<OpenBlock, AuthorityFixError> {
        let mut start = 0;
        let mut end = payload.len();
        if flags & FLAG_PADDED != 0 {
            let pad = usize::from(*payload.first().ok_or(AuthorityFixError::MalformedHeaders)?);
            start = 1;
            end = end
                .checked_sub(pad)
                .ok_or(AuthorityFixError::MalformedHeaders)?;
        }
        let mut priority = None;
        if flags & FLAG_PRIORITY != 0 {
            let p = payload
                .get(start..start + 5)
                .ok_or(AuthorityFixError::MalformedHeaders)?;
            let mut bytes = [0u8; 5];
            bytes.copy_from_slice(p);
            priority = Some(bytes);
            start += 5;
        }
        if start > end {
            return Err(AuthorityFixError::MalformedHeaders);
        }
        Ok(OpenBlock {
            stream,
            flags: flags & (FLAG_END_STREAM | FLAG_PRIORITY),
            priority,
            block: payload[start..end].to_vec(),
        })
    }

    /// Rewrites a complete block and frames it: HEADERS, then CONTINUATION
    /// frames, each at most [`MAX_OUT_FRAME_BYTES`].
    fn emit(&mut self, open: OpenBlock, out: &mut BytesMut) -> Result<(), AuthorityFixError> {
        self.scratch.clear();
        if let Some(p) = &open.priority {
            self.scratch.extend_from_slice(p);
        }
        let mut rewritten = std::mem::take(&mut self.scratch);
        let r = self.rewriter.rewrite(&open.block, &mut rewritten);
        if let Err(e) = r {
            self.scratch = rewritten;
            return Err(e);
        }
        let mut rest: &[u8] = &rewritten;
        let mut first = true;
        loop {
            let n = rest.len().min(MAX_OUT_FRAME_BYTES);
            let last = n == rest.len();
            let (kind, mut flags) = if first {
                (TYPE_HEADERS, open.flags)
            } else {
                (TYPE_CONTINUATION, 0)
            };
            if last {
                flags |= FLAG_END_HEADERS;
            }
            out.reserve(FRAME_HEADER_BYTES + n);
            out.put_uint(n as u64, 3);
            out.put_u8(kind);
            out.put_u8(flags);
            out.put_u32(open.stream);
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            first = false;
            if last {
                break;
            }
        }
        self.scratch = rewritten;
        Ok(())
    }
}

// ------------------------------------------------------------------ I/O

/// An accepted client connection whose HTTP/2 `:authority` values are
/// repaired on the way in (see the module docs). Writes pass through.
pub struct AuthorityFix<IO> {
    io: IO,
    filter: Filter,
    /// Bytes read from the client, not yet filtered.
    raw: BytesMut,
    /// Filtered bytes not yet handed to the server.
    ready: BytesMut,
    /// The client closed its side.
    eof: bool,
}

impl<IO> AuthorityFix<IO> {
    /// Wraps `io`.
    pub fn new(io: IO) -> AuthorityFix<IO> {
        AuthorityFix {
            io,
            filter: Filter::new(),
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A partial frame left at EOF goes on as it is: h2 reports
                // the truncation.
                if !this.raw.is_empty() {
                    let rest = this.raw.split();
                    this.ready.extend_from_slice(&rest);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            if matches!(this.filter.state, State::Transparent) && this.raw.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if !this.raw.is_empty() {
                this.filter.feed(&mut this.raw, &mut this.ready)?;
                if !this.ready.is_empty() {
                    continue;
                }
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let mut rb = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.raw.extend_from_slice(rb.filled());
                        this.filter.feed(&mut this.raw, &mut this.ready)?;
                    }
                }
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<IO>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Huffman-encodes `input` with the same canonical table (test only).
    fn huffman_encode(h: &Huffman, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &b in input {
            let sym = u16::from(b);
            let (len, code) = (1..=HUFFMAN_MAX_BITS)
                .find_map(|len| {
                    let syms = &h.symbols[h.offset[len]..h.offset[len] + h.count[len] as usize];
                    syms.iter()
                        .position(|s| *s == sym)
                        .map(|i| (len as u32, h.first[len] + i as u32))
                })
                .unwrap();
            acc = (acc << len) | u64::from(code);
            bits += len;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            let pad = 8 - bits;
            out.push(((acc << pad) | ((1 << pad) - 1)) as u8);
        }
        out
    }

    fn literal(flags: u8, prefix: u32, index: usize, name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        write_int(&mut b, flags, prefix, index);
        if index == 0 {
            write_int(&mut b, 0, 7, name.len());
            b.extend_from_slice(name);
        }
        write_int(&mut b, 0, 7, value.len());
        b.extend_from_slice(value);
        b
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn run(filter: &mut Filter, input: &[u8]) -> Result<Vec<u8>, AuthorityFixError> {
        let mut raw = BytesMut::from(input);
        let mut out = BytesMut::new();
        filter.feed(&mut raw, &mut out)?;
        assert!(raw.is_empty(), "whole frames are consumed");
        Ok(out.to_vec())
    }

    #[test]
    fn huffman_decodes_the_rfc_examples() {
        let h = Huffman::build();
        let cases = [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
        ];
        for (coded, plain) in cases {
            let mut out = Vec::new();
            h.decode(&hex(coded), &mut out).unwrap();
            assert_eq!(out, plain.as_bytes());
        }
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        h.decode(&huffman_encode(&h, &all), &mut out).unwrap();
        assert_eq!(out, all, "every byte round-trips");
    }

    #[test]
    fn huffman_refuses_bad_padding_and_eos() {
        let h = Huffman::build();
        let mut out = Vec::new();
        // "0" is 00000; padding with zeros instead of ones.
        assert!(h.decode(&[0b0000_0000], &mut out).is_err());
        // A whole byte of padding (more than 7 bits).
        assert!(h.decode(&[0b0000_0111, 0xff], &mut out).is_err());
        // EOS (30 ones) inside the string.
        assert!(h.decode(&[0xff, 0xff, 0xff, 0xfc], &mut out).is_err());
    }

    #[test]
    fn rfc_request_sequence_passes_unchanged_and_tracks_the_table() {
        // RFC 7541 C.4: three requests with Huffman coding.
        let blocks = [
            ("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", 57),
            ("8286 84be 5886 a8eb 1064 9cbf", 110),
            (
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
                164,
            ),
        ];
        let mut r = Rewriter::new();
        for (block, size) in blocks {
            let block = hex(block);
            let mut out = Vec::new();
            r.rewrite(&block, &mut out).unwrap();
            assert_eq!(out, block);
            assert_eq!(r.table.size, size);
        }
        assert_eq!(r.table.name(62).unwrap(), b"custom-key");
        assert_eq!(r.table.name(64).unwrap(), b":authority");
    }

    #[test]
    fn url_authority_is_repaired_and_later_references_pass() {
        let h = Huffman::build();
        let mut r = Rewriter::new();
        // As grpc-go sends it: Huffman-coded, incremental indexing.
        let mut value = Vec::new();
        let coded = huffman_encode(&h, b"http://127.0.0.1:2379");
        write_int(&mut value, 0x80, 7, coded.len());
        value.extend_from_slice(&coded);
        let mut block = vec![0x83, 0x86, 0x41]; // POST, http, :authority
        block.extend_from_slice(&value);
        block.extend_from_slice(&literal(0, 4, 0, b"te", b"trailers"));
        let mut out = Vec::new();
        r.rewrite(&block, &mut out).unwrap();
        let mut want = vec![0x83, 0x86];
        want.extend_from_slice(&literal(0x40, 6, 1, b"", b"127.0.0.1:2379"));
        want.extend_from_slice(&literal(0, 4, 0, b"te", b"trailers"));
        assert_eq!(out, want);
        // The client's table holds the original (longer) entry.
        assert_eq!(r.table.size, 10 + 21 + 32);
        // The next request names it by index: copied unchanged.
        let next = [0x83, 0x86, 0xbe];
        let mut out = Vec::new();
        r.rewrite(&next, &mut out).unwrap();
        assert_eq!(out, next);
    }

    #[test]
    fn only_refused_authorities_are_rewritten() {
        assert_eq!(repaired(b"127.0.0.1:2379"), None);
        assert_eq!(repaired(b"etcd-0.example:2379"), None);
        assert_eq!(
            repaired(b"https://etcd-0.example:2379/"),
            Some(b"etcd-0.example:2379".to_vec())
        );
        // Nothing valid left after the cut: left for h2 to refuse.
        assert_eq!(repaired(b"unix:///tmp/etcd.sock"), None);
        assert_eq!(repaired(b"http://bad host"), None);
        // A literal name ":authority" (not indexed) is handled too.
        let mut r = Rewriter::new();
        let block = literal(0x10, 4, 0, b":authority", b"http://h:1");
        let mut out = Vec::new();
        r.rewrite(&block, &mut out).unwrap();
        assert_eq!(out, literal(0x10, 4, 0, b":authority", b"h:1"));
        assert_eq!(r.table.size, 0, "never-indexed fields are not inserted");
    }

    #[test]
    fn bad_hpack_is_refused() {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        assert!(
            r.rewrite(&[0xbe], &mut out).is_err(),
            "index 62 of an empty table"
        );
        assert!(r.rewrite(&[0x80], &mut out).is_err(), "index 0");
        assert!(
            r.rewrite(&[0x41, 0x05, b'a'], &mut out).is_err(),
            "truncated string"
        );
        assert!(
            r.rewrite(&[0x3f, 0xe2, 0x1f], &mut out).is_err(),
            "size update to 4097"
        );
        assert!(
            r.rewrite(&[0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut out)
                .is_err(),
            "overlong integer"
        );
        let mut ok = Vec::new();
        r.rewrite(&[0x3f, 0xe1, 0x0f], &mut ok).unwrap(); // size update to 2048
        assert_eq!(r.table.max, 2048);
    }

    #[test]
    fn frames_are_filtered_whole_and_reframed() {
        let mut input = PREFACE.to_vec();
        let settings = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        input.extend_from_slice(&settings);
        // HEADERS, padded and with priority, split across a CONTINUATION.
        let block = literal(0x40, 6, 1, b"", b"http://h:1");
        let (a, b) = block.split_at(3);
        let mut payload = vec![2u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 1, 16]); // priority
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0]);
        input.extend_from_slice(&frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            3,
            &payload,
        ));
        input.extend_from_slice(&frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, b));
        let data = frame(0x0, 0x1, 3, b"payload");
        input.extend_from_slice(&data);

        let mut want = PREFACE.to_vec();
        want.extend_from_slice(&settings);
        let mut rewritten = vec![0, 0, 0, 1, 16];
        rewritten.extend_from_slice(&literal(0x40, 6, 1, b"", b"h:1"));
        want.extend_from_slice(&frame(
            TYPE_HEADERS,
            FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS,
            3,
            &rewritten,
        ));
        want.extend_from_slice(&data);

        assert_eq!(run(&mut Filter::new(), &input).unwrap(), want);
        // Byte by byte: the same output.
        let mut f = Filter::new();
        let mut raw = BytesMut::new();
        let mut out = BytesMut::new();
        for byte in &input {
            raw.extend_from_slice(&[*byte]);
            f.feed(&mut raw, &mut out).unwrap();
        }
        assert!(raw.is_empty());
        assert_eq!(out.to_vec(), want);
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let mut r = Filter::new();
        let value = vec![b'v'; 40_000];
        let block = literal(0, 4, 0, b"x-big", &value);
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let out = run(&mut r, &input).unwrap();
        let mut rest = &out[PREFACE.len()..];
        let mut kinds = Vec::new();
        let mut joined = Vec::new();
        while !rest.is_empty() {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            assert!(len <= MAX_OUT_FRAME_BYTES);
            kinds.push((rest[3], rest[4] & FLAG_END_HEADERS != 0));
            joined.extend_from_slice(&rest[9..9 + len]);
            rest = &rest[9 + len..];
        }
        assert_eq!(
            kinds,
            [
                (TYPE_HEADERS, false),
                (TYPE_CONTINUATION, false),
                (TYPE_CONTINUATION, true)
            ]
        );
        assert_eq!(joined, block);
    }

    #[test]
    fn protocol_errors_and_limits() {
        let with_preface = |frames: &[Vec<u8>]| {
            let mut v = PREFACE.to_vec();
            for f in frames {
                v.extend_from_slice(f);
            }
            v
        };
        let open = frame(TYPE_HEADERS, 0, 1, &[0x82]);
        let ping = frame(0x6, 0, 0, &[0; 8]);
        assert_eq!(
            run(&mut Filter::new(), &with_preface(&[open.clone(), ping])),
            Err(AuthorityFixError::ExpectedContinuation { stream: 1 })
        );
        let other = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, &[0x82]);
        assert!(run(&mut Filter::new(), &with_preface(&[open, other])).is_err());
        let stray = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]);
        assert_eq!(
            run(&mut Filter::new(), &with_preface(&[stray])),
            Err(AuthorityFixError::UnexpectedContinuation)
        );
        let bad_pad = frame(TYPE_HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 1, &[9, 0x82]);
        assert_eq!(
            run(&mut Filter::new(), &with_preface(&[bad_pad])),
            Err(AuthorityFixError::MalformedHeaders)
        );
        // Over the block limit: refused from the frame header alone.
        let mut huge = vec![0u8; 9];
        let len = MAX_HEADER_BLOCK_BYTES + 1;
        huge[..3].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
        huge[3] = TYPE_HEADERS;
        let mut f = Filter::new();
        let mut raw = BytesMut::from(&with_preface(&[huge])[..]);
        let mut out = BytesMut::new();
        assert!(matches!(
            f.feed(&mut raw, &mut out),
            Err(AuthorityFixError::BlockTooLarge { .. })
        ));
    }

    #[test]
    fn a_stream_that_is_not_http2_passes_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(&mut Filter::new(), input).unwrap(), input.to_vec());
    }

    #[tokio::test]
    async fn io_wrapper_delivers_filtered_bytes_and_passes_writes() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let mut fixed = AuthorityFix::new(server);
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &literal(0x40, 6, 1, b"", b"http://h:1"),
        ));
        let mut want = PREFACE.to_vec();
        want.extend_from_slice(&frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &literal(0x40, 6, 1, b"", b"h:1"),
        ));
        let (mut cr, mut cw) = tokio::io::split(client);
        let writer = tokio::spawn(async move {
            cw.write_all(&input).await.unwrap();
            cw.shutdown().await.unwrap();
            cw
        });
        let mut got = Vec::new();
        fixed.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, want);
        fixed.write_all(b"reply").await.unwrap();
        let mut back = [0u8; 5];
        cr.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"reply");
        drop(writer.await.unwrap());
    }
}
