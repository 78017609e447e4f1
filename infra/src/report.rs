//! What each step did (or, in a dry run, would do), printed as it happens
//! and returned to the caller.

use std::fmt;

/// What a step did to its resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It did not exist and was created.
    Created,
    /// It existed and these properties were changed.
    Updated(Vec<String>),
    /// It existed as wanted.
    Unchanged,
    /// It existed and was deleted.
    Deleted,
    /// It did not exist (destroy).
    Absent,
    /// It was left in place on purpose; the text says why.
    Kept(String),
}

impl Change {
    /// Whether the step changed (or, dry, would change) anything.
    pub fn is_change(&self) -> bool {
        matches!(self, Self::Created | Self::Updated(_) | Self::Deleted)
    }

    /// `Updated` with one item.
    pub(crate) fn updated(what: impl Into<String>) -> Self {
        Self::Updated(vec![what.into()])
    }

    /// `Unchanged` when `what` is empty, `Updated(what)` otherwise.
    pub(crate) fn from_updates(what: Vec<String>) -> Self {
        if what.is_empty() {
            Self::Unchanged
        } else {
            Self::Updated(what)
        }
    }
}

/// One line of the report: `role airlock-lambda: created`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The kind of resource (`role`, `bucket`, `function`, …).
    pub kind: &'static str,
    /// Its name or id.
    pub resource: String,
    /// What happened to it.
    pub change: Change,
    /// Whether this was a dry run (nothing was changed).
    pub dry_run: bool,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.kind, self.resource)?;
        match &self.change {
            Change::Created if self.dry_run => write!(f, "would create"),
            Change::Created => write!(f, "created"),
            Change::Updated(what) if self.dry_run => {
                write!(f, "would update ({})", what.join(", "))
            }
            Change::Updated(what) => write!(f, "updated ({})", what.join(", ")),
            Change::Unchanged => write!(f, "unchanged"),
            Change::Deleted if self.dry_run => write!(f, "would delete"),
            Change::Deleted => write!(f, "deleted"),
            Change::Absent => write!(f, "absent"),
            Change::Kept(why) if self.dry_run => write!(f, "would keep ({why})"),
            Change::Kept(why) => write!(f, "kept ({why})"),
        }
    }
}

/// Every step of one `deploy` or `destroy`, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The steps.
    pub steps: Vec<Step>,
}

impl Report {
    /// Whether any step changed (or would change) something.
    pub fn changed(&self) -> bool {
        self.steps.iter().any(|s| s.change.is_change())
    }

    /// The steps that changed something.
    pub fn changes(&self) -> Vec<&Step> {
        self.steps.iter().filter(|s| s.change.is_change()).collect()
    }

    /// The first step of `kind`.
    pub fn step(&self, kind: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.kind == kind)
    }
}

/// The running state of a deploy or destroy: records and prints each step,
/// and stops after the step named by the failure hook.
pub(crate) struct Run {
    pub(crate) dry_run: bool,
    fail_after: Option<String>,
    pub(crate) report: Report,
}

impl Run {
    pub(crate) fn new(dry_run: bool, fail_after: Option<String>) -> Self {
        Self {
            dry_run,
            fail_after,
            report: Report::default(),
        }
    }

    /// Records a finished step; fails if the failure hook names it.
    pub(crate) fn record(
        &mut self,
        kind: &'static str,
        resource: impl Into<String>,
        change: Change,
    ) -> anyhow::Result<()> {
        let step = Step {
            kind,
            resource: resource.into(),
            change,
            dry_run: self.dry_run,
        };
        println!("  {step}");
        self.report.steps.push(step);
        if self.fail_after.as_deref() == Some(kind) {
            anyhow::bail!("injected failure after step {kind:?} (the fail_after test hook)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_print_what_happened() {
        let step = |change, dry_run| {
            Step {
                kind: "role",
                resource: "airlock-lambda".into(),
                change,
                dry_run,
            }
            .to_string()
        };
        assert_eq!(step(Change::Created, false), "role airlock-lambda: created");
        assert_eq!(
            step(Change::Created, true),
            "role airlock-lambda: would create"
        );
        assert_eq!(
            step(
                Change::Updated(vec!["trust policy".into(), "tags".into()]),
                false
            ),
            "role airlock-lambda: updated (trust policy, tags)"
        );
        assert_eq!(
            step(Change::Unchanged, true),
            "role airlock-lambda: unchanged"
        );
        assert_eq!(
            step(Change::Kept("x".into()), false),
            "role airlock-lambda: kept (x)"
        );
    }
}
