//! Which relation an unqualified table name means in one session, as its own server resolves it.
//!
//! A statement may only be rewritten, routed or refused for a migration when the relation it names is the
//! migrated one. A schema-qualified name says so by itself; an unqualified one depends on the session's
//! `search_path` (set by SET, SET LOCAL, RESET, `set_config()`, the role's and database's defaults, the
//! startup options), on `$user`, and on a temporary table of that name, which `pg_temp` puts first. The
//! proxy does not mirror all of that: it asks the session's own connection (`to_regclass`, a hidden probe
//! the relay runs before the statement) and keeps the answer until something the session does may change
//! it: a SET / RESET / DISCARD, `set_config`, DDL, DO, CALL, a rollback, or the end of a transaction in
//! which any of those ran (COMMIT undoes SET LOCAL). Pure: the session feeds it statements and
//! transaction states; the probe's SQL and the parsing of its answer live here too.

use dualwrite_rules::{quote_ident, Rewriter, Route, RuleSet};

use super::statement_effect::{effect, Effect};

/// What one session knows of its name resolution.
#[derive(Debug, Default)]
pub struct NameResolution {
    /// The rules generation and, for it, the migrations whose unqualified name reaches another relation
    /// and the session's `search_path`; `None` until probed, and again after anything that may have
    /// changed the resolution.
    known: Option<Known>,
    /// A statement that may change the resolution ran in the current transaction: its end may undo or
    /// finish the change, so what was learnt inside it is forgotten then.
    changed_in_transaction: bool,
    /// The last probe failed (an aborted transaction): the next statement is judged without one.
    probe_failed: bool,
    /// A probe has been answered: from then on statements are watched for changes. A session that never
    /// names a migrated table never pays for the watching.
    watching: bool,
}

#[derive(Debug)]
struct Known {
    generation: u64,
    elsewhere: Vec<usize>,
    /// Merges (also in `elsewhere`) whose old tables' bare names do not all mean the same: some reach
    /// the migrated table, some another relation.
    mixed: Vec<usize>,
    /// Migrations none of whose shadows' bare names reach the shadow.
    shadow_elsewhere: Vec<usize>,
    search_path: String,
}

impl NameResolution {
    fn known(&self, generation: u64) -> Option<&Known> {
        self.known.as_ref().filter(|k| k.generation == generation)
    }

    /// Migrations whose unqualified name reaches another relation, if known under rules `generation`.
    pub fn elsewhere(&self, generation: u64) -> Option<&[usize]> {
        self.known(generation).map(|k| &k.elsewhere[..])
    }

    /// Migrations none of whose shadow tables an unqualified reference to its name reaches, if known under
    /// rules `generation`.
    pub fn shadow_elsewhere(&self, generation: u64) -> Option<&[usize]> {
        self.known(generation).map(|k| &k.shadow_elsewhere[..])
    }

    /// Merges among `elsewhere` whose sources' unqualified names resolve differently from each other, if
    /// known under rules `generation`: a statement naming one of their sources unqualified cannot be
    /// planned for all of them at once (see `live::session::resolve`).
    pub fn mixed(&self, generation: u64) -> Option<&[usize]> {
        self.known(generation).map(|k| &k.mixed[..])
    }

    /// The session's `search_path` as the server reported it with the resolution (a shadow read runs its
    /// statements under it, so they name the relations the session's do).
    pub fn search_path(&self, generation: u64) -> Option<&str> {
        self.known(generation).map(|k| k.search_path.as_str())
    }

