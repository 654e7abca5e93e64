use super::*;
use crate::RuleSet;

fn column(name: &str, sql_type: &str, not_null: bool, default: Option<&str>) -> CurrentColumn {
    CurrentColumn {
        name: name.into(),
        sql_type: sql_type.into(),
        not_null,
        default: default.map(Into::into),
        generated: false,
    }
}

/// `users (id bigint PK default nextval, name text NOT NULL, email character varying(200),
/// amount numeric(12,2), street text, city text)`, with an index on email and a CHECK on amount.
fn users() -> CurrentTable {
    CurrentTable {
        name: TableName::parse("public.users").unwrap(),
        columns: vec![
            column("id", "bigint", true, Some("nextval('users_id_seq'::regclass)")),
            column("name", "text", true, None),
            column("email", "character varying(200)", false, None),
            column("amount", "numeric(12,2)", false, Some("0")),
            column("street", "text", false, None),
            column("city", "text", false, None),
        ],
        primary_key: vec!["id".into()],
        indexes: vec![
            "CREATE UNIQUE INDEX users_email_key ON public.users USING btree (email)".into(),
            "CREATE INDEX by_city ON public.users USING btree (city) WHERE (city IS NOT NULL)".into(),
        ],
        constraints: vec![("users_amount_check".into(), "CHECK ((amount >= (0)::numeric))".into())],
        row_security: RowSecurity::default(),
    }
}

fn options() -> PlanOptions {
    PlanOptions {
        name: "users_v2".into(),
        shadow: TableName::parse("public.users_v2").unwrap(),
        versions: Versions { old: "v1".into(), new: "v2".into() },
    }
}

fn ops(text: &str) -> Target {
    Target::Operations(Operations::from_toml(text, "ops.toml").unwrap())
}

fn plan_ok(target: &Target) -> MigrationPlan {
    plan(&users(), target, &options()).unwrap_or_else(|e| panic!("plan refused: {e}"))
}

fn mapping<'m>(map: &'m [(String, String)], column: &str) -> &'m str {
    &map.iter().find(|(c, _)| c == column).unwrap_or_else(|| panic!("{column} not mapped: {map:?}")).1
}

