//! `scheduler.profiles`: named scorer mixes, validated with the field named.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;
use crate::routing::{NamedProfile, Picker, Profile, Strategy};

/// `scheduler.profiles.NAME: {scorers: [{prefix-cache: 3}, {queue: 2}], picker: max-score}`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerEntry {
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileEntry {
    /// One `{scorer: weight}` map per scorer.
    pub scorers: Vec<BTreeMap<String, u32>>,
    #[serde(default)]
    pub picker: Option<String>,
}

/// `scheduler.profiles`, validated, sorted by name.
pub(super) fn resolve(entry: &SchedulerEntry) -> Result<Vec<NamedProfile>, ConfigError> {
    let mut out = Vec::new();
    for (name, profile) in &entry.profiles {
        let field = |rest: &str| format!("scheduler.profiles.{name}{rest}");
        let invalid = |field: String, message: String| ConfigError::Invalid { field, message };
        if name.is_empty() || name.contains([':', ',']) || name.contains(char::is_whitespace) {
            let message = "a profile name is non-empty, without `:`, `,` or spaces".into();
            return Err(invalid(field(""), message));
        }
        if name.parse::<Strategy>().is_ok() {
            let message = format!("`{name}` is a strategy's name: a profile must not hide it");
            return Err(invalid(field(""), message));
        }
        let picker = match profile.picker.as_deref() {
            None => Picker::MaxScore,
            Some(p) => Picker::parse(p).ok_or_else(|| {
                let known = Picker::NAMES.join(", ");
                invalid(
                    field(".picker"),
                    format!("unknown picker `{p}` (known: {known})"),
                )
            })?,
        };
        let mut items = Vec::new();
        for (i, scorer) in profile.scorers.iter().enumerate() {
            let mut entries = scorer.iter();
            let (Some((scorer, weight)), None) = (entries.next(), entries.next()) else {
                let message = "one `scorer: weight` per entry".into();
                return Err(invalid(field(&format!(".scorers[{i}]")), message));
            };
            items.push((scorer.as_str(), weight.to_string()));
        }
        let profile =
            Profile::from_items(items.iter().map(|(s, w)| (*s, Some(w.as_str()))), picker)
                .map_err(|e| invalid(field(".scorers"), e.to_string()))?;
        out.push(NamedProfile {
            name: name.as_str().into(),
            profile,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{FileConfig, Settings};
    use super::*;
    use crate::routing::Policy;

    fn settings(path: &str, text: &str) -> Result<Settings, ConfigError> {
        FileConfig::parse(Path::new(path), text)?.into_settings()
    }

    const PROFILES: &str = "scheduler:\n  profiles:\n    balanced: { scorers: [{prefix-cache: 3}, {queue: 2}, {kv-cache: 2}] }\n    spread: { scorers: [{queue: 1}], picker: power-of-two }\n";

    #[test]
    fn scheduler_profiles_are_named_by_the_default_and_per_model() {
        let text = format!(
            "{PROFILES}default_strategy: balanced\nmodels:\n  a:\n    endpoints: [\"127.0.0.1:1\"]\n    strategy: spread\n  b:\n    endpoints: [\"127.0.0.1:2\"]\n    strategy: round-robin\n"
        );
        let s = settings("c.yaml", &text).unwrap();
        let names: Vec<&str> = s.profiles.iter().map(|p| &*p.name).collect();
        assert_eq!(names, ["balanced", "spread"]);
        assert_eq!(s.default_strategy, Policy::Profile(0));
        assert_eq!(s.models["a"].strategy, Some(Policy::Profile(1)));
        assert_eq!(s.models["b"].strategy, Some(Strategy::RoundRobin.into()));
        let balanced = &s.profiles[0].profile;
        assert_eq!(balanced.picker, Picker::MaxScore);
        assert_eq!(balanced.scorers.len(), 3);
        assert!(s.reads_prompt(Policy::Profile(0)) && !s.reads_prompt(Policy::Profile(1)));
        assert_eq!(s.profiles[1].profile.picker, Picker::PowerOfTwo);
    }

    #[test]
    fn bad_profiles_fail_with_the_field_named() {
        let cases = [
            (
                "x: { scorers: [{fastest: 1}] }",
                "scheduler.profiles.x.scorers",
                "`fastest`",
            ),
            (
                "x: { scorers: [{queue: 0}] }",
                "scheduler.profiles.x.scorers",
                "`0`",
            ),
            (
                "x: { scorers: [] }",
                "scheduler.profiles.x.scorers",
                "at least one",
            ),
            (
                "x: { scorers: [{queue: 1, kv-cache: 1}] }",
                "scheduler.profiles.x.scorers[0]",
                "one `scorer: weight`",
            ),
            (
                "x: { scorers: [{queue: 1}], picker: best }",
                "scheduler.profiles.x.picker",
                "`best`",
            ),
            (
                "least-request: { scorers: [{queue: 1}] }",
                "scheduler.profiles.least-request",
                "strategy's name",
            ),
            (
                "\"a:b\": { scorers: [{queue: 1}] }",
                "scheduler.profiles.a:b",
                "without `:`",
            ),
        ];
        for (profile, field, message) in cases {
            let text = format!("scheduler:\n  profiles:\n    {profile}\n");
            let err = settings("c.yaml", &text).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains(message),
                "{profile}: {err}"
            );
        }
        let err = settings("c.yaml", &format!("{PROFILES}default_strategy: fancy\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("default_strategy")
                && err.contains("fancy")
                && err.contains("balanced, spread"),
            "{err}"
        );
    }
}
