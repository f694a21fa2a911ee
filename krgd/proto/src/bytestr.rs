//! Byte strings in frames: as one postcard byte string, not as a sequence
//! of one-byte elements (which costs more than the copy itself). `owned`
//! decodes into a `Vec<u8>`, `shared` into a `bytes::Bytes` that a run on
//! many nodes hands to each of them without a copy per node; decoded by
//! [`decode_sharing`] (every received frame is), a `Bytes` field is a slice
//! of the frame's own buffer.

/// `#[serde(with = "...")]` for `Vec<u8>`.
pub(crate) mod owned {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

thread_local! {
    /// The buffer [`decode_sharing`] is decoding on this thread.
    static SOURCE: std::cell::RefCell<Option<bytes::Bytes>> = const { std::cell::RefCell::new(None) };
}

/// Decode `buf` (postcard) so that every `Bytes` field of the message is a
/// slice of `buf` itself, not a copy: a stdin chunk received from a peer
/// goes to the job as the frame it came in. (The deserializer only lends
/// slices; the buffer they are slices of is lent to [`shared`] for the
/// time of the call, on this thread.)
pub fn decode_sharing<T: serde::de::DeserializeOwned>(
    buf: bytes::Bytes,
) -> Result<T, crate::ProtoError> {
    SOURCE.with(|s| *s.borrow_mut() = Some(buf.clone()));
    let msg = postcard::from_bytes(&buf).map_err(|e| crate::ProtoError::Decode(e.to_string()));
    SOURCE.with(|s| *s.borrow_mut() = None);
    msg
}

/// `#[serde(with = "...")]` for `bytes::Bytes`.
pub(crate) mod shared {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        super::owned::serialize(v, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = bytes::Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<bytes::Bytes, E> {
                Ok(super::share_or_copy(v))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<bytes::Bytes, E> {
                Ok(v.into())
            }
        }
        d.deserialize_bytes(V)
    }
}

/// `v` as a slice of the buffer being decoded when it lies inside it,
/// else a copy.
fn share_or_copy(v: &[u8]) -> bytes::Bytes {
    SOURCE.with(|s| {
        let s = s.borrow();
        match s.as_ref() {
            Some(buf) if inside(buf, v) => buf.slice_ref(v),
            _ => bytes::Bytes::copy_from_slice(v),
        }
    })
}

fn inside(buf: &[u8], v: &[u8]) -> bool {
    let (start, end) = (buf.as_ptr() as usize, buf.as_ptr() as usize + buf.len());
    let (vs, ve) = (v.as_ptr() as usize, v.as_ptr() as usize + v.len());
    !v.is_empty() && vs >= start && ve <= end
}

#[cfg(test)]
mod sharing_tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Chunk {
        tag: u8,
        #[serde(with = "super::shared")]
        data: bytes::Bytes,
    }

    #[test]
    fn a_decoded_chunk_is_a_slice_of_the_frame_not_a_copy() {
        let data = bytes::Bytes::from(vec![7u8; 100_000]);
        let msg = Chunk {
            tag: 1,
            data: data.clone(),
        };
        let buf: bytes::Bytes = postcard::to_stdvec(&msg).unwrap().into();
        let got = super::decode_sharing::<Chunk>(buf.clone()).unwrap().data;
        assert_eq!(got, data);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        assert!(range.contains(&(got.as_ptr() as usize)), "shares the frame");
        // Outside decode_sharing the same field is decoded into a copy.
        let copy = postcard::from_bytes::<Chunk>(&buf).unwrap().data;
        assert_eq!(copy, data);
        assert!(!range.contains(&(copy.as_ptr() as usize)));
    }

    #[test]
    fn garbage_fails_to_decode_and_leaves_nothing_behind() {
        let bad = bytes::Bytes::from_static(&[0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert!(super::decode_sharing::<Chunk>(bad).is_err());
        super::SOURCE.with(|s| assert!(s.borrow().is_none()));
    }
}
