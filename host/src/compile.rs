//! Compiling untrusted WebAssembly in a bounded worker process.
//!
//! Compilation is the one place where bytes a client sent meet a large
//! optimising compiler, so it is the host's attack surface: a hostile
//! component can be crafted to make Cranelift take minutes or gigabytes.
//! [`Compiler::Worker`] therefore compiles in a child process (the host's
//! own binary, re-run with [`WORKER_ARG`]) with a memory limit
//! (`RLIMIT_DATA`: its heap and other private writable memory) and a
//! wall-clock budget after which it is killed; at most
//! [`CompileBudget::workers`] compile at once. A compilation that blows its
//! budget, or crashes the compiler, costs the child, never the server.
//!
//! A component that exports `wizer-initialize` is pre-initialised in the
//! same place, before it is compiled (see [`crate::preinit`]): that runs
//! its guest code, so the worker's budget bounds it too, and the model's
//! memory cap bounds its linear memory.
//!
//! What it does not defend against: a compiler bug that turns hostile input
//! into hostile machine code. The worker's output is deserialized and run by
//! the server (in the sandbox), exactly as an in-process compile's would be.

use std::io::{Read as _, Write as _};
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, OptLevel};

use crate::sandbox::EngineConfig;

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

/// The first argument that turns the host's binary into a compile worker.
pub const WORKER_ARG: &str = "__airlock-compile-worker";

/// Exit status of a worker whose input failed to compile.
const EXIT_INVALID: i32 = 2;

/// Exit status of a worker whose input's `wizer-initialize` failed.
const EXIT_INIT: i32 = 3;

/// Most bytes of a worker's stderr kept (to classify its failure).
const MAX_STDERR: u64 = 16 << 10;

/// Most bytes of a worker's stderr sent to the uploader.
const MAX_MESSAGE: usize = 1024;

/// What the compiled bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    /// A component (the `model` and `policy` worlds).
    Component,
    /// A core module (WASI preview 1 command models).
    Module,
}

impl ArtifactKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Component => "component",
            Self::Module => "module",
        }
    }
}

/// The resources one compilation may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileBudget {
    /// Wall-clock time, from spawning the worker to its exit.
    pub time: Duration,
    /// Private writable memory (heap, stacks) of the worker process, in
    /// bytes: its `RLIMIT_DATA`. (Not `RLIMIT_AS`: the allocator reserves
    /// address space per thread, so that limit tracks thread count rather
    /// than use.) The default leaves the largest example guest (tract, 16 MB)
    /// several times the heap it needs (docs/src/testing.md, "Compiling
    /// uploads").
    pub memory_bytes: u64,
    /// How many compilations may run at once; more wait their turn.
    pub workers: usize,
}

impl Default for CompileBudget {
    fn default() -> Self {
        Self {
            // Room for the largest example guest on a loaded machine
            // (docs/src/testing.md, "Compiling uploads").
            time: Duration::from_secs(120),
            memory_bytes: 2 << 30,
            workers: 2,
        }
    }
}

/// Why compiling failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// The bytes do not compile (invalid wasm, unsupported feature).
    #[error("{0}")]
    Invalid(String),
    /// The component's `wizer-initialize` trapped, or the snapshot failed.
    #[error("{0}")]
    Init(String),
    /// The worker ran past its time budget and was killed.
    #[error("compilation exceeded its time budget of {0:?}")]
    Time(Duration),
    /// The worker ran out of its memory budget.
    #[error("compilation exceeded its memory budget of {} MiB", .0 >> 20)]
    Memory(u64),
    /// The worker died some other way.
    #[error("the compiler process failed: {0}")]
    Crashed(String),
    /// The worker could not be run at all (a host problem).
    #[error("could not run the compile worker: {0:#}")]
    Host(anyhow::Error),
}

impl CompileError {
    /// Whether the fault lies with the input (a 4xx) rather than the host.
    pub fn is_input_fault(&self) -> bool {
        !matches!(self, Self::Host(_))
    }
}

/// How a host compiles wasm.
#[derive(Debug, Clone)]
pub enum Compiler {
    /// On the calling thread, unbounded. For trusted bytes (benchmarks,
    /// library users that compile their own models).
    InProcess,
    /// In a child process of `exe` (which must call
    /// [`run_worker_if_requested`] first thing in `main`), under `budget`.
    Worker {
        /// The executable re-run as the worker.
        exe: PathBuf,
        /// The limits of each compilation.
        budget: CompileBudget,
        /// Bounds concurrent compilations.
        slots: Arc<Slots>,
    },
}

impl Compiler {
    /// A worker-process compiler running `exe` under `budget`.
    pub fn worker(exe: impl Into<PathBuf>, budget: CompileBudget) -> Self {
        Self::Worker {
            exe: exe.into(),
            budget,
            slots: Arc::new(Slots::new(budget.workers.max(1))),
        }
    }

    /// A worker-process compiler that re-runs the current executable.
    pub fn current_exe(budget: CompileBudget) -> anyhow::Result<Self> {
        Ok(Self::worker(std::env::current_exe()?, budget))
    }

