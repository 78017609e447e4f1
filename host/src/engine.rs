//! The wasmtime engine, the compiled-artifact cache and the per-request sandbox.
//!
//! One [`Runtime`] per process: one `Engine` (Cranelift, pooling allocator,
//! copy-on-write memory images, epoch interruption), one `Linker` with WASI
//! linked and nothing granted, and an epoch ticker thread that turns
//! deadlines into traps.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Store, Trap,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::budget::{MemoryBudget, Reservation};
use crate::compile::{ArtifactKind, CompileError, Compiler};

/// How often the epoch ticker advances the engine's epoch. Deadlines are
/// counted in these ticks, so this is their resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Engine-wide settings. They bound every store the engine will ever create;
/// per-model [`Limits`] can only be tighter.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Largest linear memory any instance may have, in bytes (the pool's slot size).
    pub max_memory_bytes: usize,
    /// How many instances may be alive at once (pool slots).
    pub max_instances: u32,
    /// Wasm stack limit per call, in bytes.
    pub max_wasm_stack: usize,
    /// Linear memory all live guests may hold together, in bytes. Each
    /// store's memory grows against it as well as against its own cap, so
    /// the pool's slots times the per-model caps (which can far exceed the
    /// machine) never turn into more memory than this: a growth past it
    /// fails the request that asked (503, `capacity`), not the process.
    /// Defaults to half the memory of the machine (or Lambda function).
    pub guest_memory_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_memory_bytes: 1 << 30,
            max_instances: 256,
            max_wasm_stack: 512 << 10,
            guest_memory_bytes: crate::budget::machine_memory_bytes() / 2,
        }
    }
}

/// Per-request limits armed on every store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap, in bytes, summed over the instance's memories.
    pub memory_bytes: usize,
    /// Wall-clock deadline for one call into the guest.
    pub deadline: Duration,
    /// Table elements cap.
    pub table_elements: usize,
    /// Cap on host resources (streams, handles) the guest may hold at once.
    pub host_resources: usize,
    /// Cap on the bytes the host copies out of the guest in one call: the
    /// response of `infer` (or `metadata`), or the arguments of one WASI
    /// call. Counted as the host-side size of what is copied, so it bounds
    /// the host memory a response can claim. Without it a guest could
    /// return many lists that all point at the same bytes and make the host
    /// copy a few megabytes of its memory into gigabytes (see
    /// [`Runtime::new_store`]).
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            deadline: Duration::from_secs(2),
            table_elements: 20_000,
            host_resources: 64,
            output_bytes: 64 << 20,
        }
    }
}

/// Why a call into a guest did not return a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestFailure {
    /// The call ran past its deadline and was interrupted.
    #[error("the model exceeded its deadline of {0:?}")]
    Deadline(Duration),
    /// The guest tried to grow its memory past the cap.
    #[error("the model exceeded its memory cap of {0} bytes")]
    MemoryCap(usize),
    /// The guest trapped (a panic, an unreachable, an out-of-bounds access…).
    #[error("the model trapped: {0}")]
    Trap(String),
    /// The guest answered with more data than the host accepts.
    #[error("the model's response is over the output limit: {0}")]
    OutputTooLarge(String),
    /// No sandbox slot was free.
    #[error("no sandbox capacity left: {0}")]
    Capacity(String),
    /// Anything else (a host bug, an I/O error).
    #[error("sandbox error: {0:#}")]
    Other(anyhow::Error),
}

/// Marker error returned by the limiter when the memory all guests hold
/// together would pass [`EngineConfig::guest_memory_bytes`].
#[derive(Debug, thiserror::Error)]
#[error("the guests' shared memory budget of {0} bytes is exhausted")]
struct GuestMemoryExhausted(usize);

/// Marker error returned by the limiter when the memory cap is hit, so that
/// the failure can be told apart from other traps.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes exceeded (asked for {desired})")]
struct MemoryCapExceeded {
    cap: usize,
    desired: usize,
}

/// Marker error for the table cap.
#[derive(Debug, thiserror::Error)]
#[error("table cap of {cap} elements exceeded (asked for {desired})")]
struct TableCapExceeded {
    cap: usize,
    desired: usize,
}