/// The rules file of a plan reads back, through the proxy's own loader, as the planned migration.
fn assert_rules_load(plan: &MigrationPlan) {
    let text = rules_toml(&plan.migration, &["planned".into()]);
    let rules = RuleSet::from_toml(&text, "planned.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(rules.migrations, vec![plan.migration.clone()], "{text}");
}

/// The DDL script reads back as the same steps.
fn assert_script_reads_back(plan: &MigrationPlan) {
    let script = ddl_script(plan, &["planned".into()]);
    assert_eq!(parse_script(&script).unwrap_or_else(|e| panic!("{e}\n{script}")), plan.ddl, "{script}");
}

#[test]
fn rename_maps_both_ways_and_carries_indexes_and_constraints_in_the_new_name() {
    let plan = plan_ok(&ops("[[rename]]\ncolumn = \"email\"\nto = \"email_address\"\n"));
    let m = &plan.migration;
    assert_eq!(mapping(&m.forward, "email_address"), "email");
    assert_eq!(mapping(&m.backward, "email"), "email_address");
    assert_eq!(mapping(&m.forward, "name"), "name");
    assert_eq!(m.key, vec!["id"]);
    let sql: Vec<&str> = plan.ddl.iter().map(DdlStep::sql).collect();
    assert!(sql[0].starts_with("CREATE TABLE public.users_v2 ("), "{}", sql[0]);
    assert!(sql[0].contains("email_address CHARACTER VARYING(200)"), "{}", sql[0]);
    assert!(sql[0].contains("DEFAULT nextval('users_id_seq'::REGCLASS)"), "{}", sql[0]);
    assert!(sql[0].contains("PRIMARY KEY (id)"), "{}", sql[0]);
    assert!(
        sql.contains(
            &"CREATE UNIQUE INDEX CONCURRENTLY users_v2_email_key ON public.users_v2 USING BTREE (email_address)"
        ),
        "{sql:#?}"
    );
    // An index not named after the old table gets a fresh name (its own would clash in the schema).
    assert!(
        sql.iter().any(|s| s.starts_with("CREATE INDEX CONCURRENTLY users_v2_city_idx ON public.users_v2")),
        "{sql:#?}"
    );
    assert!(
        sql.contains(&"ALTER TABLE public.users_v2 ADD CONSTRAINT users_v2_amount_check CHECK ((amount >= (0)::NUMERIC)) NOT VALID"),
        "{sql:#?}"
    );
    assert_eq!(sql.last(), Some(&"ALTER TABLE public.users_v2 VALIDATE CONSTRAINT users_v2_amount_check"));
    // The trial run inside a transaction builds the indexes plainly and skips the validation.
    let trial: Vec<String> = plan.ddl.iter().filter_map(DdlStep::in_transaction).collect();
    assert_eq!(trial.len(), plan.ddl.len() - 1);
    assert_eq!(trial[1], "CREATE UNIQUE INDEX users_v2_email_key ON public.users_v2 USING BTREE (email_address)");
    assert_rules_load(&plan);
    assert_script_reads_back(&plan);
}

#[test]
fn split_needs_an_inverse_and_drops_definitions_reading_the_split_column() {
    let without_back = ops(
        "[[split]]\ncolumn = \"name\"\ninto = [{ column = \"first_name\", expr = \"split_part(name, ' ', 1)\" },\n\
         { column = \"last_name\", expr = \"split_part(name, ' ', 2)\" }]\n",
    );
    let refused = plan(&users(), &without_back, &options()).unwrap_err();
    assert_eq!(refused.column.as_deref(), Some("name"), "{refused}");
    assert!(refused.message.contains("without `back`"), "{refused}");

    let plan = plan_ok(&ops("[[split]]\ncolumn = \"name\"\nback = \"first_name || ' ' || last_name\"\n\
         into = [{ column = \"first_name\", expr = \"split_part(name, ' ', 1)\" },\n\
         { column = \"last_name\", type = \"varchar(100)\", expr = \"split_part(name, ' ', 2)\" }]\n"));
    let m = &plan.migration;
    let shadow: Vec<&str> = m.shadow_columns().collect();
    assert_eq!(shadow, ["id", "first_name", "last_name", "email", "amount", "street", "city"]);
    assert_eq!(mapping(&m.forward, "first_name"), "split_part(name, ' ', 1)");
    assert_eq!(mapping(&m.backward, "name"), "first_name || ' ' || last_name");
    assert!(
        plan.ddl[0].sql().contains("first_name TEXT NOT NULL, last_name VARCHAR(100) NOT NULL"),
        "{:?}",
        plan.ddl[0]
    );
    assert_rules_load(&plan);
    assert_script_reads_back(&plan);
}

#[test]
fn merge_needs_an_inverse_for_every_merged_column() {
    let missing =
        ops("[[merge]]\ncolumns = [\"street\", \"city\"]\ninto = \"address\"\nexpr = \"street || ', ' || city\"\n\
         back = { street = \"split_part(address, ', ', 1)\" }\n");
    let refused = plan(&users(), &missing, &options()).unwrap_err();
    assert_eq!(refused.column.as_deref(), Some("city"), "{refused}");

    let plan = plan_ok(&ops(
        "[[merge]]\ncolumns = [\"street\", \"city\"]\ninto = \"address\"\nexpr = \"street || ', ' || city\"\n\
         back = { street = \"split_part(address, ', ', 1)\", city = \"split_part(address, ', ', 2)\" }\n",
    ));
    let m = &plan.migration;
    assert_eq!(m.shadow_columns().collect::<Vec<_>>(), ["id", "name", "email", "amount", "address"]);
    assert_eq!(m.old_columns().collect::<Vec<_>>(), ["id", "name", "email", "amount", "street", "city"]);
    assert_eq!(mapping(&m.backward, "city"), "split_part(address, ', ', 2)");
    assert!(
        plan.notes.iter().any(|n| n.contains("index not carried over") && n.contains("`city`")),
        "{:?}",
        plan.notes
    );
    assert!(!plan.ddl.iter().any(|s| s.sql().contains("city")), "{:?}", plan.ddl);
    assert_rules_load(&plan);
}

#[test]
fn change_type_casts_each_way_unless_expressions_are_given() {
    let plan = plan_ok(&ops("[[change_type]]\ncolumn = \"amount\"\ntype = \"bigint\"\n"));
    assert_eq!(mapping(&plan.migration.forward, "amount"), "CAST(amount AS BIGINT)");
    assert_eq!(mapping(&plan.migration.backward, "amount"), "CAST(amount AS NUMERIC(12,2))");
    assert!(plan.ddl[0].sql().contains("amount BIGINT DEFAULT 0"), "{:?}", plan.ddl[0]);

    let plan = plan_ok(&ops(
        "[[change_type]]\ncolumn = \"amount\"\ntype = \"bigint\"\nforward = \"(amount * 100)::bigint\"\n\
         backward = \"amount / 100.0\"\n",
    ));
    assert_eq!(mapping(&plan.migration.forward, "amount"), "(amount * 100)::BIGINT");
    assert_eq!(mapping(&plan.migration.backward, "amount"), "amount / 100.0");
    assert_rules_load(&plan);

    let bad = super::plan(&users(), &ops("[[change_type]]\ncolumn = \"amount\"\ntype = \"numeric(\"\n"), &options());
    assert_eq!(bad.unwrap_err().column.as_deref(), Some("amount"));
}

#[test]
fn an_added_column_is_not_null_with_its_default_and_left_out_of_the_mappings() {
    let plan = plan_ok(&ops("[[add_column]]\ncolumn = \"status\"\ntype = \"text\"\ndefault = \"'active'\"\n"));
    assert!(!plan.migration.forward.iter().any(|(c, _)| c == "status"));
    assert!(plan.ddl[0].sql().contains("status TEXT NOT NULL DEFAULT 'active'"), "{:?}", plan.ddl[0]);
    assert_rules_load(&plan);

    let clash = super::plan(
        &users(),
        &ops("[[add_column]]\ncolumn = \"city\"\ntype = \"text\"\ndefault = \"''\"\n"),
        &options(),
    );
    assert_eq!(clash.unwrap_err().column.as_deref(), Some("city"));
}

#[test]
fn a_new_primary_key_keeps_a_unique_index_on_the_old_one_for_the_upserts() {
    let plan = plan_ok(&ops("[primary_key]\ncolumns = [\"email\", \"id\"]\n"));
    assert!(plan.ddl[0].sql().contains("PRIMARY KEY (email, id)"), "{:?}", plan.ddl[0]);
    assert_eq!(plan.migration.key, vec!["id"]);
    assert!(
        plan.ddl.iter().any(|s| s.sql() == "CREATE UNIQUE INDEX CONCURRENTLY users_v2_id_key ON public.users_v2(id)"),
        "{:?}",
        plan.ddl
    );
    assert!(plan.notes.iter().any(|n| n.contains("unique index on (id)")), "{:?}", plan.notes);

    let unknown = super::plan(&users(), &ops("[primary_key]\ncolumns = [\"nope\"]\n"), &options());
    assert_eq!(unknown.unwrap_err().column.as_deref(), Some("nope"));
}

#[test]
fn key_columns_cannot_be_renamed_split_or_merged() {
    for text in [
        "[[rename]]\ncolumn = \"id\"\nto = \"user_id\"\n",
        "[[merge]]\ncolumns = [\"id\", \"city\"]\ninto = \"x\"\nexpr = \"id::text || city\"\n\
         back = { id = \"1\", city = \"x\" }\n",
    ] {
        let refused = plan(&users(), &ops(text), &options()).unwrap_err();
        assert_eq!(refused.column.as_deref(), Some("id"), "{text}: {refused}");
        assert!(refused.message.contains("primary key"), "{refused}");
    }
}

#[test]
fn operations_on_unknown_or_twice_named_columns_are_refused() {
    let unknown = plan(&users(), &ops("[[rename]]\ncolumn = \"nope\"\nto = \"x\"\n"), &options()).unwrap_err();
    assert_eq!(unknown.column.as_deref(), Some("nope"));
    let twice = ops(
        "[[rename]]\ncolumn = \"city\"\nto = \"town\"\n[[change_type]]\ncolumn = \"city\"\ntype = \"varchar(10)\"\n",
    );
    let refused = plan(&users(), &twice, &options()).unwrap_err();
    assert_eq!(refused.column.as_deref(), Some("city"));
    assert!(refused.message.contains("more than one operation"), "{refused}");
    let clash = ops("[[rename]]\ncolumn = \"city\"\nto = \"street\"\n");
    assert_eq!(plan(&users(), &clash, &options()).unwrap_err().column.as_deref(), Some("street"));
    assert!(Operations::from_toml("[[rename]]\ncolumn = \"a\"\n", "ops.toml").is_err(), "`to` is required");
    assert!(Operations::from_toml("[[drop]]\ncolumn = \"a\"\n", "ops.toml").is_err(), "unknown operation");
}

#[test]
fn a_mapping_reading_a_column_that_is_not_there_is_refused_naming_it() {
    let refused = plan(
        &users(),
        &ops("[[change_type]]\ncolumn = \"amount\"\ntype = \"bigint\"\nbackward = \"amount_cents / 100\"\n"),
        &options(),
    )
    .unwrap_err();
    assert_eq!(refused.column.as_deref(), Some("amount"), "{refused}");
    assert!(refused.message.contains("amount_cents"), "{refused}");
}

#[test]
fn create_table_target_matches_columns_by_name_and_casts_changed_types() {
    let target = Target::CreateTable(
        "CREATE TABLE users_new (
            id bigint PRIMARY KEY DEFAULT nextval('users_id_seq'),
            name text NOT NULL,
            email varchar(200) UNIQUE,
            amount bigint CHECK (amount >= 0),
            street text,
            city text,
            created_at timestamptz NOT NULL DEFAULT now(),
            org_id int REFERENCES orgs (id)
         );
         CREATE INDEX ON users_new (lower(email));"
            .into(),
    );
    let plan = plan_ok(&target);
    let m = &plan.migration;
    assert_eq!(mapping(&m.forward, "email"), "email", "varchar(200) = character varying(200)");
    assert_eq!(mapping(&m.forward, "amount"), "CAST(amount AS BIGINT)");
    assert_eq!(mapping(&m.backward, "amount"), "CAST(amount AS NUMERIC(12,2))");
    assert!(!m.forward.iter().any(|(c, _)| c == "created_at" || c == "org_id"));
    assert_eq!(m.old_columns().collect::<Vec<_>>(), ["id", "name", "email", "amount", "street", "city"]);
    let sql: Vec<&str> = plan.ddl.iter().map(DdlStep::sql).collect();
    assert!(sql[0].starts_with("CREATE TABLE public.users_v2 ("), "the shadow's name is used: {}", sql[0]);
    assert!(!sql[0].contains("UNIQUE") && !sql[0].contains("CHECK") && !sql[0].contains("REFERENCES"), "{}", sql[0]);
    assert!(sql.contains(&"CREATE UNIQUE INDEX CONCURRENTLY users_v2_email_key ON public.users_v2(email)"), "{sql:#?}");
    assert!(sql.contains(&"CREATE INDEX CONCURRENTLY users_v2_expr_idx ON public.users_v2(lower(email))"), "{sql:#?}");
    assert!(sql.iter().any(|s| s.contains("ADD CONSTRAINT users_v2_amount_check CHECK (amount >= 0) NOT VALID")));
    assert!(sql
        .iter()
        .any(|s| s.contains("ADD CONSTRAINT users_v2_org_id_fkey FOREIGN KEY (org_id) REFERENCES orgs(id) NOT VALID")));
    assert_rules_load(&plan);
    assert_script_reads_back(&plan);
}

