//! File data on the wire ([`Bytes`]).

use serde::{Deserialize, Serialize};

/// File data on the wire: serialized as one byte string, not as a sequence
/// of a million one-byte elements (which costs more than the copy itself).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(
    /// The data.
    pub Vec<u8>,
);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_travel_as_one_byte_string() {
        let data = Bytes(vec![7u8; 1000]);
        let enc = postcard::to_stdvec(&data).unwrap();
        assert_eq!(enc.len(), 1002, "length varint + raw bytes");
        let back: Bytes = postcard::from_bytes(&enc).unwrap();
        assert_eq!(back, data);
        assert!(postcard::from_bytes::<Bytes>(&[0xff, 0xff, 0x01]).is_err());
    }
}