/// What each component store holds: an empty WASI context and the limiter.
pub struct SandboxState {
    /// Built on the guest's first WASI call: a pure-compute model makes
    /// none per request, and building one (random sources, clocks, stdio)
    /// is a measurable share of a fresh sandbox's cost.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
    caps: Caps,
}

/// What each store of a WASI preview 1 command holds: its WASI context
/// (in-memory stdin and stdout, nothing else) and the limiter.
pub struct CommandState {
    wasi: WasiP1Ctx,
    caps: Caps,
}

/// The memory and table caps of one store, the most memory it had, and
/// its share of the guests' memory budget (released when the store drops).
struct Caps {
    limits: Limits,
    peak_memory: usize,
    shared: Reservation,
}

impl Caps {
    fn new(limits: Limits, budget: &MemoryBudget) -> Self {
        Self {
            limits,
            peak_memory: 0,
            shared: budget.reservation(),
        }
    }
}

impl SandboxState {
    /// The largest linear memory size the guest reached, in bytes.
    pub fn peak_memory(&self) -> usize {
        self.caps.peak_memory
    }
}

impl WasiView for SandboxState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| sandbox_wasi().build()),
            table: &mut self.table,
        }
    }
}

impl wasmtime::ResourceLimiter for Caps {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.memory_bytes {
            self.peak_memory = self.peak_memory.max(current);
            return Err(wasmtime::Error::new(MemoryCapExceeded {
                cap: self.limits.memory_bytes,
                desired,
            }));
        }
        if self
            .shared
            .try_grow(desired.saturating_sub(current))
            .is_err()
        {
            self.peak_memory = self.peak_memory.max(current);
            return Err(wasmtime::Error::new(GuestMemoryExhausted(
                self.shared.budget_capacity(),
            )));
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limits.table_elements {
            return Err(wasmtime::Error::new(TableCapExceeded {
                cap: self.limits.table_elements,
                desired,
            }));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        // A component instantiates a handful of core instances (the module,
        // shims, fix-ups); no guest needs more than this.
        32
    }

    fn tables(&self) -> usize {
        32
    }

    fn memories(&self) -> usize {
        // One linear memory per core module that has one.
        8
    }
}

/// A WASI wall clock frozen at the Unix epoch, and a monotonic clock that
/// never advances: a model gets no timing signal from the host.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The monotonic-clock interface as wasmtime-wasi 48 defines it; guests
/// importing any `0.2.x` version are linked to it.
const WASI_MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Makes every sleep end at once.
///
/// wasmtime-wasi's `subscribe-duration` and `subscribe-instant` make
/// pollables that a blocking `poll` waits on inside the host, where the
/// epoch deadline cannot interrupt: a guest that sleeps for an hour would
/// hold a host thread for an hour, whatever its deadline (and sleeping
/// forever is one call away). The sandbox's monotonic clock is frozen
/// ([`FrozenClock`]), so a pollable that is ready at once is the consistent
/// answer: no time passes inside the sandbox, so any wait is already over.
fn link_instant_sleeps(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(WASI_MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |mut store, (_,): (u64,)| {
        elapsed_pollable(store.data_mut())
    })?;
    clock.func_wrap("subscribe-instant", |mut store, (_,): (u64,)| {
        elapsed_pollable(store.data_mut())
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// WASI preview 1 `errno::notsup`.
const ERRNO_NOTSUP: i32 = 58;

/// Replaces a command's `poll_oneoff` (its only way to sleep or wait) with
/// one that fails at once with `notsup`, for the reason given at
/// [`link_instant_sleeps`]: wasmtime-wasi would wait inside the host, past
/// the deadline. A command that insists on waiting (Rust's `thread::sleep`
/// panics on the error) is stopped by its own trap or its deadline.
fn refuse_command_polls(linker: &mut wasmtime::Linker<CommandState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "poll_oneoff",
        |_: i32, _: i32, _: i32, _: i32| -> i32 { ERRNO_NOTSUP },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A wait that is over before it starts.
struct AlreadyElapsed;

#[wasmtime_wasi::async_trait]
impl Pollable for AlreadyElapsed {
    async fn ready(&mut self) {}
}

fn elapsed_pollable(state: &mut SandboxState) -> wasmtime::Result<(Resource<DynPollable>,)> {
    let elapsed = state.table.push(AlreadyElapsed)?;
    Ok((subscribe(&mut state.table, elapsed)?,))
}

/// What the host does to uploaded bytes before compiling them, as part of
/// the artifact cache's key. Artifacts are keyed by the uploaded bytes, not
/// by what was compiled, so a change here must change the key: artifacts
/// compiled before snapshots existed (`wizer-initialize` ignored) would
/// otherwise keep being served from an old cache, and from the shared store.
const ARTIFACT_RECIPE: &str = "wizer-initialize snapshot, 1";

/// The process-wide wasmtime runtime.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<SandboxState>>,
    command_linker: Arc<wasmtime::Linker<CommandState>>,
    compat_hash: Arc<str>,
    config: EngineConfig,
    compiler: Compiler,
    /// What every store's linear memory grows against.
    guest_memory: MemoryBudget,
}

impl Runtime {
    /// Builds the engine and the linker and starts the epoch ticker;
    /// compiles in process (for trusted bytes; see [`Runtime::with_compiler`]).
    pub fn new(config: &EngineConfig) -> anyhow::Result<Self> {
        Self::with_compiler(config, Compiler::InProcess)
    }

    /// Like [`Runtime::new`], compiling with `compiler`.
    pub fn with_compiler(config: &EngineConfig, compiler: Compiler) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 8)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .total_stacks(config.max_instances)
            .max_memory_size(config.max_memory_bytes)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(Limits::default().table_elements.max(20_000))
            // Reset a used slot by rewriting its dirty pages (found with
            // Linux's PAGEMAP_SCAN where available) rather than unmapping
            // them: the next instance then starts without page faults or
            // TLB shootdowns. Pages past this budget are still decommitted.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10);

        let mut wasm = wasm_config(config);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(anyhow::Error::from)?;

        let mut linker = Linker::<SandboxState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        link_instant_sleeps(&mut linker).map_err(anyhow::Error::from)?;
        let mut command_linker = wasmtime::Linker::<CommandState>::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut command_linker, |state| &mut state.wasi)
            .map_err(anyhow::Error::from)?;
        refuse_command_polls(&mut command_linker).map_err(anyhow::Error::from)?;

        let compat_hash = {
            use std::hash::{Hash as _, Hasher as _};
            // DefaultHasher::new() has fixed keys: the value is stable for a
            // given build of this binary, which is what an artifact cache needs.
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            ARTIFACT_RECIPE.hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        };

        spawn_epoch_ticker(&engine);
        Ok(Self {
            engine,
            linker: Arc::new(linker),
            command_linker: Arc::new(command_linker),
            compat_hash: compat_hash.into(),
            config: config.clone(),
            compiler,
            guest_memory: MemoryBudget::new(config.guest_memory_bytes),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker every component is instantiated against.
    pub fn linker(&self) -> &Linker<SandboxState> {
        &self.linker
    }

    /// The linker WASI preview 1 command modules are instantiated against.
    pub fn command_linker(&self) -> &wasmtime::Linker<CommandState> {
        &self.command_linker
    }

    /// Compiles `wasm` into a serialized artifact for this engine, with the
    /// configured [`Compiler`] (a bounded worker process for untrusted bytes).
    /// A component that exports `wizer-initialize` is pre-initialised
    /// first, under `limits.memory_bytes` (see [`crate::preinit`]).
    pub fn precompile(
        &self,
        kind: ArtifactKind,
        wasm: &[u8],
        limits: &Limits,
    ) -> Result<Vec<u8>, CompileError> {
        self.compiler
            .precompile(&self.engine, &self.config, kind, wasm, limits.memory_bytes)
    }

    /// A short hex hash of everything that makes compiled artifacts
    /// compatible with this engine; artifacts are stored under it.
    pub fn compat_hash(&self) -> &str {
        &self.compat_hash
    }

    /// A fresh store armed with `limits`: memory and table caps, a deadline,
    /// a bounded resource table and an empty WASI context.
    pub fn new_store(&self, limits: Limits) -> Store<SandboxState> {
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.host_resources);
        let state = SandboxState {
            wasi: None,
            table,
            caps: Caps::new(limits, &self.guest_memory),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.caps);
        // wasmtime counts what it copies out of the guest (lists, strings)
        // against this "hostcall fuel", per call and per returned value,
        // in host bytes; the default is 128 MiB.
        store.set_hostcall_fuel(limits.output_bytes);
        arm_deadline(&mut store, &limits);
        store
    }

    /// A fresh store for a WASI preview 1 command: `stdin` holds its input,
    /// `stdout` collects its output (up to the pipe's capacity); no
    /// arguments, environment, directories or network; frozen clocks;
    /// stderr discarded. Armed with `limits` like [`Runtime::new_store`].
    pub fn new_command_store(
        &self,
        limits: Limits,
        stdin: wasmtime_wasi::p2::pipe::MemoryInputPipe,
        stdout: wasmtime_wasi::p2::pipe::MemoryOutputPipe,
    ) -> Store<CommandState> {
        let wasi = sandbox_wasi()
            .stdin(stdin)
            .stdout(stdout)
            .stderr(wasmtime_wasi::p2::pipe::SinkOutputStream)
            .build_p1();
        let state = CommandState {
            wasi,
            caps: Caps::new(limits, &self.guest_memory),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.caps);
        arm_deadline(&mut store, &limits);
        store
    }
}

/// The WASI context every guest starts from: nothing granted, frozen clocks.
fn sandbox_wasi() -> wasmtime_wasi::WasiCtxBuilder {
    let mut builder = WasiCtx::builder();
    builder
        .wall_clock(FrozenClock)
        .monotonic_clock(FrozenClock)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder
}

/// Sets the epoch deadline of a fresh store.
fn arm_deadline<T>(store: &mut Store<T>, limits: &Limits) {
    let ticks = (limits.deadline.as_micros() / EPOCH_TICK.as_micros()).max(1);
    store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
    store.epoch_deadline_trap();
}

/// The engine settings that decide how code is compiled.
///
/// Funcref tables stay lazily initialised (wasmtime's default), although
/// that is a good part of what the first `infer` of a fresh snapshot
/// instance costs beyond later ones: eager initialisation fills the ONNX
/// guest's whole table at every instantiation, far more than the lazy way
/// costs (figures in docs/src/testing.md). The compile worker
/// builds its engine from the same function, so that its artifacts are
/// compatible with the serving engine (which adds the pooling allocator,
/// a runtime-only setting).
pub fn wasm_config(config: &EngineConfig) -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(config.max_wasm_stack)
        .cranelift_opt_level(OptLevel::Speed)
        .memory_init_cow(true)
        .parallel_compilation(true);
    wasm
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("airlock-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .expect("failed to spawn the epoch ticker thread");
}

/// What wasmtime 48 says when a guest's data runs out of hostcall fuel. Its
/// error type is private, so the message is matched; a test with a real
/// guest (`tests/all/hostile.rs`) fails if a wasmtime upgrade changes it.
const HOSTCALL_FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Classifies an error from instantiating or calling a guest.
pub fn classify(error: wasmtime::Error, limits: &Limits) -> GuestFailure {
    for cause in error.chain() {
        if cause.to_string().contains(HOSTCALL_FUEL_EXHAUSTED) {
            return GuestFailure::OutputTooLarge(format!(
                "more than {} bytes copied out of the sandbox in one call",
                limits.output_bytes
            ));
        }
        if cause.downcast_ref::<GuestMemoryExhausted>().is_some() {
            return GuestFailure::Capacity(cause.to_string());
        }
        if cause.downcast_ref::<MemoryCapExceeded>().is_some() {
            return GuestFailure::MemoryCap(limits.memory_bytes);
        }
        if let Some(trap) = cause.downcast_ref::<Trap>() {
            return match trap {
                Trap::Interrupt => GuestFailure::Deadline(limits.deadline),
                Trap::AllocationTooLarge => GuestFailure::MemoryCap(limits.memory_bytes),
                other => GuestFailure::Trap(other.to_string()),
            };
        }
        if cause.downcast_ref::<TableCapExceeded>().is_some() {
            return GuestFailure::Trap(cause.to_string());
        }
        if cause
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return GuestFailure::Capacity(cause.to_string());
        }
    }
    GuestFailure::Other(anyhow::Error::from(error))
}

/// Compiled artifacts, kept on disk and keyed by the component's sha256 and
/// the engine's compatibility hash.
///
/// Layout: `<dir>/<engine-hash>/<sha256>.cwasm` plus a `.xxh3` sidecar with
/// a 128-bit XXH3 checksum of the `.cwasm` itself. An artifact is
/// deserialized only when its sidecar matches, so a truncated or corrupted
/// file is recompiled, never trusted. Only bytes this host compiled are ever
/// deserialized. (The checksum guards against corruption, not against
/// someone who can write the data directory, who could rewrite a sidecar
/// as easily; XXH3 checks a 56 MB artifact in a few milliseconds where
/// sha256 takes about a hundred.)
///
/// The local directory is trusted: it is this host's own disk, written only
/// by this host (like its binary and its data directory). Whoever can write
/// it can already run code as the host.
///
/// With a store that shares artifacts (S3), the cache has a second tier: a
/// local miss looks for the artifact in the store (under the same engine
/// hash), checks it, writes it to the local directory with its sidecar and
/// deserializes the local copy; an artifact compiled here is written to the
/// store as well, so one Lambda instance compiles and the others download.
/// A shared store is not this host's disk: anyone who can write its prefix
/// could hand every host native code. So a shared artifact carries a keyed
/// MAC (HMAC-SHA256, in the object's metadata) over its engine hash, the
/// component's digest and its bytes, with an [`ArtifactKey`] from the
/// host's configuration that is never stored beside the artifacts; one
/// whose MAC does not verify is ignored and compiled again (and the good
/// artifact shared in its place). A host without a key neither fetches nor
/// shares artifacts: it compiles everything itself (and says so at start).
/// HMAC-SHA256 over a 56 MB artifact costs tens of milliseconds (openssl's
/// took 40 ms of CPU on the 2-core development machine, with the SHA
/// extensions sha2 also uses; the host's own was not timed), paid only on a
/// download or an upload, next to the transfer itself.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_hash: String,
    shared: Option<(Arc<dyn crate::store::Store>, ArtifactKey)>,
}

/// The secret key of the MAC on compiled artifacts shared through a store
/// (see [`ArtifactCache`]): at least [`ArtifactKey::MIN_BYTES`] bytes, given
/// in hex in `AIRLOCK_ARTIFACT_KEY` (on Lambda the function's configuration,
/// where `infra` puts a random key on create and keeps it on update). Every
/// host sharing a store needs the same key. Its `Debug` form shows nothing.
#[derive(Clone)]
pub struct ArtifactKey(Arc<[u8]>);

impl std::fmt::Debug for ArtifactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArtifactKey(..)")
    }
}

