//! Guest model `langid`: tells which of ten languages a text is written in,
//! with hashed character n-grams and a logistic regression whose weights
//! (`guest-models/data/langid.bin`, trained by
//! `guest-models/train/train_langid.py` on Django's translation catalogues)
//! are compiled into the component.
//!
//! Input `text`: BYTES `[N]`, each element UTF-8 text.
//! Outputs: `probabilities`, FP32 `[N, 10]`, one probability per language in
//! the order of [`LABELS`] (`de en es fr it nl pl pt ru sv`); and
//! `language`, BYTES `[N]`, the most probable language's ISO 639-1 code.

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{
    Datatype, Error, InferRequest, InferResponse, ModelMetadata, Tensor, TensorData, TensorSpec,
};
use exports::airlock::inference::inference::Guest;

const INPUT: &str = "text";
const PROBABILITIES: &str = "probabilities";
const LANGUAGE: &str = "language";

/// The classes, in the order of the weights' columns (ISO 639-1 codes).
pub const LABELS: [&str; CLASSES] = ["de", "en", "es", "fr", "it", "nl", "pl", "pt", "ru", "sv"];

/// Number of classes.
const CLASSES: usize = 10;

/// Hash buckets of the features.
const BUCKETS: usize = 1 << 14;

/// Character n-grams of these lengths are counted.
const NGRAMS: std::ops::RangeInclusive<usize> = 1..=4;

/// Gives its contents the 4-byte alignment of `f32`.
#[repr(C, align(4))]
struct Aligned<T: ?Sized>(T);

/// The weights file, `AIRLID1` format (see `train_langid.py`): magic, K, D,
/// then `D × K` weights bucket-major and `K` biases, little-endian f32.
static FILE: &Aligned<[u8]> = &Aligned(*include_bytes!("../../data/langid.bin"));

/// Reads the little-endian `u32` at word `index` of the file.
const fn word(index: usize) -> u32 {
    let bytes = &FILE.0;
    let at = index * 4;
    assert!(at + 4 <= bytes.len(), "langid.bin: truncated");
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Word offset of the weights, after checking the header and the length at
/// compile time: a malformed file fails the build.
const WEIGHTS: usize = {
    let magic = b"AIRLID1\0";
    let mut i = 0;
    while i < magic.len() {
        assert!(FILE.0[i] == magic[i], "langid.bin: bad magic");
        i += 1;
    }
    assert!(word(2) as usize == CLASSES, "langid.bin: not 10 classes");
    assert!(
        word(3) as usize == BUCKETS,
        "langid.bin: wrong bucket count"
    );
    assert!(
        FILE.0.len() == 4 * (4 + BUCKETS * CLASSES + CLASSES),
        "langid.bin: wrong length"
    );
    4
};

/// Word offset of the biases.
const BIASES: usize = WEIGHTS + BUCKETS * CLASSES;

/// The whole file as `f32`s.
fn words() -> &'static [f32] {
    let bytes = &FILE.0;
    // SAFETY: `Aligned` makes the bytes 4-byte aligned, the length was
    // checked to be a multiple of 4 at compile time, every bit pattern is a
    // valid `f32`, and the bytes are immutable and live for the whole program.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), bytes.len() / 4) }
}

/// 32-bit FNV-1a: the offset basis, and one step per byte.
const FNV_OFFSET: u32 = 0x811c_9dc5;

