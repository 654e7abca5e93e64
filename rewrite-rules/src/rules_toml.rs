//! The rules file's TOML shape and its reading into a validated [`RuleSet`] (README: Rules files): each
//! `[[migration]]` as written (one `table` and `shadow`, a split's `[[migration.targets]]` or a merge's
//! `[[migration.sources]]`) turned into a `Migration`, every error naming the file, the migration and the
//! field.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::merge::{self, MergeSource};
use crate::model::{Migration, OnBypass, Phase, RuleSet, RulesError, SampleRate, Versions};
use crate::names::TableName;
use crate::split::{self, SplitTarget};

impl RuleSet {
    /// Reads and validates a rules file. `origin` (usually the file path) is named in every error.
    pub fn from_toml(text: &str, origin: &str) -> Result<RuleSet, RulesError> {
        let file: RawFile = toml::from_str(text).map_err(|e| RulesError {
            origin: origin.to_string(),
            migration: None,
            field: None,
            message: match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}: {}", e.message())
                }
                None => e.message().to_string(),
            },
        })?;
        let mut migrations = Vec::with_capacity(file.migration.len());
        for (index, raw) in file.migration.into_iter().enumerate() {
            migrations.push(raw.validate(origin, index)?);
        }
        RuleSet::new(migrations, origin)
    }
}

// ---- TOML shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    migration: Vec<RawMigration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigration {
    name: String,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    table: Option<TableSpec>,
    #[serde(default)]
    shadow: Option<String>,
    key: Vec<String>,
    versions: Versions,
    #[serde(default)]
    forward: Option<OrderedMap>,
    #[serde(default)]
    targets: Vec<RawTarget>,
    /// A merge's old tables, each with its mappings (then no `table`, [forward] or [backward]).
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    backward: Option<OrderedMap>,
    #[serde(default, alias = "phase")]
    initial_phase: Option<String>,
    #[serde(default)]
    shadow_read_sample: Option<f64>,
    #[serde(default)]
    accept_unseen_writers: Vec<String>,
    #[serde(default)]
    accept_key_triggers: Vec<String>,
    #[serde(default)]
    on_bypass: OnBypass,
}

impl RawMigration {
    fn validate(self, origin: &str, index: usize) -> Result<Migration, RulesError> {
        let label = if self.name.is_empty() { format!("#{}", index + 1) } else { self.name.clone() };
        let err = |field: &str, message: String| RulesError {
            origin: origin.to_string(),
            migration: Some(label.clone()),
            field: Some(field.to_string()),
            message,
        };
        if self.name.is_empty() {
            return Err(err("name", "must not be empty".into()));
        }
        let (table, shadow, forward, backward, split, merge) = if self.sources.is_empty() {
            let table = match &self.table {
                None => return Err(err("table", "missing (or give [[migration.sources]] to merge tables)".into())),
                Some(TableSpec::One(text)) => TableName::parse(text).map_err(|m| err("table", m))?,
                Some(TableSpec::Several(tables)) => {
                    return Err(err("table", format!("{} (given: {})", merge::SEVERAL_TABLES, tables.join(", "))))
                }
            };
            let Some(backward) = self.backward else { return Err(err("backward", "missing".into())) };
            let (shadow, forward, split) = match (self.shadow, self.forward, self.targets.is_empty()) {
                (Some(shadow), Some(forward), true) => {
                    (TableName::parse(&shadow).map_err(|m| err("shadow", m))?, forward.0, Vec::new())
                }
                (None, None, false) => {
                    let mut targets = Vec::with_capacity(self.targets.len());
                    for (i, t) in self.targets.into_iter().enumerate() {
                        let table =
                            TableName::parse(&t.table).map_err(|m| err(&format!("targets[{}].table", i + 1), m))?;
                        targets.push(SplitTarget { table, forward: t.forward.0 });
                    }
                    (targets[0].table.clone(), split::merged_forward(&self.key, &targets), targets)
                }
                (_, _, false) => {
                    return Err(err(
                        "targets",
                        "a split ([[migration.targets]]) names its tables and mappings per target: drop `shadow` \
                         and [migration.forward]"
                            .into(),
                    ))
                }
                (None, _, true) => {
                    return Err(err("shadow", "missing (or give [[migration.targets]] to split)".into()))
                }
                (Some(_), None, true) => return Err(err("forward", "missing".into())),
            };
            (table, shadow, forward, backward.0, split, Vec::new())
        } else {
            let given = [
                ("table", self.table.is_some()),
                ("forward", self.forward.is_some()),
                ("backward", self.backward.is_some()),
                ("targets", !self.targets.is_empty()),
            ];
            if let Some((field, _)) = given.iter().find(|(_, given)| *given) {
                return Err(err(
                    field,
                    "a merge ([[migration.sources]]) names its old tables and mappings per source: drop `table`, \
                     [migration.forward], [migration.backward] and [[migration.targets]]"
                        .into(),
                ));
            }
            let Some(shadow) = self.shadow else { return Err(err("shadow", "missing".into())) };
            let shadow = TableName::parse(&shadow).map_err(|m| err("shadow", m))?;
            let mut sources = Vec::with_capacity(self.sources.len());
            for (i, s) in self.sources.into_iter().enumerate() {
                let table = TableName::parse(&s.table).map_err(|m| err(&format!("sources[{}].table", i + 1), m))?;
                sources.push(MergeSource { table, present: s.present, forward: s.forward.0, backward: s.backward.0 });
            }
            let forward = merge::merged_mapping(&self.key, &sources, |s| &s.forward);
            let backward = merge::merged_mapping(&self.key, &sources, |s| &s.backward);
            (sources[0].table.clone(), shadow, forward, backward, Vec::new(), sources)
        };
        let initial_phase = match self.initial_phase.as_deref() {
            None => Phase::DualWrite,
            Some(text) => match text.parse::<Phase>().map_err(|m| err("initial_phase", m))? {
                p @ (Phase::Off | Phase::DualWrite) => p,
                p => return Err(err("initial_phase", format!("a migration cannot start in `{p}`"))),
            },
        };
        let shadow_read_sample = match self.shadow_read_sample {
            None => SampleRate::ZERO,
            Some(f) => SampleRate::from_fraction(f).map_err(|m| err("shadow_read_sample", m))?,
        };
        Ok(Migration {
            name: self.name,
            database: self.database,
            table,
            shadow,
            key: self.key,
            versions: self.versions,
            forward,
            split,
            merge,
            backward,
            initial_phase,
            shadow_read_sample,
            accept_unseen_writers: self.accept_unseen_writers,
            accept_key_triggers: self.accept_key_triggers,
            on_bypass: self.on_bypass,
        })
    }
}

/// `table`: one old table, or (refused: a merge names its tables in [[migration.sources]]) several.
#[derive(Deserialize)]
#[serde(untagged)]
enum TableSpec {
    One(String),
    Several(Vec<String>),
}

/// One `[[migration.targets]]` of a split.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    table: String,
    forward: OrderedMap,
}

/// One `[[migration.sources]]` of a merge.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    table: String,
    present: String,
    forward: OrderedMap,
    backward: OrderedMap,
}

/// A TOML table of `column = "expression"` kept in document order.
struct OrderedMap(Vec<(String, String)>);

impl<'de> Deserialize<'de> for OrderedMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of column = \"SQL expression\"")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedMap, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.iter().any(|(c, _): &(String, String)| *c == k) {
                        return Err(de::Error::custom(format!("column `{k}` is mapped twice")));
                    }
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V)
    }
}
