//! The job statements of `sql`: every variant parses as one statement, identifiers are quoted, and each
//! write touches only the tables it should (every target of a split).

use super::*;
use crate::jobs::mapping::{QualifiedName, TableMapping};
use sqlparser::ast::DataType;

fn compiled(key: &[&str]) -> CompiledMapping {
    let mapping = TableMapping {
        migration: "m".into(),
        old: QualifiedName::new("public", "Users"),
        shadow: QualifiedName::new("public", "users_v2"),
        key: key.iter().map(|k| k.to_string()).collect(),
        forward: vec![
            ("id".into(), "id".into()),
            ("region".into(), "region".into()),
            ("first".into(), "split_part(name, ' ', 1)".into()),
        ],
        backward: vec![
            ("id".into(), "id".into()),
            ("region".into(), "region".into()),
            ("name".into(), "users_v2.first || ' '".into()),
        ],
        targets: vec![(QualifiedName::new("public", "users_v2"), vec!["id".into(), "region".into(), "first".into()])],
        sources: vec![],
    };
    let types = vec![DataType::BigInt(None), DataType::Text, DataType::Varchar(None)];
    CompiledMapping::compile(&mapping, types).unwrap()
}

/// The same mapping split: `region` in `users_a`, `first` in `users_b`, the key in both.
fn split(key: &[&str]) -> CompiledMapping {
    let mut mapping = TableMapping {
        migration: "m".into(),
        old: QualifiedName::new("public", "Users"),
        shadow: QualifiedName::new("public", "users_a"),
        key: key.iter().map(|k| k.to_string()).collect(),
        forward: vec![
            ("id".into(), "id".into()),
            ("region".into(), "region".into()),
            ("first".into(), "split_part(name, ' ', 1)".into()),
        ],
        backward: vec![
            ("id".into(), "id".into()),
            ("region".into(), "region".into()),
            ("name".into(), "first || ' '".into()),
        ],
        targets: vec![],
        sources: vec![],
    };
    let with_key = |extra: &str| {
        let mut columns: Vec<String> = key.iter().map(|k| k.to_string()).collect();
        if !columns.iter().any(|c| c == extra) {
            columns.push(extra.into());
        }
        columns
    };
    mapping.targets = vec![
        (QualifiedName::new("public", "users_a"), with_key("region")),
        (QualifiedName::new("public", "users_b"), with_key("first")),
    ];
    let types = vec![DataType::BigInt(None), DataType::Text, DataType::Varchar(None)];
    CompiledMapping::compile(&mapping, types).unwrap()
}

#[test]
fn every_split_variant_is_one_parsable_statement_touching_every_target() {
    for m in [split(&["id"]), split(&["region", "id"])] {
        assert!(m.is_split());
        for has in [false, true] {
            for on_conflict in [false, true] {
                let sql = m.backfill_batch(Bounds { lower: has, upper: true }, on_conflict);
                parses(&sql);
                assert!(sql.contains("INSERT INTO \"public\".\"users_a\""), "{sql}");
                assert!(sql.contains("INSERT INTO \"public\".\"users_b\""), "{sql}");
            }
            parses(&m.boundary(Side::Shadow, has));
        }
        for (lower, upper) in [(false, false), (true, false), (false, true), (true, true)] {
            let bounds = Bounds { lower, upper };
            let checksum = m.checksum(Side::Shadow, bounds);
            parses(&checksum);
            assert!(checksum.contains("FULL JOIN (SELECT * FROM \"public\".\"users_b\" WHERE"), "{checksum}");
            parses(&m.leaf_diff(bounds));
            let sweep = m.sweep(bounds);
            parses(&sweep);
            assert!(
                sweep.contains("DELETE FROM \"public\".\"users_a\"")
                    && sweep.contains("DELETE FROM \"public\".\"users_b\"")
            );
        }
        parses(&m.keys_diff());
        parses(&m.canonical_keys());
        let shadow = m.repair(Side::Shadow);
        parses(&shadow);
        for table in ["users_a", "users_b"] {
            assert!(shadow.contains(&format!("INSERT INTO \"public\".\"{table}\"")), "{shadow}");
            assert!(shadow.contains(&format!("DELETE FROM \"public\".\"{table}\"")), "{shadow}");
        }
        assert!(
            !shadow.contains("INSERT INTO \"public\".\"Users\"")
                && !shadow.contains("DELETE FROM \"public\".\"Users\"")
        );
        let old = m.repair(Side::Old);
        parses(&old);
        assert!(old.contains("INSERT INTO \"public\".\"Users\" (\"id\", \"region\", \"name\")"), "{old}");
        assert!(old.contains("JOIN \"public\".\"users_b\" USING") && old.contains("FOR SHARE"), "{old}");
        assert!(
            !old.contains("INSERT INTO \"public\".\"users_a\"") && !old.contains("DELETE FROM \"public\".\"users_b\"")
        );
    }
}

