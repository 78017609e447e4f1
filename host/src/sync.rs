//! Keeping a host in step with a store that others write to.
//!
//! Several hosts can share one store (warm Lambda instances, a fleet of edge
//! servers on one S3 prefix). Each of them looks at the store now and then
//! ([`Host::refresh`]): one listing, then one conditional read per model
//! (`If-None-Match` with the ETag last seen, a bodiless 304 when nothing
//! changed); a changed index is published into the registry exactly as a
//! local upload is, reusing the versions already loaded, so requests in
//! flight finish on the version they started with and nothing restarts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::Host;
use crate::RepoError;
use crate::store::IndexRead;

/// Every index of a store, read without a host (no engine needed), as a
/// process start reads them while its engine is being set up. An index that
/// could not be read stays an error of its own name: the start serves the
/// others and reports it (see [`Host::refresh_from`]).
pub(crate) struct StoreContents(Vec<(String, anyhow::Result<IndexRead>)>);

impl StoreContents {
    /// Lists `store` and reads every index, several at a time: each is a
    /// round trip to S3, and a start waits for all of them.
    pub(crate) fn read(store: &dyn crate::store::Store) -> Result<Self, RepoError> {
        let names = store.list()?;
        let mut reads = Vec::with_capacity(names.len());
        for batch in names.chunks(16) {
            let found: Vec<anyhow::Result<IndexRead>> = std::thread::scope(|scope| {
                let reading: Vec<_> = batch
                    .iter()
                    .map(|name| scope.spawn(move || store.read_index_if_changed(name, None)))
                    .collect();
                reading
                    .into_iter()
                    .map(|thread| {
                        thread
                            .join()
                            .unwrap_or_else(|p| std::panic::resume_unwind(p))
                    })
                    .collect()
            });
            for (name, read) in batch.iter().zip(found) {
                reads.push((name.clone(), read));
            }
        }
        Ok(Self(reads))
    }
}

/// What a host last saw of the store.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// The tag (ETag) of each model's index as last published.
    tags: HashMap<String, String>,
    /// When the store was last looked at.
    checked: Option<Instant>,
}

/// What a refresh changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RefreshReport {
    /// Models whose index changed and were published again.
    pub updated: Vec<String>,
    /// Models that disappeared from the store and are no longer served.
    pub removed: Vec<String>,
    /// Models whose index could not be read or whose new index could not
    /// be published (logged; retried at the next refresh).
    pub failed: Vec<String>,
}

impl Host {
    /// Brings the registry in line with the store: every model whose index
    /// changed since the last look is published again (new versions loaded,
    /// the active one swapped in), models gone from the store are dropped.
    /// Serves as the initial load too (nothing has been seen yet).
    pub fn refresh(&self) -> Result<RefreshReport, RepoError> {
        let names = self.store.list()?;
        let mut report = RefreshReport::default();
        for name in &names {
            // Under the write lock, so that a local upload that lands
            // meanwhile is not overwritten by an index read just before it.
            let _guard = self.lock();
            let known = self.seen_tag(name);
            let read = self.store.read_index_if_changed(name, known.as_deref());
            self.apply(name, read, &mut report);
        }
        self.drop_gone(&names, &mut report);
        Ok(report)
    }

    /// [`Host::refresh`] of a host that has seen nothing yet, from a
    /// [`StoreContents`] read beforehand (see [`Host::open`]).
    pub(crate) fn refresh_from(&self, contents: StoreContents) -> RefreshReport {
        let mut report = RefreshReport::default();
        let names: Vec<String> = contents.0.iter().map(|(name, _)| name.clone()).collect();
        for (name, read) in contents.0 {
            let _guard = self.lock();
            self.apply(&name, read, &mut report);
        }
        self.drop_gone(&names, &mut report);
        report
    }

    /// Publishes what the read of `name`'s index found. An index that could
    /// not be read (unreachable, or not a valid index) is logged and
    /// reported as failed, and the model keeps whatever this host served
    /// of it: one bad index must not stop the others from being served.
    fn apply(&self, name: &str, read: anyhow::Result<IndexRead>, report: &mut RefreshReport) {
        let read = match read {
            Ok(read) => read,
            Err(error) => {
                tracing::error!(model = %name, error = format!("{error:#}"), "failed to read a model index; the model is skipped");
                report.failed.push(name.to_owned());
                return;
            }
        };
        match read {
            IndexRead::Unchanged => {}
            IndexRead::Missing => {
                self.unpublish(name);
                self.forget(name);
            }
            IndexRead::Changed { index, tag } => {
                let index = if index.active.is_none() {
                    // Nothing to answer with: not served (as `restore`).
                    crate::store::ModelIndex {
                        loaded: false,
                        ..index
                    }
                } else {
                    index
                };
                match self.publish(&index) {
                    Ok(()) => {
                        tracing::info!(
                            model = %name,
                            active = index.active.as_deref().unwrap_or(""),
                            loaded = index.loaded,
                            "model index changed in the store; published"
                        );
                        self.remember(name, tag);
                        report.updated.push(name.to_owned());
                    }
                    Err(error) => {
                        tracing::error!(model = %name, error = format!("{error:#}"), "failed to publish a changed model index");
                        report.failed.push(name.to_owned());
                    }
                }
            }
        }
    }

    /// Drops the models this host took from the store that the store, now
    /// holding `names`, no longer has.
    fn drop_gone(&self, names: &[String], report: &mut RefreshReport) {
        let gone: Vec<String> = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<String> = seen
                .tags
                .keys()
                .filter(|n| !names.contains(n))
                .cloned()
                .collect();
            for name in &gone {
                seen.tags.remove(name);
            }
            seen.checked = Some(Instant::now());
            gone
        };
        for name in gone {
            let _guard = self.lock();
            self.unpublish(&name);
            report.removed.push(name);
        }
    }

    /// Runs [`Host::refresh`] when the last look at the store is at least
    /// `every` old; errors are logged, never returned: a store hiccup must
    /// not fail the request that happened to trigger the look. Returns
    /// whether the store was looked at.
    pub fn refresh_if_due(&self, every: Duration) -> bool {
        let due = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            let due = seen.checked.is_none_or(|at| at.elapsed() >= every);
            if due {
                // Claimed now, so that concurrent requests do not all look.
                seen.checked = Some(Instant::now());
            }
            due
        };
        if due && let Err(error) = self.refresh() {
            tracing::warn!(
                error = format!("{error:#}"),
                "failed to look for model changes in the store"
            );
        }
        due
    }

    fn seen_tag(&self, name: &str) -> Option<String> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.tags.get(name).cloned()
    }

    fn remember(&self, name: &str, tag: String) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.tags.insert(name.to_owned(), tag);
    }

    fn forget(&self, name: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.tags.remove(name);
    }
}
