//! Fuzzes everything that parses bytes from a peer before trusting them:
//! the stream preamble, the frame decoder (fed in arbitrary chunk sizes,
//! under every stream kind's rules and a fuzzer-chosen size limit) and the
//! node-name parser.
//!
//! Run: `cargo +nightly fuzz run frame_decoder` (from crates/ha-transport-quic).
#![no_main]

use bytes::BytesMut;
use ha_transport_quic::frame::{
    FRAME_HEADER_BYTES, FrameDecoder, PREAMBLE_BYTES, Preamble, StreamKind, WireKind,
};
use ha_transport_quic::identity::parse_node_dns_name;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (ctl, rest) = data.split_at(3);
    let max = usize::from(u16::from_le_bytes([ctl[0], ctl[1]]));
    let chunk = usize::from(ctl[2] % 64) + 1;
    let dec = match ctl[2] >> 6 {
        0 => FrameDecoder::new(max),
        1 => FrameDecoder::for_stream(StreamKind::Protocol, max),
        2 => FrameDecoder::for_stream(StreamKind::Snapshot, max),
        _ => FrameDecoder::only(WireKind::Response, max),
    };

    if rest.len() >= PREAMBLE_BYTES {
        let mut raw = [0u8; PREAMBLE_BYTES];
        raw.copy_from_slice(&rest[..PREAMBLE_BYTES]);
        if let Ok(p) = Preamble::decode(&raw) {
            assert_eq!(p.encode(), raw, "preamble round trip");
        }
    }
    if let Ok(s) = std::str::from_utf8(rest) {
        if let Some(id) = parse_node_dns_name(s) {
            assert_eq!(format!("node-{}.ha", id.0), s);
        }
    }

    // Feed in chunks; every yielded frame respects the limit, an error is
    // final and leaves the buffer untouched, and consumed bytes add up.
    let mut buf = BytesMut::new();
    let mut consumed = 0usize;
    'feed: for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.clone();
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= dec.max_frame_bytes());
                    consumed += FRAME_HEADER_BYTES + f.payload.len();
                }
                Ok(None) => break,
                Err(_) => {
                    assert_eq!(buf, before);
                    break 'feed;
                }
            }
        }
    }
    assert!(consumed <= rest.len());
});
