//! The set of models (and, in a second registry, guards) being served.
//!
//! The whole table sits behind one atomic pointer: a request takes a
//! snapshot (`Arc<T>`) and finishes on it, whatever is swapped in
//! meanwhile. Writers are serialised and publish a new table in one store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::guard::LoadedGuard;
use crate::model::LoadedModel;

/// What a registry holds: something loaded under a name and a version.
pub trait Versioned {
    /// The name it is served under.
    fn name(&self) -> &str;
    /// Its version.
    fn version(&self) -> &str;
    /// sha256 (hex) of its bytes.
    fn digest(&self) -> &str;
}

impl Versioned for LoadedModel {
    fn name(&self) -> &str {
        LoadedModel::name(self)
    }
    fn version(&self) -> &str {
        LoadedModel::version(self)
    }
    fn digest(&self) -> &str {
        LoadedModel::digest(self)
    }
}

impl Versioned for LoadedGuard {
    fn name(&self) -> &str {
        LoadedGuard::name(self)
    }
    fn version(&self) -> &str {
        LoadedGuard::version(self)
    }
    fn digest(&self) -> &str {
        LoadedGuard::digest(self)
    }
}

/// One served name: its versions and which one answers by default.
#[derive(Debug)]
pub struct ModelEntry<T = LoadedModel> {
    /// The version that answers requests without an explicit version.
    pub active: Arc<T>,
    /// Every loaded version, by version string.
    pub versions: BTreeMap<String, Arc<T>>,
}

/// Served models (or guards) by name.
#[derive(Debug)]
pub struct Registry<T = LoadedModel> {
    table: ArcSwap<HashMap<String, Arc<ModelEntry<T>>>>,
    write: Mutex<()>,
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self {
            table: ArcSwap::default(),
            write: Mutex::default(),
        }
    }
}

impl<T: Versioned> Registry<T> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The active version of `name`.
    pub fn active(&self, name: &str) -> Option<Arc<T>> {
        self.table.load().get(name).map(|e| Arc::clone(&e.active))
    }

    /// A specific version of `name`.
    pub fn version(&self, name: &str, version: &str) -> Option<Arc<T>> {
        self.table
            .load()
            .get(name)
            .and_then(|e| e.versions.get(version).cloned())
    }

    /// The entry for `name`.
    pub fn entry(&self, name: &str) -> Option<Arc<ModelEntry<T>>> {
        self.table.load().get(name).cloned()
    }

    /// Whether no model is served.
    pub fn is_empty(&self) -> bool {
        self.table.load().is_empty()
    }

    /// All entries, sorted by name.
    pub fn entries(&self) -> Vec<(String, Arc<ModelEntry<T>>)> {
        let table = self.table.load();
        let mut all: Vec<_> = table
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Publishes `models` as the versions of `name`, `active` answering by
    /// default, in one atomic swap. An empty list removes the name.
    pub fn replace(&self, name: &str, models: Vec<Arc<T>>, active: Option<&str>) {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut table = HashMap::clone(&self.table.load());
        let versions: BTreeMap<String, Arc<T>> = models
            .into_iter()
            .map(|m| (m.version().to_owned(), m))
            .collect();
        let active = active
            .and_then(|v| versions.get(v))
            .or_else(|| versions.values().next_back())
            .cloned();
        match active {
            Some(active) => {
                table.insert(name.to_owned(), Arc::new(ModelEntry { active, versions }));
            }
            None => {
                table.remove(name);
            }
        }
        self.table.store(Arc::new(table));
    }

    /// Adds `model` as a version of its name, optionally making it the
    /// active one (it is also made active when it is the first version).
    pub fn insert(&self, model: Arc<T>, activate: bool) {
        let name = model.name().to_owned();
        let (mut models, active) = match self.entry(&name) {
            Some(entry) => (
                entry.versions.values().cloned().collect::<Vec<_>>(),
                Some(entry.active.version().to_owned()),
            ),
            None => (Vec::new(), None),
        };
        models.retain(|m| m.version() != model.version());
        let active = if activate || active.is_none() {
            Some(model.version().to_owned())
        } else {
            active
        };
        models.push(model);
        self.replace(&name, models, active.as_deref());
    }
}
