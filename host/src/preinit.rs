//! Pre-initialised snapshots of components, with wasmtime-wizer.
//!
//! A component that exports `wizer-initialize` (the `model-preinit` world)
//! asks to be prepared once rather than on every request: the ONNX guest
//! parses and optimises its graph there, work that a fresh instance would
//! otherwise repeat on every request (figures in docs/src/testing.md,
//! "Pre-initialised snapshots"). When such a component is
//! uploaded, the host runs that export once, snapshots the instance's
//! memories and globals into a new component (wizer), and compiles the
//! snapshot instead of the uploaded bytes; every request still gets a fresh
//! instance, but of the snapshot, which starts with the work done.
//!
//! The init is untrusted guest code, so it runs where compilation runs: in
//! the bounded compile worker (see [`crate::compile`]), under its memory
//! and time budget, and in a store armed with the model's memory cap. It is
//! granted almost nothing: `wasi:random/insecure-seed` (std's `HashMap`
//! keys need a seed) and an empty `wasi:cli/environment` (dependencies read
//! it); every other import traps. Both answers are frozen into the
//! snapshot, which is the point: the seed is drawn from the host's random
//! source once per compiled artifact rather than per instance.

use std::future::Future;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{Component, Instance, Linker, WasmList};
use wasmtime::{Engine, Store};
use wasmtime_wizer::{ComponentInstanceState, Wizer};

/// The export a component runs once, at snapshot time, to prepare itself.
pub const INIT_EXPORT: &str = "wizer-initialize";

/// The only imports an init may call; the message of every other
/// import's trap names them.
const GRANTED: &str = "wasi:random/insecure-seed and an empty wasi:cli/environment";

/// Whether `wasm` is a component that exports [`INIT_EXPORT`] at its top
/// level. Parses section headers only: it decides, before anything is
/// compiled, whether the upload is snapshotted, so that a component without
/// the export costs nothing more than before.
pub fn exports_init(wasm: &[u8]) -> bool {
    crate::model::wasm_kind(wasm) == crate::model::WasmKind::Component
        && crate::model::top_level_exports(wasm).is_some_and(|exports| {
            exports.iter().any(|(name, kind)| {
                name == INIT_EXPORT && *kind == wasmparser::ComponentExternalKind::Func
            })
        })
}

/// Why pre-initialising failed: the component's fault (a 4xx).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InitError(pub String);

/// Runs `wasm`'s [`INIT_EXPORT`] once in a store of `engine` whose linear
/// memories may grow to `memory_bytes` in total, and returns the snapshot:
/// a component whose memories and globals start where the init left them.
///
/// The caller bounds time (the compile worker's budget). `engine` compiles
/// the instrumented component that runs the init; its code is thrown away.
pub fn snapshot(engine: &Engine, wasm: &[u8], memory_bytes: usize) -> Result<Vec<u8>, InitError> {
    let fail = |what: &str, error: wasmtime::Error| InitError(format!("{what}: {error:#}"));
    let mut wizer = Wizer::new();
    wizer.init_func(INIT_EXPORT);
    // The `model-preinit` world exports `wizer-initialize`, so the snapshot
    // must too: with wizer's default (drop it) the snapshot's type no
    // longer matches what its own exports refer to and it fails to load.
    // The host never calls it again.
    wizer.keep_init_func(true);

    let (context, instrumented) = wizer
        .instrument_component(wasm)
        .map_err(|e| fail("the component cannot be pre-initialised", e))?;
    let component = Component::new(engine, &instrumented)
        .map_err(|e| fail("the component cannot be pre-initialised", e))?;

    let mut store = Store::new(
        engine,
        InitState {
            memory_bytes,
            failure: None,
        },
    );
    store.limiter(|state| state);
    // The worker's engine has no epoch ticker: the process's time budget is
    // the deadline. (An in-process compile is for trusted bytes.)
    store.set_epoch_deadline(u64::MAX / 2);
    // The snapshot reads each memory out as one list, up to the memory cap.
    store.set_hostcall_fuel(usize::MAX);

    let linker = init_linker(engine, &component)
        .map_err(|e| fail("cannot link the component for initialisation", e))?;
    let instance = linker
        .instantiate(&mut store, &component)
        .map_err(|e| fail("the component cannot be instantiated for initialisation", e))?;
    let init = component
        .get_export_index(None, INIT_EXPORT)
        .and_then(|index| instance.get_typed_func::<(), ()>(&mut store, index).ok())
        .ok_or_else(|| InitError(format!("`{INIT_EXPORT}` must be a `func()`")))?;
    init.call(&mut store, ()).map_err(|e| {
        fail(
            &format!("`{INIT_EXPORT}` failed (it may use only {GRANTED})"),
            e,
        )
    })?;

    let mut access = Access {
        store: &mut store,
        instance,
    };
    let snapshot = poll_ready(wizer.snapshot_component(&context, &mut access))
        .ok_or_else(|| InitError("the snapshot did not complete".into()))?
        .map_err(|e| fail("taking the snapshot failed", e))?;
    match store.data_mut().failure.take() {
        Some(error) => Err(fail("reading the initialised state failed", error)),
        None => Ok(snapshot),
    }
}

