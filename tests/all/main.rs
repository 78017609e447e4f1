//! Integration tests over real HTTPS against the real guest components.
//! One test binary, so everything links once.

mod accuracy;
mod cache;
mod chains;
mod commands;
mod compile;
mod errors;
mod guards;
mod hostile;
mod lambda;
mod pii;
mod policy;
mod preinit;
mod protocol;
mod repository;
mod support;
mod transport;
