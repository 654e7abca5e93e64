//! Whether a row trigger's function may give the row another key than the one the dual write's sync gives,
//! read from the function's catalog text at the token level (sqlparser's tokenizer, as `writers::body`:
//! PL/pgSQL is not SQL, so no parser reads it whole). Pure: text in, verdict out.
//!
//! The sync of a dual write names the key of each row it writes (`INSERT ... ON CONFLICT (<key>) DO
//! UPDATE`, or `UPDATE ... WHERE <key> = ...`). A `BEFORE` row trigger runs on the row after that and before
//! the conflict check, so a trigger that sets the key (from a sequence of its own, say) makes the upsert
//! land on whichever row holds the trigger's key: an unrelated row is overwritten. So a PL/pgSQL body
//! *may assign the key* when, outside a branch that runs only while the key is NULL (the sync never gives a
//! NULL key, so `IF NEW.id IS NULL THEN NEW.id := nextval(...); END IF` never fires on it):
//!
//! - a statement assigns a key column of `NEW` (`NEW.id := ...`, `NEW.id = ...`, `SELECT ... INTO NEW.id`),
//!   or of a name declared `ALIAS FOR NEW`;
//! - a statement replaces the whole row (`NEW := ...`, `... INTO NEW`);
//! - it returns anything but `NEW`, `OLD` or `NULL` (another record may hold another key).
//!
//! The reading errs towards "may assign": an `ELSE` anywhere in a guarded branch (a `CASE` expression's
//! too) ends the guard, and a guard must be exactly `<row>.<key> IS NULL`. A C function (a built-in or an extension's) may
//! assign the key when a trigger argument names a key column (`autoinc(id, seq)`, `moddatetime(id)`: the
//! column such functions set is an argument; the built-in text-search triggers set only their first); a body
//! in any other language is not read, so it may.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use crate::check::writers::body::ident;

/// Why a trigger function may give a synced row another key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAssignment {
    /// A statement assigns the key column, e.g. `NEW.id := ...`; the words as written.
    Column(String),
    /// A statement replaces the whole row, e.g. `NEW := ...` or `SELECT ... INTO NEW`.
    WholeRow(String),
    /// It returns another record than `NEW` (`RETURN r`).
    ReturnsOther(String),
    /// A C function whose trigger arguments name the key column.
    ArgumentNamesKey(String),
    /// A body in a language the check does not read (or one the tokenizer cannot read).
    Unread(String),
}

impl KeyAssignment {
    /// What the function does, e.g. "assigns key column id (`NEW.id :=`)".
    pub fn describe(&self) -> String {
        match self {
            KeyAssignment::Column(words) => format!("assigns a key column outside an IS NULL guard ({words})"),
            KeyAssignment::WholeRow(words) => format!("replaces the whole row, key included ({words})"),
            KeyAssignment::ReturnsOther(words) => format!("returns another record than NEW ({words})"),
            KeyAssignment::ArgumentNamesKey(column) => {
                format!("is a C function given key column {column} as an argument (the column such triggers set)")
            }
            KeyAssignment::Unread(language) => format!("is written in {language}, whose body the check does not read"),
        }
    }
}

/// Whether a trigger function in `language` with `body` and trigger `arguments` may assign one of `key`
/// (column names as the catalog spells them).
pub fn judge(language: &str, body: &str, arguments: &[String], key: &[String]) -> Option<KeyAssignment> {
    match language {
        "plpgsql" => plpgsql(body, key),
        // The built-in text-search triggers set only their first argument's column; the others name the
        // configuration and the columns they read (`tsvector_update_trigger(tsv, 'english', title, id)`).
        "internal" if matches!(body, "tsvector_update_trigger_byid" | "tsvector_update_trigger_bycolumn") => {
            arguments.first().filter(|a| key.contains(a)).map(|column| KeyAssignment::ArgumentNamesKey(column.clone()))
        }
        "c" | "internal" => {
            arguments.iter().find(|a| key.contains(a)).map(|column| KeyAssignment::ArgumentNamesKey(column.clone()))
        }
        other => Some(KeyAssignment::Unread(other.to_owned())),
    }
}

/// One `IF` whose branch is being read: the key column its condition guards (`IF NEW.<column> IS NULL`),
/// until its first `ELSIF`/`ELSE`.
struct Branch {
    guards: Option<String>,
}

/// A PL/pgSQL body read token by token.
struct Body {
    code: Vec<Token>,
    /// The names of the row: `new`, and any `ALIAS FOR NEW`.
    rows: Vec<String>,
    key: Vec<String>,
}

