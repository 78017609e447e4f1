//! The sandbox policy every guest runs under: the engine-wide bounds
//! ([`EngineConfig`]) and per-request [`Limits`], the
//! one `ResourceLimiter` (`Caps`) that enforces them together with the
//! guests' shared memory budget, the store states, frozen clocks, sleeps
//! that end at once (and polls a command may not make), the epoch
//! deadline, and the classification of a failed call ([`GuestFailure`]).

use std::time::Duration;

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::budget::{MemoryBudget, Reservation};

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
    /// [`crate::Runtime::new_store`]).
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

/// Links WASI preview 2 into `linker`, with sleeps that end at once
/// (see [`link_instant_sleeps`]).
pub(crate) fn link_component_wasi(linker: &mut Linker<SandboxState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    link_instant_sleeps(linker)
}

/// Links WASI preview 1 into `linker`, without `poll_oneoff`
/// (see [`refuse_command_polls`]).
pub(crate) fn link_command_wasi(
    linker: &mut wasmtime::Linker<CommandState>,
) -> wasmtime::Result<()> {
    wasmtime_wasi::p1::add_to_linker_sync(linker, |state| &mut state.wasi)?;
    refuse_command_polls(linker)
}

/// A fresh component store armed with `limits`, its memory growing against
/// `budget` (see [`crate::Runtime::new_store`]).
pub(crate) fn new_store(
    engine: &Engine,
    limits: Limits,
    budget: &MemoryBudget,
) -> Store<SandboxState> {
    let mut table = ResourceTable::new();
    table.set_max_capacity(limits.host_resources);
    let state = SandboxState {
        wasi: None,
        table,
        caps: Caps::new(limits, budget),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.caps);
    // wasmtime counts what it copies out of the guest (lists, strings)
    // against this "hostcall fuel", per call and per returned value,
    // in host bytes; the default is 128 MiB.
    store.set_hostcall_fuel(limits.output_bytes);
    arm_deadline(&mut store, &limits);
    store
}

/// A fresh store for a WASI preview 1 command, armed with `limits` (see
/// [`crate::Runtime::new_command_store`]).
pub(crate) fn new_command_store(
    engine: &Engine,
    limits: Limits,
    budget: &MemoryBudget,
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
        caps: Caps::new(limits, budget),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.caps);
    arm_deadline(&mut store, &limits);
    store
}
