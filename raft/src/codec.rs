//! The versioned binary encoding of everything keel-raft writes to disk or sends to a peer: one
//! format-version byte, then postcard; unknown versions and trailing bytes are refused.
//!
//! The code lives in the `keel-codec` crate, shared with keel-replication (neither of the two
//! depends on the other); this module re-exports it so callers write `keel_raft::codec::encode`.

pub use keel_codec::{decode, encode, CodecError, FORMAT_VERSION};