fn plpgsql(body: &str, key: &[String]) -> Option<KeyAssignment> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, body).tokenize() else {
        return Some(KeyAssignment::Unread("PL/pgSQL the tokenizer cannot read".into()));
    };
    let code: Vec<Token> = tokens.into_iter().filter(|t| !matches!(t, Token::Whitespace(_))).collect();
    let mut rows = vec!["new".to_owned()];
    for window in code.windows(4) {
        if word(&window[1]).as_deref() == Some("alias")
            && word(&window[2]).as_deref() == Some("for")
            && word(&window[3]).as_deref() == Some("new")
        {
            rows.extend(ident(&window[0]));
        }
    }
    Body { code, rows, key: key.to_vec() }.judge()
}

impl Body {
    fn is_row(&self, token: &Token) -> bool {
        ident(token).is_some_and(|name| self.rows.contains(&name))
    }

    fn key_column(&self, token: &Token) -> Option<String> {
        ident(token).filter(|name| self.key.contains(name))
    }

    fn judge(&self) -> Option<KeyAssignment> {
        let code = &self.code;
        let mut branches: Vec<Branch> = Vec::new();
        let guarded = |branches: &[Branch], column: &str| branches.iter().any(|b| b.guards.as_deref() == Some(column));
        let mut i = 0;
        while i < code.len() {
            let start = statement_start(code, i);
            match word(&code[i]).as_deref() {
                Some("if") if start => {
                    let (guards, then) = self.condition(i + 1);
                    branches.push(Branch { guards });
                    i = then + 1;
                    continue;
                }
                Some("if") if i > 0 && word(&code[i - 1]).as_deref() == Some("end") => {
                    branches.pop();
                }
                Some("elsif" | "elseif" | "else") => {
                    if let Some(branch) = branches.last_mut() {
                        branch.guards = None;
                    }
                }
                Some("return") if start => {
                    let value: Vec<&Token> = code[i + 1..].iter().take_while(|t| **t != Token::SemiColon).collect();
                    let plain = match value.as_slice() {
                        [] => true,
                        [only] => self.is_row(only) || matches!(word(only).as_deref(), Some("old" | "null")),
                        _ => false,
                    };
                    if !plain {
                        return Some(KeyAssignment::ReturnsOther(words(&code[i..i + 1 + value.len()])));
                    }
                }
                Some("into") => {
                    let mut at = i + 1;
                    if code.get(at).and_then(word).as_deref() == Some("strict") {
                        at += 1;
                    }
                    // The targets, separated by commas: `a`, `NEW`, `NEW.id`.
                    while let Some(parts) = dotted(code, at) {
                        let end = at + 2 * parts - 1;
                        if self.is_row(&code[at]) {
                            if parts == 1 {
                                return Some(KeyAssignment::WholeRow(words(&code[i..end])));
                            }
                            if self.key_column(&code[at + 2]).is_some_and(|c| !guarded(&branches, &c)) {
                                return Some(KeyAssignment::Column(words(&code[i..end])));
                            }
                        }
                        if code.get(end) != Some(&Token::Comma) {
                            break;
                        }
                        at = end + 1;
                    }
                }
                _ => {}
            }
            if start && self.is_row(&code[i]) {
                let assigns = |t: Option<&Token>| matches!(t, Some(Token::Assignment | Token::Eq));
                if assigns(code.get(i + 1)) {
                    return Some(KeyAssignment::WholeRow(words(&code[i..i + 2])));
                }
                if code.get(i + 1) == Some(&Token::Period) && assigns(code.get(i + 3)) {
                    let column = code.get(i + 2).and_then(|t| self.key_column(t));
                    if column.is_some_and(|c| !guarded(&branches, &c)) {
                        return Some(KeyAssignment::Column(words(&code[i..i + 4])));
                    }
                }
            }
            i += 1;
        }
        None
    }

    /// The key column an `IF` condition starting at `from` guards (exactly `<row>.<column> IS NULL`), and
    /// where its `THEN` is (a `CASE` in the condition has `THEN`s of its own).
    fn condition(&self, from: usize) -> (Option<String>, usize) {
        let code = &self.code;
        let mut depth = 0usize;
        let mut then = from;
        while let Some(token) = code.get(then) {
            match word(token).as_deref() {
                Some("case") => depth += 1,
                Some("end") => depth = depth.saturating_sub(1),
                Some("then") if depth == 0 => break,
                _ => {}
            }
            then += 1;
        }
        let guards = match &code[from.min(then)..then] {
            [row, Token::Period, column, is, null]
                if self.is_row(row) && word(is).as_deref() == Some("is") && word(null).as_deref() == Some("null") =>
            {
                self.key_column(column)
            }
            _ => None,
        };
        (guards, then)
    }
}

