//! The compiled-artifact cache: reused when intact, recompiled when not.

use airlock::Limits;
use airlock::artifacts::{ArtifactCache, CacheOutcome};
use airlock::digest::sha256_hex;
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

/// The class `model` gives the first held-out digit, and the reference's.
fn first_digit(model: &airlock::LoadedModel) -> (usize, usize) {
    use airlock::bindings::{InferRequest, Tensor, TensorData};
    let test = crate::support::digits_test();
    let request = InferRequest {
        id: None,
        parameters: Vec::new(),
        inputs: vec![Tensor {
            name: "input".into(),
            shape: vec![1, 64],
            data: TensorData::Fp32(test.inputs[0].clone()),
        }],
        outputs: Vec::new(),
    };
    let response = model.infer(&request).unwrap().unwrap();
    let TensorData::Fp32(probabilities) = &response.outputs[0].data else {
        panic!("not FP32: {:?}", response.outputs[0].data);
    };
    let scores: Vec<f64> = probabilities.iter().map(|&p| f64::from(p)).collect();
    (
        crate::support::argmax(&scores),
        test.reference_predictions[0],
    )
}

/// A process start loads each stored version from its verified artifact
/// without reading the component from the store (on Lambda, one S3 GET per
/// version saved); the bytes are read, and compiled again, only when the
/// artifact is missing or fails its checksum.
#[test]
fn stored_versions_load_from_their_artifacts_without_their_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::test_config(&dir.path().join("data"));
    config.artifacts_dir = Some(dir.path().join("artifacts"));
    let digits = std::fs::read(airlock_artifacts::DIGITS).unwrap();
    let guard = std::fs::read(airlock_artifacts::SCRIPT_GUARD).unwrap();
    {
        let host = airlock::Host::new(config.clone()).unwrap();
        host.upload("m", &digits, true).unwrap();
        host.upload("g", &guard, true).unwrap();
    }
    let blobs = dir.path().join("data/blobs");
    let hidden = dir.path().join("blobs-elsewhere");
    std::fs::rename(&blobs, &hidden).unwrap();

    // Artifacts there, bytes gone: the model and the guard load all the same.
    let host = airlock::Host::new(config.clone()).unwrap();
    let mut served = host.restore().unwrap();
    served.sort();
    assert_eq!(served, ["g", "m"]);
    let (class, reference) = first_digit(&host.registry().active("m").unwrap());
    assert_eq!(class, reference);
    assert!(host.guards().active("g").is_some());

    // Neither: the start says which bytes it could not read.
    let mut bare = config.clone();
    bare.artifacts_dir = Some(dir.path().join("no-artifacts"));
    let error = airlock::Host::new(bare).unwrap().restore().unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains("failed to read the stored component"),
        "{error}"
    );

    // A corrupt artifact is not trusted: the bytes are read and compiled
    // again, and the artifact rewritten.
    std::fs::rename(&hidden, &blobs).unwrap();
    let artifact = host.runtime().compat_hash().to_owned();
    let artifact = dir
        .path()
        .join("artifacts")
        .join(artifact)
        .join(format!("{}.cwasm", sha256_hex(&digits)));
    let mut bytes = std::fs::read(&artifact).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&artifact, &bytes).unwrap();
    drop(host);
    let host = airlock::Host::new(config).unwrap();
    host.restore().unwrap();
    let (class, reference) = first_digit(&host.registry().active("m").unwrap());
    assert_eq!(class, reference);
    assert_ne!(std::fs::read(&artifact).unwrap(), bytes, "not recompiled");
}