    /// The query that asks the session's server, for each migration of `rules`, whether its unqualified
    /// name resolves to the migrated table (one column per migration), then whether an unqualified shadow
    /// name resolves to that shadow (one more column per migration), and its `search_path`.
    pub fn probe_sql(rules: &RuleSet) -> String {
        let reaches = |t: &dualwrite_rules::TableName| {
            let bare = sql_literal(&quote_ident(&t.name));
            let qualified = sql_literal(&t.qualified().to_string());
            format!("coalesce(pg_catalog.to_regclass({bare}) = pg_catalog.to_regclass({qualified}), false)")
        };
        // A split has several shadows: any one reached counts, so that a write to it is refused (a refusal
        // of a write to another relation of a shadow's name is the safe mistake).
        let shadows = rules.migrations.iter().map(|m| {
            let each: Vec<String> = m.shadow_tables().into_iter().map(reaches).collect();
            format!("({})", each.join(" OR "))
        });
        let columns: Vec<String> = rules
            .migrations
            .iter()
            .map(|m| {
                if !m.is_merge() {
                    return reaches(&m.table);
                }
                // A merge has several old tables: 't' if every bare name reaches its table, 'f' if none
                // does, 'm' (mixed) otherwise.
                let each: Vec<String> = m.old_tables().into_iter().map(reaches).collect();
                format!(
                    "CASE WHEN {} THEN 't' WHEN NOT ({}) THEN 'f' ELSE 'm' END",
                    each.join(" AND "),
                    each.join(" OR ")
                )
            })
            .chain(shadows)
            .collect();
        format!(
            "/* dualwrite: name resolution */ SELECT {}, pg_catalog.current_setting('search_path')",
            columns.join(", ")
        )
    }

    /// Takes the probe's answer for `rules` of `generation` (`None`: the probe failed). `in_transaction`:
    /// the probe ran inside a transaction block.
    pub fn learn(
        &mut self,
        generation: u64,
        rules: &RuleSet,
        answer: Option<Vec<Option<String>>>,
        in_transaction: bool,
    ) {
        let count = rules.migrations.len();
        let parsed = answer.filter(|row| row.len() == 2 * count + 1).map(|mut row| {
            let search_path = row.pop().flatten().unwrap_or_default();
            let shadow_elsewhere = row
                .split_off(count)
                .iter()
                .enumerate()
                .filter(|(_, value)| value.as_deref() != Some("t"))
                .map(|(index, _)| index)
                .collect::<Vec<usize>>();
            let elsewhere = row
                .iter()
                .enumerate()
                .filter(|(_, value)| value.as_deref() != Some("t"))
                .map(|(index, _)| index)
                .collect::<Vec<usize>>();
            let mixed = row
                .iter()
                .enumerate()
                .filter(|(_, value)| value.as_deref() == Some("m"))
                .map(|(index, _)| index)
                .collect::<Vec<usize>>();
            Known { generation, elsewhere, mixed, shadow_elsewhere, search_path }
        });
        match parsed {
            Some(known) => self.known = Some(known),
            None => self.probe_failed = true,
        }
        if !std::mem::replace(&mut self.watching, true) && in_transaction {
            // Statements of this transaction before the first probe were not watched: one of them may have
            // been a SET LOCAL, so the answer is only trusted until the transaction ends.
            self.changed_in_transaction = true;
        }
    }

    /// True once after a failed probe: the statement that asked for it goes on without asking again.
    pub fn take_probe_failed(&mut self) -> bool {
        std::mem::take(&mut self.probe_failed)
    }

    /// The session sends `sql`: forget the resolution if it may change it.
    pub fn sending(&mut self, sql: &str) {
        if !self.watching || (self.changed_in_transaction && self.known.is_none()) {
            return;
        }
        match effect(sql) {
            Effect::MayChange => self.changed(),
            // A rollback undoes only what its transaction changed.
            Effect::Undoes if self.changed_in_transaction => self.changed(),
            Effect::Undoes | Effect::None => {}
        }
    }

    /// Something the session ran may have changed the resolution.
    pub fn changed(&mut self) {
        self.known = None;
        self.changed_in_transaction = true;
    }

    /// The server's ReadyForQuery with transaction status `status`.
    pub fn ready(&mut self, status: u8) {
        if status == b'I' && std::mem::take(&mut self.changed_in_transaction) {
            self.known = None;
        }
    }
}

/// A SQL string literal.
fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The answer to "which relation does this unqualified name mean here" matters for a statement and is
/// not known.
pub(super) struct Unresolved;

