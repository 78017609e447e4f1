//! Builds the guest workspace in `guest-models/` for `wasm32-wasip2` (the
//! components) and its WASI preview 1 commands for `wasm32-wasip1`, and
//! writes their paths to `$OUT_DIR/artifacts.rs`.
//!
//! The guests are built by a child `cargo build --release` into one fixed
//! directory, `<target>/wasm-guests`, so that every build of the host (debug
//! or release, `build`, `test`, `clippy`) shares a single guest build rather
//! than keeping one per profile.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guests' target: `cargo build` links a `cdylib` into a component.
const TARGET: &str = "wasm32-wasip2";

/// The target of the core-module commands.
const COMMAND_TARGET: &str = "wasm32-wasip1";

/// A guest crate of `guest-models/` and the constant that names its path.
struct Guest {
    /// The Rust constant generated for it.
    constant: &'static str,
    /// Its cargo package name.
    package: &'static str,
    /// The doc comment of the constant.
    doc: &'static str,
}

const GUESTS: &[Guest] = &[
    Guest {
        constant: "DIGITS",
        package: "digits",
        doc: "The `digits` model (world `model`): an MLP written in Rust that \
              classifies 8×8 handwritten digits.",
    },
    Guest {
        constant: "DIGITS_ONNX",
        package: "digits-onnx",
        doc: "The `digits-onnx` model (world `model-preinit`): the same MLP as \
              ONNX, run by tract inside the component.",
    },
    Guest {
        constant: "LANGID",
        package: "langid",
        doc: "The `langid` model (world `model`): identifies the language of \
              UTF-8 text (BYTES input) among ten, with hashed character n-grams \
              and a logistic regression.",
    },
    Guest {
        constant: "MISBEHAVE",
        package: "misbehave",
        doc: "The `misbehave` test fixture (world `model`): echoes, traps, \
              loops, recurses, exhausts memory, returns huge or aliased \
              outputs, leaves or looks for a canary, or fails, as its `mode` \
              parameter says.",
    },
    Guest {
        constant: "SCRIPT_GUARD",
        package: "script-guard",
        doc: "The `script-guard` test fixture (world `policy`): a guard whose \
              configuration says what it decides (allow, deny, rewrite, loop, \
              trap); not a model.",
    },
    Guest {
        constant: "TEXT_ECHO",
        package: "text-echo",
        doc: "The `text-echo` test fixture (world `model`): returns its BYTES \
              input `text` as output `text`, so tests can see exactly what a \
              model received after the guards.",
    },
    Guest {
        constant: "NET_PROBE",
        package: "net-probe",
        doc: "The `net-probe` test fixture (world `model`): imports \
              `wasi:sockets`, so uploads must refuse it.",
    },
    Guest {
        constant: "METADATA_TRAP",
        package: "metadata-trap",
        doc: "The `metadata-trap` test fixture (world `model`): `metadata()` panics.",
    },
    Guest {
        constant: "METADATA_LOOP",
        package: "metadata-loop",
        doc: "The `metadata-loop` test fixture (world `model`): `metadata()` \
              never returns.",
    },
    Guest {
        constant: "WASI_PROBE",
        package: "wasi-probe",
        doc: "The `wasi-probe` test fixture (world `model`): tries to read the \
              environment, files, stdin, clocks and randomness, or sleeps, and \
              reports what it got.",
    },
    Guest {
        constant: "HUGE_MEMORY",
        package: "huge-memory",
        doc: "The `huge-memory` test fixture (world `model`): declares an \
              initial linear memory of over 320 MiB.",
    },
    Guest {
        constant: "PII_REDACTOR",
        package: "pii-redactor",
        doc: "The `pii-redactor` guard (world `policy`): replaces emails, phone \
              numbers, card numbers and IBANs in BYTES tensors with placeholders.",
    },
    Guest {
        constant: "RANGE_GUARD",
        package: "range-guard",
        doc: "The `range-guard` guard (world `policy`): refuses NaN, infinities \
              and values outside the ranges in its configuration.",
    },
];

/// WASI preview 1 command guests (core modules, binaries), built for
/// [`COMMAND_TARGET`]. Each comes with an `airlock.toml` manifest.
const COMMANDS: &[Guest] = &[
    Guest {
        constant: "DIGITS_WASIP1",
        package: "digits-wasip1",
        doc: "The `digits-wasip1` model: the digits MLP as a WASI preview 1 command \
              (a core module reading the request JSON on stdin), built for wasm32-wasip1.",
    },
    Guest {
        constant: "P1_SLEEPER",
        package: "p1-sleeper",
        doc: "The `p1-sleeper` test fixture: a WASI preview 1 command that tries to \
              sleep for an hour.",
    },
];

