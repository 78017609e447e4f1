//! A multilayer perceptron for 8×8 handwritten digits, weights compiled in.
//!
//! This file is self-contained on purpose: the `digits` guest uses it as a
//! module, and the host's benchmark includes the very same file with
//! `#[path = "..."]` to compare the component with native code. It uses
//! nothing but `core` and `libm` (the guest has no `std`).
//!
//! # Weights
//!
//! `guest-models/data/digits_mlp.bin` is little-endian and every field in it
//! is 4 bytes wide, so it is 4-byte aligned throughout:
//!
//! | field                                   | type                 |
//! |-----------------------------------------|----------------------|
//! | magic                                   | `b"AIRMLP1\0"`       |
//! | layer count `L`                         | u32                  |
//! | input scale                             | f32                  |
//! | then `L` times: `n_in`, `n_out`         | u32, u32             |
//! | weights, `W[i][j]` at `i * n_out + j`   | `n_in * n_out` × f32 |
//! | biases                                  | `n_out` × f32        |
//!
//! The model is `x' = x * scale`, `h = relu(h @ W + b)` for the hidden layers
//! and `softmax(h @ W + b)` for the last one.
//!
//! The layout is checked while compiling, so a malformed file fails the
//! build, and the weights are read in place: nothing is parsed, copied or
//! allocated at start-up.

#[cfg(not(target_endian = "little"))]
compile_error!("mlp.rs reads its little-endian weights in place");

/// Values per input row: 8×8 pixels, each 0..=16.
pub const INPUTS: usize = 64;

/// Values per output row: one probability per digit.
pub const CLASSES: usize = 10;

/// Gives its contents the 4-byte alignment of `f32`.
#[repr(C, align(4))]
struct Aligned<T: ?Sized>(T);

/// The weights file, 4-byte aligned so that it can be read as `f32`s.
static FILE: &Aligned<[u8]> = &Aligned(*include_bytes!("../../data/digits_mlp.bin"));

/// Where one dense layer lives in the file, as offsets in 4-byte words.
#[derive(Clone, Copy)]
struct Layer {
    n_in: usize,
    n_out: usize,
    weights: usize,
    biases: usize,
}

/// The number of layers, after checking the magic.
const LAYER_COUNT: usize = {
    let magic = b"AIRMLP1\0";
    let mut i = 0;
    while i < magic.len() {
        assert!(
            i < FILE.0.len() && FILE.0[i] == magic[i],
            "digits_mlp.bin: bad magic"
        );
        i += 1;
    }
    let count = word(2) as usize;
    assert!(count > 0, "digits_mlp.bin: no layers");
    count
};

/// The factor applied to the raw pixels before the first layer.
const SCALE: f32 = f32::from_bits(word(3));

/// The layers, located and checked at compile time.
const LAYERS: [Layer; LAYER_COUNT] = layout();

/// The widest layer input or output, which sizes the activation buffers.
const WIDTH: usize = {
    let mut width = INPUTS;
    let mut i = 0;
    while i < LAYER_COUNT {
        if LAYERS[i].n_out > width {
            width = LAYERS[i].n_out;
        }
        i += 1;
    }
    width
};

/// Reads the little-endian `u32` at word `index` of the file.
const fn word(index: usize) -> u32 {
    let bytes = &FILE.0;
    let at = index * 4;
    assert!(at + 4 <= bytes.len(), "digits_mlp.bin: truncated");
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Walks the layer headers, checking that the widths chain from [`INPUTS`]
/// to [`CLASSES`] and that the file ends with the last layer.
const fn layout() -> [Layer; LAYER_COUNT] {
    let mut layers = [Layer {
        n_in: 0,
        n_out: 0,
        weights: 0,
        biases: 0,
    }; LAYER_COUNT];
    // Magic (two words), layer count, scale.
    let mut at = 4;
    let mut width = INPUTS;
    let mut i = 0;
    while i < LAYER_COUNT {
        let n_in = word(at) as usize;
        let n_out = word(at + 1) as usize;
        assert!(n_in == width, "digits_mlp.bin: layer widths do not chain");
        assert!(n_out > 0, "digits_mlp.bin: empty layer");
        let weights = at + 2;
        let biases = weights + n_in * n_out;
        layers[i] = Layer {
            n_in,
            n_out,
            weights,
            biases,
        };
        at = biases + n_out;
        width = n_out;
        i += 1;
    }
    assert!(
        width == CLASSES,
        "digits_mlp.bin: last layer is not CLASSES wide"
    );
    assert!(
        at * 4 == FILE.0.len(),
        "digits_mlp.bin: bytes after the last layer"
    );
    layers
}

/// The whole file as `f32`s; [`Layer`] offsets index into it.
fn words() -> &'static [f32] {
    let bytes = &FILE.0;
    // SAFETY: `Aligned` makes the bytes 4-byte aligned, `layout` checked that
    // their length is a multiple of 4, every bit pattern is a valid `f32`,
    // and the bytes are immutable and live for the whole program.
    unsafe { core::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), bytes.len() / 4) }
}