fn parses(sql: &str) {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
    assert_eq!(statements.len(), 1, "{sql}");
}

#[test]
fn every_variant_is_one_parsable_statement() {
    for m in [compiled(&["id"]), compiled(&["region", "id"])] {
        for has in [false, true] {
            for on_conflict in [false, true] {
                parses(&m.backfill_batch(Bounds { lower: has, upper: true }, on_conflict));
            }
            parses(&m.old_after(has));
            parses(&m.boundary(Side::Old, has));
            parses(&m.boundary(Side::Shadow, has));
        }
        for (lower, upper) in [(false, false), (true, false), (false, true), (true, true)] {
            let bounds = Bounds { lower, upper };
            parses(&m.checksum(Side::Old, bounds));
            parses(&m.checksum(Side::Shadow, bounds));
            parses(&m.leaf_diff(bounds));
            parses(&m.sweep(bounds));
        }
        parses(&m.repair(Side::Shadow));
        parses(&m.repair(Side::Old));
        parses(&m.keys_diff());
        parses(&m.canonical_keys());
    }
}

#[test]
fn identifiers_are_quoted_and_expressions_kept() {
    let bounds = Bounds { lower: true, upper: true };
    let sql = compiled(&["region", "id"]).backfill_batch(bounds, true);
    assert!(sql.contains("FROM \"public\".\"Users\""), "{sql}");
    assert!(sql.contains("split_part(name, ' ', 1)"), "{sql}");
    assert!(sql.contains("ON CONFLICT(\"region\", \"id\") DO NOTHING"), "{sql}");
    let plain = compiled(&["region", "id"]).backfill_batch(bounds, false);
    assert!(!plain.contains("ON CONFLICT") && !plain.contains("FOR SHARE"), "{plain}");
}

#[test]
fn repair_writes_only_the_table_behind() {
    let m = compiled(&["id"]);
    let shadow = m.repair(Side::Shadow);
    assert!(shadow.contains("INSERT INTO \"public\".\"users_v2\" (\"id\", \"region\", \"first\")"), "{shadow}");
    assert!(shadow.contains("DELETE FROM \"public\".\"users_v2\""), "{shadow}");
    assert!(
        !shadow.contains("INSERT INTO \"public\".\"Users\"") && !shadow.contains("DELETE FROM \"public\".\"Users\"")
    );
    let old = m.repair(Side::Old);
    assert!(old.contains("INSERT INTO \"public\".\"Users\" (\"id\", \"region\", \"name\")"), "{old}");
    assert!(old.contains("users_v2.first || ' '") && old.contains("AS \"users_v2\""), "{old}");
    assert!(old.contains("DELETE FROM \"public\".\"Users\""), "{old}");
    assert!(
        !old.contains("INSERT INTO \"public\".\"users_v2\"") && !old.contains("DELETE FROM \"public\".\"users_v2\"")
    );
}

/// A merge: `accounts` (id, email) and `profiles` (id, name) into `users` (id, email, display_name).
fn merged() -> CompiledMapping {
    let mapping = TableMapping {
        migration: "m".into(),
        old: QualifiedName::new("public", "accounts"),
        shadow: QualifiedName::new("public", "users"),
        key: vec!["id".into()],
        forward: vec![
            ("id".into(), "id".into()),
            ("email".into(), "lower(email)".into()),
            ("display_name".into(), "name".into()),
        ],
        backward: vec![
            ("id".into(), "id".into()),
            ("email".into(), "email".into()),
            ("name".into(), "display_name".into()),
        ],
        targets: vec![(
            QualifiedName::new("public", "users"),
            vec!["id".into(), "email".into(), "display_name".into()],
        )],
        sources: vec![
            (
                QualifiedName::new("public", "accounts"),
                vec!["id".into(), "email".into()],
                vec!["id".into(), "email".into()],
            ),
            (
                QualifiedName::new("public", "profiles"),
                vec!["id".into(), "name".into()],
                vec!["id".into(), "display_name".into()],
            ),
        ],
    };
    CompiledMapping::compile(&mapping, vec![DataType::Int(None), DataType::Text, DataType::Text]).unwrap()
}