/// What the init's store holds: its memory cap, and the first error met
/// while reading the instance's state (wizer's reader cannot return one).
struct InitState {
    memory_bytes: usize,
    failure: Option<wasmtime::Error>,
}

impl wasmtime::ResourceLimiter for InitState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            wasmtime::bail!(
                "the initialisation exceeded the model's memory cap of {} bytes (asked for {desired})",
                self.memory_bytes
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // wizer refuses components that grow tables at all; this bounds
        // the initial ones.
        Ok(desired <= crate::sandbox::Limits::default().table_elements)
    }
}

/// A linker that grants the init [`GRANTED`] and traps on every other
/// import of `component`.
///
/// The two interfaces are defined by hand under the exact names the
/// component imports (whatever `0.2.x` it was built against), which is what
/// lets `define_unknown_imports_as_traps` fill in the rest: it skips what is
/// already defined under the same name. (Linking wasmtime-wasi would not
/// do: it registers `@0.2.12`, and trap stubs under the guest's exact
/// `@0.2.6` names would win over the version-compatible match.)
fn init_linker(engine: &Engine, component: &Component) -> wasmtime::Result<Linker<InitState>> {
    let mut linker = Linker::new(engine);
    let seed = {
        use std::hash::{BuildHasher as _, Hasher as _};
        // std's `RandomState` is keyed from the OS's random source: two
        // draws make a 128-bit seed without another dependency.
        let random = std::collections::hash_map::RandomState::new();
        let draw = |salt: u64| {
            let mut hasher = random.build_hasher();
            hasher.write_u64(salt);
            hasher.finish()
        };
        (draw(0), draw(1))
    };
    let component_type = component.component_type();
    for (name, _) in component_type.imports(engine) {
        let interface = name.split('@').next().unwrap_or(name);
        match interface {
            "wasi:random/insecure-seed" => {
                linker
                    .instance(name)?
                    .func_wrap("insecure-seed", move |_, (): ()| Ok((seed,)))?;
            }
            "wasi:cli/environment" => {
                let mut environment = linker.instance(name)?;
                environment.func_wrap("get-environment", |_, (): ()| {
                    Ok((Vec::<(String, String)>::new(),))
                })?;
                environment.func_wrap("get-arguments", |_, (): ()| Ok((Vec::<String>::new(),)))?;
                environment.func_wrap("initial-cwd", |_, (): ()| Ok((None::<String>,)))?;
            }
            _ => {}
        }
    }
    linker.define_unknown_imports_as_traps(component)?;
    Ok(linker)
}

/// Lets wizer read the initialised instance's state through the accessor
/// functions its instrumentation exported, with synchronous calls.
struct Access<'a> {
    store: &'a mut Store<InitState>,
    instance: Instance,
}

impl Access<'_> {
    /// Calls `instance#func`, a `func() -> R` wizer added; `None` (with the
    /// error kept in the store) if that fails.
    fn call<R, O>(
        &mut self,
        instance: &str,
        func: &str,
        read: impl FnOnce(&Store<InitState>, R) -> O,
    ) -> Option<O>
    where
        R: wasmtime::component::Lift + 'static,
    {
        let result = (|| {
            let (_, exported) = self
                .instance
                .get_export(&mut *self.store, None, instance)
                .ok_or_else(|| wasmtime::format_err!("no export {instance:?}"))?;
            let (_, index) = self
                .instance
                .get_export(&mut *self.store, Some(&exported), func)
                .ok_or_else(|| wasmtime::format_err!("no export {instance}#{func}"))?;
            let func = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)?;
            let (value,) = func.call(&mut *self.store, ())?;
            Ok(read(&*self.store, value))
        })();
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.store.data_mut().failure.get_or_insert(error);
                None
            }
        }
    }
}

impl ComponentInstanceState for Access<'_> {
    fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) -> impl Future<Output = ()> + Send {
        // A failure is kept in the store and reported after the snapshot.
        let _ = self.call(instance, func, |store, list: WasmList<u8>| {
            contents(list.as_le_slice(store));
        });
        std::future::ready(())
    }

    fn call_func_ret_s32(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = i32> + Send {
        std::future::ready(self.call(instance, func, |_, v: i32| v).unwrap_or(0))
    }

    fn call_func_ret_s64(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = i64> + Send {
        std::future::ready(self.call(instance, func, |_, v: i64| v).unwrap_or(0))
    }

    fn call_func_ret_f32(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = u32> + Send {
        std::future::ready(
            self.call(instance, func, |_, v: f32| v.to_bits())
                .unwrap_or(0),
        )
    }

    fn call_func_ret_f64(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = u64> + Send {
        std::future::ready(
            self.call(instance, func, |_, v: f64| v.to_bits())
                .unwrap_or(0),
        )
    }
}

/// Polls a future that never waits: wizer's snapshot is `async` so that
/// asynchronous stores can drive it, but every call it makes here is
/// synchronous, so it completes on the first poll. `None` if it did not.
fn poll_ready<F: Future>(future: F) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    match future.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
