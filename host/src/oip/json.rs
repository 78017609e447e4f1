//! The streaming JSON tensor decoder: a tensor's `data` (flat, or nested
//! to its shape) parsed straight into the typed list the guest receives,
//! each allocation charged to the request's reservation first.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{ALLOC_OVERHEAD, CHARGE_STEP};
use crate::bindings::{Datatype, TensorData};
use crate::budget::{Exhausted, Reservation};

/// Charges a [`Reservation`] before allocations, growing it by at least
/// [`CHARGE_STEP`] bytes at a time; the credit left over is given back when
/// the meter is dropped.
pub(crate) struct Meter<'r> {
    reservation: &'r mut Reservation,
    credit: usize,
}

impl<'r> Meter<'r> {
    pub(crate) fn new(reservation: &'r mut Reservation) -> Self {
        Self {
            reservation,
            credit: 0,
        }
    }

    /// Takes `bytes` from the credit, growing the reservation first when
    /// the credit is short.
    pub(crate) fn charge(&mut self, bytes: usize) -> Result<(), Exhausted> {
        if bytes > self.credit {
            let need = bytes - self.credit;
            let step = need.max(CHARGE_STEP);
            // Near the budget's end, a full step may not fit where the
            // exact need does.
            let grown = match self.reservation.try_grow(step) {
                Ok(()) => step,
                Err(_) => self.reservation.try_grow(need).map(|()| need)?,
            };
            self.credit += grown;
        }
        self.credit -= bytes;
        Ok(())
    }
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        self.reservation.shrink(self.credit);
    }
}

/// Why one tensor's data could not be parsed.
pub(crate) enum DataError {
    /// The data is malformed or does not fit its shape.
    Bad(String),
    /// The budget cannot hold it.
    Exhausted(Exhausted),
}

impl From<String> for DataError {
    fn from(message: String) -> Self {
        Self::Bad(message)
    }
}

impl From<Exhausted> for DataError {
    fn from(e: Exhausted) -> Self {
        Self::Exhausted(e)
    }
}

/// The exact capacity charged for `elements` of `T`.
pub(crate) fn vector_bytes<T>(elements: usize) -> usize {
    elements.saturating_mul(size_of::<T>())
}

/// Parses `data` (flat, or nested to exactly the depth of `shape`) into a
/// typed list of at most `elements` elements, charging `meter` before it
/// allocates.
pub(crate) fn parse_data(
    raw: &RawValue,
    datatype: Datatype,
    shape: &[u64],
    elements: u64,
    meter: &mut Meter<'_>,
) -> Result<TensorData, DataError> {
    // Each element takes at least two bytes of JSON (a digit and a comma,
    // or the closing bracket), so `data` holds at most half its length in
    // elements: a shape that claims more than that does not get the
    // capacity it claims. Valid data gets exactly what its shape needs.
    let capacity = elements.min(raw.get().len() as u64 / 2) as usize;
    macro_rules! parse_as {
        ($variant:ident, $ty:ty) => {{
            meter.charge(vector_bytes::<$ty>(capacity))?;
            let mut out: Vec<$ty> = Vec::with_capacity(capacity);
            flatten::<$ty>(raw, shape, elements, &mut out, meter)?;
            TensorData::$variant(out)
        }};
    }
    Ok(match datatype {
        Datatype::Bool => parse_as!(Bool, bool),
        Datatype::Uint8 => parse_as!(Uint8, u8),
        Datatype::Uint16 => parse_as!(Uint16, u16),
        Datatype::Uint32 => parse_as!(Uint32, u32),
        Datatype::Uint64 => parse_as!(Uint64, u64),
        Datatype::Int8 => parse_as!(Int8, i8),
        Datatype::Int16 => parse_as!(Int16, i16),
        Datatype::Int32 => parse_as!(Int32, i32),
        Datatype::Int64 => parse_as!(Int64, i64),
        Datatype::Fp16 => {
            meter.charge(vector_bytes::<Half>(capacity))?;
            let mut out: Vec<Half> = Vec::with_capacity(capacity);
            flatten::<Half>(raw, shape, elements, &mut out, meter)?;
            // Collected in place: `Half` is a transparent `u16`.
            TensorData::Fp16(out.into_iter().map(|h| h.0).collect())
        }
        Datatype::Fp32 => parse_as!(Fp32, f32),
        Datatype::Fp64 => parse_as!(Fp64, f64),
        Datatype::Bytes => parse_as!(Bytes, Vec<u8>),
    })
}

/// An FP16 element: parsed from a JSON number, stored as binary16 bits.
#[repr(transparent)]
struct Half(u16);

/// One JSON scalar converted to a tensor element type.
trait Element: Sized {
    const EXPECTED: &'static str;
    /// Whether an element owns heap memory (BYTES), charged as it is parsed.
    const HEAP: bool = false;
    fn from_bool(_: bool) -> Option<Self> {
        None
    }
    fn from_u64(_: u64) -> Option<Self> {
        None
    }
    fn from_i64(_: i64) -> Option<Self> {
        None
    }
    fn from_f64(_: f64) -> Option<Self> {
        None
    }
    fn from_str(_: &str) -> Option<Self> {
        None
    }
}

