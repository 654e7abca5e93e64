//! One client session under live migrations: mirrors its `dualwrite.version` (fed by what the relay sends
//! and what the server answers), computes its route, and judges each SQL string:
//! control commands are run by the proxy; `SHOW dualwrite.version` is answered locally; a SET naming an
//! unknown version is refused; everything else goes through the rewriter, whose refusals are raised by
//! the server itself so transaction semantics stay Postgres's own.
//!
//! Prepared statements that name a migrated table remember the route they were rewritten for; when the
//! route has changed by the time they are bound or described (an admin flipped reads, the session changed
//! its version), the relay prepares them again under the same name. A config reload that replaces the rules
//! counts as a route change for every prepared statement: each is judged again under the new rules (one
//! that named no migrated table may name one now), so the rewrite a session runs always follows the rules
//! in force.
//!
//! Names resolve as the session's server resolves them (`resolution`): before a statement whose plan
//! depends on what an unqualified migrated-table name means in this session, the relay runs a hidden probe
//! on the session's connection; the answer is kept until the session does something that may change it.
//! The probe runs inside the client's open extended-protocol batch too, after the batch's earlier
//! statements. Where it cannot see what matters (after a statement of the same simple-Query string that
//! may change the resolution) and the answer matters, the statement is refused rather than guessed.
//!
//! While the shared state is unknown (not confirmed for longer than `limits.state_max_age_secs`: the
//! state database is unreachable), every statement that involves a migrated table is refused with 57P03,
//! reads included: another instance may have moved the migration on (cutover, complete, a read flip)
//! meanwhile, so a stale route could single-write or read a table that is no longer kept current.
//! Prepared statements are re-prepared as that refusal and back once the state is confirmed again.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dualwrite_rules::{Plan, Route, TagRewrite};

use super::key_ddl::{KeyDefaultChange, KeyDefaultDdl};
use super::prepared::{PreparedSql, REFUSED};
use super::resolution::{resolve, NameResolution, Unresolved};
use super::statement_effect::may_change_resolution;
use super::verdict::{
    count_rejection, is_read, plan_sink, raise, refusal_param_types, rejection_error, relay_transform, tee_rewrite,
    unknown_state_refusal,
};
use super::{Live, LiveRules};
use crate::control::{self, SqlError as ControlError};
use crate::interceptor::{
    LocalReply, Reprepare, ResponseTransform, Rewrite, SessionEvent, SessionInfo, SessionInterceptor, SqlOrigin,
    SqlRequest, StatementUse, Verdict,
};
use crate::protocol::messages::bind_params;
use crate::shadow::Sample;
use crate::state::{Actor, StateSnapshot};
use crate::version::{classify_query, classify_statement, SessionStatement, SessionVersion};

/// The route of the session, recomputed when the shared state, the rules or the session's version change.
struct RouteCache {
    generation: u64,
    snapshot: Arc<StateSnapshot>,
    version: Option<String>,
    route: Route,
}

pub struct LiveSession {
    /// The pools of the session's server (`DUALWRITE POOLS`).
    pools: Option<crate::pool::PoolView>,
    live: Arc<Live>,
    actor: Actor,
    session_id: u64,
    /// Err: the startup packet named an unknown version; every statement is refused with that error.
    version: Result<SessionVersion, ControlError>,
    route: Option<RouteCache>,
    prepared: HashMap<Vec<u8>, PreparedSql>,
    /// Statements and portals that change session state (SET, BEGIN, ...); others are `Other`.
    statement_kinds: HashMap<Vec<u8>, SessionStatement>,
    portal_kinds: HashMap<Vec<u8>, SessionStatement>,
    /// Reads of this session may be sampled for shadow reads (some migration samples, and the session is
    /// on the database the workers read).
    shadow_reads: bool,
    /// How the session's server resolves the unqualified names of migrated tables.
    resolution: NameResolution,
    /// Prepared statements, and portals bound from them, whose execution may change that resolution.
    resolution_changing: HashSet<Vec<u8>>,
    resolution_changing_portals: HashSet<Vec<u8>>,
    /// Transaction status of the last ReadyForQuery.
    transaction_status: u8,
    /// DDL of this transaction that changed a dual-written shadow's key default: its migration's writes
    /// wait for the commit.
    key_ddl: KeyDefaultDdl,
    /// What the SQL string `judge` last planned changes of key defaults (taken by `on_sql`).
    judged_key_ddl: Vec<KeyDefaultChange>,
}

