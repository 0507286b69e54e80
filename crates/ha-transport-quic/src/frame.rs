//! The wire format: a stream preamble, then length-delimited frames.
//!
//! Every stream (QUIC, or the TCP baseline in the benchmarks) starts with a
//! fixed [`PREAMBLE_BYTES`]-byte [`Preamble`] written by the side that opened
//! it, followed by frames. All integers are little-endian.
//!
//! ```text
//! preamble (16 bytes)
//!   0..2   magic  b"HQ"
//!   2      wire version (WIRE_VERSION = 1)
//!   3      stream kind: 1 protocol, 2 snapshot, 3 request
//!   4..8   budget_ms u32: request streams: the caller's remaining deadline; else 0
//!   8..16  sender node id u64 (the claim; must equal the id in the certificate)
//!
//! frame header (14 bytes), then `len` payload bytes
//!   0      wire version (WIRE_VERSION = 1)
//!   1      frame kind: 1 protocol, 2 snapshot, 3 request, 4 response
//!   2..10  group id u64
//!   10..14 len u32 (payload bytes; at most the configured max_frame_bytes)
//! ```
//!
//! The decoder checks the header as soon as its 14 bytes are there, so an
//! oversized length is refused before any of its payload is buffered. A
//! decode error is final for the stream: the caller closes it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ha_core::GroupId;

/// Version byte of the preamble and of every frame header.
pub const WIRE_VERSION: u8 = 1;
/// Magic bytes at the start of every stream.
pub const PREAMBLE_MAGIC: [u8; 2] = *b"HQ";
/// Size of the [`Preamble`] in bytes.
pub const PREAMBLE_BYTES: usize = 16;
/// Size of a frame header in bytes.
pub const FRAME_HEADER_BYTES: usize = 14;
/// Hard ceiling for any configured maximum frame size: the length field is a
/// `u32`, and nothing above 1 GiB is sane to buffer for one frame.
pub const MAX_FRAME_BYTES_CEILING: usize = 1 << 30;

/// What a stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// The long-lived ordered stream of protocol frames to one peer.
    Protocol,
    /// One snapshot transfer (one group's chunks, in order).
    Snapshot,
    /// One request (bidirectional: the response comes back on it).
    Request,
}

impl StreamKind {
    fn to_byte(self) -> u8 {
        match self {
            Self::Protocol => 1,
            Self::Snapshot => 2,
            Self::Request => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Protocol),
            2 => Some(Self::Snapshot),
            3 => Some(Self::Request),
            _ => None,
        }
    }

    /// The only frame kind this stream may carry from its opener.
    pub fn frame_kind(self) -> WireKind {
        match self {
            Self::Protocol => WireKind::Protocol,
            Self::Snapshot => WireKind::Snapshot,
            Self::Request => WireKind::Request,
        }
    }
}

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireKind {
    /// A protocol message ([`ha_core::transport::FrameKind::Protocol`]).
    Protocol,
    /// A snapshot chunk ([`ha_core::transport::FrameKind::Snapshot`]).
    Snapshot,
    /// A request body.
    Request,
    /// A response body.
    Response,
}

impl WireKind {
    fn to_byte(self) -> u8 {
        match self {
            Self::Protocol => 1,
            Self::Snapshot => 2,
            Self::Request => 3,
            Self::Response => 4,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Protocol),
            2 => Some(Self::Snapshot),
            3 => Some(Self::Request),
            4 => Some(Self::Response),
            _ => None,
        }
    }
}

/// Why bytes from a peer are not a valid preamble or frame. The stream they
/// came on is closed; nothing else changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream does not start with the magic bytes.
    #[error("bad stream magic {0:02x?}")]
    BadMagic([u8; 2]),
    /// A version byte this build does not speak.
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    BadVersion(u8),
    /// Unknown stream kind byte in the preamble.
    #[error("unknown stream kind {0}")]
    UnknownStreamKind(u8),
    /// Unknown frame kind byte in a frame header.
    #[error("unknown frame kind {0}")]
    UnknownFrameKind(u8),
    /// A frame kind that is not allowed on this stream.
    #[error("frame kind {found:?} not allowed on a {stream:?} stream")]
    WrongFrameKind {
        /// The stream's kind.
        stream: StreamKind,
        /// The frame's kind.
        found: WireKind,
    },
    /// A length above the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced payload length.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// The stream ended inside a preamble or frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
}