impl Element for bool {
    const EXPECTED: &'static str = "a boolean";
    fn from_bool(v: bool) -> Option<Self> {
        Some(v)
    }
}

macro_rules! int_element {
    ($($ty:ty),*) => {$(
        impl Element for $ty {
            const EXPECTED: &'static str = concat!("an integer in the range of ", stringify!($ty));
            fn from_u64(v: u64) -> Option<Self> { <$ty>::try_from(v).ok() }
            fn from_i64(v: i64) -> Option<Self> { <$ty>::try_from(v).ok() }
        }
    )*};
}
int_element!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Element for f32 {
    const EXPECTED: &'static str = "a number in the range of FP32";
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f32)
    }
    fn from_f64(v: f64) -> Option<Self> {
        let x = v as f32;
        x.is_finite().then_some(x)
    }
}

impl Element for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_f64(v: f64) -> Option<Self> {
        Some(v)
    }
}

impl Element for Half {
    const EXPECTED: &'static str = "a number in the range of FP16";
    fn from_u64(v: u64) -> Option<Self> {
        Self::from_f64(v as f64)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Self::from_f64(v as f64)
    }
    fn from_f64(v: f64) -> Option<Self> {
        let h = half::f16::from_f64(v);
        h.is_finite().then_some(Half(h.to_bits()))
    }
}

impl Element for Vec<u8> {
    const EXPECTED: &'static str = "a string";
    const HEAP: bool = true;
    fn from_str(v: &str) -> Option<Self> {
        Some(v.as_bytes().to_vec())
    }
}

/// Walks a JSON array (flat, or nested to the depth of `shape`) and pushes
/// its leaves into `out`, checking the nesting against `shape` and stopping
/// at the first leaf past `limit`. BYTES elements are charged to `meter`
/// before they are copied.
fn flatten<T: Element>(
    raw: &RawValue,
    shape: &[u64],
    limit: u64,
    out: &mut Vec<T>,
    meter: &mut Meter<'_>,
) -> Result<(), DataError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let mut state = FlattenState {
        shape,
        limit,
        leaf_depth: None,
        meter,
        exhausted: None,
    };
    let result = Level {
        out,
        state: &mut state,
        depth: 0,
    }
    .deserialize(&mut de);
    if let Some(exhausted) = state.exhausted {
        return Err(DataError::Exhausted(exhausted));
    }
    result.map_err(|e| {
        // serde_json appends " at line L column C"; the position inside the
        // data array is not useful to a caller, the message is.
        let text = e.to_string();
        DataError::Bad(match text.find(" at line ") {
            Some(i) => text[..i].to_owned(),
            None => text,
        })
    })
}

struct FlattenState<'s, 'm, 'r> {
    shape: &'s [u64],
    /// Most leaves to take: the shape's element count.
    limit: u64,
    /// Depth of the first leaf seen: 1 for flat data, `shape.len()` for nested.
    leaf_depth: Option<usize>,
    meter: &'m mut Meter<'r>,
    /// Set when the meter refused a charge (the error then says no more).
    exhausted: Option<Exhausted>,
}

struct Level<'a, 's, 'm, 'r, T> {
    out: &'a mut Vec<T>,
    state: &'a mut FlattenState<'s, 'm, 'r>,
    depth: usize,
}