impl ArtifactKey {
    /// The environment variable both binaries read the key from.
    pub const ENV: &'static str = "AIRLOCK_ARTIFACT_KEY";
    /// The shortest key accepted, in bytes.
    pub const MIN_BYTES: usize = 32;

    /// A key from its hex form (surrounding whitespace ignored). Errors
    /// never repeat the key.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| "the artifact key must be hex digits".to_owned())?;
        if bytes.len() < Self::MIN_BYTES {
            return Err(format!(
                "the artifact key is {} bytes; at least {} are needed",
                bytes.len(),
                Self::MIN_BYTES
            ));
        }
        Ok(Self(bytes.into()))
    }

    /// The key in [`ArtifactKey::ENV`]: `None` when the variable is unset,
    /// an error when it is set but empty or not a valid key (a typo must not
    /// quietly turn artifact sharing off, nor run with a weak key).
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        match std::env::var(Self::ENV) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                anyhow::bail!("{}: the artifact key must be hex digits", Self::ENV)
            }
            Ok(text) => Self::from_hex(&text)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{}: {e}", Self::ENV)),
        }
    }

    /// The MAC of a shared artifact: HMAC-SHA256 over a domain tag, the
    /// engine hash, the component digest and the artifact's bytes, so that
    /// an artifact cannot be passed off as another component's or another
    /// engine's.
    fn mac(&self, engine_hash: &str, digest: &str, bytes: &[u8]) -> hmac::Hmac<Sha256> {
        use hmac::Mac as _;
        let mut mac =
            <hmac::Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(b"airlock shared artifact v1\0");
        mac.update(engine_hash.as_bytes());
        mac.update(b"\0");
        mac.update(digest.as_bytes());
        mac.update(b"\0");
        mac.update(bytes);
        mac
    }

    /// The MAC (hex) a shared artifact of component `digest` compiled by
    /// engine `engine_hash` carries: HMAC-SHA256 over a domain tag, the
    /// engine hash, the digest and the artifact's bytes.
    pub fn sign(&self, engine_hash: &str, digest: &str, bytes: &[u8]) -> String {
        use hmac::Mac as _;
        hex::encode(self.mac(engine_hash, digest, bytes).finalize().into_bytes())
    }

    /// Whether `tag` (hex) is [`ArtifactKey::sign`]'s MAC of this artifact
    /// under this key, compared in constant time.
    pub fn verify(&self, engine_hash: &str, digest: &str, bytes: &[u8], tag: &str) -> bool {
        use hmac::Mac as _;
        hex::decode(tag.trim()).is_ok_and(|tag| {
            self.mac(engine_hash, digest, bytes)
                .verify_slice(&tag)
                .is_ok()
        })
    }
}