#[test]
fn create_table_target_refuses_what_the_mappings_cannot_fill() {
    let required_new = Target::CreateTable(
        "CREATE TABLE x (id bigint PRIMARY KEY, name text NOT NULL, email text, amount numeric(12,2),
         street text, city text, tier int NOT NULL)"
            .into(),
    );
    let refused = plan(&users(), &required_new, &options()).unwrap_err();
    assert_eq!(refused.column.as_deref(), Some("tier"), "{refused}");

    let drops_required = Target::CreateTable("CREATE TABLE x (id bigint PRIMARY KEY, email text)".into());
    let refused = plan(&users(), &drops_required, &options()).unwrap_err();
    assert_eq!(refused.column.as_deref(), Some("name"), "{refused}");

    let drops_nullable =
        Target::CreateTable("CREATE TABLE x (id bigint PRIMARY KEY, name text NOT NULL, email text)".into());
    let plan = plan_ok(&drops_nullable);
    assert!(plan.notes.iter().any(|n| n.starts_with("street is not in the target")), "{:?}", plan.notes);

    for (sql, expected) in [
        ("SELECT 1", "must start with one CREATE TABLE"),
        ("CREATE TABLE x (id bigint, name text NOT NULL)", "no primary key"),
        ("CREATE TABLE x (id bigint PRIMARY KEY, name text NOT NULL); DROP TABLE users", "only hold CREATE INDEX"),
        ("CREATE TABLE x AS SELECT * FROM users", "must list its columns"),
    ] {
        let refused = super::plan(&users(), &Target::CreateTable(sql.into()), &options()).unwrap_err();
        assert!(refused.to_string().contains(expected), "{sql}: {refused}");
    }
}