/// The header every stream starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preamble {
    /// What the stream carries.
    pub kind: StreamKind,
    /// Request streams: milliseconds the caller still waits; else 0.
    pub budget_ms: u32,
    /// The node id the opener claims to be; checked against its certificate.
    pub sender: u64,
}

impl Preamble {
    /// Encodes the preamble.
    pub fn encode(&self) -> [u8; PREAMBLE_BYTES] {
        let mut out = [0u8; PREAMBLE_BYTES];
        out[0..2].copy_from_slice(&PREAMBLE_MAGIC);
        out[2] = WIRE_VERSION;
        out[3] = self.kind.to_byte();
        out[4..8].copy_from_slice(&self.budget_ms.to_le_bytes());
        out[8..16].copy_from_slice(&self.sender.to_le_bytes());
        out
    }

    /// Decodes a preamble.
    pub fn decode(b: &[u8; PREAMBLE_BYTES]) -> Result<Self, FrameError> {
        let magic = [b[0], b[1]];
        if magic != PREAMBLE_MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        if b[2] != WIRE_VERSION {
            return Err(FrameError::BadVersion(b[2]));
        }
        let kind = StreamKind::from_byte(b[3]).ok_or(FrameError::UnknownStreamKind(b[3]))?;
        let budget_ms = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[8..16]);
        Ok(Self {
            kind,
            budget_ms,
            sender: u64::from_le_bytes(id),
        })
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireFrame {
    /// What it carries.
    pub kind: WireKind,
    /// The consensus group.
    pub group: GroupId,
    /// The payload (shares the receive buffer, no copy).
    pub payload: Bytes,
}

/// A checked frame header ([`FrameDecoder::header`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: WireKind,
    /// The consensus group.
    pub group: GroupId,
    /// Payload length in bytes, within the decoder's limit.
    pub len: usize,
}

/// Writes one frame header for a payload of `len` bytes. The caller has
/// checked `len` against its limit.
pub fn encode_header(kind: WireKind, group: GroupId, len: u32) -> [u8; FRAME_HEADER_BYTES] {
    let mut out = [0u8; FRAME_HEADER_BYTES];
    out[0] = WIRE_VERSION;
    out[1] = kind.to_byte();
    out[2..10].copy_from_slice(&group.0.to_le_bytes());
    out[10..14].copy_from_slice(&len.to_le_bytes());
    out
}

/// Appends a whole frame (header and payload) to `buf`. Returns
/// [`FrameError::TooLarge`] and appends nothing if the payload exceeds
/// `max_frame_bytes`.
pub fn encode_frame(
    buf: &mut BytesMut,
    kind: WireKind,
    group: GroupId,
    payload: &[u8],
    max_frame_bytes: usize,
) -> Result<(), FrameError> {
    let len = checked_len(payload.len(), max_frame_bytes)?;
    buf.reserve(FRAME_HEADER_BYTES + payload.len());
    buf.put_slice(&encode_header(kind, group, len));
    buf.put_slice(payload);
    Ok(())
}

/// `len` as the wire's `u32`, if it is within `max_frame_bytes`.
pub fn checked_len(len: usize, max_frame_bytes: usize) -> Result<u32, FrameError> {
    let max = max_frame_bytes.min(MAX_FRAME_BYTES_CEILING);
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    // max <= 1 GiB < u32::MAX, so this cannot fail; stay total anyway.
    u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len: len as u64,
        max,
    })
}

/// Incremental frame decoder over a receive buffer.
///
/// Feed bytes into a `BytesMut` as they arrive and call
/// [`decode`](Self::decode) until it returns `Ok(None)` (need more bytes).
/// An `Err` is final: the stream is broken and must be closed.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
    /// Kinds accepted; `None` accepts any valid kind.
    only: Option<WireKind>,
    stream: Option<StreamKind>,
}

