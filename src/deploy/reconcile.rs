//! Plan, then act: what a node must do so that it runs what the
//! deployments table asks of it. A pure function from what the table wants
//! here, what is installed and what runs, to one step per module; the
//! Deployer carries the steps out through the install pipeline.

use super::manifest::merge_config;
use super::table::{Action, Row};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// What is installed of one module, as the plan needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    pub version: String,
    pub sha256: String,
    /// The effective config (the deploy's merged over the manifest's).
    pub config: Value,
    /// The manifest's own config, to merge a new deploy's over.
    pub manifest_config: Value,
    /// The table entry that installed it; none if installed otherwise (by
    /// an earlier release, or by hand).
    pub entry: Option<String>,
}

/// One module's step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Fetch the entry's package, install it and start it.
    Install { entry: Arc<str> },
    /// The package is installed; its config changes: install it again with
    /// the new config and restart it.
    Reconfigure { entry: Arc<str> },
    /// Stop and remove it: the entry (an undeploy) says so, or no entry
    /// names it here any more and the table had installed it.
    Remove { entry: Option<Arc<str>> },
    /// It already runs as the entry asks. `adopt`: it was installed
    /// otherwise, and the entry takes it over.
    Keep { entry: Arc<str>, adopt: bool },
}

impl Step {
    /// The entry the step carries out, if any.
    pub fn entry(&self) -> Option<&Arc<str>> {
        match self {
            Step::Install { entry } | Step::Reconfigure { entry } | Step::Keep { entry, .. } => Some(entry),
            Step::Remove { entry } => entry.as_ref(),
        }
    }
}

