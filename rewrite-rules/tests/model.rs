//! The rules model: the example files load, and each kind of mistake is reported with file, migration and
//! field.

use dualwrite_rules::{Phase, RuleSet, TableName};

fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn users_split_name_example_loads_in_file_order() {
    let rules = RuleSet::from_toml(&example("users_split_name.toml"), "users_split_name.toml").unwrap();
    assert_eq!(rules.migrations.len(), 1);
    let m = &rules.migrations[0];
    assert_eq!(m.name, "users_split_name");
    assert_eq!(m.table, TableName { schema: Some("public".into()), name: "users".into() });
    assert_eq!(m.shadow.to_string(), "public.users_v2");
    assert_eq!(m.key, vec!["id"]);
    assert_eq!((m.versions.old.as_str(), m.versions.new.as_str()), ("v1", "v2"));
    assert_eq!(m.shadow_columns().collect::<Vec<_>>(), ["id", "first_name", "last_name", "email"]);
    assert_eq!(m.old_columns().collect::<Vec<_>>(), ["id", "name", "email"]);
    assert_eq!(m.forward[1], ("first_name".to_string(), "split_part(name, ' ', 1)".to_string()));
    assert_eq!(m.initial_phase, Phase::DualWrite);
}

#[test]
fn orders_example_has_a_composite_key() {
    let rules = RuleSet::from_toml(&example("orders_amount_numeric.toml"), "orders.toml").unwrap();
    let m = &rules.migrations[0];
    assert_eq!(m.key, vec!["shop_id", "id"]);
    assert_eq!(m.table, TableName { schema: None, name: "orders".into() });
}

#[test]
fn phase_round_trips_through_text() {
    for p in Phase::ALL {
        assert_eq!(p.to_string().parse::<Phase>().unwrap(), p);
    }
    assert_eq!("DUAL_WRITE".parse::<Phase>().unwrap(), Phase::DualWrite);
    assert!("cutover!".parse::<Phase>().is_err());
}

const BASE: &str = r#"
[[migration]]
name = "m1"
table = "a"
shadow = "a_v2"
key = ["id"]
versions = { old = "v1", new = "v2" }
forward = { id = "id", x = "y + 1" }
backward = { id = "id", y = "x - 1" }
"#;

fn error_of(text: &str) -> String {
    RuleSet::from_toml(text, "rules.toml").unwrap_err().to_string()
}

#[test]
fn base_is_valid_and_can_start_off() {
    RuleSet::from_toml(BASE, "rules.toml").unwrap();
    let off = BASE.replace("key = [\"id\"]", "key = [\"id\"]\ninitial_phase = \"off\"");
    assert_eq!(RuleSet::from_toml(&off, "x").unwrap().migrations[0].initial_phase, Phase::Off);
}

#[test]
fn errors_name_file_migration_and_field() {
    let cases = [
        (BASE.replace("y + 1", "y +"), "rules.toml: migration `m1`: field `forward.x`: `y +` is not a SQL expression"),
        (BASE.replace("y + 1", "z + 1"), "rules.toml: migration `m1`: field `forward.x`: refers to `z`"),
        (BASE.replace("x - 1", "y - 1"), "rules.toml: migration `m1`: field `backward.y`: refers to `y`"),
        (BASE.replace("[\"id\"]", "[\"nope\"]"), "field `forward`: must map key column `nope`"),
        (BASE.replace("[\"id\"]", "[]"), "field `key`: names no column"),
        (BASE.replace("\"a_v2\"", "\"a\""), "field `shadow`: must differ from `table`"),
        (BASE.replace("\"a_v2\"", "\"a b\""), "field `shadow`: `a b` is not a table name"),
        (BASE.replace("new = \"v2\"", "new = \"v1\""), "field `versions`: `old` and `new` must differ"),
        (
            BASE.replace("key = [\"id\"]", "key = [\"id\"]\nphase = \"complete\""),
            "field `initial_phase`: a migration cannot start in `complete`",
        ),
        (BASE.replace("name = \"m1\"", "name = \"\""), "migration `#1`: field `name`"),
        (
            format!("{BASE}{}", BASE.replace("a_v2", "a_v3")),
            "migration `m1`: field `name`: another migration has the same name",
        ),
        (
            format!("{BASE}{}", BASE.replace("m1", "m2").replace("\"a\"", "\"public.a\"").replace("a_v2", "a_v3")),
            "migration `m2`: field `table`: `public.a` is already used by migration `m1`",
        ),
        (BASE.replace("key = ", "kee = "), "rules.toml: line 6: unknown field `kee`"),
        (String::new(), "rules.toml: field `migration`: the file defines no [[migration]]"),
    ];
    for (text, expected) in cases {
        let got = error_of(&text);
        assert!(got.contains(expected), "expected `{expected}` in `{got}`");
    }
}

