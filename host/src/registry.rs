//! The set of models (and, in a second registry, guards) being served.
//!
//! The whole table sits behind one atomic pointer: a request takes a
//! snapshot (`Arc<T>`) and finishes on it, whatever is swapped in
//! meanwhile. Writers are serialised and publish a new table in one store.
//!
//! A request addressed to a version that is not the active one
//! (`/v2/models/{name}/versions/{v}/…`) is served under the stricter of
//! that version's policy and the active version's ([`stricter_policy`]):
//! an old version is no way around the policy in force. The confined
//! versions are built when a table is published, with the active version
//! they answer to, so they change in the same atomic swap.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::guard::LoadedGuard;
use crate::manifest::{Guards, Policy};
use crate::model::LoadedModel;

/// What a registry holds: something loaded under a name and a version.
pub trait Versioned {
    /// The name it is served under.
    fn name(&self) -> &str;
    /// Its version.
    fn version(&self) -> &str;
    /// sha256 (hex) of its bytes.
    fn digest(&self) -> &str;
    /// What answers requests addressed to `version` while `active` is the
    /// active version of its name. By default `version` itself.
    fn confined(version: &Arc<Self>, active: &Arc<Self>) -> Arc<Self>
    where
        Self: Sized,
    {
        let _ = active;
        Arc::clone(version)
    }
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
    /// `version` under [`stricter_policy`] of its own policy and the
    /// active version's (itself when that changes nothing).
    fn confined(version: &Arc<Self>, active: &Arc<Self>) -> Arc<Self> {
        if Arc::ptr_eq(version, active) {
            return Arc::clone(version);
        }
        let policy = stricter_policy(version.policy(), active.policy());
        if policy == *version.policy() {
            return Arc::clone(version);
        }
        Arc::new(version.with_policy(policy))
    }
}

/// The policy a request to an inactive version runs under: `addressed`
/// (that version's own) and `active` (the active version's), whichever is
/// stricter, rule by rule. The result is at least as strict as each:
///
/// - API keys: the one key a caller presents must satisfy both policies'
///   checks. A policy listing no key admits anyone, so the result is the
///   other's list; when both list keys, it is the keys listed by both, and
///   when no key is listed by both, no caller may use the route (an entry
///   that no key hashes to stands for "nobody").
/// - Guards: both chains run. Request guards: the active policy's chain,
///   then the addressed version's; response guards: the addressed
///   version's, then the active policy's (the active policy is the outer
///   layer, first to see a request and last to see a response). A chain
///   equal to the other's runs once.
/// - `max_request_bytes`, `max_elements`, `max_concurrency`: the smaller
///   (no `max_concurrency` is unbounded); concurrency is counted on the
///   addressed version's own slots, the requests it runs.
/// - `require_signatures`: either.
/// - Sandbox limits (memory cap, deadline, …): the addressed version's own.
///   They describe what that component needs to run, and were checked
///   against it when it was uploaded; they do not decide who may call it or
///   what a caller may send.
pub fn stricter_policy(addressed: &Policy, active: &Policy) -> Policy {
    let api_keys = match (addressed.api_keys.is_empty(), active.api_keys.is_empty()) {
        (_, true) => addressed.api_keys.clone(),
        (true, false) => active.api_keys.clone(),
        (false, false) => {
            let both: Vec<String> = addressed
                .api_keys
                .iter()
                .filter(|key| active.api_keys.contains(key))
                .cloned()
                .collect();
            if both.is_empty() {
                vec![NO_CALLER.to_owned()]
            } else {
                both
            }
        }
    };
    let chain = |outer: &[_], inner: &[_], outer_first: bool| {
        if outer == inner {
            return inner.to_vec();
        }
        let (first, then) = if outer_first {
            (outer, inner)
        } else {
            (inner, outer)
        };
        [first, then].concat()
    };
    let max_concurrency = match (addressed.max_concurrency, active.max_concurrency) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Policy {
        limits: addressed.limits,
        max_request_bytes: addressed.max_request_bytes.min(active.max_request_bytes),
        max_elements: addressed.max_elements.min(active.max_elements),
        max_concurrency,
        api_keys,
        require_signatures: addressed.require_signatures || active.require_signatures,
        guards: Guards {
            request: chain(&active.guards.request, &addressed.guards.request, true),
            response: chain(&active.guards.response, &addressed.guards.response, false),
        },
    }
}

