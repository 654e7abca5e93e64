//! A session on a database that holds no migrations: its SQL is forwarded untouched and never parsed (the
//! rules of other databases do not apply to its tables, even where the names match). Only control commands
//! are looked at, by their first keyword: they are answered with an error naming the databases that hold
//! migrations, since the state they read or change lives there. `dualwrite.version` means nothing here:
//! `SET`/`SHOW dualwrite.version` reach the server, which treats it as any custom setting.

use std::sync::Arc;

use crate::control::{self, SqlError};
use crate::databases::quoted_list;
use crate::interceptor::{LocalReply, SessionInterceptor, SqlRequest, Verdict};
use crate::sql_error::codes;

pub struct ElsewhereSession {
    database: String,
    /// The databases that hold migrations.
    holders: Arc<[String]>,
}

impl ElsewhereSession {
    pub fn new(database: &str, holders: Arc<[String]>) -> ElsewhereSession {
        ElsewhereSession { database: database.to_owned(), holders }
    }

    /// The answer to a well-formed control command here.
    fn no_migrations_here(&self) -> SqlError {
        let holders = quoted_list(self.holders.iter().map(String::as_str));
        SqlError::new(
            codes::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "dualwrite: database \"{}\" holds no migrations; migrations are in database {holders}",
                self.database
            ),
        )
        .with_hint(format!("Run DUALWRITE commands on a connection to database {holders}."))
    }
}

impl SessionInterceptor for ElsewhereSession {
    fn answers_itself(&mut self, sql: &str) -> bool {
        control::is_control_command(sql)
    }

    fn forwards_parse(&mut self, sql: &str) -> bool {
        !control::is_control_command(sql)
    }

    fn on_sql(&mut self, request: SqlRequest<'_>) -> Verdict {
        if !control::is_control_command(request.sql) {
            return Verdict::Forward;
        }
        // A malformed command gets its syntax error, as on a database with migrations.
        let error = match control::parse_control(request.sql) {
            Ok(_) => self.no_migrations_here(),
            Err(e) => e,
        };
        Verdict::Respond(LocalReply { control: true, ..LocalReply::error(error) })
    }
}