#[test]
fn tables_without_a_primary_key_or_with_generated_columns_are_refused() {
    let mut no_key = users();
    no_key.primary_key.clear();
    assert!(plan(&no_key, &ops(""), &options()).unwrap_err().message.contains("no primary key"));
    let mut generated = users();
    generated.columns[5].generated = true;
    assert_eq!(plan(&generated, &ops(""), &options()).unwrap_err().column.as_deref(), Some("city"));
}

#[test]
fn names_are_cut_to_63_bytes_and_never_reused() {
    let mut long = users();
    long.indexes = vec![
        format!("CREATE INDEX users_{} ON public.users USING btree (city)", "a".repeat(70)),
        format!("CREATE INDEX users_{}b ON public.users USING btree (street)", "a".repeat(70)),
    ];
    long.constraints.clear();
    let plan = super::plan(&long, &ops(""), &options()).unwrap();
    let names: Vec<&String> = plan
        .ddl
        .iter()
        .filter_map(|s| match s {
            DdlStep::CreateIndex { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| n.len() <= 63), "{names:?}");
    assert_ne!(names[0], names[1]);
}

#[test]
fn rules_of_quoted_names_and_awkward_expressions_read_back() {
    let mut table = users();
    table.name = TableName::parse("app.\"Users\"").unwrap();
    table.columns.push(column("Weird \"col\"", "text", false, None));
    let options = PlanOptions { shadow: TableName::parse("app.\"Users_v2\"").unwrap(), ..options() };
    let plan = super::plan(
        &table,
        &ops("[[rename]]\ncolumn = \"Weird \\\"col\\\"\"\nto = \"tidy\"\n[[change_type]]\ncolumn = \"city\"\ntype = \"text\"\nforward = \"replace(city, '\\\\', '/')\"\n"),
        &options,
    )
    .unwrap();
    assert_eq!(mapping(&plan.migration.backward, "Weird \"col\""), "tidy");
    assert_rules_load(&plan);
    assert_script_reads_back(&plan);
}

#[test]
fn scripts_with_other_statements_are_refused() {
    assert!(parse_script("CREATE INDEX i ON t (a)").unwrap_err().contains("statement 1"), "not concurrent");
    assert!(parse_script("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0)").is_err(), "not NOT VALID");
    assert!(parse_script("DROP TABLE users").is_err());
    assert_eq!(
        parse_script("-- a comment\nALTER TABLE t VALIDATE CONSTRAINT \"C\";").unwrap(),
        vec![DdlStep::ValidateConstraint { name: "C".into(), sql: "ALTER TABLE t VALIDATE CONSTRAINT \"C\"".into() }]
    );
}

/// `users` under forced row-level security: an owner policy on `email`, a restrictive one with a subquery
/// over another table, and one on `name`.
fn secured() -> CurrentTable {
    let mut users = users();
    users.row_security = RowSecurity {
        enabled: true,
        forced: true,
        policies: vec![
            "CREATE POLICY own_rows ON __dw_table AS PERMISSIVE FOR ALL TO app \
             USING (((email)::text = CURRENT_USER)) WITH CHECK (((email)::text = CURRENT_USER))"
                .into(),
            "CREATE POLICY known_city ON __dw_table AS RESTRICTIVE FOR SELECT TO PUBLIC \
             USING ((city IN ( SELECT cities.name FROM cities)))"
                .into(),
            "CREATE POLICY named ON __dw_table AS PERMISSIVE FOR SELECT TO PUBLIC USING ((name <> ''::text))".into(),
        ],
    };
    users
}

#[test]
fn policies_are_re_expressed_over_the_shadows_columns_before_row_security_is_enabled_and_forced() {
    let plan = plan(
        &secured(),
        &ops("[[rename]]\ncolumn = \"email\"\nto = \"email_address\"\n\n[[split]]\ncolumn = \"name\"\n\
              back = \"first_name || ' ' || last_name\"\n\
              into = [{ column = \"first_name\", expr = \"split_part(name, ' ', 1)\" },\n\
              { column = \"last_name\", expr = \"split_part(name, ' ', 2)\" }]\n"),
        &options(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let sql: Vec<&str> = plan.ddl.iter().map(DdlStep::sql).collect();
    assert_eq!(
        sql[sql.len() - 5..],
        [
            "CREATE POLICY own_rows ON public.users_v2 AS PERMISSIVE FOR ALL TO app USING (((email_address)::TEXT = \
             CURRENT_USER)) WITH CHECK (((email_address)::TEXT = CURRENT_USER))",
            "CREATE POLICY known_city ON public.users_v2 AS RESTRICTIVE FOR SELECT TO PUBLIC USING ((city IN \
             (SELECT cities.name FROM cities)))",
            "CREATE POLICY named ON public.users_v2 AS PERMISSIVE FOR SELECT TO PUBLIC USING (((first_name || ' ' || \
             last_name) <> ''::TEXT))",
            "ALTER TABLE public.users_v2 ENABLE ROW LEVEL SECURITY",
            "ALTER TABLE public.users_v2 FORCE ROW LEVEL SECURITY",
        ]
    );
    assert!(plan.ddl.iter().rev().take(5).all(|step| step.in_transaction().is_none()), "not in the trial run");
    assert_script_reads_back(&plan);
    // Without row-level security on the old table, none of it.
    let open = plan_ok(&ops("[[rename]]\ncolumn = \"email\"\nto = \"email_address\"\n"));
    assert!(!open.ddl.iter().any(|s| matches!(s, DdlStep::CreatePolicy { .. } | DdlStep::RowSecurity { .. })));
}

#[test]
fn a_policy_naming_the_old_table_inside_a_subquery_is_not_carried_and_the_plan_says_so() {
    let mut users = secured();
    users.row_security.policies = vec!["CREATE POLICY member ON __dw_table AS PERMISSIVE FOR ALL TO PUBLIC \
         USING ((EXISTS ( SELECT 1 FROM memberships m WHERE (m.user_id = users.id))))"
        .into()];
    let refused = plan(&users, &ops("[[rename]]\ncolumn = \"email\"\nto = \"email_address\"\n"), &options())
        .expect_err("a correlated policy is not guessed at");
    assert!(
        refused.message.starts_with("policy member of public.users names public.users inside a subquery"),
        "{refused}"
    );
    assert!(refused.message.contains("create the shadow's policies by hand"), "{refused}");
}
