//! The pinned hash functions that decide placement.
//!
//! Placement must give the same answer on every machine and every Rust
//! release, so nothing here uses `std`'s `DefaultHasher` (whose algorithm is
//! explicitly unspecified). Every function is specified down to the bit:
//!
//! - [`xxh64`] is XXH64 (Yann Collet's xxHash, 64-bit variant) written from
//!   the published specification; golden vectors in the tests pin it, and a
//!   property test cross-checks it against an independent implementation.
//! - [`fmix64`] is the 64-bit finaliser of MurmurHash3 (a bijection with full
//!   avalanche), used to derive per-node and per-point values cheaply.
//! - [`reduce`] maps a 64-bit hash onto `0..n` with Lemire's multiply-shift
//!   (no modulo bias worth measuring, no division).
//! - [`neg_ln_unit`] computes `-ln(u)` for the uniform `u ∈ (0, 1)` derived
//!   from a hash using only IEEE-754 `+ - * /` in a fixed order, so weighted
//!   rendezvous scores are bit-identical across platforms (a platform `ln`
//!   from libm may differ in the last bit between C libraries).
//!
//! [`HashFn`] names the versioned key hash; a new algorithm gets a new
//! variant, never a change to an old one.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// A named, versioned hash from user keys (bytes) to 64-bit key hashes.
///
/// The variant is part of the placement's identity: persist it next to any
/// placement configuration so a future default cannot silently remap keys.
///
/// ```
/// use ha_ring::hash::HashFn;
/// let h = HashFn::V1.hash_bytes(b"user/42");
/// assert_eq!(h, HashFn::V1.hash_bytes(b"user/42"));
/// assert_eq!(HashFn::V1.name(), "xxh64-seed0");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HashFn {
    /// Version 1: XXH64 with seed 0.
    #[default]
    V1,
}

impl HashFn {
    /// The version number persisted alongside placement configuration.
    pub const fn version(self) -> u32 {
        match self {
            HashFn::V1 => 1,
        }
    }

    /// A human-readable name of the algorithm and its parameters.
    pub const fn name(self) -> &'static str {
        match self {
            HashFn::V1 => "xxh64-seed0",
        }
    }

    /// Looks a version number up; `None` for versions this build does not know.
    pub const fn from_version(version: u32) -> Option<Self> {
        match version {
            1 => Some(HashFn::V1),
            _ => None,
        }
    }

    /// Hashes a key.
    pub fn hash_bytes(self, bytes: &[u8]) -> u64 {
        match self {
            HashFn::V1 => xxh64(bytes, 0),
        }
    }

    /// Hashes a 64-bit integer key (its 8 little-endian bytes).
    pub fn hash_u64(self, value: u64) -> u64 {
        self.hash_bytes(&value.to_le_bytes())
    }
}

#[inline(always)]
fn read_u64(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

#[inline(always)]
fn read_u32(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[i..i + 4]);
    u64::from(u32::from_le_bytes(a))
}

#[inline(always)]
fn round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline(always)]
fn merge(acc: u64, v: u64) -> u64 {
    (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4)
}

/// XXH64 of `input` with `seed`, per the xxHash specification.
///
/// ```
/// // The specification's vector for the empty input and seed 0.
/// assert_eq!(ha_ring::hash::xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
/// ```
pub fn xxh64(input: &[u8], seed: u64) -> u64 {
    let len = input.len();
    let mut i = 0usize;
    let mut acc = if len >= 32 {
        let mut v1 = seed.wrapping_add(P1).wrapping_add(P2);
        let mut v2 = seed.wrapping_add(P2);
        let mut v3 = seed;
        let mut v4 = seed.wrapping_sub(P1);
        while i + 32 <= len {
            v1 = round(v1, read_u64(input, i));
            v2 = round(v2, read_u64(input, i + 8));
            v3 = round(v3, read_u64(input, i + 16));
            v4 = round(v4, read_u64(input, i + 24));
            i += 32;
        }
        let mut acc = v1
            .rotate_left(1)
            .wrapping_add(v2.rotate_left(7))
            .wrapping_add(v3.rotate_left(12))
            .wrapping_add(v4.rotate_left(18));
        acc = merge(acc, v1);
        acc = merge(acc, v2);
        acc = merge(acc, v3);
        merge(acc, v4)
    } else {
        seed.wrapping_add(P5)
    };
    acc = acc.wrapping_add(len as u64);
    while i + 8 <= len {
        acc ^= round(0, read_u64(input, i));
        acc = acc.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        i += 8;
    }
    if i + 4 <= len {
        acc ^= read_u32(input, i).wrapping_mul(P1);
        acc = acc.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        i += 4;
    }
    while i < len {
        acc ^= u64::from(input[i]).wrapping_mul(P5);
        acc = acc.rotate_left(11).wrapping_mul(P1);
        i += 1;
    }
    acc ^= acc >> 33;
    acc = acc.wrapping_mul(P2);
    acc ^= acc >> 29;
    acc = acc.wrapping_mul(P3);
    acc ^ (acc >> 32)
}

/// The 64-bit finaliser of MurmurHash3: a bijection on `u64` in which every
/// input bit affects every output bit.
///
/// ```
/// assert_eq!(ha_ring::hash::fmix64(0), 0);
/// assert_ne!(ha_ring::hash::fmix64(1), 1);
/// ```
#[inline]
pub const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    k ^= k >> 33;
    k = k.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    k ^ (k >> 33)
}

/// The pinned seed of a node: XXH64 of its id's 8 little-endian bytes with
/// seed `domain`. Different algorithms pass different `domain`s so their
/// per-node values are independent.
#[inline]
pub fn node_seed(node: u64, domain: u64) -> u64 {
    xxh64(&node.to_le_bytes(), domain)
}