impl LiveSession {
    pub fn new(live: Arc<Live>, info: &SessionInfo, session_id: u64) -> LiveSession {
        let params = info.parameters.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let current = live.load();
        let version = SessionVersion::new(params, &current.defaults, &current.rules);
        drop(current);
        let actor = Actor { role: info.user().to_owned(), client_addr: Some(info.client_addr.to_string()) };
        // Against the control plane's database, not today's sampler: a reload may start sampling.
        let shadow_reads = info.database() == live.shadow_database;
        LiveSession {
            live,
            actor,
            pools: info.pools.clone(),
            session_id,
            version,
            route: None,
            prepared: HashMap::new(),
            statement_kinds: HashMap::new(),
            portal_kinds: HashMap::new(),
            shadow_reads,
            resolution: NameResolution::default(),
            resolution_changing: HashSet::new(),
            resolution_changing_portals: HashSet::new(),
            transaction_status: b'I',
            key_ddl: KeyDefaultDdl::default(),
            judged_key_ddl: Vec::new(),
        }
    }

    /// The route for `sql` under the session's name resolution. While the resolution is not known, the
    /// route that assumes unqualified names reach the migrated tables, if `sql` is planned the same when
    /// they reach other relations (it names no migrated table unqualified, or needs no rewrite either way);
    /// otherwise the answer matters and is missing.
    fn resolved_route(&mut self, current: &LiveRules, sql: &str) -> Result<Route, Unresolved> {
        let route = self.current_route(current);
        resolve(route, &self.resolution, current.generation, &current.rewriter, sql)
    }

    /// The route the next statement is rewritten for, under the rules `current`.
    fn current_route(&mut self, current: &LiveRules) -> Route {
        let snapshot = self.live.state.snapshot();
        let Ok(version) = &self.version else { return Route::default() };
        let fresh = match &self.route {
            Some(c) => {
                c.generation != current.generation
                    || !Arc::ptr_eq(&c.snapshot, &snapshot)
                    || c.version.as_deref() != version.version()
            }
            None => true,
        };
        if fresh {
            let route = version.route(&current.rules, &snapshot, self.session_id);
            let version = version.version().map(str::to_owned);
            self.route = Some(RouteCache { generation: current.generation, snapshot, version, route });
        }
        let mut route = self.route.as_ref().map(|c| c.route.clone()).unwrap_or_default();
        self.key_ddl.apply(&current.rules, &mut route);
        route
    }

    fn control_command(&self, sql: &str) -> Verdict {
        let command = match control::parse_control(sql) {
            Ok(c) => c,
            Err(e) => return Verdict::Respond(LocalReply { control: true, ..LocalReply::error(e) }),
        };
        if let Some(e) = self.live.migration_elsewhere(&command, &self.actor.role) {
            return Verdict::Respond(LocalReply { control: true, ..LocalReply::error(e) });
        }
        let mut ctx = self.live.load().control.clone();
        ctx.pools = self.pools.clone();
        let actor = self.actor.clone();
        Verdict::Defer(Box::pin(async move {
            match control::execute(&ctx, &command, &actor).await {
                Ok(r) => LocalReply::rows(r.columns, r.rows, r.tag),
                Err(e) => LocalReply { control: true, ..LocalReply::error(e) },
            }
        }))
    }

