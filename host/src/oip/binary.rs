//! The binary tensor data extension (KServe's and Triton's): tensors as
//! little-endian, row-major bytes after the JSON object, in requests and
//! responses.

use super::ALLOC_OVERHEAD;
use super::json::{DataError, Meter, vector_bytes};
use crate::bindings::{Datatype, TensorData};

/// The binary extension's input parameter: the tensor's size in bytes.
pub(super) const BINARY_DATA_SIZE: &str = "binary_data_size";
/// The binary extension's output parameter: send this output as binary.
pub(super) const BINARY_DATA: &str = "binary_data";
/// The binary extension's request parameter: send every output as binary
/// unless its own `binary_data` says otherwise. Not passed to the model.
pub(super) const BINARY_DATA_OUTPUT: &str = "binary_data_output";

/// How the response sends each output: as JSON `data`, or as binary data
/// after the JSON object (the binary tensor data extension).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputEncoding {
    /// The request's `binary_data_output`.
    pub(super) all_binary: bool,
    /// Requested outputs' own `binary_data`, which wins over `all_binary`.
    pub(super) per_output: Vec<(String, bool)>,
}

impl OutputEncoding {
    /// Whether output `name` goes back as binary data.
    pub fn is_binary(&self, name: &str) -> bool {
        self.per_output
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.all_binary, |(_, binary)| *binary)
    }
}

/// Decodes one input's binary data: `elements` elements of `datatype`,
/// little-endian, taking exactly all of `bytes`.
pub(super) fn decode_binary(
    bytes: &[u8],
    datatype: Datatype,
    elements: u64,
    meter: &mut Meter<'_>,
) -> Result<TensorData, DataError> {
    fn fixed<const N: usize, T>(
        bytes: &[u8],
        elements: u64,
        meter: &mut Meter<'_>,
        from: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, DataError> {
        let (chunks, rest) = bytes.as_chunks::<N>();
        if chunks.len() as u64 != elements || !rest.is_empty() {
            return Err(DataError::Bad(format!(
                "{BINARY_DATA_SIZE} is {} but the shape needs {elements} elements of {N} \
                 bytes",
                bytes.len()
            )));
        }
        meter.charge(vector_bytes::<T>(chunks.len()))?;
        Ok(chunks.iter().map(|c| from(*c)).collect())
    }
    Ok(match datatype {
        Datatype::Bool => {
            let bytes = fixed::<1, u8>(bytes, elements, meter, |[b]| b)?;
            if let Some(bad) = bytes.iter().find(|b| **b > 1) {
                return Err(DataError::Bad(format!(
                    "BOOL element {bad} is neither 0 nor 1"
                )));
            }
            // Collected in place: a `bool` is a byte.
            TensorData::Bool(bytes.into_iter().map(|b| b == 1).collect())
        }
        Datatype::Uint8 => TensorData::Uint8(fixed(bytes, elements, meter, u8::from_le_bytes)?),
        Datatype::Uint16 => TensorData::Uint16(fixed(bytes, elements, meter, u16::from_le_bytes)?),
        Datatype::Uint32 => TensorData::Uint32(fixed(bytes, elements, meter, u32::from_le_bytes)?),
        Datatype::Uint64 => TensorData::Uint64(fixed(bytes, elements, meter, u64::from_le_bytes)?),
        Datatype::Int8 => TensorData::Int8(fixed(bytes, elements, meter, i8::from_le_bytes)?),
        Datatype::Int16 => TensorData::Int16(fixed(bytes, elements, meter, i16::from_le_bytes)?),
        Datatype::Int32 => TensorData::Int32(fixed(bytes, elements, meter, i32::from_le_bytes)?),
        Datatype::Int64 => TensorData::Int64(fixed(bytes, elements, meter, i64::from_le_bytes)?),
        Datatype::Fp16 => TensorData::Fp16(fixed(bytes, elements, meter, u16::from_le_bytes)?),
        Datatype::Fp32 => TensorData::Fp32(fixed(bytes, elements, meter, f32::from_le_bytes)?),
        Datatype::Fp64 => TensorData::Fp64(fixed(bytes, elements, meter, f64::from_le_bytes)?),
        Datatype::Bytes => {
            // Each element costs at least its 4-byte length, so the body's
            // size bounds this allocation.
            let capacity = elements.min(bytes.len() as u64 / 4) as usize;
            meter.charge(vector_bytes::<Vec<u8>>(capacity))?;
            let mut out = Vec::with_capacity(capacity);
            let mut rest = bytes;
            for i in 0..elements {
                let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                    return Err(DataError::Bad(format!(
                        "the binary data ends before BYTES element {i} of {elements}"
                    )));
                };
                let len = u32::from_le_bytes(*len) as usize;
                let Some(element) = tail.get(..len) else {
                    return Err(DataError::Bad(format!(
                        "BYTES element {i} says {len} bytes but only {} are left",
                        tail.len()
                    )));
                };
                if len > 0 {
                    meter.charge(len + ALLOC_OVERHEAD)?;
                }
                out.push(element.to_vec());
                rest = &tail[len..];
            }
            if !rest.is_empty() {
                return Err(DataError::Bad(format!(
                    "{} bytes are left after the last of {elements} BYTES elements",
                    rest.len()
                )));
            }
            TensorData::Bytes(out)
        }
    })
}