/// How many parts the dotted name starting at `at` has (`NEW.id`: 2), if one starts there.
fn dotted(code: &[Token], at: usize) -> Option<usize> {
    ident(code.get(at)?)?;
    let mut parts = 1;
    while code.get(at + 2 * parts - 1) == Some(&Token::Period) && code.get(at + 2 * parts).and_then(ident).is_some() {
        parts += 1;
    }
    Some(parts)
}

/// Whether a PL/pgSQL statement starts at `i`: the body's first token, or one after `;`, a block's `BEGIN`
/// or `DECLARE`, a branch's `THEN`/`ELSE`, a `LOOP`, or a label's `>>`.
fn statement_start(code: &[Token], i: usize) -> bool {
    let Some(before) = i.checked_sub(1).map(|k| &code[k]) else { return true };
    matches!(before, Token::SemiColon | Token::ShiftRight)
        || matches!(word(before).as_deref(), Some("begin" | "declare" | "then" | "else" | "loop"))
}

/// An unquoted word, lower case (keywords and plain names).
fn word(token: &Token) -> Option<String> {
    match token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_lowercase()),
        _ => None,
    }
}

/// Tokens as a short quote for a message: `NEW.id :=`.
fn words(tokens: &[Token]) -> String {
    let mut out = String::new();
    for (n, token) in tokens.iter().enumerate() {
        let glued = n == 0 || matches!(token, Token::Period | Token::Comma) || tokens[n - 1] == Token::Period;
        if !glued {
            out.push(' ');
        }
        out.push_str(&token.to_string());
    }
    format!("`{out}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plpgsql(body: &str) -> Option<KeyAssignment> {
        judge("plpgsql", body, &[], &["id".to_owned()])
    }

    fn refused(body: &str) -> KeyAssignment {
        plpgsql(body).unwrap_or_else(|| panic!("not refused: {body}"))
    }

    #[test]
    fn each_way_of_assigning_the_key_is_found() {
        let bodies = [
            ("BEGIN NEW.id := nextval('s'); RETURN NEW; END", KeyAssignment::Column("`NEW.id :=`".into())),
            ("begin new.id = 7; return new; end", KeyAssignment::Column("`new.id =`".into())),
            (r#"BEGIN NEW."id" := 1; RETURN NEW; END"#, KeyAssignment::Column(r#"`NEW."id" :=`"#.into())),
            ("BEGIN SELECT nextval('s') INTO NEW.id; RETURN NEW; END", KeyAssignment::Column("`INTO NEW.id`".into())),
            ("BEGIN SELECT 1, 2 INTO STRICT x, NEW.id; RETURN NEW; END", {
                KeyAssignment::Column("`INTO STRICT x, NEW.id`".into())
            }),
            ("BEGIN NEW := json_populate_record(NEW, '{}'); RETURN NEW; END", {
                KeyAssignment::WholeRow("`NEW :=`".into())
            }),
            ("BEGIN EXECUTE 'SELECT ...' INTO NEW USING NEW; RETURN NEW; END", {
                KeyAssignment::WholeRow("`INTO NEW`".into())
            }),
            ("DECLARE r record; BEGIN r := NEW; RETURN r; END", KeyAssignment::ReturnsOther("`RETURN r`".into())),
            ("DECLARE n ALIAS FOR NEW; BEGIN n.id := 2; RETURN n; END", KeyAssignment::Column("`n.id :=`".into())),
        ];
        for (body, expected) in bodies {
            assert_eq!(refused(body), expected, "{body}");
        }
    }

    #[test]
    fn an_assignment_only_while_the_key_is_null_is_no_concern_and_its_else_branch_is() {
        let guarded = "BEGIN
            IF NEW.id IS NULL THEN
                NEW.id := nextval('s');
                IF NEW.email IS NULL THEN NEW.email := 'x'; ELSE NEW.email := lower(NEW.email); END IF;
                SELECT nextval('s') INTO NEW.id;
            END IF;
            RETURN NEW;
        END";
        assert_eq!(plpgsql(guarded), None);
        let else_branch = "BEGIN IF NEW.id IS NULL THEN NEW.name := 'x'; ELSE NEW.id := 5; END IF; RETURN NEW; END";
        assert_eq!(refused(else_branch), KeyAssignment::Column("`NEW.id :=`".into()));
        let after = "BEGIN IF NEW.id IS NULL THEN NEW.name := 'x'; END IF; NEW.id := 5; RETURN NEW; END";
        assert_eq!(refused(after), KeyAssignment::Column("`NEW.id :=`".into()));
        let other_guard = "BEGIN IF NEW.id IS NULL OR NEW.id = 0 THEN NEW.id := 5; END IF; RETURN NEW; END";
        assert_eq!(refused(other_guard), KeyAssignment::Column("`NEW.id :=`".into()));
        let other_column = "BEGIN IF NEW.email IS NULL THEN NEW.id := 5; END IF; RETURN NEW; END";
        assert_eq!(refused(other_column), KeyAssignment::Column("`NEW.id :=`".into()));
    }

    #[test]
    fn other_columns_comparisons_strings_comments_and_plain_returns_are_no_concern() {
        let bodies = [
            "BEGIN NEW.updated_at := now(); RETURN NEW; END",
            "BEGIN IF NEW.id = 0 THEN RAISE EXCEPTION 'no'; END IF; RETURN NEW; END",
            "BEGIN IF NEW.name LIKE 'draft%' THEN RETURN NULL; END IF; RETURN NEW; END",
            "BEGIN IF TG_OP = 'UPDATE' THEN RETURN OLD; END IF; RETURN NEW; END",
            "BEGIN -- NEW.id := 1;\n /* NEW.id := 2; */ PERFORM 'NEW.id := 3'; RETURN NEW; END",
            "BEGIN INSERT INTO audit (id) VALUES (NEW.id); RETURN NEW; END",
            "DECLARE new_id int := 1; BEGIN SELECT count(*) INTO new_id FROM t WHERE t.id = NEW.id; RETURN NEW; END",
            "BEGIN DROP TABLE IF EXISTS scratch; NEW.email := lower(NEW.email); RETURN NEW; END",
            "BEGIN RETURN; END",
        ];
        for body in bodies {
            assert_eq!(plpgsql(body), None, "{body}");
        }
    }

    #[test]
    fn a_condition_never_hides_what_follows_it() {
        // `IF EXISTS` of a DROP is no branch: the assignment after it is still read.
        let body = "BEGIN DROP TABLE IF EXISTS scratch; NEW.id := 1; RETURN NEW; END";
        assert_eq!(refused(body), KeyAssignment::Column("`NEW.id :=`".into()));
        // A CASE in a condition has THENs of its own.
        let body = "BEGIN IF CASE WHEN NEW.id IS NULL THEN true END THEN NEW.id := 1; END IF; RETURN NEW; END";
        assert_eq!(refused(body), KeyAssignment::Column("`NEW.id :=`".into()));
    }

    #[test]
    fn a_composite_key_is_judged_per_column() {
        let key = ["shop_id".to_owned(), "id".to_owned()];
        let guarded_one = "BEGIN IF NEW.id IS NULL THEN NEW.id := 1; END IF; RETURN NEW; END";
        assert_eq!(judge("plpgsql", guarded_one, &[], &key), None);
        let other = "BEGIN IF NEW.id IS NULL THEN NEW.shop_id := 1; END IF; RETURN NEW; END";
        assert_eq!(judge("plpgsql", other, &[], &key), Some(KeyAssignment::Column("`NEW.shop_id :=`".into())));
    }

    #[test]
    fn c_functions_are_judged_by_the_arguments_they_set_and_other_languages_are_not_read() {
        let key = ["id".to_owned()];
        assert_eq!(judge("c", "autoinc", &["id".into(), "s".into()], &key), {
            Some(KeyAssignment::ArgumentNamesKey("id".into()))
        });
        assert_eq!(judge("c", "moddatetime", &["updated_at".into()], &key), None);
        assert_eq!(judge("internal", "suppress_redundant_updates_trigger", &[], &key), None);
        let reads_key = ["tsv".to_owned(), "pg_catalog.english".to_owned(), "title".to_owned(), "id".to_owned()];
        assert_eq!(judge("internal", "tsvector_update_trigger_byid", &reads_key, &key), None);
        let sets_key = ["id".to_owned(), "pg_catalog.english".to_owned(), "title".to_owned()];
        assert_eq!(judge("internal", "tsvector_update_trigger_byid", &sets_key, &key), {
            Some(KeyAssignment::ArgumentNamesKey("id".into()))
        });
        assert_eq!(judge("plpython3u", "TD['new']['id'] = 1", &[], &key), {
            Some(KeyAssignment::Unread("plpython3u".into()))
        });
    }
}
