//! Integration tests over real HTTPS against the real guest components.
//! One test binary, so everything links once.

mod accuracy;
/// The digits guest's allocator arena, compiled natively so that its unit
/// tests run here, like [`mlp`]'s.
#[path = "../../guest-models/digits/src/arena.rs"]
#[allow(dead_code)]
mod arena;
mod cache;
mod chains;
mod clients;
mod commands;
mod compile;
mod connections;
mod credentials;
mod errors;
mod escapes;
mod flood;
mod guards;
mod hostile;
mod lambda;
/// The digits guest's forward pass, compiled natively so that its own unit
/// tests (weights layout, probabilities, batch independence) run here: CI
/// runs no tests in the guest workspace.
#[path = "../../guest-models/digits/src/mlp.rs"]
#[allow(dead_code)]
mod mlp;
mod parsing;
mod pii;
mod policy;
mod preinit;
mod protocol;
mod repository;
mod support;
mod transport;
mod unreadable;