    /// The verdict for SQL that is not a control command, given its session-state classification.
    /// `can_probe`: the relay can run a name-resolution probe before this SQL.
    fn judge(
        &mut self,
        sql: &str,
        kinds: &[SessionStatement],
        prepared_as: Option<(&[u8], &[u32])>,
        can_probe: bool,
    ) -> Verdict {
        let current = self.live.load();
        let version = match &self.version {
            Ok(v) => v,
            Err(e) => return raise(e, false),
        };
        for kind in kinds {
            if let Err(e) = SessionVersion::check(kind, &current.rules) {
                return raise(&e, false);
            }
        }
        if let [SessionStatement::Show] = kinds {
            return match version.show_response(&current.rules) {
                Ok(r) => Verdict::Respond(LocalReply { control: false, ..LocalReply::rows(r.columns, r.rows, r.tag) }),
                Err(e) => raise(&e, false),
            };
        }
        if !current.rewriter.mentions_migrated_table(sql) {
            // Kept even so: rules reloaded later may migrate a table it names.
            if let Some((name, param_types)) = prepared_as {
                self.remember(name, sql, param_types, None, current.generation, false);
            }
            return Verdict::Forward;
        }
        if let Some(refusal) = unknown_state_refusal(&self.live.state, &current.rules, sql) {
            // A refused Parse leaves no statement behind (on_sql forgets it), as a failed Parse would.
            return raise(&refusal, false);
        }
        let route = match self.resolved_route(&current, sql) {
            Ok(route) => route,
            // (A known resolution that leaves the plan open is a merge's mixed one: probing again would
            // answer the same.)
            Err(Unresolved)
                if can_probe
                    && self.resolution.elsewhere(current.generation).is_none()
                    && !self.resolution.take_probe_failed() =>
            {
                return Verdict::Probe(NameResolution::probe_sql(&current.rules));
            }
            Err(Unresolved) => {
                let refusal = current.rewriter.unresolved_name_refusal(sql);
                count_rejection(&refusal);
                return raise(&rejection_error(&refusal), false);
            }
        };
        let plan = current.rewriter.rewrite(sql, &route);
        self.judged_key_ddl =
            KeyDefaultChange::named(&current.rules, current.rewriter.key_default_changes(sql, &route));
        if prepared_as.is_some() {
            if let Some(refusal) = plan.extended_protocol_refusal(&current.rules) {
                count_rejection(&refusal);
                return raise(&rejection_error(&refusal), false);
            }
        }
        // A simple-Query COPY FROM STDIN, staged: perhaps COPYs alone can dual-write it.
        let tee = match &*plan {
            Plan::Rewritten { statements, .. }
                if prepared_as.is_none() && statements.iter().any(|t| t.command_tag == Some(TagRewrite::Copy)) =>
            {
                current.rewriter.copy_tee(sql, &route)
            }
            _ => None,
        };
        let read = is_read(&plan);
        match prepared_as {
            Some((name, param_types)) => self.remember(name, sql, param_types, Some(route), current.generation, read),
            None if read && self.draw_sample(&current) => {
                // Sampled reads run on the workers' connections under the session's search_path, which the
                // name-resolution probe reports: a read that won the draw before any probe asks for one.
                if let Some(path) = self.resolution.search_path(current.generation) {
                    self.sample_read(&current, sql, &route, path, None);
                } else if can_probe && !self.resolution.take_probe_failed() {
                    return Verdict::Probe(NameResolution::probe_sql(&current.rules));
                }
            }
            None => {}
        }
        match &*plan {
            Plan::PassThrough => Verdict::Forward,
            Plan::Rewritten { sql: rewritten, statements, migrations, writes } => {
                let sink = plan_sink(&current.dual_write, *writes, migrations);
                Verdict::Rewrite(Rewrite {
                    sql: rewritten.clone(),
                    statements: statements.iter().map(|t| relay_transform(t, sink.as_ref())).collect(),
                    control: false,
                    tee: tee.map(|tee| tee_rewrite(tee, sink.as_ref())),
                })
            }
            Plan::Rejected(rejection) => {
                count_rejection(rejection);
                raise(&rejection_error(rejection), false)
            }
        }
    }

    /// Records a prepared statement, reusing the entry (and its buffers) of one prepared under that name
    /// before: the unnamed statement is prepared again for every extended-protocol query.
    fn remember(&mut self, name: &[u8], sql: &str, types: &[u32], route: Option<Route>, generation: u64, read: bool) {
        match self.prepared.get_mut(name) {
            Some(p) => {
                p.sql.clear();
                p.sql.push_str(sql);
                p.param_types.clear();
                p.param_types.extend_from_slice(types);
                p.route = route;
                p.generation = generation;
                p.read = read;
            }
            None => {
                let p = PreparedSql { sql: sql.to_owned(), param_types: types.to_vec(), route, generation, read };
                self.prepared.insert(name.to_vec(), p);
            }
        }
    }