/// Combines a key hash with a (well-mixed) per-node seed into a score:
/// `fmix64(key_hash ^ seed)`.
#[inline]
pub const fn combine(key_hash: u64, seed: u64) -> u64 {
    fmix64(key_hash ^ seed)
}

/// Maps `hash` uniformly onto `0..n` (Lemire's multiply-shift:
/// `(hash * n) >> 64`). Returns 0 when `n` is 0.
///
/// ```
/// assert_eq!(ha_ring::hash::reduce(u64::MAX, 10), 9);
/// assert_eq!(ha_ring::hash::reduce(0, 10), 0);
/// ```
#[inline]
pub const fn reduce(hash: u64, n: u64) -> u64 {
    ((hash as u128 * n as u128) >> 64) as u64
}

const LN2: f64 = std::f64::consts::LN_2;
const SQRT2: f64 = std::f64::consts::SQRT_2;

/// `-ln(u)` where `u = (2·(top 52 bits of hash) + 1) / 2^53`, so
/// `u ∈ (0, 1)` and the result is finite and positive.
///
/// Computed with IEEE-754 basic operations only, in a fixed order (exponent
/// extraction from the bit pattern, then the `atanh` series
/// `ln m = 2·(s + s³/3 + s⁵/5 + …)` with `s = (m−1)/(m+1)` and a fixed number
/// of terms), so the value is bit-identical on every platform with IEEE
/// double arithmetic. Accurate to a few ulp, which is all weighted
/// rendezvous needs.
///
/// ```
/// let x = ha_ring::hash::neg_ln_unit(u64::MAX / 2);
/// assert!((x - std::f64::consts::LN_2).abs() < 1e-12);
/// ```
pub fn neg_ln_unit(hash: u64) -> f64 {
    // u = (2·(top 52 bits) + 1) / 2^53: odd multiples of 2^-53, exactly
    // representable, so u ∈ [2^-53, 1 − 2^-53] and never rounds to 1.
    let u = (((hash >> 12) << 1) | 1) as f64 * (1.0 / 9_007_199_254_740_992.0);
    // u = m * 2^e with m in [1, 2); u is a normal number (u >= 2^-54).
    let bits = u.to_bits();
    let mut e = ((bits >> 52) & 0x7FF) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000F_FFFF_FFFF_FFFF) | 0x3FF0_0000_0000_0000);
    if m > SQRT2 {
        m *= 0.5;
        e += 1;
    }
    // m in (0.707, 1.415]: |s| <= 0.1716, s^2 <= 0.0295.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // Horner over 1/(2k+1) for k = 0..=12 (term 13 is below 1e-19 relative).
    let mut p = 1.0 / 25.0;
    p = p * s2 + 1.0 / 23.0;
    p = p * s2 + 1.0 / 21.0;
    p = p * s2 + 1.0 / 19.0;
    p = p * s2 + 1.0 / 17.0;
    p = p * s2 + 1.0 / 15.0;
    p = p * s2 + 1.0 / 13.0;
    p = p * s2 + 1.0 / 11.0;
    p = p * s2 + 1.0 / 9.0;
    p = p * s2 + 1.0 / 7.0;
    p = p * s2 + 1.0 / 5.0;
    p = p * s2 + 1.0 / 3.0;
    p = p * s2 + 1.0;
    let ln_m = 2.0 * s * p;
    let ln_u = (e as f64) * LN2 + ln_m;
    -ln_u
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published vectors of XXH64 (seed 0 and a non-zero seed), covering
    /// every tail path: empty, 1 byte, 3 bytes, 4+ bytes, 8+ bytes, >= 32.
    #[test]
    fn xxh64_matches_published_vectors() {
        assert_eq!(xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn xxh64_matches_reference_implementation_on_all_lengths() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in 0..data.len() {
            for seed in [0u64, 1, 0x9E37_79B1_85EB_CA87] {
                assert_eq!(
                    xxh64(&data[..len], seed),
                    xxhash_rust::xxh64::xxh64(&data[..len], seed),
                    "len {len} seed {seed}"
                );
            }
        }
    }

    #[test]
    fn hashfn_versions_round_trip() {
        assert_eq!(HashFn::from_version(HashFn::V1.version()), Some(HashFn::V1));
        assert_eq!(HashFn::from_version(0), None);
        assert_eq!(HashFn::V1.hash_bytes(b"abc"), 0x44BC_2CF5_AD77_0999);
        assert_eq!(HashFn::V1.hash_u64(7), xxh64(&7u64.to_le_bytes(), 0));
    }

    #[test]
    fn neg_ln_unit_is_accurate_and_positive() {
        let mut h = 0x0123_4567_89AB_CDEFu64;
        for _ in 0..10_000 {
            h = fmix64(h.wrapping_add(1));
            let u = (((h >> 12) << 1) | 1) as f64 / 9_007_199_254_740_992.0;
            let x = neg_ln_unit(h);
            let want = -u.ln();
            assert!(x > 0.0 && x.is_finite());
            assert!(
                (x - want).abs() <= 8.0 * f64::EPSILON * want,
                "h {h:#x}: {x} vs {want}"
            );
        }
        // Extremes stay finite and ordered.
        assert!(neg_ln_unit(0) > neg_ln_unit(1 << 12));
        assert!(neg_ln_unit(u64::MAX) > 0.0);
        assert!(neg_ln_unit(0) < 40.0);
    }

    #[test]
    fn reduce_stays_in_range() {
        for n in [1u64, 2, 3, 10, 1000, u64::MAX] {
            for h in [0u64, 1, u64::MAX / 3, u64::MAX] {
                assert!(reduce(h, n) < n);
            }
        }
        assert_eq!(reduce(12345, 0), 0);
    }
}