fn fnv1a(hash: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// Lower-cases `text`, turns everything but letters into single spaces and
/// pads it with a space on each side, as `normalize` in the training script.
///
/// Python's `str.isalpha` is the Unicode categories L*; Rust's
/// `char::is_alphabetic` also counts letter numbers (Ⅻ) and some combining
/// signs of Indic scripts as letters. Neither occurs in the ten languages.
fn normalize(text: &str) -> Vec<char> {
    let mut out = vec![' '];
    for c in text.to_lowercase().chars() {
        let c = if c.is_alphabetic() { c } else { ' ' };
        if c != ' ' || out.last() != Some(&' ') {
            out.push(c);
        }
    }
    if out.last() != Some(&' ') {
        out.push(' ');
    }
    out
}

/// Class probabilities of one text.
fn classify(text: &str) -> [f32; CLASSES] {
    let chars = normalize(text);
    // (bucket, count), sorted by bucket.
    let mut buckets: Vec<u32> = Vec::new();
    let mut utf8 = [0u8; 4];
    for n in NGRAMS {
        for gram in chars.windows(n) {
            if gram.iter().all(|c| *c == ' ') {
                continue;
            }
            let hash = gram.iter().fold(FNV_OFFSET, |h, c| {
                fnv1a(h, c.encode_utf8(&mut utf8).as_bytes())
            });
            buckets.push(hash % BUCKETS as u32);
        }
    }
    buckets.sort_unstable();
    let mut counts: Vec<(usize, f64)> = Vec::new();
    for b in buckets {
        match counts.last_mut() {
            Some((last, count)) if *last == b as usize => *count += 1.0,
            _ => counts.push((b as usize, 1.0)),
        }
    }
    let norm = counts.iter().map(|(_, c)| c * c).sum::<f64>().sqrt();
    let norm = if norm > 0.0 { norm } else { 1.0 };

    let words = words();
    let mut logits = [0f64; CLASSES];
    for (k, logit) in logits.iter_mut().enumerate() {
        *logit = f64::from(words[BIASES + k]);
    }
    for (bucket, count) in counts {
        let row = &words[WEIGHTS + bucket * CLASSES..WEIGHTS + (bucket + 1) * CLASSES];
        let x = count / norm;
        for (logit, w) in logits.iter_mut().zip(row) {
            *logit += x * f64::from(*w);
        }
    }
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for logit in &mut logits {
        *logit = (*logit - max).exp();
        sum += *logit;
    }
    logits.map(|e| (e / sum) as f32)
}

struct Langid;

impl Guest for Langid {
    fn metadata() -> ModelMetadata {
        ModelMetadata {
            name: "langid".into(),
            version: "1".into(),
            platform: "rust-logreg".into(),
            inputs: vec![TensorSpec {
                name: INPUT.into(),
                datatype: Datatype::Bytes,
                shape: vec![-1],
            }],
            outputs: vec![
                TensorSpec {
                    name: PROBABILITIES.into(),
                    datatype: Datatype::Fp32,
                    shape: vec![-1, CLASSES as i64],
                },
                TensorSpec {
                    name: LANGUAGE.into(),
                    datatype: Datatype::Bytes,
                    shape: vec![-1],
                },
            ],
        }
    }

    fn infer(request: InferRequest) -> Result<InferResponse, Error> {
        if let Some(name) = request
            .outputs
            .iter()
            .find(|name| *name != PROBABILITIES && *name != LANGUAGE)
        {
            return Err(Error::InvalidInput(format!(
                "unknown output {name:?}: this model produces {PROBABILITIES:?} and {LANGUAGE:?}"
            )));
        }
        let wants =
            |name: &str| request.outputs.is_empty() || request.outputs.iter().any(|o| o == name);
        let (want_probabilities, want_language) = (wants(PROBABILITIES), wants(LANGUAGE));
        let input = request
            .inputs
            .into_iter()
            .find(|tensor| tensor.name == INPUT)
            .ok_or_else(|| Error::InvalidInput(format!("missing input {INPUT:?}")))?;
        let TensorData::Bytes(texts) = input.data else {
            return Err(Error::InvalidInput(format!(
                "input {INPUT:?} must be BYTES"
            )));
        };
        let mut probabilities = Vec::with_capacity(texts.len() * CLASSES);
        let mut languages = Vec::with_capacity(texts.len());
        for (i, bytes) in texts.iter().enumerate() {
            let text = std::str::from_utf8(bytes).map_err(|e| {
                Error::InvalidInput(format!("input {INPUT:?} element {i} is not UTF-8: {e}"))
            })?;
            let p = classify(text);
            let best = (0..CLASSES).fold(0, |best, k| if p[k] > p[best] { k } else { best });
            languages.push(LABELS[best].as_bytes().to_vec());
            probabilities.extend_from_slice(&p);
        }
        let n = texts.len() as u64;
        let mut outputs = Vec::new();
        if want_probabilities {
            outputs.push(Tensor {
                name: PROBABILITIES.into(),
                shape: vec![n, CLASSES as u64],
                data: TensorData::Fp32(probabilities),
            });
        }
        if want_language {
            outputs.push(Tensor {
                name: LANGUAGE.into(),
                shape: vec![n],
                data: TensorData::Bytes(languages),
            });
        }
        Ok(InferResponse { outputs })
    }
}

export!(Langid);