fn main() {
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR is set by cargo"),
    );
    let guests_dir = manifest_dir
        .parent()
        .expect("artifacts/ lives in guest-models/");
    let repo_dir = guests_dir
        .parent()
        .expect("guest-models/ lives in the repository");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));

    rerun_if_changed(guests_dir, repo_dir);
    ensure_target_installed(TARGET);
    ensure_target_installed(COMMAND_TARGET);

    let target_dir = shared_target_dir(&out_dir).join("wasm-guests");
    let mut components = vec!["--workspace".to_owned()];
    for command in COMMANDS {
        components.extend(["--exclude".to_owned(), command.package.to_owned()]);
    }
    build_guests(guests_dir, &target_dir, TARGET, &components);
    let mut commands = Vec::new();
    for command in COMMANDS {
        commands.extend(["-p".to_owned(), command.package.to_owned()]);
    }
    build_guests(guests_dir, &target_dir, COMMAND_TARGET, &commands);

    let code = constants(&target_dir, guests_dir);
    let path = out_dir.join("artifacts.rs");
    if let Err(error) = fs::write(&path, code) {
        panic!("failed to write {}: {error}", path.display());
    }
}

/// Tells cargo to run this script again when any input of the guest build
/// changes. Cargo scans listed directories recursively.
fn rerun_if_changed(guests_dir: &Path, repo_dir: &Path) {
    let mut paths = vec![
        guests_dir.join("Cargo.toml"),
        guests_dir.join("Cargo.lock"),
        guests_dir.join(".cargo").join("config.toml"),
        guests_dir.join("data"),
        repo_dir.join("wit"),
    ];
    for guest in GUESTS.iter().chain(COMMANDS) {
        let crate_dir = guests_dir.join(guest.package);
        paths.push(crate_dir.join("Cargo.toml"));
        paths.push(crate_dir.join("src"));
    }
    for command in COMMANDS {
        paths.push(guests_dir.join(command.package).join("airlock.toml"));
    }
    for path in paths {
        println!("cargo::rerun-if-changed={}", path.display());
    }
}

/// Makes sure the standard library for [`TARGET`] is installed. On a fresh
/// machine it is not (rust-toolchain.toml lists the target, but rustup only
/// installs listed targets with the toolchain itself), so, when rustup is
/// there, this adds it once, saying so; otherwise it fails with the fix
/// rather than leaving the reader to decode `can't find crate for std`.
fn ensure_target_installed(target: &str) {
    if target_installed(target) {
        return;
    }
    println!("cargo:warning=installing the {target} target with rustup (needed by guest-models/)");
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", target]);
    if let Ok(toolchain) = env::var("RUSTUP_TOOLCHAIN") {
        rustup.args(["--toolchain", &toolchain]);
    }
    let added = rustup.status().is_ok_and(|status| status.success());
    if !added || !target_installed(target) {
        panic!(
            "the Rust standard library for {target} is not installed, and the guest \
             components in guest-models/ need it: run `rustup target add {target}`"
        );
    }
}

fn target_installed(target: &str) -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(output) = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", target])
        .output()
    else {
        // Let the guest build report whatever is wrong with rustc.
        return true;
    };
    if !output.status.success() {
        return false;
    }
    // The directory exists for every target rustc knows; the standard
    // library in it only once the target is installed.
    let libdir = String::from_utf8_lossy(&output.stdout);
    std::fs::read_dir(libdir.trim()).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().starts_with("libstd-"))
    })
}

/// Returns cargo's target directory, given that `OUT_DIR` is
/// `<target>/[<triple>/]<profile>/build/<package>-<hash>/out`.
fn shared_target_dir(out_dir: &Path) -> &Path {
    let mut ancestors = out_dir.ancestors();
    let build_dir = ancestors.nth(2);
    match (build_dir.and_then(Path::file_name), ancestors.nth(1)) {
        (Some(name), Some(target_dir)) if name == "build" => target_dir,
        _ => panic!(
            "OUT_DIR {} is not laid out as <target>/<profile>/build/<package>/out",
            out_dir.display()
        ),
    }
}

