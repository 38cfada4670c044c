//! Typed identifiers for repository objects, so a pack id can never be passed where a blob id is meant.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses a full 64-character hex id.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }

            /// The first 8 hex characters, as shown to people.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

id_type!(
    /// Keyed BLAKE3 of a blob's plaintext (file chunk or tree).
    BlobId
);
id_type!(
    /// Unkeyed BLAKE3 of a pack file's stored bytes.
    PackId
);
id_type!(
    /// Keyed BLAKE3 of a snapshot's plaintext.
    SnapshotId
);
id_type!(
    /// Keyed BLAKE3 of an index file's plaintext.
    IndexId
);
