//! The wasmtime runtime.
//!
//! One [`Runtime`] per process: one `Engine` (Cranelift, pooling allocator,
//! copy-on-write memory images, epoch interruption), one `Linker` with WASI
//! linked and nothing granted, and an epoch ticker thread that turns
//! deadlines into traps. The policy every store is armed with lives in
//! [`crate::sandbox`]; compiled artifacts in [`crate::artifacts`].

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use crate::budget::MemoryBudget;
use crate::compile::{ArtifactKind, CompileError, Compiler, wasm_config};
use crate::sandbox::{CommandState, EPOCH_TICK, EngineConfig, Limits, SandboxState};

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
        crate::sandbox::link_component_wasi(&mut linker).map_err(anyhow::Error::from)?;
        let mut command_linker = wasmtime::Linker::<CommandState>::new(&engine);
        crate::sandbox::link_command_wasi(&mut command_linker).map_err(anyhow::Error::from)?;

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
        crate::sandbox::new_store(&self.engine, limits, &self.guest_memory)
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
        crate::sandbox::new_command_store(&self.engine, limits, &self.guest_memory, stdin, stdout)
    }
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