/// How a component was obtained from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A valid artifact was found and deserialized.
    Hit,
    /// No valid artifact: compiled now, and stored for next time.
    Compiled,
}

impl ArtifactCache {
    /// A cache under `root` for artifacts of `runtime`'s engine.
    pub fn new(root: &Path, runtime: &Runtime) -> Self {
        Self {
            dir: root.join(runtime.compat_hash()),
            engine_hash: runtime.compat_hash().to_owned(),
            shared: None,
        }
    }

    /// Adds `store` as a shared second tier, if it shares artifacts and
    /// there is a `key` to authenticate them with; without a key, shared
    /// artifacts are not trusted at all (logged once, here).
    pub fn with_shared(
        mut self,
        store: Arc<dyn crate::store::Store>,
        key: Option<ArtifactKey>,
    ) -> Self {
        if store.shares_artifacts() {
            match key {
                Some(key) => self.shared = Some((store, key)),
                None => tracing::warn!(
                    store = %store.location(),
                    "no artifact key ({}): compiled artifacts are neither fetched from nor \
                     shared through the store; this host compiles every model itself",
                    ArtifactKey::ENV
                ),
            }
        }
        self
    }

    /// The directory artifacts of this engine go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an artifact for `digest` is on disk (not checked).
    pub fn contains(&self, digest: &str) -> bool {
        self.dir.join(format!("{digest}.cwasm")).exists()
    }

