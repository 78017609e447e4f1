//! Test fixture `misbehave`: a model that does what the request parameter
//! `mode` (text) tells it to, so that host tests can check how a misbehaving
//! guest is contained.
//!
//! | `mode`     | behaviour                                                  |
//! |------------|------------------------------------------------------------|
//! | `echo`     | the default: returns input `x` as output `y`               |
//! | `trap`     | panics, which is a wasm trap                               |
//! | `loop`     | spins forever                                              |
//! | `oom`      | allocates and touches memory until an allocation fails     |
//! | `invalid`  | returns `invalid-input("misbehave says no")`               |
//! | `internal` | returns `internal("secret internal detail")`               |
//! | `recurse`  | recurses without end, until the wasm stack is exhausted    |
//! | `huge-output` | returns 8 Mi FP32 elements (32 MiB) as `y`              |
//! | `alias-output` | returns 64 Ki tensors whose data all point at one 1 MiB buffer: 64 GiB once copied out |
//! | `canary`   | returns what the static canary holds (4 floats), then stores `x` there and leaks a heap copy of it |
//! | `scan`     | counts copies of `-x` (as bytes) anywhere in linear memory; with parameter `plant` true, leaks one first |
//!
//! Input `x`: FP32 `[-1]`. Output `y`: FP32 `[-1]`.

use std::hint::black_box;

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{
    Datatype, Error, InferRequest, InferResponse, ModelMetadata, ParameterValue, Tensor,
    TensorData, TensorSpec,
};
use exports::airlock::inference::inference::Guest;

const INPUT: &str = "x";
const OUTPUT: &str = "y";

struct Misbehave;

impl Guest for Misbehave {
    fn metadata() -> ModelMetadata {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape: vec![-1],
        };
        ModelMetadata {
            name: "misbehave".into(),
            version: "1".into(),
            platform: "fixture".into(),
            inputs: vec![spec(INPUT)],
            outputs: vec![spec(OUTPUT)],
        }
    }

    fn infer(request: InferRequest) -> Result<InferResponse, Error> {
        let mode = match request.parameters.iter().find(|(name, _)| name == "mode") {
            None => "echo",
            Some((_, ParameterValue::Text(mode))) => mode.as_str(),
            Some(_) => {
                return Err(Error::InvalidInput(
                    "parameter \"mode\" must be text".into(),
                ));
            }
        };
        match mode {
            "echo" => echo(request),
            "trap" => panic!("misbehave: trap requested"),
            "loop" => spin(),
            "oom" => exhaust_memory(),
            "invalid" => Err(Error::InvalidInput("misbehave says no".into())),
            "internal" => Err(Error::Internal("secret internal detail".into())),
            "recurse" => Ok(float_output(vec![recurse(0) as f32])),
            "huge-output" => Ok(float_output(vec![1.0; HUGE_OUTPUT])),
            "alias-output" => Ok(aliased_output()),
            "canary" => canary(&request),
            "scan" => scan(&request),
            other => Err(Error::InvalidInput(format!("unknown mode {other:?}"))),
        }
    }
}

/// Returns input `x` unchanged as output `y`.
fn echo(request: InferRequest) -> Result<InferResponse, Error> {
    if let Some(name) = request.outputs.iter().find(|name| *name != OUTPUT) {
        return Err(Error::InvalidInput(format!(
            "unknown output {name:?}: this model produces {OUTPUT:?}"
        )));
    }
    let x = request
        .inputs
        .into_iter()
        .find(|tensor| tensor.name == INPUT)
        .ok_or_else(|| Error::InvalidInput(format!("missing input {INPUT:?}")))?;
    Ok(InferResponse {
        outputs: vec![Tensor {
            name: OUTPUT.into(),
            ..x
        }],
    })
}

/// Elements of the `huge-output` response: 32 MiB of FP32.
const HUGE_OUTPUT: usize = 8 << 20;

fn float_output(data: Vec<f32>) -> InferResponse {
    InferResponse {
        outputs: vec![Tensor {
            name: OUTPUT.into(),
            shape: vec![data.len() as u64],
            data: TensorData::Fp32(data),
        }],
    }
}

fn input(request: &InferRequest) -> Result<&[f32], Error> {
    match request.inputs.iter().find(|tensor| tensor.name == INPUT) {
        Some(Tensor {
            data: TensorData::Fp32(x),
            ..
        }) => Ok(x),
        _ => Err(Error::InvalidInput(format!("missing input {INPUT:?}"))),
    }
}