impl<'de, T: Element> DeserializeSeed<'de> for Level<'_, '_, '_, '_, T> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Level<'_, '_, '_, '_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.depth == 0 {
            f.write_str("an array of tensor elements")
        } else {
            write!(f, "{} or an array", T::EXPECTED)
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > self.state.shape.len().max(1) {
            return Err(de::Error::custom(format!(
                "data is nested deeper than the shape's {} dimensions",
                self.state.shape.len()
            )));
        }
        let mut count: u64 = 0;
        while seq
            .next_element_seed(Level {
                out: &mut *self.out,
                state: &mut *self.state,
                depth,
            })?
            .is_some()
        {
            count += 1;
        }
        // Nested data must follow the shape at every level.
        if let Some(leaf) = self.state.leaf_depth
            && leaf > 1
        {
            let want = self.state.shape[depth - 1];
            if count != want {
                return Err(de::Error::custom(format!(
                    "nested data has {count} entries at depth {depth}, the shape says {want}"
                )));
            }
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(T::from_bool(v), || v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(T::from_u64(v), || v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(T::from_i64(v), || v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(T::from_f64(v), || v.to_string())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if T::HEAP && !v.is_empty() && self.depth > 0 {
            // Charged before `from_str` copies it.
            if let Err(exhausted) = self.state.meter.charge(v.len() + ALLOC_OVERHEAD) {
                self.state.exhausted = Some(exhausted);
                return Err(E::custom("the memory budget is exhausted"));
            }
        }
        self.leaf(T::from_str(v), || "a string".to_owned())
    }
}

impl<T: Element> Level<'_, '_, '_, '_, T> {
    fn leaf<E: de::Error>(self, value: Option<T>, shown: impl FnOnce() -> String) -> Result<(), E> {
        if self.depth == 0 {
            return Err(E::custom("data must be an array"));
        }
        match self.state.leaf_depth {
            None => {
                if self.depth != 1 && self.depth != self.state.shape.len() {
                    return Err(E::custom(format!(
                        "data must be flat or nested to the shape's {} dimensions",
                        self.state.shape.len()
                    )));
                }
                self.state.leaf_depth = Some(self.depth);
            }
            Some(leaf) if leaf != self.depth => {
                return Err(E::custom("data mixes nesting depths"));
            }
            Some(_) => {}
        }
        // Stop at the first element past the shape rather than buffer them
        // all: the vector's capacity is the shape's count.
        if self.out.len() as u64 >= self.state.limit {
            return Err(E::custom(format!(
                "data has more elements than the {} its shape needs",
                self.state.limit
            )));
        }
        match value {
            Some(v) => {
                self.out.push(v);
                Ok(())
            }
            None => Err(E::custom(format!(
                "element {} is not {}",
                shown(),
                T::EXPECTED
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::bindings::{Datatype, TensorData};
    use crate::budget::MemoryBudget;
    use crate::oip::tests::{fp32, metadata, normal_request_still_parses, parse, parse_json};
    use crate::oip::{ParseError, ParsedInfer, RequestLimits, parse_infer};

    #[test]
    fn flat_and_nested_data_parse_the_same() {
        let flat = parse(r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6.5]}]}"#).unwrap();
        let nested = parse(r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6.5]]}]}"#).unwrap();
        assert_eq!(fp32(&flat), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        assert_eq!(fp32(&flat), fp32(&nested));
        assert_eq!(flat.inputs[0].shape, vec![2, 3]);
    }

    #[test]
    fn nesting_must_follow_the_shape() {
        let err = parse(r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[[1,2],[3,4],[5,6]]}]}"#).unwrap_err();
        assert!(err.0.contains("nested data has"), "{err}");
        let err = parse(r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,[2,3],4,5,6]}]}"#).unwrap_err();
        assert!(err.0.contains("mixes nesting"), "{err}");
        let err = parse(
            r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[[[1,2,3]]]}]}"#,
        )
        .unwrap_err();
        assert!(err.0.contains("deeper"), "{err}");
    }

    #[test]
    fn integer_types_are_range_checked() {
        let mut meta = metadata();
        meta.inputs[0].datatype = Datatype::Uint8;
        let ok =
            r#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"UINT8","data":[0,255,7]}]}"#;
        let req = parse_json(ok, &meta, &RequestLimits::default()).unwrap();
        assert!(matches!(&req.inputs[0].data, TensorData::Uint8(v) if v == &[0, 255, 7]));
        for bad in ["[0,256,7]", "[0,-1,7]", "[0,1.5,7]", "[0,true,7]"] {
            let body = format!(
                r#"{{"inputs":[{{"name":"input","shape":[1,3],"datatype":"UINT8","data":{bad}}}]}}"#
            );
            assert!(
                parse_json(&body, &meta, &RequestLimits::default()).is_err(),
                "{bad}"
            );
        }
    }

    fn bad_of(result: Result<ParsedInfer, ParseError>) -> String {
        match result {
            Err(ParseError::Bad(e)) => e.0,
            Err(ParseError::Exhausted(e)) => panic!("expected a bad request, got {e}"),
            Ok(_) => panic!("expected a bad request, got a request"),
        }
    }

    #[test]
    fn a_shape_that_claims_more_than_its_data_does_not_get_its_capacity() {
        // 3e9 FP64 elements declared (24 GB), none sent: refused for what
        // the data holds, within a 1 MiB budget, nothing reserved for the
        // claim.
        let limits = RequestLimits {
            max_elements: u64::MAX,
            ..RequestLimits::default()
        };
        let mut meta = metadata();
        meta.inputs[0].datatype = Datatype::Fp64;
        let budget = MemoryBudget::new(1 << 20);
        let mut reservation = budget.reservation();
        let body = r#"{"inputs":[{"name":"input","shape":[1000000000,3],"datatype":"FP64","data":[1,2]}]}"#;
        let message = bad_of(parse_infer(
            body.as_bytes(),
            None,
            &meta,
            &limits,
            &mut reservation,
        ));
        assert!(
            message.contains("needs 3000000000 elements but data has 2"),
            "{message}"
        );
        assert!(
            reservation.held() < 1024,
            "{} bytes held",
            reservation.held()
        );
        normal_request_still_parses();
    }

    #[test]
    fn data_past_the_shape_stops_at_the_first_extra_element() {
        // Shape [1, 3], a million elements: refused at the fourth, and the
        // vector never grows past its 3-element capacity (charged: 12 bytes).
        let data = vec!["1"; 1 << 20].join(",");
        let body = format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,3],"datatype":"FP32","data":[{data}]}}]}}"#
        );
        let budget = MemoryBudget::new(usize::MAX);
        let mut reservation = budget.reservation();
        let message = bad_of(parse_infer(
            body.as_bytes(),
            None,
            &metadata(),
            &RequestLimits::default(),
            &mut reservation,
        ));
        assert!(message.contains("more elements than the 3"), "{message}");
        normal_request_still_parses();
    }
}
