//! The versioned binary encoding of everything the datastore writes to disk or hands to a peer:
//! one format-version byte, then postcard; unknown versions and trailing bytes are refused.
//!
//! The code lives in the `keel-codec` crate, shared with keel-raft (neither of the two depends on
//! the other); this module re-exports it and adds the datastore's second record version.

pub use keel_codec::{decode, encode, CodecError, FORMAT_VERSION};
pub(crate) use keel_codec::{decode_as, decode_prefix, decode_prefix_as, encode_as};

/// Version of the datastore's `kv` records and change-log entries that hold a value in the
/// `values` table (datastore format 2, `values.rs`). Every other structure is at
/// [`FORMAT_VERSION`], and so are the records of format 2 whose values are all inline.
pub const FORMAT_EXTERNAL: u8 = 2;