    /// Shadow reads, on the client's path: one cheap random draw, nothing more when it loses.
    #[inline]
    fn draw_sample(&self, current: &LiveRules) -> bool {
        self.shadow_reads && current.shadow.as_ref().is_some_and(|s| s.draw())
    }

    /// A read that won the draw goes to the sampler (with the parameters of its Bind, if any).
    fn sample_read(
        &self,
        current: &LiveRules,
        sql: &str,
        route: &Route,
        search_path: &str,
        bind: Option<(&[u8], &[u32])>,
    ) {
        let Some(shadow) = current.shadow.as_ref() else { return };
        let (params, types) = match bind {
            None => (Vec::new(), &[][..]),
            Some((body, types)) => match bind_params(body) {
                Some(params) => (params, types),
                None => return,
            },
        };
        let role = &self.actor.role;
        let sample = Sample { rewriter: &current.rewriter, role, sql, route, param_types: types, search_path };
        shadow.offer(sample, params);
    }

    fn sent(&mut self, kinds: &[SessionStatement], sync: bool) {
        if let Ok(version) = &mut self.version {
            for kind in kinds {
                version.sent(kind.clone());
            }
            if sync {
                version.sent_sync();
            }
        }
    }
}

impl SessionInterceptor for LiveSession {
    fn answers_itself(&mut self, sql: &str) -> bool {
        control::is_control_command(sql)
    }

    fn forwards_parse(&mut self, sql: &str) -> bool {
        // What `on_sql` and `judge` forward before any probe, in their order.
        !control::is_control_command(sql)
            && self.version.is_ok()
            && classify_statement(sql).is_ok_and(|kind| kind == SessionStatement::Other)
            && !self.live.load().rewriter.mentions_migrated_table(sql)
    }

    fn on_sql(&mut self, request: SqlRequest<'_>) -> Verdict {
        let sql = request.sql;
        if control::is_control_command(sql) {
            return self.control_command(sql);
        }
        match request.origin {
            SqlOrigin::SimpleQuery => {
                // A string the tokenizer rejects is left to the server (which refuses it) and the rewriter.
                let kinds = classify_query(sql).unwrap_or(Cow::Borrowed(&[SessionStatement::Other]));
                // A probe runs before the whole string: it cannot see what the string's own first
                // statements change (`CREATE TEMP TABLE users ...; INSERT INTO users ...`).
                let can_probe = request.can_probe && (kinds.len() <= 1 || !may_change_resolution(sql));
                let verdict = self.judge(sql, &kinds, None, can_probe);
                let changes = std::mem::take(&mut self.judged_key_ddl);
                if matches!(verdict, Verdict::Forward | Verdict::Rewrite(_)) {
                    self.key_ddl.sent(changes);
                }
                match &verdict {
                    Verdict::Forward | Verdict::Rewrite(_) => self.sent(&kinds, true),
                    Verdict::Raise(_) => self.sent(&[SessionStatement::Other], true),
                    Verdict::Respond(_) | Verdict::Defer(_) | Verdict::Probe(_) => {}
                }
                if !matches!(verdict, Verdict::Probe(_)) {
                    self.resolution.sending(sql);
                }
                verdict
            }
            SqlOrigin::Parse { statement } => {
                let name = statement.as_bytes();
                let kind = classify_statement(sql).unwrap_or(SessionStatement::Other);
                let prepared_as = Some((name, request.param_types));
                let verdict = self.judge(sql, std::slice::from_ref(&kind), prepared_as, request.can_probe);
                if matches!(verdict, Verdict::Probe(_)) {
                    return verdict;
                }
                // The statement changes the resolution when it runs, not when it is prepared.
                if may_change_resolution(sql) {
                    self.resolution_changing.insert(name.to_vec());
                } else if !self.resolution_changing.is_empty() {
                    self.resolution_changing.remove(name);
                }
                let keeps = matches!(verdict, Verdict::Forward | Verdict::Rewrite(_));
                let changes = std::mem::take(&mut self.judged_key_ddl);
                self.key_ddl.prepared(name, if keeps { changes } else { Vec::new() });
                if keeps && kind != SessionStatement::Other {
                    self.statement_kinds.insert(name.to_vec(), kind);
                } else {
                    self.statement_kinds.remove(name);
                }
                if !keeps {
                    self.prepared.remove(name);
                }
                verdict
            }
        }
    }