    /// Removes the artifact for `digest`, if any (after a failed validation,
    /// so that a rejected upload leaves nothing behind).
    pub fn remove(&self, digest: &str) {
        if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = std::fs::remove_file(self.dir.join(format!("{digest}.cwasm")));
            let _ = std::fs::remove_file(self.dir.join(format!("{digest}.cwasm.xxh3")));
        }
    }

    /// Returns the compiled `T` (a component or a core module) for `wasm`,
    /// whose sha256 is `digest` (lowercase hex): from disk when a verified
    /// artifact exists, else compiled (by the runtime's [`Compiler`]) and
    /// written back.
    ///
    /// A component that exports `wizer-initialize` is compiled from its
    /// pre-initialised snapshot, taken under `limits` (the model's memory
    /// cap; see [`crate::preinit`]). The artifact is still keyed by the
    /// uploaded bytes, so a restart maps it without running the init again.
    /// (The key does not include the limits: the init sees no input, so
    /// its snapshot does not depend on them; a snapshot that later does not
    /// fit a smaller cap fails to instantiate, with that cap in the error.)
    pub fn load_or_compile<T: Artifact>(
        &self,
        runtime: &Runtime,
        digest: &str,
        wasm: &[u8],
        limits: &Limits,
    ) -> Result<(T, CacheOutcome), ArtifactError> {
        if !(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(ArtifactError::Store(anyhow::anyhow!(
                "not a sha256 hex digest: {digest:?}"
            )));
        }
        let artifact = self.dir.join(format!("{digest}.cwasm"));
        let sidecar = self.dir.join(format!("{digest}.cwasm.xxh3"));
        if let Some(compiled) = self.load_verified(runtime, &artifact, &sidecar) {
            return Ok((compiled, CacheOutcome::Hit));
        }
        if self.fetch_shared(digest, &artifact, &sidecar)
            && let Some(component) = self.load_verified(runtime, &artifact, &sidecar)
        {
            return Ok((component, CacheOutcome::Hit));
        }

        let bytes = runtime.precompile(T::KIND, wasm, limits)?;
        let sum = checksum(&bytes);
        let stored = (|| {
            std::fs::create_dir_all(&self.dir)?;
            // Sidecar first: an artifact without a matching sidecar is
            // ignored, so a crash between the two writes costs a recompile.
            write_atomic(&sidecar, sum.as_bytes())?;
            write_atomic(&artifact, &bytes)
        })();
        stored.map_err(|e| ArtifactError::Store(e.into()))?;
        if let Some((shared, key)) = &self.shared
            && let Err(error) = shared.put_artifact(
                &self.engine_hash,
                digest,
                &bytes,
                &key.sign(&self.engine_hash, digest, &bytes),
            )
        {
            // Only a cost: other hosts compile it themselves.
            tracing::warn!(
                sha256 = digest,
                error = format!("{error:#}"),
                "failed to share a compiled artifact"
            );
        }
        drop(bytes);
        // SAFETY: the file was just written from the output of this host's
        // compiler (in process, or its own worker binary), never bytes a
        // client sent, and is only ever replaced by rename.
        let compiled = unsafe { T::deserialize_file(runtime.engine(), &artifact) }
            .map_err(|e| ArtifactError::Store(anyhow::Error::from(e)))?;
        Ok((compiled, CacheOutcome::Compiled))
    }

    /// The compiled component or module of `digest` from a verified
    /// artifact (local, else shared), without the bytes it was compiled
    /// from: a stored version loads at start-up without reading its blob.
    /// `None` when there is no usable artifact; then
    /// [`ArtifactCache::load_or_compile`] needs the bytes.
    pub fn load_cached(&self, runtime: &Runtime, digest: &str) -> Option<Compiled> {
        if !(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())) {
            return None;
        }
        let artifact = self.dir.join(format!("{digest}.cwasm"));
        let sidecar = self.dir.join(format!("{digest}.cwasm.xxh3"));
        if !artifact.exists() && !self.fetch_shared(digest, &artifact, &sidecar) {
            return None;
        }
        // Which of the two it is, from the artifact's header; the checksum
        // and wasmtime's own checks follow in `load_verified`.
        match Engine::detect_precompiled_file(&artifact) {
            Ok(Some(wasmtime::Precompiled::Component)) => self
                .load_verified(runtime, &artifact, &sidecar)
                .map(Compiled::Component),
            Ok(Some(wasmtime::Precompiled::Module)) => self
                .load_verified(runtime, &artifact, &sidecar)
                .map(Compiled::Module),
            Ok(None) | Err(_) => None,
        }
    }

    /// Copies the shared artifact of `digest`, if there is one and its MAC
    /// verifies under this host's key, into the local directory (with a
    /// local checksum sidecar). Never deserializes anything: the local copy
    /// goes through `load_verified`.
    fn fetch_shared(&self, digest: &str, artifact: &Path, sidecar: &Path) -> bool {
        let Some((shared, key)) = &self.shared else {
            return false;
        };
        let (bytes, expected) = match shared.get_artifact(&self.engine_hash, digest) {
            Ok(Some(found)) => found,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(
                    sha256 = digest,
                    error = format!("{error:#}"),
                    "failed to read a shared artifact"
                );
                return false;
            }
        };
        if !key.verify(&self.engine_hash, digest, &bytes, &expected) {
            tracing::warn!(
                sha256 = digest,
                "shared artifact failed its MAC (altered, or written with another key); recompiling"
            );
            return false;
        }
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| write_atomic(sidecar, checksum(&bytes).as_bytes()))
            .and_then(|()| write_atomic(artifact, &bytes));
        match written {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(sha256 = digest, error = %error, "failed to cache a shared artifact locally");
                false
            }
        }
    }

    fn load_verified<T: Artifact>(
        &self,
        runtime: &Runtime,
        artifact: &Path,
        sidecar: &Path,
    ) -> Option<T> {
        let expected = std::fs::read_to_string(sidecar).ok()?;
        if file_checksum(artifact).ok()? != expected.trim() {
            tracing::warn!(artifact = %artifact.display(), "compiled artifact failed its checksum; recompiling");
            return None;
        }
        // SAFETY: the file was written by this host (its checksum matches
        // the sidecar written alongside it) and is only ever replaced by rename,
        // never modified in place, so the mapping stays valid.
        match unsafe { T::deserialize_file(runtime.engine(), artifact) } {
            Ok(compiled) => Some(compiled),
            Err(error) => {
                tracing::warn!(artifact = %artifact.display(), error = %error, "compiled artifact rejected; recompiling");
                None
            }
        }
    }
}

