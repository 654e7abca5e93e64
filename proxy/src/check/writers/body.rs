//! Whether the text of a function, trigger function or rule writes a given table, read at the token level
//! (sqlparser's tokenizer; PL/pgSQL is not SQL, so no parser can read it whole). Catalog text only: this
//! never looks at or changes client SQL.
//!
//! A body *writes* the table when its name follows `INSERT INTO`, `UPDATE`, `DELETE FROM`, `MERGE INTO`,
//! `TRUNCATE [TABLE]` (also further down a TRUNCATE list) or `COPY`, with or without `ONLY`. A body that
//! names the table inside a string literal is reported too: that is how dynamic SQL (`EXECUTE`) reaches a
//! table, and what the string is used for cannot be told. A body that only reads the table is not a
//! writer. A name matches on whole identifiers, schema-aware: `users`, `"users"` and `public.users` match
//! the table `public.users`; `audit.users` and `users_v2` do not. A body the tokenizer cannot read, or one
//! in a language other than SQL and PL/pgSQL, is matched as text on word boundaries (any mention counts).

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

/// The table looked for, as the catalog names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub schema: String,
    pub name: String,
}

/// Why a body counts as a writer of the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// A statement writes it; the words that do (e.g. `DELETE FROM`).
    Writes(&'static str),
    /// A string literal names it (dynamic SQL the check cannot read).
    NamedInString,
    /// The body could not be tokenized as SQL (or is in another language) and names it somewhere.
    Named,
}

impl Use {
    /// What the body does with `table`, e.g. `runs DELETE FROM on public.users`.
    pub fn describe(&self, table: &str) -> String {
        match self {
            Use::Writes(verb) => format!("runs {verb} on {table}"),
            Use::NamedInString => format!("names {table} inside a string (dynamic SQL the check cannot read)"),
            Use::Named => format!("names {table} (in a body the check cannot read as SQL)"),
        }
    }
}

/// How `body` uses `target`, when it may write it. `sql_like`: the body is SQL or PL/pgSQL.
pub fn writes(body: &str, target: &Target, sql_like: bool) -> Option<Use> {
    if !sql_like {
        return names_as_text(body, target).then_some(Use::Named);
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, body).tokenize() else {
        return names_as_text(body, target).then_some(Use::Named);
    };
    let code: Vec<Token> = tokens.into_iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    let mut in_string = false;
    for (i, token) in code.iter().enumerate() {
        if let Some(text) = string_text(token) {
            if let Some(found @ Use::Writes(_)) = writes(text, target, true) {
                return Some(found);
            }
            in_string |= names_as_text(text, target);
            continue;
        }
        // A name starts here: not the continuation of a qualified one.
        if i > 0 && code[i - 1] == Token::Period {
            continue;
        }
        if !name_at(&code, i, target) {
            continue;
        }
        if let Some(verb) = write_before(&code, i) {
            return Some(Use::Writes(verb));
        }
    }
    in_string.then_some(Use::NamedInString)
}

fn string_text(token: &Token) -> Option<&str> {
    match token {
        Token::SingleQuotedString(s)
        | Token::EscapedStringLiteral(s)
        | Token::NationalStringLiteral(s)
        | Token::UnicodeStringLiteral(s) => Some(s),
        Token::DollarQuotedString(d) => Some(&d.value),
        _ => None,
    }
}

/// An identifier as the catalog spells it (unquoted words fold to lower case).
pub(crate) fn ident(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) => Some(match w.quote_style {
            Some(_) => w.value.clone(),
            None => w.value.to_lowercase(),
        }),
        _ => None,
    }
}

/// Whether a name starting at `i` denotes `target` (`name`, `schema.name` or `db.schema.name`).
fn name_at(code: &[Token], i: usize, target: &Target) -> bool {
    match name_parts(code, i).as_deref() {
        Some([name]) => *name == target.name,
        Some([.., schema, name]) => *name == target.name && *schema == target.schema,
        _ => false,
    }
}

/// The parts of a dotted name starting at `i`.
fn name_parts(code: &[Token], i: usize) -> Option<Vec<String>> {
    let mut parts = vec![ident(code.get(i)?)?];
    let mut j = i + 1;
    while code.get(j) == Some(&Token::Period) {
        match code.get(j + 1).and_then(ident) {
            Some(part) => parts.push(part),
            None => break,
        }
        j += 2;
    }
    Some(parts)
}

fn keyword(token: Option<&Token>) -> Option<Keyword> {
    match token {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.keyword),
        _ => None,
    }
}