    fn on_bind(&mut self, portal: &[u8], statement: &[u8], bind: &[u8]) {
        if self.shadow_reads {
            let current = self.live.load();
            if self.draw_sample(&current) {
                // Only where the session's search_path is known (no probe runs at a Bind).
                let path = self.resolution.search_path(current.generation);
                if let Some(p) = self.prepared.get(statement).filter(|p| p.read && p.generation != REFUSED) {
                    if let (Some(route), Some(path)) = (&p.route, path) {
                        self.sample_read(&current, &p.sql, route, path, Some((bind, &p.param_types)));
                    }
                }
            }
        }
        match self.statement_kinds.get(statement) {
            Some(kind) => {
                self.portal_kinds.insert(portal.to_vec(), kind.clone());
            }
            None => {
                self.portal_kinds.remove(portal);
            }
        }
        self.key_ddl.bound(portal, statement);
        if !self.resolution_changing.is_empty() && self.resolution_changing.contains(statement) {
            self.resolution_changing_portals.insert(portal.to_vec());
        } else if !self.resolution_changing_portals.is_empty() {
            self.resolution_changing_portals.remove(portal);
        }
    }

    fn on_close_statement(&mut self, statement: &[u8]) {
        self.prepared.remove(statement);
        self.statement_kinds.remove(statement);
        self.resolution_changing.remove(statement);
        self.key_ddl.closed(statement);
    }

    fn on_execute(&mut self, portal: &[u8]) {
        let kind = self.portal_kinds.get(portal).cloned().unwrap_or(SessionStatement::Other);
        self.sent(std::slice::from_ref(&kind), false);
        self.key_ddl.executed(portal);
        if !self.resolution_changing_portals.is_empty() && self.resolution_changing_portals.contains(portal) {
            self.resolution.changed();
        }
    }

    fn on_probe(&mut self, answer: Option<Vec<Option<String>>>) {
        let current = self.live.load();
        let in_transaction = self.transaction_status != b'I';
        self.resolution.learn(current.generation, &current.rules, answer, in_transaction);
    }

    fn probe_before_use(&mut self, statement: &[u8]) -> Option<String> {
        let current = self.live.load();
        if self.resolution.elsewhere(current.generation).is_some() {
            return None;
        }
        let prepared = self.prepared.get(statement)?;
        if prepared.read && self.shadow_reads && current.shadow.is_some() && !self.resolution.take_probe_failed() {
            // A Bind may be sampled, and a sample runs under the session's search_path (see `on_bind`).
            return Some(NameResolution::probe_sql(&current.rules));
        }
        if !prepared.may_name_migrated(&current) {
            return None;
        }
        let route = self.current_route(&current);
        let prepared = self.prepared.get(statement)?;
        match resolve(route, &self.resolution, current.generation, &current.rewriter, &prepared.sql) {
            Ok(_) => None,
            Err(Unresolved) if self.resolution.take_probe_failed() => None,
            Err(Unresolved) => Some(NameResolution::probe_sql(&current.rules)),
        }
    }

    fn on_sync(&mut self) {
        if let Ok(version) = &mut self.version {
            version.sent_sync();
        }
    }

    fn on_events(&mut self, events: &[SessionEvent]) {
        for event in events {
            if let SessionEvent::Ready(status) = *event {
                self.transaction_status = status;
                self.resolution.ready(status);
                self.key_ddl.ready(status);
            }
        }
        let Ok(version) = &mut self.version else { return };
        for event in events {
            match *event {
                SessionEvent::Completed => version.completed(),
                SessionEvent::Failed => version.failed(),
                SessionEvent::Ready(status) => version.ready_for_query(status),
            }
        }
    }