#[test]
fn every_merge_variant_reads_the_sources_joined_and_writes_only_the_shadow() {
    let m = merged();
    assert!(m.is_merge() && !m.is_split());
    let joined = "FROM (SELECT \"id\", \"email\" FROM \"public\".\"accounts\" WHERE";
    let second = "FULL JOIN (SELECT \"id\", \"name\" FROM \"public\".\"profiles\" WHERE";
    for has in [false, true] {
        for on_conflict in [false, true] {
            let sql = m.backfill_batch(Bounds { lower: has, upper: true }, on_conflict);
            parses(&sql);
            assert!(sql.contains(joined) && sql.contains(second), "{sql}");
        }
        for sql in [m.old_after(has), m.boundary(Side::Old, has)] {
            parses(&sql);
            assert!(sql.contains(second), "{sql}");
        }
    }
    for (lower, upper) in [(false, false), (true, false), (false, true), (true, true)] {
        let bounds = Bounds { lower, upper };
        let checksum = m.checksum(Side::Old, bounds);
        parses(&checksum);
        assert!(checksum.contains(second), "{checksum}");
        parses(&m.leaf_diff(bounds));
        let sweep = m.sweep(bounds);
        parses(&sweep);
        // Rows no source holds are deleted; a source's columns are nulled where it is gone.
        assert!(sweep.contains("DELETE FROM \"public\".\"users\""), "{sweep}");
        assert!(
            sweep.contains("\"display_name\" = CASE WHEN EXISTS (SELECT 1 FROM \"public\".\"profiles\""),
            "{sweep}"
        );
        assert!(
            !sweep.contains("DELETE FROM \"public\".\"accounts\"") && !sweep.contains("UPDATE \"public\".\"profiles\"")
        );
    }
    parses(&m.keys_diff());
    let repair = m.repair(Side::Shadow);
    parses(&repair);
    assert!(repair.contains("FROM \"public\".\"profiles\" WHERE") && repair.contains("FOR SHARE"), "{repair}");
    assert!(repair.contains("INSERT INTO \"public\".\"users\"") && repair.contains("DELETE FROM \"public\".\"users\""));
    assert!(
        !repair.contains("INSERT INTO \"public\".\"accounts\"")
            && !repair.contains("DELETE FROM \"public\".\"profiles\"")
    );
}

#[test]
fn a_merge_repaired_in_cutover_rebuilds_each_source_from_the_shadow_and_never_writes_it() {
    let m = merged();
    let repair = m.repair(Side::Old);
    parses(&repair);
    assert!(repair.contains("FROM \"public\".\"users\" WHERE") && repair.contains("FOR SHARE"), "{repair}");
    // Each source upserted through its backward where the shadow row holds its columns ...
    assert!(
        repair.contains(
            "INSERT INTO \"public\".\"accounts\" (\"id\", \"email\") SELECT id, email FROM \"__dw_src\" AS \"users\" \
              WHERE \"users\".\"email\" IS NOT NULL"
        ),
        "{repair}"
    );
    assert!(
        repair.contains(
            "INSERT INTO \"public\".\"profiles\" (\"id\", \"name\") SELECT id, display_name FROM \"__dw_src\" \
             AS \"users\" WHERE \"users\".\"display_name\" IS NOT NULL"
        ),
        "{repair}"
    );
    // ... and its row deleted where the shadow row holds none of them, or is gone.
    assert!(repair.contains("DELETE FROM \"public\".\"accounts\" AS \"__dw_s\""), "{repair}");
    assert!(repair.contains("AND (\"__dw_o\".\"display_name\" IS NOT NULL)"), "{repair}");
    assert!(
        !repair.contains("INSERT INTO \"public\".\"users\"") && !repair.contains("DELETE FROM \"public\".\"users\"")
    );
}

#[test]
fn a_merge_source_left_behind_is_a_shadow_row_showing_its_columns_where_it_lacks_the_key() {
    let m = merged();
    let sql = m.merge_source_left_behind(1);
    parses(&sql);
    assert!(sql.contains("NOT EXISTS (SELECT 1 FROM \"public\".\"profiles\""), "{sql}");
    assert!(sql.contains("\"__dw_s\".\"display_name\" IS NOT NULL"), "{sql}");
    assert!(!sql.contains("\"__dw_s\".\"email\" IS NOT NULL"), "another source's columns are not its own: {sql}");
    assert!(!sql.contains("\"public\".\"accounts\""), "another source's rows are not asked: {sql}");
}