#[cfg(test)]
mod artifact_key_tests {
    use super::ArtifactKey;

    #[test]
    fn keys_are_hex_of_at_least_32_bytes_and_never_shown() {
        let key = ArtifactKey::from_hex(&format!(" {} \n", "ab".repeat(32))).unwrap();
        assert_eq!(format!("{key:?}"), "ArtifactKey(..)");
        let err = ArtifactKey::from_hex(&"ab".repeat(31)).unwrap_err();
        assert!(err.contains("31 bytes"), "{err}");
        let err = ArtifactKey::from_hex(&format!("{}zz", "ab".repeat(32))).unwrap_err();
        assert!(!err.contains("abab"), "the key is not repeated: {err}");
        assert!(ArtifactKey::from_hex("").is_err());
    }

    #[test]
    fn the_mac_binds_the_bytes_the_component_and_the_engine() {
        let key = ArtifactKey::from_hex(&"ab".repeat(32)).unwrap();
        let other = ArtifactKey::from_hex(&"cd".repeat(32)).unwrap();
        let (engine, digest) = ("e1", "0".repeat(64));
        let tag = key.sign(engine, &digest, b"artifact");
        assert_eq!(tag.len(), 64);
        assert!(key.verify(engine, &digest, b"artifact", &tag));
        assert!(!key.verify(engine, &digest, b"artifacT", &tag), "bytes");
        assert!(
            !key.verify(engine, &"1".repeat(64), b"artifact", &tag),
            "component"
        );
        assert!(!key.verify("e2", &digest, b"artifact", &tag), "engine");
        assert!(!other.verify(engine, &digest, b"artifact", &tag), "key");
        assert!(!key.verify(engine, &digest, b"artifact", "not hex"));
        assert!(
            !key.verify(engine, &digest, b"artifact", &tag[..32]),
            "truncated"
        );
        let unkeyed = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b"artifact"));
        assert!(!key.verify(engine, &digest, b"artifact", &unkeyed));
    }
}

