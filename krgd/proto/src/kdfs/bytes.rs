//! File data on the wire ([`Bytes`]).

use serde::{Deserialize, Serialize};

/// File data on the wire: serialized as one byte string, not as a sequence
/// of a million one-byte elements (which costs more than the copy itself).
/// Received in a frame, it is a slice of the frame (`bytestr`), not a copy.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(
    /// The data.
    pub ::bytes::Bytes,
);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v.into())
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::bytestr::shared::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::bytestr::shared::deserialize(d).map(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_travel_as_one_byte_string() {
        let data = Bytes::from(vec![7u8; 1000]);
        let enc = postcard::to_stdvec(&data).unwrap();
        assert_eq!(enc.len(), 1002, "length varint + raw bytes");
        let back: Bytes = postcard::from_bytes(&enc).unwrap();
        assert_eq!(back, data);
        assert!(postcard::from_bytes::<Bytes>(&[0xff, 0xff, 0x01]).is_err());
    }
}
