//! The one serialisation format of the project.
//!
//! Every value that is persisted or sent is framed as
//!
//! ```text
//! +---------+----------------------+---------------------------+
//! | version | postcard(value)      | crc32c(version ‖ payload) |
//! |  1 byte |  variable            |  4 bytes, little endian   |
//! +---------+----------------------+---------------------------+
//! ```
//!
//! [postcard](https://docs.rs/postcard) is compact (varints, no field names),
//! has a documented stable wire format, and works through serde, so one codec
//! serves disk and network. The CRC-32C (Castagnoli) trailer catches torn or
//! corrupted bytes; it is hardware accelerated on x86-64-v2 and aarch64.
//!
//! ```
//! use ha_core::codec;
//! use ha_core::types::LogId;
//!
//! let bytes = codec::encode(&LogId::new(3, 42));
//! let back: LogId = codec::decode(&bytes).unwrap();
//! assert_eq!(back, LogId::new(3, 42));
//!
//! let mut torn = bytes.clone();
//! torn[1] ^= 0xff;
//! assert!(matches!(
//!     codec::decode::<LogId>(&torn),
//!     Err(codec::CodecError::Checksum { .. })
//! ));
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The format version written by this build.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes added by the frame around the payload (version + checksum).
pub const FRAME_OVERHEAD: usize = 5;

/// Why bytes could not be decoded. Decoding never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than the smallest possible frame.
    #[error("frame too short: {len} bytes, need at least {FRAME_OVERHEAD}")]
    TooShort {
        /// Length seen.
        len: usize,
    },
    /// Stored and computed checksums differ: the bytes are corrupt or torn.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Checksum found in the frame.
        stored: u32,
        /// Checksum of the bytes found.
        computed: u32,
    },
    /// A version this build does not understand.
    #[error("unsupported format version {found} (this build reads {FORMAT_VERSION})")]
    Version {
        /// Version byte found.
        found: u8,
    },
    /// The checksum matched but the payload does not decode as the expected type.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// Serialises `value` into a checksummed, versioned frame.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    encode_into(value, &mut out);
    out
}

/// Appends the payload and checksum to `out`, which already holds the version
/// byte (and possibly a caller prefix, which the checksum does not cover).
fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    let start = out.len() - 1;
    // Serialising plain data into a Vec cannot fail for the types of this
    // project (no maps with non-string keys restrictions in postcard, no
    // unsupported serde features); a failure is a programming error.
    let out2 = postcard::to_extend(value, std::mem::take(out))
        .unwrap_or_else(|e| panic!("postcard cannot encode this type: {e}"));
    *out = out2;
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Checks the frame and deserialises its payload.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let payload = verify(bytes)?;
    postcard::from_bytes(payload).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Checks version and checksum; returns the payload slice.
pub fn verify(bytes: &[u8]) -> Result<&[u8], CodecError> {
    if bytes.len() < FRAME_OVERHEAD {
        return Err(CodecError::TooShort { len: bytes.len() });
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 4);
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(trailer);
    let stored = u32::from_le_bytes(crc_bytes);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    if body[0] != FORMAT_VERSION {
        return Err(CodecError::Version { found: body[0] });
    }
    Ok(&body[1..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, EntryPayload, LogId, Membership, NodeId};
    use proptest::prelude::*;

    #[test]
    fn roundtrip_entry() {
        let e = Entry {
            log_id: LogId::new(7, 9),
            payload: EntryPayload::Membership(Box::new(Membership::new([NodeId(1), NodeId(2)]))),
        };
        assert_eq!(decode::<Entry>(&encode(&e)).unwrap(), e);
    }

    #[test]
    fn wrong_version_is_reported() {
        let mut b = encode(&5u32);
        b[0] = 9;
        let n = b.len();
        let crc = crc32c::crc32c(&b[..n - 4]);
        b[n - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode::<u32>(&b), Err(CodecError::Version { found: 9 }));
    }

    proptest! {
        #[test]
        fn any_single_bit_flip_is_detected(data in proptest::collection::vec(any::<u8>(), 0..200), bit in 0usize..2000) {
            let e = Entry { log_id: LogId::new(1, 2), payload: EntryPayload::Normal(data.into()) };
            let mut b = encode(&e);
            let bit = bit % (b.len() * 8);
            b[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode::<Entry>(&b).is_err());
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode::<Entry>(&data);
        }
    }
}