/// Recurses until the wasm stack overflows. Using the result after the call
/// (through `black_box`) keeps it from becoming a loop; no local has its
/// address taken, so the frames live on the wasm stack, not in linear memory.
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return 0;
    }
    black_box(recurse(depth + 1)) ^ depth
}

/// A response whose tensors all share one buffer. The canonical ABI allows
/// it: each list is a (pointer, length) pair, and nothing stops two pairs
/// from naming the same bytes. Copied out one by one, 64 Ki tensors of
/// 1 MiB make 64 GiB on the host, from 3 MiB of guest memory.
fn aliased_output() -> InferResponse {
    const TENSORS: usize = 64 << 10;
    const ELEMENTS: usize = 256 << 10;
    let buffer: &'static mut [f32] = vec![1.0f32; ELEMENTS].leak();
    let ptr = buffer.as_mut_ptr();
    let outputs = (0..TENSORS)
        .map(|_| Tensor {
            name: OUTPUT.into(),
            shape: vec![ELEMENTS as u64],
            // SAFETY: none. Every one of these vectors claims the same
            // leaked buffer; this fixture hands them to the host and never
            // touches them again (post-return, which would free them, does
            // not run when the host refuses the response).
            data: TensorData::Fp32(unsafe { Vec::from_raw_parts(ptr, ELEMENTS, ELEMENTS) }),
        })
        .collect();
    InferResponse { outputs }
}

/// The cross-request canary: a static that the previous request may have
/// written. A fresh instance per request means it always holds zeros here.
static mut CANARY: [f32; 4] = [0.0; 4];

/// Returns the canary's contents, then leaves `x` behind in it and in a
/// leaked heap allocation.
fn canary(request: &InferRequest) -> Result<InferResponse, Error> {
    let x = input(request)?;
    // SAFETY: a component instance runs one call at a time, on one thread.
    let canary = unsafe { &mut *core::ptr::addr_of_mut!(CANARY) };
    let before = canary.to_vec();
    for (slot, value) in canary.iter_mut().zip(x) {
        *slot = *value;
    }
    black_box(x.to_vec().leak());
    Ok(float_output(before))
}

/// Counts the places in linear memory that hold the bytes of `-x`. The
/// needle is negated so that the request itself (which carries `x`) does
/// not match; the needle's own buffer is skipped. With parameter `plant`
/// set, a copy is leaked on the heap first, to show the scan finds one.
fn scan(request: &InferRequest) -> Result<InferResponse, Error> {
    let x = input(request)?;
    // Sized up front, so that growing it leaves no partial copy behind.
    let mut needle: Vec<u8> = Vec::with_capacity(x.len() * 4);
    for v in x {
        needle.extend_from_slice(&(-v).to_le_bytes());
    }
    if needle.is_empty() {
        return Err(Error::InvalidInput("scan needs a non-empty x".into()));
    }
    let plant = request
        .parameters
        .iter()
        .any(|(name, value)| name == "plant" && matches!(value, ParameterValue::Bool(true)));
    if plant {
        black_box(needle.clone().leak());
    }
    let own = needle.as_ptr() as usize;
    let end = core::arch::wasm32::memory_size(0) * 65536;
    let mut found = 0u32;
    // Address 0 is skipped: reading through a null pointer is undefined
    // behaviour in Rust even where wasm allows it.
    for addr in 1..end.saturating_sub(needle.len()) {
        if addr == own {
            continue;
        }
        // SAFETY: every address below the memory size is readable in wasm;
        // volatile reads keep the optimiser from reasoning about them.
        let first = unsafe { core::ptr::read_volatile(addr as *const u8) };
        if first != needle[0] {
            continue;
        }
        let matches = needle.iter().enumerate().all(|(i, byte)| {
            // SAFETY: as above; addr + i < end.
            unsafe { core::ptr::read_volatile((addr + i) as *const u8) == *byte }
        });
        if matches {
            found += 1;
        }
    }
    Ok(float_output(vec![found as f32]))
}

/// Loops until the host interrupts it. `black_box` keeps the counter, and so
/// the loop, observable to the optimiser.
fn spin() -> ! {
    let mut counter = 0u64;
    loop {
        counter = black_box(counter).wrapping_add(1);
    }
}

/// Holds on to ever more 1 MiB chunks, writing to every page of each, until
/// growing linear memory fails and the allocation failure aborts.
fn exhaust_memory() -> ! {
    const CHUNK: usize = 1 << 20;
    const PAGE: usize = 64 << 10;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; CHUNK];
        for byte in chunk.iter_mut().step_by(PAGE) {
            *byte = 1;
        }
        hoard.push(black_box(chunk));
        black_box(&hoard);
    }
}

export!(Misbehave);