/// The size of `data` in the binary tensor data format.
pub(super) fn binary_len(data: &TensorData) -> usize {
    match data {
        TensorData::Bytes(v) => v.iter().map(|e| 4 + e.len()).sum(),
        other => other.len() * element_size(other.datatype()),
    }
}

/// Bytes per element of a fixed-size datatype (BYTES: 0, it has none).
fn element_size(datatype: Datatype) -> usize {
    match datatype {
        Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
        Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 => 2,
        Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
        Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
        Datatype::Bytes => 0,
    }
}

/// Appends `data` in the binary tensor data format.
pub(super) fn encode_binary(data: &TensorData, out: &mut Vec<u8>) {
    macro_rules! le {
        ($v:expr) => {
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match data {
        TensorData::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
        TensorData::Uint8(v) => out.extend_from_slice(v),
        TensorData::Uint16(v) => le!(v),
        TensorData::Uint32(v) => le!(v),
        TensorData::Uint64(v) => le!(v),
        TensorData::Int8(v) => le!(v),
        TensorData::Int16(v) => le!(v),
        TensorData::Int32(v) => le!(v),
        TensorData::Int64(v) => le!(v),
        TensorData::Fp16(v) => le!(v),
        TensorData::Fp32(v) => le!(v),
        TensorData::Fp64(v) => le!(v),
        TensorData::Bytes(v) => {
            for element in v {
                // `to_bytes` checked that each length fits.
                out.extend_from_slice(&(element.len() as u32).to_le_bytes());
                out.extend_from_slice(element);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oip::tests::decode;

    /// One tensor of every datatype, three elements each.
    fn every_datatype() -> Vec<TensorData> {
        vec![
            TensorData::Bool(vec![true, false, true]),
            TensorData::Uint8(vec![0, 7, 255]),
            TensorData::Uint16(vec![0, 7, u16::MAX]),
            TensorData::Uint32(vec![0, 7, u32::MAX]),
            TensorData::Uint64(vec![0, 7, u64::MAX]),
            TensorData::Int8(vec![i8::MIN, -1, i8::MAX]),
            TensorData::Int16(vec![i16::MIN, -1, i16::MAX]),
            TensorData::Int32(vec![i32::MIN, -1, i32::MAX]),
            TensorData::Int64(vec![i64::MIN, -1, i64::MAX]),
            TensorData::Fp16(vec![0x3c00, 0xc000, 0x7bff]),
            // Binary data carries what JSON numbers cannot: NaN, infinities.
            TensorData::Fp32(vec![f32::NAN, -0.0, f32::MAX]),
            TensorData::Fp64(vec![f64::NEG_INFINITY, -1e300, f64::MIN_POSITIVE]),
            TensorData::Bytes(vec![b"".to_vec(), b"hi".to_vec(), vec![0xff, 0, 1]]),
        ]
    }

    #[test]
    fn binary_data_round_trips_every_datatype() {
        for data in every_datatype() {
            let mut bytes = Vec::new();
            encode_binary(&data, &mut bytes);
            assert_eq!(bytes.len(), binary_len(&data), "{:?}", data.datatype());
            let back = decode(&bytes, data.datatype(), 3).unwrap();
            assert_eq!(format!("{back:?}"), format!("{data:?}"));
        }
        // The layout is the extension's: little-endian, BOOL as 0/1 bytes,
        // BYTES with a 4-byte little-endian length before each element.
        let mut bytes = Vec::new();
        encode_binary(&TensorData::Uint16(vec![0x0102]), &mut bytes);
        encode_binary(&TensorData::Bool(vec![true, false]), &mut bytes);
        encode_binary(&TensorData::Bytes(vec![b"ab".to_vec()]), &mut bytes);
        assert_eq!(bytes, [0x02, 0x01, 1, 0, 2, 0, 0, 0, b'a', b'b']);
    }

    #[test]
    fn binary_data_of_the_wrong_size_is_refused() {
        let four = [0u8; 4];
        let err = decode(&four, Datatype::Fp32, 2).unwrap_err();
        assert!(err.contains("needs 2 elements of 4 bytes"), "{err}");
        assert!(decode(&four[..3], Datatype::Fp32, 1).is_err());
        assert!(
            decode(&[2], Datatype::Bool, 1)
                .unwrap_err()
                .contains("neither 0 nor 1")
        );
        // BYTES: a length running past the end, a length cut short, bytes left over.
        assert!(decode(&[5, 0, 0, 0, b'a'], Datatype::Bytes, 1).is_err());
        assert!(decode(&[1, 0, 0, 0, b'a', 0, 0], Datatype::Bytes, 2).is_err());
        assert!(decode(&[1, 0, 0, 0, b'a', 9], Datatype::Bytes, 1).is_err());
        assert!(matches!(
            decode(&[0, 0, 0, 0], Datatype::Bytes, 1).unwrap(),
            TensorData::Bytes(v) if v == [Vec::<u8>::new()]
        ));
    }
}
