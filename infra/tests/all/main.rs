//! Integration tests of `infra` against a real AWS API emulator: a moto
//! server per test on 127.0.0.1 (see `moto.rs`), the SDK pointed at it.
//! `least_privilege` checks `deployer-policy.json` against the code.

mod cli;
mod deploy;
mod least_privilege;
mod moto;
mod support;