/// `route` under the session's name resolution `resolution` for rules generation `generation`: the
/// migrations whose (shadow) names reach other relations, when known; when not, `route` itself as long as
/// `sql`'s plan does not depend on it (`Unresolved` otherwise, and for a merge some of whose bare source
/// names reach their sources and some do not, when the plan depends on which).
pub(super) fn resolve(
    mut route: Route,
    resolution: &NameResolution,
    generation: u64,
    rewriter: &Rewriter,
    sql: &str,
) -> Result<Route, Unresolved> {
    if let Some(elsewhere) = resolution.elsewhere(generation) {
        route.unqualified_elsewhere = elsewhere.to_vec();
        route.shadow_unqualified_elsewhere = resolution.shadow_elsewhere(generation).unwrap_or_default().to_vec();
        // A merge some of whose bare source names mean other relations: a statement whose plan depends on
        // whether they reach it (it names a source unqualified) is refused, as neither plan is right for
        // every source it names.
        let mixed = resolution.mixed(generation).unwrap_or_default();
        if !mixed.is_empty() {
            let mut reaching = route.clone();
            reaching.unqualified_elsewhere.retain(|i| !mixed.contains(i));
            if *rewriter.rewrite(sql, &reaching) != *rewriter.rewrite(sql, &route) {
                return Err(Unresolved);
            }
        }
        return Ok(route);
    }
    let assumed = rewriter.rewrite(sql, &route);
    let mut other = route.clone();
    other.unqualified_elsewhere = (0..rewriter.rules().migrations.len()).collect();
    other.shadow_unqualified_elsewhere = other.unqualified_elsewhere.clone();
    if *rewriter.rewrite(sql, &other) == *assumed {
        Ok(route)
    } else {
        Err(Unresolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        let text = [
            include_str!("../../../rewrite-rules/examples/users_split_name.toml"),
            include_str!("../../../rewrite-rules/examples/orders_amount_numeric.toml"),
        ]
        .join("\n");
        RuleSet::from_toml(&text, "examples").unwrap()
    }

    #[test]
    fn a_merge_is_probed_over_every_source_and_a_mixed_answer_is_kept_apart() {
        let merge =
            RuleSet::from_toml(include_str!("../../../rewrite-rules/examples/users_merge_tables.toml"), "m").unwrap();
        let sql = NameResolution::probe_sql(&merge);
        let accounts =
            "coalesce(pg_catalog.to_regclass('accounts') = pg_catalog.to_regclass('public.accounts'), false)";
        let profiles =
            "coalesce(pg_catalog.to_regclass('profiles') = pg_catalog.to_regclass('public.profiles'), false)";
        assert!(
            sql.contains(&format!(
                "CASE WHEN {accounts} AND {profiles} THEN 't' WHEN NOT ({accounts} OR {profiles}) THEN 'f' ELSE 'm' END"
            )),
            "{sql}"
        );
        let mut r = NameResolution::default();
        r.learn(1, &merge, Some(vec![Some("m".into()), Some("t".into()), Some("tenant, public".into())]), false);
        assert_eq!((r.elsewhere(1), r.mixed(1)), (Some(&[0][..]), Some(&[0][..])));
        r.changed();
        r.learn(1, &merge, Some(vec![Some("f".into()), Some("t".into()), Some("tenant, public".into())]), false);
        assert_eq!((r.elsewhere(1), r.mixed(1)), (Some(&[0][..]), Some(&[][..])));
    }

    #[test]
    fn the_probe_compares_each_bare_name_with_the_qualified_table() {
        let sql = NameResolution::probe_sql(&rules());
        assert_eq!(
            sql,
            "/* dualwrite: name resolution */ SELECT \
             coalesce(pg_catalog.to_regclass('users') = pg_catalog.to_regclass('public.users'), false), \
             coalesce(pg_catalog.to_regclass('orders') = pg_catalog.to_regclass('public.orders'), false), \
             (coalesce(pg_catalog.to_regclass('users_v2') = pg_catalog.to_regclass('public.users_v2'), false)), \
             (coalesce(pg_catalog.to_regclass('orders_v2') = pg_catalog.to_regclass('public.orders_v2'), false)), \
             pg_catalog.current_setting('search_path')"
        );
    }

    #[test]
    fn answers_are_kept_per_rules_generation_and_a_failed_probe_is_reported_once() {
        let rules = rules();
        let mut r = NameResolution::default();
        assert_eq!(r.elsewhere(1), None);
        let answer = ["f", "t", "t", "f", "tenant_b, public"].map(|v| Some(v.to_string())).to_vec();
        r.learn(1, &rules, Some(answer), false);
        assert_eq!(r.elsewhere(1), Some(&[0][..]));
        assert_eq!(r.shadow_elsewhere(1), Some(&[1][..]), "the second migration's shadow is another relation");
        assert_eq!(r.search_path(1), Some("tenant_b, public"));
        assert_eq!(r.elsewhere(2), None, "a reload may have changed the migrations");
        r.changed();
        r.learn(1, &rules, None, false);
        assert_eq!(r.elsewhere(1), None);
        assert!(r.take_probe_failed());
        assert!(!r.take_probe_failed());
        r.learn(1, &rules, Some(vec![Some("t".into()), Some("t".into()), Some("public".into())]), false);
        assert_eq!(r.elsewhere(1), None, "an answer of the wrong width (no shadow columns) is no answer");
    }

    #[test]
    fn a_change_inside_a_transaction_is_forgotten_again_at_its_end() {
        let rules = rules();
        let answer = || Some(["t", "t", "t", "t", "public"].map(|v| Some(v.to_string())).to_vec());
        let mut r = NameResolution::default();
        r.learn(1, &rules, answer(), false);
        r.sending("SELECT * FROM users");
        r.ready(b'T');
        assert!(r.elsewhere(1).is_some(), "reads and writes change nothing");
        r.sending("SET LOCAL search_path = tenant_a");
        assert!(r.elsewhere(1).is_none());
        r.learn(1, &rules, answer(), false);
        r.ready(b'T');
        assert!(r.elsewhere(1).is_some(), "learnt inside the transaction");
        r.sending("COMMIT");
        r.ready(b'I');
        assert!(r.elsewhere(1).is_none(), "COMMIT ends SET LOCAL");
        r.learn(1, &rules, answer(), false);
        r.ready(b'I');
        assert!(r.elsewhere(1).is_some(), "nothing changed in the next transaction");
    }

    #[test]
    fn a_rollback_forgets_only_what_its_transaction_changed() {
        let rules = rules();
        let answer = || Some(["t", "t", "t", "t", "public"].map(|v| Some(v.to_string())).to_vec());
        let mut r = NameResolution::default();
        r.learn(1, &rules, answer(), false);
        assert_eq!(effect("ROLLBACK"), Effect::Undoes);
        assert_eq!(effect("rollback to savepoint s1"), Effect::Undoes);
        assert_eq!(effect("ABORT"), Effect::Undoes);
        r.sending("BEGIN");
        r.sending("INSERT INTO users VALUES (1)");
        r.sending("ROLLBACK");
        r.ready(b'I');
        assert!(r.elsewhere(1).is_some(), "nothing to undo");
        r.sending("BEGIN");
        r.sending("SET search_path = tenant_b");
        r.learn(1, &rules, answer(), true);
        r.sending("ROLLBACK TO SAVEPOINT s1");
        assert!(r.elsewhere(1).is_none(), "the SET may be undone");
    }

    #[test]
    fn a_first_probe_inside_a_transaction_is_trusted_only_until_its_end() {
        let rules = rules();
        let mut r = NameResolution::default();
        r.sending("SET LOCAL search_path = tenant_a");
        r.learn(1, &rules, Some(["f", "t", "t", "t", "public"].map(|v| Some(v.to_string())).to_vec()), true);
        assert!(r.elsewhere(1).is_some());
        r.ready(b'T');
        r.ready(b'I');
        assert!(r.elsewhere(1).is_none());
    }
}
