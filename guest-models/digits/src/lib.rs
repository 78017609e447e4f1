//! Guest model `digits`: classifies 8×8 handwritten digits with the MLP in
//! [`mlp`], whose weights are compiled into the component.
//!
//! Input `input`: FP32 `[N, 64]`, raw pixel values 0..=16.
//! Output `probabilities`: FP32 `[N, 10]`, one probability per digit.
//!
//! The crate is `no_std`: std on `wasm32-wasip2` brings wasi-libc, and with
//! it imports of `wasi:cli`, `wasi:io` and friends, through the WASI adapter
//! module and its shims. None of it is used by a forward pass, and all of it
//! is linked again at each request's instantiation. Without std the
//! component imports nothing but the contract's types, and the sandbox adds
//! about a third less per request (`cargo bench --bench sandbox`; figures
//! in docs/src/writing-models.md). What std gave that this crate needs is here instead: an
//! allocator ([`arena`]), a panic handler, `cabi_realloc` and `libm`.

#![no_std]

extern crate alloc;

mod arena;
mod mlp;

use alloc::{format, vec};
use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::UnsafeCell;

wit_bindgen::generate!({
    path: "../../wit",
    world: "model",
});

use airlock::inference::types::{
    Datatype, Error, InferRequest, InferResponse, ModelMetadata, Tensor, TensorData, TensorSpec,
};
use exports::airlock::inference::inference::Guest;

const INPUT: &str = "input";
const OUTPUT: &str = "probabilities";

struct Digits;

impl Guest for Digits {
    fn metadata() -> ModelMetadata {
        ModelMetadata {
            name: "digits".into(),
            version: "1".into(),
            platform: "rust-mlp".into(),
            inputs: vec![spec(INPUT, mlp::INPUTS)],
            outputs: vec![spec(OUTPUT, mlp::CLASSES)],
        }
    }

    fn infer(request: InferRequest) -> Result<InferResponse, Error> {
        if let Some(name) = request.outputs.iter().find(|name| *name != OUTPUT) {
            return Err(Error::InvalidInput(format!(
                "unknown output {name:?}: this model produces {OUTPUT:?}"
            )));
        }
        let input = request
            .inputs
            .into_iter()
            .find(|tensor| tensor.name == INPUT)
            .ok_or_else(|| Error::InvalidInput(format!("missing input {INPUT:?}")))?;
        let TensorData::Fp32(pixels) = input.data else {
            return Err(Error::InvalidInput(format!("input {INPUT:?} must be FP32")));
        };
        let batch = match input.shape[..] {
            [rows, cols] if cols == mlp::INPUTS as u64 => usize::try_from(rows).ok(),
            _ => None,
        }
        .filter(|rows| rows.checked_mul(mlp::INPUTS) == Some(pixels.len()))
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "input {INPUT:?} must have shape [N, {}] and N × {} values, got shape {:?} and {} values",
                mlp::INPUTS,
                mlp::INPUTS,
                input.shape,
                pixels.len(),
            ))
        })?;

        let mut probabilities = vec![0.0; batch * mlp::CLASSES];
        mlp::forward(&pixels, batch, &mut probabilities);
        Ok(InferResponse {
            outputs: vec![Tensor {
                name: OUTPUT.into(),
                shape: vec![batch as u64, mlp::CLASSES as u64],
                data: TensorData::Fp32(probabilities),
            }],
        })
    }
}

/// An FP32 `[-1, width]` tensor spec.
fn spec(name: &str, width: usize) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        datatype: Datatype::Fp32,
        shape: vec![-1, width as i64],
    }
}

export!(Digits);

/// A panic (a bug here, or an allocation failure) traps: the host answers
/// the request with its trap error and the instance is discarded.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    wasm32::unreachable()
}

/// Linear memory pages are 64 KiB.
const PAGE: usize = 65536;

/// The global allocator: an [`arena::Arena`] from the end of the static data
/// (the linker's `__heap_base`) to the end of linear memory, which grows
/// linear memory when it runs out. The memory present at start-up is used
/// first: growing costs the host a limiter call and fresh pages.
struct Heap(UnsafeCell<Option<arena::Arena>>);

// SAFETY: the guest is built without the `atomics` feature, so it has one
// thread and the cell is never reached from two at once.
unsafe impl Sync for Heap {}

#[global_allocator]
static HEAP: Heap = Heap(UnsafeCell::new(None));

impl Heap {
    /// Runs `f` on the arena, which is set up on first use.
    fn with<R>(&self, f: impl FnOnce(&mut arena::Arena) -> R) -> R {
        unsafe extern "C" {
            /// Where the linker put the end of the static data.
            static __heap_base: u8;
        }
        // SAFETY: one thread, and no `f` below allocates, so this is the
        // only reference to the cell's contents while `f` runs.
        let arena = unsafe { &mut *self.0.get() };
        f(arena.get_or_insert_with(|| {
            let start = (&raw const __heap_base) as usize;
            arena::Arena::new(start, wasm32::memory_size(0) * PAGE)
        }))
    }
}

unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.with(|arena| {
            loop {
                match arena.alloc(layout.size(), layout.align()) {
                    Ok(at) => return at as *mut u8,
                    Err(short) => {
                        let pages = short.div_ceil(PAGE);
                        let old = wasm32::memory_grow(0, pages);
                        if old == usize::MAX {
                            // Out of memory (the host's cap): `alloc`
                            // reports it; the caller's handler traps.
                            return core::ptr::null_mut();
                        }
                        arena.extend(old * PAGE, (old + pages) * PAGE);
                    }
                }
            }
        })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.with(|arena| arena.free(ptr as usize, layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.with(|arena| arena.resize_in_place(ptr as usize, layout.size(), new_size)) {
            return ptr;
        }
        // SAFETY: the caller's contract for `realloc` covers `new_size`
        // with `layout.align()`; the blocks do not overlap.
        unsafe {
            let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
            let new = self.alloc(new_layout);
            if !new.is_null() {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

/// The canonical ABI's allocator, through which the host copies the request
/// in. With std, wasi-libc exports it.
///
/// # Safety
///
/// Called by the host as the component model's `cabi_realloc` contract says.
#[unsafe(no_mangle)]
unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    use alloc::alloc::{alloc, realloc};
    // SAFETY: the host passes a power-of-two `align`, and `old` with its
    // `old_len` and `align` from an earlier call when `old_len` is not 0.
    let ptr = unsafe {
        if old_len == 0 {
            if new_len == 0 {
                return align as *mut u8;
            }
            alloc(Layout::from_size_align_unchecked(new_len, align))
        } else {
            realloc(
                old,
                Layout::from_size_align_unchecked(old_len, align),
                new_len,
            )
        }
    };
    if ptr.is_null() {
        wasm32::unreachable();
    }
    ptr
}