/// The steps that bring this node to what the table wants: `winners` (the
/// winning entry of each module the table names here), `installed` (by
/// module name). Modules the table never named are left alone; a module the
/// table installed is removed only when `trusted` says the table is whole
/// (loaded from disk, or learnt from peers), so a lost table file never
/// removes anything.
pub fn plan(
    winners: &BTreeMap<&str, &Row>,
    installed: &BTreeMap<String, Installed>,
    trusted: bool,
) -> BTreeMap<String, Step> {
    let mut steps = BTreeMap::new();
    let names: BTreeSet<&str> = winners
        .keys()
        .copied()
        .chain(installed.keys().map(String::as_str))
        .collect();
    for name in names {
        let have = installed.get(name);
        let step = match (winners.get(name), have) {
            (Some(row), have) if row.action() == Action::Undeploy => match have {
                Some(_) => Step::Remove {
                    entry: Some(row.id.clone()),
                },
                None => Step::Keep {
                    entry: row.id.clone(),
                    adopt: false,
                },
            },
            (Some(row), None) => Step::Install { entry: row.id.clone() },
            (Some(row), Some(have)) => {
                let wanted = &row.deployment;
                let same_package = wanted.sha256.as_deref() == Some(have.sha256.as_str());
                let config = merge_config(&have.manifest_config, wanted.config.as_ref().unwrap_or(&Value::Null));
                match (same_package, config == have.config) {
                    (false, _) => Step::Install { entry: row.id.clone() },
                    (true, false) => Step::Reconfigure { entry: row.id.clone() },
                    (true, true) => Step::Keep {
                        entry: row.id.clone(),
                        adopt: have.entry.as_deref() != Some(&*row.id),
                    },
                }
            }
            (None, Some(have)) if have.entry.is_some() && trusted => Step::Remove { entry: None },
            (None, _) => continue,
        };
        steps.insert(name.to_string(), step);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::protocol::{Entry, Version};
    use crate::deploy::order::OrderSource;
    use crate::deploy::table::Deployment;
    use serde_json::json;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn row(id: &str, module: &str, action: Action, sha: &str, config: Option<Value>) -> Row {
        let d = Deployment {
            module: module.into(),
            target: None,
            action,
            source: Some(OrderSource {
                url: Some("http://x/p.tar.gz".into()),
                peer: None,
                size: None,
            }),
            sha256: Some(sha.into()),
            config,
            ts: 1,
            rollout: None,
            driver: None,
            signature: None,
        };
        Row::read(&Entry {
            key: id.into(),
            version: Version {
                clock: 1,
                origin: "n".into(),
            },
            body: d.to_body(),
        })
        .unwrap()
    }

    fn installed(sha: &str, config: Value, entry: Option<&str>) -> Installed {
        Installed {
            version: "1.0.0".into(),
            sha256: sha.into(),
            config,
            manifest_config: json!({"level": 1}),
            entry: entry.map(str::to_string),
        }
    }

    /// One row per case: the winning entry (if any), what is installed (if
    /// anything), whether the table is trusted, and the step.
    #[test]
    fn one_step_per_module_from_desired_installed_and_trusted() {
        let deploy_a = row("e1", "m", Action::Deploy, A, Some(json!({"level": 2})));
        let deploy_plain = row("e2", "m", Action::Deploy, A, None);
        let undeploy = row("e3", "m", Action::Undeploy, A, None);
        let e = |id: &str| Arc::<str>::from(id);
        type Case<'a> = (Option<&'a Row>, Option<Installed>, bool, Option<Step>);
        let cases: Vec<Case> = vec![
            // Nothing installed: install.
            (Some(&deploy_a), None, true, Some(Step::Install { entry: e("e1") })),
            // Another package installed: install over it.
            (
                Some(&deploy_a),
                Some(installed(B, json!({"level": 2}), Some("old"))),
                true,
                Some(Step::Install { entry: e("e1") }),
            ),
            // The same package with another config: reconfigure.
            (
                Some(&deploy_a),
                Some(installed(A, json!({"level": 1}), Some("old"))),
                true,
                Some(Step::Reconfigure { entry: e("e1") }),
            ),
            // Exactly as asked, installed by this entry: keep.
            (
                Some(&deploy_a),
                Some(installed(A, json!({"level": 2}), Some("e1"))),
                true,
                Some(Step::Keep {
                    entry: e("e1"),
                    adopt: false,
                }),
            ),
            // Exactly as asked, installed by hand: the entry adopts it.
            (
                Some(&deploy_plain),
                Some(installed(A, json!({"level": 1}), None)),
                true,
                Some(Step::Keep {
                    entry: e("e2"),
                    adopt: true,
                }),
            ),
            // An undeploy removes it, whoever installed it...
            (
                Some(&undeploy),
                Some(installed(A, json!({}), None)),
                false,
                Some(Step::Remove { entry: Some(e("e3")) }),
            ),
            // ...and with nothing installed there is nothing to do.
            (
                Some(&undeploy),
                None,
                true,
                Some(Step::Keep {
                    entry: e("e3"),
                    adopt: false,
                }),
            ),
            // No entry names it any more, and the table installed it: remove.
            (
                None,
                Some(installed(A, json!({}), Some("gone"))),
                true,
                Some(Step::Remove { entry: None }),
            ),
            // ...but not while the table may be incomplete.
            (None, Some(installed(A, json!({}), Some("gone"))), false, None),
            // The table never named it: left alone.
            (None, Some(installed(A, json!({}), None)), true, None),
        ];
        for (i, (winner, have, trusted, want)) in cases.into_iter().enumerate() {
            let winners: BTreeMap<&str, &Row> = winner.map(|r| ("m", r)).into_iter().collect();
            let installed: BTreeMap<String, Installed> = have.map(|h| ("m".to_string(), h)).into_iter().collect();
            let steps = plan(&winners, &installed, trusted);
            assert_eq!(steps.get("m"), want.as_ref(), "case {i}");
            assert!(steps.len() <= 1, "case {i}: {steps:?}");
        }
    }

    #[test]
    fn modules_are_planned_independently() {
        let a = row("e1", "a", Action::Deploy, A, None);
        let b = row("e2", "b", Action::Undeploy, A, None);
        let winners: BTreeMap<&str, &Row> = [("a", &a), ("b", &b)].into();
        let installed: BTreeMap<String, Installed> = [
            ("b".to_string(), installed(A, json!({}), None)),
            ("c".to_string(), installed(A, json!({}), None)),
        ]
        .into();
        let steps = plan(&winners, &installed, true);
        let kinds: Vec<(&str, &str)> = steps
            .iter()
            .map(|(m, s)| {
                let kind = match s {
                    Step::Install { .. } => "install",
                    Step::Reconfigure { .. } => "reconfigure",
                    Step::Remove { .. } => "remove",
                    Step::Keep { .. } => "keep",
                };
                (m.as_str(), kind)
            })
            .collect();
        assert_eq!(kinds, [("a", "install"), ("b", "remove")]);
    }
}