/// Runs `cargo build --release --target <target> <packages>` on the guest
/// workspace.
fn build_guests(guests_dir: &Path, target_dir: &Path, target: &str, packages: &[String]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        // Cargo reads `.cargo/config.toml` from the working directory up, not
        // from the manifest's: guest-models/.cargo/config.toml applies only
        // when cargo runs in guest-models/.
        .current_dir(guests_dir)
        .args(["build", "--release", "--target", target])
        .args(packages)
        .arg("--manifest-path")
        .arg(guests_dir.join("Cargo.toml"));

    // Cargo hands this script the settings of the host build. Those that
    // would change how the guests are compiled are removed: the host's flags
    // (`-C target-cpu=native`, say) are wrong for wasm, and anything that
    // differs between `cargo build`, `cargo build --release` and `cargo
    // clippy` (which sets RUSTC_WORKSPACE_WRAPPER to clippy-driver) would
    // make them rebuild the guests in turn.
    //
    // Kept on purpose: CARGO_MAKEFLAGS (and MAKEFLAGS), which hand the child
    // the host build's jobserver, so that the two together run no more jobs
    // than `-j` allows; and RUSTC, so that the guests use the host's
    // toolchain.
    for (key, _) in env::vars_os() {
        if key.to_str().is_some_and(leaks_into_guest_build) {
            command.env_remove(key);
        }
    }
    command.env("CARGO_TARGET_DIR", target_dir);

    // Cargo reads this script's stdout for `cargo::` directives: send the
    // child's to stderr, which cargo shows when the build fails.
    command.stdout(Stdio::from(io::stderr()));

    let status = match command.status() {
        Ok(status) => status,
        Err(error) => panic!("failed to run cargo to build the guest components: {error}"),
    };
    if !status.success() {
        panic!(
            "building the guest components in {} failed ({status}); cargo's output is above",
            guests_dir.display()
        );
    }
}

/// Whether an environment variable of the host build must not reach the
/// guest build (see [`build_guests`]).
fn leaks_into_guest_build(key: &str) -> bool {
    matches!(
        key,
        "CARGO_ENCODED_RUSTFLAGS"
            | "RUSTFLAGS"
            | "CARGO_BUILD_RUSTFLAGS"
            | "RUSTC_WRAPPER"
            | "RUSTC_WORKSPACE_WRAPPER"
            | "CARGO_BUILD_RUSTC_WRAPPER"
            | "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER"
            | "CARGO_BUILD_TARGET"
            | "CARGO_BUILD_TARGET_DIR"
            | "CARGO_BUILD_BUILD_DIR"
    ) || key.starts_with("CARGO_TARGET_") // runners, linkers, rustflags, the target dir
        || key.starts_with("CARGO_PROFILE_") // profile overrides
}

/// Generates the path constants, checking that every guest was built.
fn constants(target_dir: &Path, guests_dir: &Path) -> String {
    let mut code = String::new();
    let mut all = String::new();
    let release_dir = target_dir.join(TARGET).join("release");
    for guest in GUESTS {
        let file = release_dir.join(format!("{}.wasm", guest.package.replace('-', "_")));
        if !file.is_file() {
            panic!("cargo built the guests, but {} is missing", file.display());
        }
        let Some(file) = file.to_str() else {
            panic!("the path {} is not UTF-8", file.display());
        };
        // `{:?}` of a `str` is a valid Rust string literal.
        writeln!(code, "/// {}", guest.doc).unwrap();
        writeln!(code, "pub const {}: &str = {file:?};", guest.constant).unwrap();
        writeln!(all, "    ({:?}, {}),", guest.package, guest.constant).unwrap();
    }
    writeln!(
        code,
        "/// Every guest component, as (package name, path) pairs."
    )
    .unwrap();
    write!(code, "pub const ALL: &[(&str, &str)] = &[\n{all}];\n").unwrap();

    let release_dir = target_dir.join(COMMAND_TARGET).join("release");
    for command in COMMANDS {
        let file = release_dir.join(format!("{}.wasm", command.package));
        let manifest = guests_dir.join(command.package).join("airlock.toml");
        for path in [&file, &manifest] {
            if !path.is_file() {
                panic!("{} is missing after the guest build", path.display());
            }
        }
        let (Some(file), Some(manifest)) = (file.to_str(), manifest.to_str()) else {
            panic!("the guest paths are not UTF-8");
        };
        writeln!(code, "/// {}", command.doc).unwrap();
        writeln!(code, "pub const {}: &str = {file:?};", command.constant).unwrap();
        writeln!(
            code,
            "/// The manifest (`airlock.toml`) of [`{}`].",
            command.constant
        )
        .unwrap();
        writeln!(
            code,
            "pub const {}_MANIFEST: &str = {manifest:?};",
            command.constant
        )
        .unwrap();
    }
    code
}