#[test]
fn shadow_read_sample_defaults_to_zero_and_must_be_a_fraction() {
    use dualwrite_rules::SampleRate;
    let rules = RuleSet::from_toml(BASE, "rules.toml").unwrap();
    assert_eq!(rules.migrations[0].shadow_read_sample, SampleRate::ZERO);
    let with = |v: &str| BASE.replace("key = [\"id\"]", &format!("key = [\"id\"]\nshadow_read_sample = {v}"));
    let rules = RuleSet::from_toml(&with("0.01"), "rules.toml").unwrap();
    assert_eq!(rules.migrations[0].shadow_read_sample.as_fraction(), 0.01);
    assert_eq!(RuleSet::from_toml(&with("1"), "rules.toml").unwrap().migrations[0].shadow_read_sample, SampleRate::ALL);
    for bad in ["1.5", "-0.1", "nan"] {
        let e = error_of(&with(bad));
        assert!(e.contains("migration `m1`: field `shadow_read_sample`: must be a number from 0 to 1"), "{bad}: {e}");
    }
}

#[test]
fn accept_unseen_writers_defaults_to_none_and_each_identifier_is_checked() {
    assert!(RuleSet::from_toml(BASE, "rules.toml").unwrap().migrations[0].accept_unseen_writers.is_empty());
    let with = |v: &str| BASE.replace("key = [\"id\"]", &format!("key = [\"id\"]\naccept_unseen_writers = {v}"));
    let good = r#"["fk:orders_user_id_fkey", "trigger:public.orders.orders_touch", "function:public.f(integer, text)",
        "procedure:app.\"P\"()", "view:public.active_users", "rule:public.orders.log_orders"]"#;
    let rules = RuleSet::from_toml(&with(good), "rules.toml").unwrap();
    assert_eq!(rules.migrations[0].accept_unseen_writers.len(), 6);
    assert_eq!(rules.migrations[0].accept_unseen_writers[2], "function:public.f(integer, text)");
    for (bad, complaint) in [
        (r#"["orders_user_id_fkey"]"#, "has no kind"),
        (r#"["index:users_pkey"]"#, "unknown kind `index`"),
        (r#"["fk:"]"#, "is not a well-formed identifier"),
        (r#"["function:public.f"]"#, "is not a well-formed identifier"),
        (r#"["trigger:orders_touch"]"#, "is not a well-formed identifier"),
        (r#"["view: public.v"]"#, "is not a well-formed identifier"),
        (r#"["fk:a", "fk:a"]"#, "`fk:a` is listed twice"),
    ] {
        let e = error_of(&with(bad));
        assert!(e.contains("migration `m1`: field `accept_unseen_writers`: "), "{bad}: {e}");
        assert!(e.contains(complaint), "{bad}: {e}");
    }
}

#[test]
fn a_key_is_carried_over_as_its_own_column_or_a_cast_of_it_never_through_an_expression() {
    for carried in ["(id)", "id::bigint", "CAST(id AS text)", "\\\"id\\\""] {
        let text = BASE.replace(r#"forward = { id = "id""#, &format!(r#"forward = {{ id = "{carried}""#));
        assert_ne!(text, BASE);
        RuleSet::from_toml(&text, "rules.toml").unwrap_or_else(|e| panic!("{carried}: {e}"));
    }
    for (side, expression) in [("forward", "lower(id)"), ("forward", "id + 1"), ("backward", "coalesce(id, 0)")] {
        let text = BASE.replace(&format!(r#"{side} = {{ id = "id""#), &format!(r#"{side} = {{ id = "{expression}""#));
        let e = error_of(&text);
        assert!(e.contains(&format!("migration `m1`: field `{side}.id`: `{expression}` maps key column `id`")), "{e}");
        assert!(e.contains("one row's upsert would overwrite the other"), "{e}");
    }
}

#[test]
fn accept_key_triggers_defaults_to_none_and_each_names_a_trigger_of_a_table() {
    assert!(RuleSet::from_toml(BASE, "rules.toml").unwrap().migrations[0].accept_key_triggers.is_empty());
    let with = |v: &str| BASE.replace("key = [\"id\"]", &format!("key = [\"id\"]\naccept_key_triggers = {v}"));
    let rules = RuleSet::from_toml(&with(r#"["public.users_v2.assign_id", "app.\"Users\".t"]"#), "r").unwrap();
    assert_eq!(rules.migrations[0].accept_key_triggers, ["public.users_v2.assign_id", "app.\"Users\".t"]);
    for (bad, complaint) in [
        (r#"["assign_id"]"#, "expected `<schema>.<table>.<trigger>`"),
        (r#"["users_v2.assign_id"]"#, "expected `<schema>.<table>.<trigger>`"),
        (r#"["public..assign_id"]"#, "expected `<schema>.<table>.<trigger>`"),
        (r#"[" public.users_v2.t"]"#, "expected `<schema>.<table>.<trigger>`"),
        (r#"["public.u.t", "public.u.t"]"#, "`public.u.t` is listed twice"),
    ] {
        let e = error_of(&with(bad));
        assert!(e.contains("migration `m1`: field `accept_key_triggers`: "), "{bad}: {e}");
        assert!(e.contains(complaint), "{bad}: {e}");
    }
}

#[test]
fn database_is_optional_and_tables_clash_only_within_one_database() {
    assert_eq!(RuleSet::from_toml(BASE, "rules.toml").unwrap().migrations[0].database, None);
    let in_db =
        |db: &str, name: &str| BASE.replace("name = \"m1\"", &format!("name = \"{name}\"\ndatabase = \"{db}\""));
    let rules = RuleSet::from_toml(&format!("{}{}", in_db("app", "m1"), in_db("Other DB", "m2")), "r").unwrap();
    let databases: Vec<_> = rules.migrations.iter().map(|m| m.database.as_deref()).collect();
    assert_eq!(databases, [Some("app"), Some("Other DB")], "kept verbatim: database names are case-sensitive");
    let same = error_of(&format!("{}{}", in_db("app", "m1"), in_db("app", "m2")));
    assert!(same.contains("migration `m2`: field `table`: `a` is already used by migration `m1`"), "{same}");
    let twice = error_of(&format!("{}{}", in_db("app", "m1"), in_db("other", "m1")));
    assert!(twice.contains("migration `m1`: field `name`: another migration has the same name"), "{twice}");
    let empty = error_of(&in_db("", "m1"));
    assert!(empty.contains("migration `m1`: field `database`: must be a database name"), "{empty}");
}

#[test]
fn on_bypass_defaults_to_alert_and_takes_repair() {
    use dualwrite_rules::OnBypass;
    assert_eq!(RuleSet::from_toml(BASE, "rules.toml").unwrap().migrations[0].on_bypass, OnBypass::Alert);
    let with = |v: &str| BASE.replace("key = [\"id\"]", &format!("key = [\"id\"]\non_bypass = {v}"));
    let rules = RuleSet::from_toml(&with("\"repair\""), "rules.toml").unwrap();
    assert_eq!(rules.migrations[0].on_bypass, OnBypass::Repair);
    let e = error_of(&with("\"fix\""));
    assert!(e.contains("unknown variant `fix`") && e.contains("alert") && e.contains("repair"), "{e}");
}