/// The statement words that write the table named at `start`, if the tokens before it are some.
fn write_before(code: &[Token], start: usize) -> Option<&'static str> {
    let mut at = start;
    loop {
        let before = |n: usize| at.checked_sub(n).and_then(|k| keyword(code.get(k)));
        let mut skip = 0;
        if before(1) == Some(Keyword::ONLY) {
            skip = 1;
        }
        let prev = |n: usize| before(n + skip);
        match (prev(2), prev(1)) {
            (_, Some(Keyword::UPDATE)) => return Some("UPDATE"),
            (Some(Keyword::INSERT), Some(Keyword::INTO)) => return Some("INSERT INTO"),
            (Some(Keyword::MERGE), Some(Keyword::INTO)) => return Some("MERGE INTO"),
            (Some(Keyword::DELETE), Some(Keyword::FROM)) => return Some("DELETE FROM"),
            (Some(Keyword::TRUNCATE), Some(Keyword::TABLE)) | (_, Some(Keyword::TRUNCATE)) => return Some("TRUNCATE"),
            (_, Some(Keyword::COPY)) => return Some("COPY"),
            _ => {}
        }
        // `TRUNCATE a, users`: step back over the earlier names of a list and look again.
        let comma = at.checked_sub(1 + skip)?;
        if code[comma] != Token::Comma {
            return None;
        }
        at = start_of_name_ending_at(code, comma.checked_sub(1)?)?;
    }
}

/// Where the dotted name whose last token is at `end` starts.
fn start_of_name_ending_at(code: &[Token], end: usize) -> Option<usize> {
    ident(&code[end])?;
    let mut start = end;
    while start >= 2 && code[start - 1] == Token::Period && ident(&code[start - 2]).is_some() {
        start -= 2;
    }
    Some(start)
}

/// Whether `text` names the target on identifier boundaries (case-insensitively), qualified by its schema
/// or not qualified at all.
pub fn names_as_text(text: &str, target: &Target) -> bool {
    let lower = text.to_lowercase();
    let name = target.name.to_lowercase();
    let is_word = |c: char| c.is_alphanumeric() || c == '_' || c == '$';
    let mut from = 0;
    while let Some(found) = lower[from..].find(&name) {
        let start = from + found;
        let end = start + name.len();
        from = start + name.len().max(1);
        let (before, after) = (&lower[..start], &lower[end..]);
        let before = before.strip_suffix('"').unwrap_or(before);
        let after = after.strip_prefix('"').unwrap_or(after);
        if before.chars().next_back().is_some_and(is_word) || after.chars().next().is_some_and(is_word) {
            continue;
        }
        match before.strip_suffix('.') {
            None => return true,
            Some(qualifier) => {
                let qualifier = qualifier.strip_suffix('"').unwrap_or(qualifier);
                let schema = target.schema.to_lowercase();
                if qualifier.ends_with(&schema)
                    && !qualifier[..qualifier.len() - schema.len()].chars().next_back().is_some_and(is_word)
                {
                    return true;
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Target {
        Target { schema: "public".into(), name: "users".into() }
    }

    fn check(body: &str) -> Option<Use> {
        writes(body, &users(), true)
    }

    #[test]
    fn each_write_form_is_found() {
        for (body, verb) in [
            ("INSERT INTO users (id) VALUES (1)", "INSERT INTO"),
            ("insert into public.users values (1)", "INSERT INTO"),
            ("UPDATE ONLY \"users\" SET name = 'x'", "UPDATE"),
            ("BEGIN DELETE FROM users WHERE id = OLD.user_id; RETURN OLD; END", "DELETE FROM"),
            ("WITH d AS (DELETE FROM public.users RETURNING id) SELECT count(*) FROM d", "DELETE FROM"),
            ("MERGE INTO users u USING s ON u.id = s.id WHEN MATCHED THEN DELETE", "MERGE INTO"),
            ("TRUNCATE TABLE orders, public.users", "TRUNCATE"),
            ("TRUNCATE audit.log, users CASCADE", "TRUNCATE"),
            ("EXECUTE 'DELETE FROM users WHERE id = $1' USING x", "DELETE FROM"),
            ("PERFORM 1; EXECUTE $q$UPDATE users SET n = 1$q$;", "UPDATE"),
        ] {
            assert_eq!(check(body), Some(Use::Writes(verb)), "{body}");
        }
    }

    #[test]
    fn reads_and_other_tables_are_not_writes() {
        for body in [
            "SELECT count(*) FROM users",
            "SELECT * FROM users FOR UPDATE",
            "SELECT * FROM users FOR NO KEY UPDATE OF users",
            "INSERT INTO users_v2 SELECT * FROM users",
            "UPDATE audit.users SET n = 1",
            "DELETE FROM orders USING users WHERE orders.user_id = users.id",
            "INSERT INTO log (users) VALUES (1)",
            "SELECT id INTO users FROM orders",
            "UPDATE orders SET user_id = (SELECT id FROM users LIMIT 1)",
            "-- UPDATE users\nSELECT 1",
        ] {
            assert_eq!(check(body), None, "{body}");
        }
    }

    #[test]
    fn a_string_naming_the_table_counts_as_dynamic_sql() {
        assert_eq!(check("EXECUTE format('DELETE FROM %I', 'users')"), Some(Use::NamedInString));
        assert_eq!(check("RAISE NOTICE 'users_v2 changed'"), None);
    }

    #[test]
    fn other_languages_match_on_word_boundaries() {
        let t = users();
        assert_eq!(writes("plpy.execute('DELETE FROM users')", &t, false), Some(Use::Named));
        assert_eq!(writes("plpy.execute('DELETE FROM users_v2')", &t, false), None);
        assert!(names_as_text("x = public.\"users\"", &t));
        assert!(!names_as_text("audit.users", &t));
        assert!(!names_as_text("myusers users_v2", &t));
        assert!(names_as_text("Users", &t));
    }
}
