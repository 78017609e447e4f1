//! What the router serves from.

use std::sync::Arc;

use crate::registry::Registry;

/// What the router serves from.
#[derive(Clone)]
pub struct AppState {
    /// The host (for the repository API). In an `Arc`: axum clones the
    /// state for every request, and a `Host` clone copies its configuration
    /// (paths, keys, token), which profiling found on the request path.
    pub host: Arc<crate::Host>,
    /// The models.
    pub registry: Arc<Registry>,
    /// Largest request body, in bytes (each model's policy may set less).
    pub max_body_bytes: usize,
}