/// What [`ArtifactCache::load_cached`] found.
pub enum Compiled {
    /// A component.
    Component(Component),
    /// A core module (a WASI preview 1 command).
    Module(wasmtime::Module),
}

/// Why [`ArtifactCache::load_or_compile`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The bytes did not compile within the budget (the input's fault).
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// Writing or reading the artifact failed (the host's fault).
    #[error("artifact cache: {0:#}")]
    Store(anyhow::Error),
}

/// Something compiled that the cache can hold: a component or a core module.
pub trait Artifact: Sized {
    /// How to compile it.
    const KIND: ArtifactKind;
    /// Maps a serialized file.
    ///
    /// # Safety
    /// The file must hold the output of this host's compiler (see wasmtime's
    /// `Component::deserialize_file`) and must not change while mapped.
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self>;
}

impl Artifact for Component {
    const KIND: ArtifactKind = ArtifactKind::Component;
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self> {
        // SAFETY: forwarded to the caller.
        unsafe { Component::deserialize_file(engine, path) }
    }
}

impl Artifact for wasmtime::Module {
    const KIND: ArtifactKind = ArtifactKind::Module;
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self> {
        // SAFETY: forwarded to the caller.
        unsafe { wasmtime::Module::deserialize_file(engine, path) }
    }
}

/// The checksum of a file, streamed through a small buffer: no copy of a
/// (possibly 50 MB) artifact on the heap just to hash it.
fn file_checksum(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buffer = vec![0u8; 256 << 10];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            n => hasher.update(&buffer[..n]),
        }
    }
    Ok(format!("{:032x}", hasher.digest128()))
}

/// The artifact checksum: XXH3-128 in hex.
fn checksum(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the
/// new one: a temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