    /// Compiles `wasm` to a serialized artifact for an engine built from
    /// `config` (see [`wasm_config`]). A component that
    /// exports `wizer-initialize` is first pre-initialised, its linear
    /// memory capped at `init_memory_bytes` (the model's cap), and the
    /// snapshot is what gets compiled.
    pub fn precompile(
        &self,
        engine: &Engine,
        config: &EngineConfig,
        kind: ArtifactKind,
        wasm: &[u8],
        init_memory_bytes: usize,
    ) -> Result<Vec<u8>, CompileError> {
        match self {
            Self::InProcess => precompile_with(engine, kind, wasm, init_memory_bytes),
            Self::Worker { exe, budget, slots } => {
                let _slot = slots.acquire();
                run_worker(exe, budget, config, kind, wasm, init_memory_bytes)
            }
        }
    }
}

/// Pre-initialises (when asked for) and compiles, on the calling thread.
fn precompile_with(
    engine: &Engine,
    kind: ArtifactKind,
    wasm: &[u8],
    init_memory_bytes: usize,
) -> Result<Vec<u8>, CompileError> {
    let invalid = |e: wasmtime::Error| CompileError::Invalid(format!("{e:#}"));
    match kind {
        ArtifactKind::Component if crate::preinit::exports_init(wasm) => {
            let snapshot = crate::preinit::snapshot(engine, wasm, init_memory_bytes)
                .map_err(|e| CompileError::Init(e.0))?;
            engine.precompile_component(&snapshot).map_err(invalid)
        }
        ArtifactKind::Component => engine.precompile_component(wasm).map_err(invalid),
        ArtifactKind::Module => engine.precompile_module(wasm).map_err(invalid),
    }
}

fn run_worker(
    exe: &std::path::Path,
    budget: &CompileBudget,
    config: &EngineConfig,
    kind: ArtifactKind,
    wasm: &[u8],
    init_memory_bytes: usize,
) -> Result<Vec<u8>, CompileError> {
    let started = Instant::now();
    let mut command = Command::new(exe);
    command
        .arg(WORKER_ARG)
        .arg(kind.as_str())
        .arg(config.max_memory_bytes.to_string())
        .arg(config.max_instances.to_string())
        .arg(config.max_wasm_stack.to_string())
        .arg(init_memory_bytes.to_string())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let memory = budget.memory_bytes;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the
    // parent; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            let limit = |max: u64| libc::rlimit {
                rlim_cur: max,
                rlim_max: max,
            };
            if libc::setrlimit(libc::RLIMIT_DATA, &limit(memory)) != 0
                || libc::setrlimit(libc::RLIMIT_CORE, &limit(0)) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| CompileError::Host(anyhow::anyhow!("spawning {}: {e}", exe.display())))?;

    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    std::thread::scope(|scope| {
        // A worker that dies early closes its stdin: the write error is
        // expected then, and the exit status tells the story.
        scope.spawn(move || {
            let _ = stdin.write_all(wasm);
        });
        let output = scope.spawn(move || {
            let mut bytes = Vec::new();
            stdout.read_to_end(&mut bytes).map(|_| bytes)
        });
        let errors = scope.spawn(move || {
            // Keep the first MAX_STDERR bytes; drain (and count) the rest,
            // so that a chatty worker never blocks on a full pipe.
            let mut kept = Vec::new();
            let mut stderr = stderr;
            let _ = (&mut stderr).take(MAX_STDERR).read_to_end(&mut kept);
            let dropped = std::io::copy(&mut stderr, &mut std::io::sink()).unwrap_or(0);
            (kept, dropped)
        });

        let mut pause = Duration::from_micros(500);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => return Err(CompileError::Host(e.into())),
            }
            if started.elapsed() > budget.time {
                // The readers finish once the killed child's pipes close.
                let _ = child.kill();
                let _ = child.wait();
                return Err(CompileError::Time(budget.time));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        };
        let output = output.join().expect("reader thread");
        let (kept, dropped) = errors.join().expect("stderr thread");
        let message = worker_message(&kept, dropped);
        let message = message.as_str();
        if status.success() {
            return output.map_err(|e| CompileError::Host(e.into()));
        }
        let out_of_memory = [
            "memory allocation of",
            "out of memory",
            "Cannot allocate memory",
        ]
        .iter()
        .any(|needle| message.contains(needle));
        if out_of_memory {
            return Err(CompileError::Memory(budget.memory_bytes));
        }
        match (status.code(), status.signal()) {
            (Some(EXIT_INVALID), _) => Err(CompileError::Invalid(message.to_owned())),
            (Some(EXIT_INIT), _) => Err(CompileError::Init(message.to_owned())),
            (_, Some(signal)) => Err(CompileError::Crashed(format!(
                "killed by signal {signal}{}",
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                }
            ))),
            (code, _) => Err(CompileError::Crashed(format!(
                "exited with status {code:?}: {message}"
            ))),
        }
    })
}

