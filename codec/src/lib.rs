//! keel-codec: the versioned binary encoding of everything Keel writes to disk or sends to a peer,
//! and the bytes of RESP2, the Redis protocol ([`resp`]).
//!
//! Every blob starts with one format-version byte followed by a postcard body. A reader
//! refuses versions it does not know instead of guessing (postcard is not self-describing,
//! so a silent mis-decode is the failure mode this byte exists to prevent), and refuses
//! trailing bytes for the same reason.
//!
//! Of that encoding it owns only these bytes: [`encode`] / [`decode`] at [`FORMAT_VERSION`], [`encode_as`] /
//! [`decode_as`] for a structure at another version, and [`decode_prefix`] to read a small header
//! without copying a large trailing field. keel-raft and keel-replication both use it (and
//! re-export it as their `codec` module) without depending on each other. It knows no Keel type,
//! no storage and no network: which structure is at which version is the caller's business.
//!
//! [`resp`] owns the pure half of a Redis client: a request's encoding, the reply type and an
//! incremental reply parser. keel-replication's managed-Redis client (async) and
//! keel-jepsen's harness client (blocking) both parse with it and keep their own IO.

pub mod resp;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Current format version of every encoded structure. Bump it (and keep a decoder for the
/// old one) whenever a persisted or peer-sent type changes shape incompatibly.
pub const FORMAT_VERSION: u8 = 1;

/// Why a buffer is refused.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty buffer: expected a format version byte")]
    Empty,
    #[error("unsupported format version {found} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("malformed body: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
}

/// Encode `value` as `[FORMAT_VERSION] ++ postcard(value)`.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let out = vec![FORMAT_VERSION];
    // postcard only fails on writer errors (none for a Vec) or on types serde cannot
    // represent (none of ours): a failure here is a programming error.
    postcard::to_extend(value, out).expect("postcard encoding into a Vec cannot fail for keel types")
}

/// Encode `value` as `[version] ++ postcard(value)`: for a structure at another version than
/// [`FORMAT_VERSION`].
pub fn encode_as<T: Serialize + ?Sized>(version: u8, value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![version]).expect("postcard encoding into a Vec cannot fail for keel types")
}

/// Decode a buffer produced by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_as(FORMAT_VERSION, bytes)
}

/// Decode a buffer produced by [`encode_as`] with `version`.
pub fn decode_as<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, CodecError> {
    let (value, rest) = decode_prefix_as(version, bytes)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes(rest.len()));
    }
    Ok(value)
}

/// Decode the leading fields of a buffer produced by [`encode`] and return the undecoded rest:
/// lets a reader take a small header without copying a large trailing field. The caller is
/// responsible for checking the rest.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, &[u8]), CodecError> {
    decode_prefix_as(FORMAT_VERSION, bytes)
}

/// [`decode_prefix`] for a buffer at `version`.
pub fn decode_prefix_as<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<(T, &[u8]), CodecError> {
    let (&found, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if found != version {
        return Err(CodecError::UnsupportedVersion { found });
    }
    Ok(postcard::take_from_bytes(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let v = (7u64, "abc".to_string(), vec![1u8, 2, 3]);
        let bytes = encode(&v);
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<(u64, String, Vec<u8>)>(&bytes).unwrap(), v);

        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert!(matches!(
            decode::<(u64, String, Vec<u8>)>(&wrong),
            Err(CodecError::UnsupportedVersion { found: 99 })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<(u64, String, Vec<u8>)>(&trailing),
            Err(CodecError::TrailingBytes(1))
        ));
        assert!(decode::<(u64, String, Vec<u8>)>(&bytes[..3]).is_err());
    }

    #[test]
    fn prefix_leaves_the_rest() {
        let bytes = encode(&(5u64, 9u64));
        let (first, rest) = decode_prefix::<u64>(&bytes).unwrap();
        assert_eq!(first, 5);
        assert_eq!(rest, &[9u8]);
    }
}