impl FrameDecoder {
    /// A decoder that accepts any frame kind up to `max_frame_bytes`
    /// (capped at [`MAX_FRAME_BYTES_CEILING`]).
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes: max_frame_bytes.min(MAX_FRAME_BYTES_CEILING),
            only: None,
            stream: None,
        }
    }

    /// A decoder for the frames the opener of a `stream` may send.
    pub fn for_stream(stream: StreamKind, max_frame_bytes: usize) -> Self {
        Self {
            only: Some(stream.frame_kind()),
            stream: Some(stream),
            ..Self::new(max_frame_bytes)
        }
    }

    /// A decoder that accepts only `kind` frames (used for the response side
    /// of a request stream).
    pub fn only(kind: WireKind, max_frame_bytes: usize) -> Self {
        Self {
            only: Some(kind),
            stream: Some(StreamKind::Request),
            ..Self::new(max_frame_bytes)
        }
    }

    /// The largest payload accepted.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Takes one complete frame off the front of `buf`, if there is one.
    /// On error `buf` is left as it was.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<WireFrame>, FrameError> {
        if buf.len() < FRAME_HEADER_BYTES {
            // Check what is there already so garbage fails fast.
            if let Some(&v) = buf.first()
                && v != WIRE_VERSION
            {
                return Err(FrameError::BadVersion(v));
            }
            if let Some(&k) = buf.get(1) {
                self.check_kind(k)?;
            }
            return Ok(None);
        }
        let mut h = [0u8; FRAME_HEADER_BYTES];
        h.copy_from_slice(&buf[..FRAME_HEADER_BYTES]);
        let FrameHeader { kind, group, len } = self.header(&h)?;
        if buf.len() < FRAME_HEADER_BYTES + len {
            buf.reserve(FRAME_HEADER_BYTES + len - buf.len());
            return Ok(None);
        }
        buf.advance(FRAME_HEADER_BYTES);
        let payload = buf.split_to(len).freeze();
        Ok(Some(WireFrame {
            kind,
            group,
            payload,
        }))
    }

    /// Checks and parses one frame header (version, kind allowed on this
    /// stream, length within the limit).
    pub fn header(&self, h: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, FrameError> {
        if h[0] != WIRE_VERSION {
            return Err(FrameError::BadVersion(h[0]));
        }
        let kind = self.check_kind(h[1])?;
        let mut g = [0u8; 8];
        g.copy_from_slice(&h[2..10]);
        let group = GroupId(u64::from_le_bytes(g));
        let len = u32::from_le_bytes([h[10], h[11], h[12], h[13]]) as usize;
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_frame_bytes,
            });
        }
        Ok(FrameHeader { kind, group, len })
    }

    /// At end of stream: an error if a partial frame is left.
    pub fn finish(&self, buf: &BytesMut) -> Result<(), FrameError> {
        if buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated(buf.len()))
        }
    }

    fn check_kind(&self, b: u8) -> Result<WireKind, FrameError> {
        let kind = WireKind::from_byte(b).ok_or(FrameError::UnknownFrameKind(b))?;
        match (self.only, self.stream) {
            (Some(only), Some(stream)) if only != kind => Err(FrameError::WrongFrameKind {
                stream,
                found: kind,
            }),
            _ => Ok(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(kind: WireKind, group: u64, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        encode_frame(&mut b, kind, GroupId(group), payload, 1 << 20).unwrap();
        b
    }

    #[test]
    fn round_trips_frames_split_anywhere() {
        let mut wire = frame(WireKind::Protocol, 7, b"hello");
        wire.extend_from_slice(&frame(WireKind::Protocol, 8, b""));
        let dec = FrameDecoder::for_stream(StreamKind::Protocol, 1024);
        for split in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..split]);
            let mut out = Vec::new();
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
            buf.extend_from_slice(&wire[split..]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
            assert_eq!(out.len(), 2, "split at {split}");
            assert_eq!(out[0].group, GroupId(7));
            assert_eq!(&out[0].payload[..], b"hello");
            assert_eq!(out[1].group, GroupId(8));
            assert!(out[1].payload.is_empty());
            dec.finish(&buf).unwrap();
        }
    }

    #[test]
    fn oversized_length_is_refused_from_the_header_alone() {
        let mut buf = BytesMut::new();
        buf.put_slice(&encode_header(WireKind::Snapshot, GroupId(1), 1025));
        let dec = FrameDecoder::for_stream(StreamKind::Snapshot, 1024);
        let before = buf.clone();
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: 1025,
                max: 1024
            })
        );
        assert_eq!(buf, before, "a refused frame leaves the buffer alone");
    }

    #[test]
    fn encode_refuses_oversized_payload() {
        let mut buf = BytesMut::new();
        let err = encode_frame(&mut buf, WireKind::Request, GroupId(0), &[0; 11], 10);
        assert_eq!(err, Err(FrameError::TooLarge { len: 11, max: 10 }));
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_and_wrong_kinds_are_errors() {
        let dec = FrameDecoder::for_stream(StreamKind::Protocol, 1024);
        assert_eq!(
            dec.decode(&mut BytesMut::from(&b"G"[..])),
            Err(FrameError::BadVersion(b'G'))
        );
        assert_eq!(
            dec.decode(&mut BytesMut::from(&[WIRE_VERSION, 99][..])),
            Err(FrameError::UnknownFrameKind(99))
        );
        let mut snap = frame(WireKind::Snapshot, 1, b"x");
        assert_eq!(
            dec.decode(&mut snap),
            Err(FrameError::WrongFrameKind {
                stream: StreamKind::Protocol,
                found: WireKind::Snapshot
            })
        );
        let mut partial = frame(WireKind::Protocol, 1, b"abc");
        partial.truncate(FRAME_HEADER_BYTES + 1);
        assert_eq!(dec.decode(&mut partial), Ok(None));
        assert_eq!(
            dec.finish(&partial),
            Err(FrameError::Truncated(FRAME_HEADER_BYTES + 1))
        );
    }

    #[test]
    fn preamble_round_trip_and_errors() {
        let p = Preamble {
            kind: StreamKind::Request,
            budget_ms: 1500,
            sender: 42,
        };
        assert_eq!(Preamble::decode(&p.encode()), Ok(p));
        let mut bad = p.encode();
        bad[0] = b'X';
        assert_eq!(
            Preamble::decode(&bad),
            Err(FrameError::BadMagic([b'X', b'Q']))
        );
        let mut bad = p.encode();
        bad[2] = 2;
        assert_eq!(Preamble::decode(&bad), Err(FrameError::BadVersion(2)));
        let mut bad = p.encode();
        bad[3] = 0;
        assert_eq!(
            Preamble::decode(&bad),
            Err(FrameError::UnknownStreamKind(0))
        );
    }

    fn kind_strategy() -> impl Strategy<Value = WireKind> {
        prop_oneof![
            Just(WireKind::Protocol),
            Just(WireKind::Snapshot),
            Just(WireKind::Request),
            Just(WireKind::Response),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes never panic the decoder, every frame it yields is
        /// within the limit, and an error leaves the buffer untouched.
        #[test]
        fn decoder_total_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..256) {
            let dec = FrameDecoder::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..bytes.len() + 1 {
                let before = buf.clone();
                match dec.decode(&mut buf) {
                    Ok(Some(f)) => prop_assert!(f.payload.len() <= max),
                    Ok(None) => break,
                    Err(_) => { prop_assert_eq!(&buf, &before); break; }
                }
            }
        }

        /// Any sequence of valid frames, delivered in arbitrary chunks, decodes
        /// to exactly the frames encoded, in order.
        #[test]
        fn decoder_round_trips_chunked_streams(
            frames in proptest::collection::vec((kind_strategy(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20),
            chunk in 1usize..97,
        ) {
            let mut wire = BytesMut::new();
            for (k, g, p) in &frames {
                encode_frame(&mut wire, *k, GroupId(*g), p, 300).unwrap();
            }
            let dec = FrameDecoder::new(300);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    out.push((f.kind, f.group.0, f.payload.to_vec()));
                }
            }
            prop_assert!(dec.finish(&buf).is_ok());
            prop_assert_eq!(out, frames);
        }
    }
}