    fn reprepare(&mut self, statement: &[u8], at: StatementUse) -> Option<Reprepare> {
        let current = self.live.load();
        let prepared = self.prepared.get(statement)?;
        if prepared.route.is_some() {
            if let Some(refusal) = unknown_state_refusal(&self.live.state, &current.rules, &prepared.sql) {
                if at == StatementUse::Describe {
                    // Described as prepared; the refusal takes its place at the Bind (see StatementUse).
                    return None;
                }
                let prepared = self.prepared.get_mut(statement)?;
                if prepared.generation == REFUSED {
                    return None;
                }
                // Re-judged (as after a reload) once the state is confirmed again.
                prepared.generation = REFUSED;
                return Some(Reprepare {
                    sql: refusal.raise_statement(),
                    param_types: refusal_param_types(&prepared.sql, &prepared.param_types),
                    transform: ResponseTransform::default(),
                });
            }
        }
        let prepared = self.prepared.get(statement)?;
        let judged_now = prepared.generation == current.generation;
        // Named no migrated table under the rules in force: nothing to judge again (the common Bind).
        if !prepared.may_name_migrated(&current) {
            if !judged_now {
                self.prepared.get_mut(statement)?.generation = current.generation;
            }
            return None;
        }
        let route = self.current_route(&current);
        let prepared = self.prepared.get_mut(statement)?;
        let route = match resolve(route, &self.resolution, current.generation, &current.rewriter, &prepared.sql) {
            Ok(route) => route,
            Err(Unresolved) if at == StatementUse::Describe => return None,
            Err(Unresolved) => {
                // Which relation it names is not known here (no probe can run inside the client's batch):
                // running it fails with the reason, and it is judged again at its next use.
                let refusal = current.rewriter.unresolved_name_refusal(&prepared.sql);
                count_rejection(&refusal);
                prepared.route = Some(Route::default());
                return Some(Reprepare {
                    sql: rejection_error(&refusal).raise_statement(),
                    param_types: refusal_param_types(&prepared.sql, &prepared.param_types),
                    transform: ResponseTransform::default(),
                });
            }
        };
        if judged_now && prepared.route.as_ref() == Some(&route) {
            return None;
        }
        // Its route changed, or rules reloaded since it was judged: judge it again.
        let plan = current.rewriter.rewrite(&prepared.sql, &route);
        let refusal = plan.extended_protocol_refusal(&current.rules);
        if at == StatementUse::Describe && (refusal.is_some() || matches!(&*plan, Plan::Rejected(_))) {
            // Left unjudged, so that the Bind prepares the refusal (see StatementUse).
            return None;
        }
        prepared.generation = current.generation;
        prepared.route = Some(route.clone());
        prepared.read = is_read(&plan);
        let refused = |rejection: &dualwrite_rules::Rejection| {
            count_rejection(rejection);
            Reprepare {
                sql: rejection_error(rejection).raise_statement(),
                // As many parameters as the client's Bind supplies (its Parse may have declared none).
                param_types: refusal_param_types(&prepared.sql, &prepared.param_types),
                transform: ResponseTransform::default(),
            }
        };
        let reprepare = match (&*plan, refusal) {
            // COPY FROM STDIN into a migrated table needs a simple Query: refused as at its Parse.
            (_, Some(refusal)) => refused(&refusal),
            (Plan::PassThrough, None) => Reprepare {
                sql: prepared.sql.clone(),
                param_types: prepared.param_types.clone(),
                transform: ResponseTransform::default(),
            },
            (Plan::Rewritten { sql, statements, migrations, writes }, None) => {
                let sink = plan_sink(&current.dual_write, *writes, migrations);
                Reprepare {
                    sql: sql.clone(),
                    param_types: prepared.param_types.clone(),
                    transform: statements.first().map(|t| relay_transform(t, sink.as_ref())).unwrap_or_default(),
                }
            }
            // The statement cannot run under the new route: the refusal is prepared in its place, so that
            // running it fails with the reason.
            (Plan::Rejected(rejection), None) => refused(rejection),
        };
        Some(reprepare)
    }
}