/// The API-key entry of a policy no caller satisfies: not `sha256:<hex>`,
/// so no presented key hashes to it.
const NO_CALLER: &str = "none: no key is listed by both the active and the addressed version";

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
    /// Every loaded version, by version string, each under its own policy.
    pub versions: BTreeMap<String, Arc<T>>,
    /// What answers a request addressed to each version: the active
    /// version itself, the others confined by it ([`Versioned::confined`]).
    pub served: BTreeMap<String, Arc<T>>,
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

    /// A specific version of `name`, as a request addressed to it is
    /// served: confined by the active version's policy (see
    /// [`stricter_policy`]). [`ModelEntry::versions`] has them as loaded.
    pub fn version(&self, name: &str, version: &str) -> Option<Arc<T>> {
        self.table
            .load()
            .get(name)
            .and_then(|e| e.served.get(version).cloned())
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
                let served = versions
                    .iter()
                    .map(|(v, model)| (v.clone(), T::confined(model, &active)))
                    .collect();
                table.insert(
                    name.to_owned(),
                    Arc::new(ModelEntry {
                        active,
                        versions,
                        served,
                    }),
                );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{GuardRef, Manifest};

    fn policy(manifest: &str) -> Policy {
        let defaults = Policy {
            limits: crate::Limits::default(),
            max_request_bytes: 1 << 20,
            max_elements: 1 << 20,
            max_concurrency: None,
            api_keys: Vec::new(),
            require_signatures: false,
            guards: Guards::default(),
        };
        Manifest::parse(manifest.as_bytes())
            .unwrap()
            .policy(&defaults)
    }

    fn names(chain: &[GuardRef]) -> Vec<&str> {
        chain.iter().map(|g| g.name.as_str()).collect()
    }

    #[test]
    fn the_stricter_policy_is_at_least_as_strict_as_each() {
        let old = policy(
            "memory_mib = 8\nmax_request_bytes = 4096\nmax_concurrency = 8\n\
             [[guards.request]]\nname = \"old-in\"\n[[guards.response]]\nname = \"old-out\"\n",
        );
        let active = policy(
            "memory_mib = 32\nmax_elements = 64\nmax_concurrency = 2\nrequire_signatures = true\n\
             api_keys = [\"caller-key-0123456789\"]\n\
             [[guards.request]]\nname = \"new-in\"\n[[guards.response]]\nname = \"new-out\"\n",
        );
        let both = stricter_policy(&old, &active);
        assert_eq!(both.limits, old.limits, "the addressed version's sandbox");
        assert_eq!(both.max_request_bytes, 4096);
        assert_eq!(both.max_elements, 64);
        assert_eq!(both.max_concurrency, Some(2));
        assert!(both.require_signatures);
        assert_eq!(both.api_keys, active.api_keys);
        assert_eq!(names(&both.guards.request), ["new-in", "old-in"]);
        assert_eq!(names(&both.guards.response), ["old-out", "new-out"]);
        // Equal chains run once; a version is its own stricter policy.
        assert_eq!(stricter_policy(&old, &old), old);

        // Keys: those listed by both; none listed by both is nobody.
        let other = policy("api_keys = [\"other-key-0123456789\"]");
        let shared = policy("api_keys = [\"other-key-0123456789\", \"caller-key-0123456789\"]");
        assert_eq!(stricter_policy(&shared, &active).api_keys, active.api_keys);
        let nobody = stricter_policy(&other, &active).api_keys;
        assert_eq!(nobody, [NO_CALLER]);
        assert!(!nobody.contains(&crate::manifest::hash_key("caller-key-0123456789")));
        assert!(!nobody.contains(&crate::manifest::hash_key("other-key-0123456789")));
        assert_eq!(stricter_policy(&other, &old).api_keys, other.api_keys);
    }
}
