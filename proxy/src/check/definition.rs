//! What a migration is, as far as the rows of its tables go: its old and shadow tables, its key and its
//! mappings (not its sampling, bypass handling, accepted writers or version names). `state::store` records
//! it in `dualwrite.migration_definitions` when the migration is registered. Outside `off` the shadow holds
//! rows made by the recorded mappings, and other instances may still run them, so rules that define a
//! migration differently are refused at start and at every reload until it is set `off`; in `off` the new
//! definition replaces the recorded one (and entering `dual_write` again rebuilds the shadow,
//! `state::store::leave_off`). `dualwrite check` reports the same comparison (`check::schema`).

use dualwrite_rules::Migration;
use serde_json::{json, Value};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// The definition of `m` as recorded (a JSON object, each mapping a list of `[column, expression]` with the
/// expression as the rules spell it).
pub(crate) fn definition(m: &Migration) -> Value {
    let mapping = |pairs: &[(String, String)]| -> Vec<Value> {
        pairs.iter().map(|(column, expression)| json!([column, expression.trim()])).collect()
    };
    json!({
        "tables": m.old_tables().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "shadows": m.shadow_tables().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "key": m.key,
        "forward": mapping(&m.forward),
        "backward": mapping(&m.backward),
        "sources": m.merge.iter().map(|s| json!({
            "table": s.table.to_string(),
            "present": s.present,
            "forward": mapping(&s.forward),
            "backward": mapping(&s.backward),
        })).collect::<Vec<_>>(),
        "targets": m.split.iter().map(|t| json!({
            "table": t.table.to_string(),
            "forward": mapping(&t.forward),
        })).collect::<Vec<_>>(),
    })
}

/// The parts of a definition (`forward`, `shadows`, ...) that differ between `recorded` and `now`. The
/// expressions of both are compared as this build's sqlparser prints them, so that spacing is not a change,
/// and neither is a new sqlparser printing them otherwise than the one that recorded them.
pub(crate) fn changed_parts(recorded: &Value, now: &Value) -> Vec<String> {
    let (recorded, now) = (comparable(recorded), comparable(now));
    let (Some(recorded), Some(now)) = (recorded.as_object(), now.as_object()) else {
        return vec!["the whole definition".to_string()];
    };
    let mut parts: Vec<String> =
        recorded.keys().chain(now.keys()).filter(|k| recorded.get(*k) != now.get(*k)).cloned().collect();
    parts.sort();
    parts.dedup();
    parts
}

/// `value` with every mapping's expressions normalized (`[column, expression]` pairs under a `forward` or
/// `backward` key, at any depth).
fn comparable(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, v)| {
                    let v = match (key.as_str(), v) {
                        ("forward" | "backward", Value::Array(pairs)) => {
                            Value::Array(pairs.iter().map(normalized_pair).collect())
                        }
                        _ => comparable(v),
                    };
                    (key.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(comparable).collect()),
        other => other.clone(),
    }
}

fn normalized_pair(pair: &Value) -> Value {
    match pair.as_array().map(Vec::as_slice) {
        Some([column, Value::String(expression)]) => json!([column, normalized(expression)]),
        _ => pair.clone(),
    }
}

fn normalized(expression: &str) -> String {
    match Parser::new(&PostgreSqlDialect {}).try_with_sql(expression).and_then(|mut p| p.parse_expr()) {
        Ok(expr) => expr.to_string(),
        Err(_) => expression.trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dualwrite_rules::RuleSet;

    const USERS: &str = include_str!("../../../rewrite-rules/examples/users_split_name.toml");

    fn migration(toml: &str) -> Migration {
        RuleSet::from_toml(toml, "rules.toml").unwrap().migrations.remove(0)
    }

    #[test]
    fn spacing_sampling_and_accepted_writers_are_not_changes_mappings_and_tables_are() {
        let recorded = definition(&migration(USERS));
        let same = USERS
            .replace("[[migration]]", "[[migration]]\nshadow_read_sample = 0.5\naccept_unseen_writers = [\"fk:x\"]");
        assert_eq!(changed_parts(&recorded, &definition(&migration(&same))), Vec::<String>::new());

        let forward = USERS.lines().find(|l| l.contains("split_part(name, ' ', 1)")).expect("a forward line");
        let respaced = USERS.replace(forward, &forward.replace("split_part(name, ' ', 1)", "split_part( name,' ',1 )"));
        assert_eq!(changed_parts(&recorded, &definition(&migration(&respaced))), Vec::<String>::new());

        let remapped = USERS.replace(forward, &forward.replace("split_part(name, ' ', 1)", "split_part(name, ',', 1)"));
        assert_eq!(changed_parts(&recorded, &definition(&migration(&remapped))), ["forward"]);

        let moved = USERS.replace("shadow = \"public.users_v2\"", "shadow = \"public.users_v3\"");
        assert_eq!(changed_parts(&recorded, &definition(&migration(&moved))), ["shadows"]);
    }
}
