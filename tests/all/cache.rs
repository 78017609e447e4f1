//! The compiled-artifact cache: reused when intact, recompiled when not.

use airlock::Limits;
use airlock::engine::{ArtifactCache, CacheOutcome, sha256_hex};
use wasmtime::component::Component;

#[test]
fn artifacts_are_reused_when_intact_and_recompiled_when_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = airlock::Runtime::new(&airlock::EngineConfig::default()).unwrap();
    let cache = ArtifactCache::new(dir.path(), &runtime);
    let wasm = std::fs::read(airlock_artifacts::DIGITS).unwrap();
    let digest = sha256_hex(&wasm);

    let (_, first) = cache
        .load_or_compile::<Component>(&runtime, &digest, &wasm, &Limits::default())
        .unwrap();
    assert_eq!(first, CacheOutcome::Compiled);
    let (_, second) = cache
        .load_or_compile::<Component>(&runtime, &digest, &wasm, &Limits::default())
        .unwrap();
    assert_eq!(second, CacheOutcome::Hit);

    // Flip one byte in the middle of the artifact: it must not be trusted.
    let artifact = cache.dir().join(format!("{digest}.cwasm"));
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    let (_, third) = cache
        .load_or_compile::<Component>(&runtime, &digest, &wasm, &Limits::default())
        .unwrap();
    assert_eq!(
        third,
        CacheOutcome::Compiled,
        "a corrupt artifact was trusted"
    );

    // Truncated, and missing, likewise.
    std::fs::write(&artifact, &bytes[..100]).unwrap();
    assert_eq!(
        cache
            .load_or_compile::<Component>(&runtime, &digest, &wasm, &Limits::default())
            .unwrap()
            .1,
        CacheOutcome::Compiled
    );
    std::fs::remove_file(&artifact).unwrap();
    assert_eq!(
        cache
            .load_or_compile::<Component>(&runtime, &digest, &wasm, &Limits::default())
            .unwrap()
            .1,
        CacheOutcome::Compiled
    );
    assert_eq!(
        cache
            .load_or_compile::<Component>(&runtime, &digest, &wasm, &Limits::default())
            .unwrap()
            .1,
        CacheOutcome::Hit
    );
}
