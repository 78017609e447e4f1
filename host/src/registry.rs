//! The set of models being served.
//!
//! The whole table sits behind one atomic pointer: a request takes a
//! snapshot (`Arc<LoadedModel>`) and finishes on it, whatever is swapped in
//! meanwhile. Writers are serialised and publish a new table in one store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::model::LoadedModel;

/// One served name: its versions and which one answers by default.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// The version that answers requests without an explicit version.
    pub active: Arc<LoadedModel>,
    /// Every loaded version, by version string.
    pub versions: BTreeMap<String, Arc<LoadedModel>>,
}

/// Served models by name.
#[derive(Debug, Default)]
pub struct Registry {
    table: ArcSwap<HashMap<String, Arc<ModelEntry>>>,
    write: Mutex<()>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The active version of `name`.
    pub fn active(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.table.load().get(name).map(|e| Arc::clone(&e.active))
    }

    /// A specific version of `name`.
    pub fn version(&self, name: &str, version: &str) -> Option<Arc<LoadedModel>> {
        self.table
            .load()
            .get(name)
            .and_then(|e| e.versions.get(version).cloned())
    }

    /// The entry for `name`.
    pub fn entry(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.table.load().get(name).cloned()
    }

    /// Whether no model is served.
    pub fn is_empty(&self) -> bool {
        self.table.load().is_empty()
    }

    /// All entries, sorted by name.
    pub fn entries(&self) -> Vec<(String, Arc<ModelEntry>)> {
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
    pub fn replace(&self, name: &str, models: Vec<Arc<LoadedModel>>, active: Option<&str>) {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut table = HashMap::clone(&self.table.load());
        let versions: BTreeMap<String, Arc<LoadedModel>> = models
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
    pub fn insert(&self, model: Arc<LoadedModel>, activate: bool) {
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