/// Classifies `batch` rows of [`INPUTS`] raw pixel values (0..=16), row-major,
/// into `batch` rows of [`CLASSES`] probabilities in `out`.
///
/// Allocates nothing: activations live on the stack.
///
/// # Panics
///
/// If `input.len()` is not `batch * INPUTS` or `out.len()` not
/// `batch * CLASSES`.
pub fn forward(input: &[f32], batch: usize, out: &mut [f32]) {
    assert!(
        batch.checked_mul(INPUTS) == Some(input.len()),
        "mlp::forward: {} values is not {batch} rows of {INPUTS}",
        input.len(),
    );
    assert!(
        batch.checked_mul(CLASSES) == Some(out.len()),
        "mlp::forward: {} outputs for {batch} rows of {CLASSES}",
        out.len(),
    );

    let words = words();
    let [hidden @ .., last] = &LAYERS;
    let mut a = [0.0f32; WIDTH];
    let mut b = [0.0f32; WIDTH];
    for (x, y) in input
        .chunks_exact(INPUTS)
        .zip(out.chunks_exact_mut(CLASSES))
    {
        let (mut cur, mut next) = (&mut a, &mut b);
        for (c, &v) in cur.iter_mut().zip(x) {
            *c = v * SCALE;
        }
        for layer in hidden {
            let h = &mut next[..layer.n_out];
            dense(&cur[..layer.n_in], layer, words, h);
            for v in h {
                // Not `f32::max`, which would turn NaN into 0.
                if *v < 0.0 {
                    *v = 0.0;
                }
            }
            core::mem::swap(&mut cur, &mut next);
        }
        dense(&cur[..last.n_in], last, words, y);
        softmax(y);
    }
}

/// `y = x @ W + b` for one row, accumulating whole rows of `W` so that the
/// inner loop runs over contiguous memory and vectorises.
#[inline(always)]
fn dense(x: &[f32], layer: &Layer, words: &[f32], y: &mut [f32]) {
    let weights = &words[layer.weights..layer.biases];
    y.copy_from_slice(&words[layer.biases..layer.biases + layer.n_out]);
    // Zeros are not skipped: the branch cost more than it saved when measured.
    for (&xi, row) in x.iter().zip(weights.chunks_exact(layer.n_out)) {
        for (yj, &wij) in y.iter_mut().zip(row) {
            *yj += xi * wij;
        }
    }
}

/// Numerically stable softmax, in place.
fn softmax(z: &mut [f32]) {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in z.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    for v in z.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic batch of plausible pixel rows.
    fn rows(batch: usize) -> Vec<f32> {
        (0..batch * INPUTS)
            .map(|i| ((i * 7 + (i / INPUTS) * 3) % 17) as f32)
            .collect()
    }

    #[test]
    fn layout_matches_the_constants() {
        assert_eq!(LAYERS[0].n_in, INPUTS);
        assert_eq!(LAYERS[LAYER_COUNT - 1].n_out, CLASSES);
        assert!(SCALE > 0.0 && SCALE.is_finite());
        let last = LAYERS[LAYER_COUNT - 1];
        assert_eq!(words().len(), last.biases + last.n_out);
    }

    #[test]
    fn rows_are_probability_distributions() {
        let mut out = vec![f32::NAN; 5 * CLASSES];
        forward(&rows(5), 5, &mut out);
        for row in out.chunks_exact(CLASSES) {
            assert!(row.iter().all(|p| (0.0..=1.0).contains(p)), "{row:?}");
            let sum: f32 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-5, "sum {sum}");
        }
    }

    #[test]
    fn rows_are_independent() {
        let input = rows(4);
        let mut all = vec![0.0; 4 * CLASSES];
        forward(&input, 4, &mut all);
        let mut one = [0.0; CLASSES];
        for (x, expected) in input.chunks_exact(INPUTS).zip(all.chunks_exact(CLASSES)) {
            forward(x, 1, &mut one);
            assert_eq!(one, expected);
        }
    }

    #[test]
    fn empty_batch() {
        forward(&[], 0, &mut []);
    }

    #[test]
    #[should_panic(expected = "not 2 rows")]
    fn wrong_input_length_panics() {
        forward(&[0.0; INPUTS], 2, &mut [0.0; 2 * CLASSES]);
    }

    #[test]
    #[should_panic(expected = "outputs for 1 rows")]
    fn wrong_output_length_panics() {
        forward(&[0.0; INPUTS], 1, &mut [0.0; 3]);
    }
}