/// A worker's stderr as a message for the uploader: its first `kept`
/// bytes (`dropped` more were read and thrown away) as text, with invalid
/// UTF-8 replaced and control characters (escape sequences, NULs…) taken
/// out but for line breaks, cut to [`MAX_MESSAGE`] bytes at a char
/// boundary with a marker saying how much was cut.
fn worker_message(kept: &[u8], dropped: u64) -> String {
    let text: String = String::from_utf8_lossy(kept)
        .chars()
        .filter_map(|c| match c {
            '\n' => Some('\n'),
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect();
    let text = text.trim();
    let end = text.floor_char_boundary(MAX_MESSAGE);
    let cut = (text.len() - end) as u64 + dropped;
    if cut == 0 {
        return text.to_owned();
    }
    format!("{}… ({cut} bytes cut)", &text[..end])
}

/// If this process was started as a compile worker, compiles stdin to stdout
/// and exits; otherwise returns at once. Call it first thing in `main` of
/// every binary a [`Compiler::Worker`] may name.
pub fn run_worker_if_requested() {
    let mut args = std::env::args();
    if args.nth(1).as_deref() != Some(WORKER_ARG) {
        return;
    }
    let rest: Vec<String> = args.collect();
    let code = match worker_main(&rest) {
        Ok(()) => 0,
        Err(WorkerFailure::Invalid(message)) => {
            eprintln!("{message}");
            EXIT_INVALID
        }
        Err(WorkerFailure::Init(message)) => {
            eprintln!("{message}");
            EXIT_INIT
        }
        Err(WorkerFailure::Usage(message)) => {
            eprintln!("compile worker: {message}");
            64
        }
    };
    std::process::exit(code);
}

enum WorkerFailure {
    Invalid(String),
    Init(String),
    Usage(String),
}

fn worker_main(args: &[String]) -> Result<(), WorkerFailure> {
    let usage = || WorkerFailure::Usage(format!("bad arguments {args:?}"));
    let [
        kind,
        max_memory_bytes,
        max_instances,
        max_wasm_stack,
        init_memory_bytes,
    ] = args
    else {
        return Err(usage());
    };
    let kind = match kind.as_str() {
        "component" => ArtifactKind::Component,
        "module" => ArtifactKind::Module,
        _ => return Err(usage()),
    };
    let config = EngineConfig {
        max_memory_bytes: max_memory_bytes.parse().map_err(|_| usage())?,
        max_instances: max_instances.parse().map_err(|_| usage())?,
        max_wasm_stack: max_wasm_stack.parse().map_err(|_| usage())?,
        ..EngineConfig::default()
    };
    let init_memory_bytes = init_memory_bytes.parse().map_err(|_| usage())?;
    let engine = Engine::new(&wasm_config(&config))
        .map_err(|e| WorkerFailure::Usage(format!("engine: {e:#}")))?;
    let mut wasm = Vec::new();
    std::io::stdin()
        .read_to_end(&mut wasm)
        .map_err(|e| WorkerFailure::Usage(format!("reading stdin: {e}")))?;
    let bytes = precompile_with(&engine, kind, &wasm, init_memory_bytes).map_err(|e| match e {
        CompileError::Init(message) => WorkerFailure::Init(message),
        other => WorkerFailure::Invalid(other.to_string()),
    })?;
    std::io::stdout()
        .lock()
        .write_all(&bytes)
        .map_err(|e| WorkerFailure::Usage(format!("writing stdout: {e}")))
}

/// A counting semaphore for blocking threads.
#[derive(Debug)]
pub struct Slots {
    free: Mutex<usize>,
    released: Condvar,
}

impl Slots {
    fn new(count: usize) -> Self {
        Self {
            free: Mutex::new(count),
            released: Condvar::new(),
        }
    }

    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.released.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_stderr_is_bounded_printable_text() {
        // What a hostile component could make a crashing compiler print:
        // escape sequences, NULs, invalid UTF-8, and a lot of it.
        let mut raw = b"error: \x1b[31mbad\x1b[0m\0 input\xff\xfe\r\n\tline two\n".to_vec();
        raw.extend(std::iter::repeat_n(b'x', MAX_STDERR as usize));
        raw.truncate(MAX_STDERR as usize);
        let message = worker_message(&raw, 1 << 20);
        assert!(
            message.starts_with("error: [31mbad[0m input\u{fffd}\u{fffd}\n line two\nxxx"),
            "{message:?}"
        );
        assert!(
            !message.chars().any(|c| c.is_control() && c != '\n'),
            "{message:?}"
        );
        // Four control bytes went, two invalid bytes became three-byte
        // U+FFFDs: the text is as long as what was kept.
        let cut = (MAX_STDERR as usize - MAX_MESSAGE) as u64 + (1 << 20);
        assert!(message.len() < MAX_MESSAGE + 40, "{} bytes", message.len());
        assert!(
            message.ends_with(&format!("x… ({cut} bytes cut)")),
            "{}",
            &message[message.len() - 40..]
        );

        // A short message passes unchanged but for its surrounding space.
        assert_eq!(worker_message(b"  invalid wasm\n", 0), "invalid wasm");
    }
}
