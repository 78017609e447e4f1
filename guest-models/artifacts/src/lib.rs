//! Paths to the guest components of `guest-models/`, which this crate's build
//! script compiles for `wasm32-wasip2` (release profile).
//!
//! Host code and tests load the components from these paths:
//!
//! ```
//! let digits = std::fs::read(airlock_artifacts::DIGITS)?;
//! assert!(digits.starts_with(b"\0asm"));
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Building this crate needs the `wasm32-wasip2` target
//! (`rustup target add wasm32-wasip2`).
#![deny(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));

#[cfg(test)]
mod tests {
    use super::ALL;

    /// A component's preamble: `\0asm`, version 0x0d, layer 1.
    const COMPONENT_PREAMBLE: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

    #[test]
    fn every_artifact_is_a_component() {
        assert_eq!(ALL.len(), 13);
        for (name, path) in ALL {
            let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{name}: {path}: {e}"));
            assert!(
                bytes.starts_with(&COMPONENT_PREAMBLE),
                "{name} is not a component"
            );
        }
    }
}
