//! What a SQL string may do to a session's name resolution ([`super::resolution`]): nothing, undo what its
//! transaction changed (a rollback), or change it (a SET of the path or the role, `set_config`, DDL, DO,
//! CALL, `SELECT ... INTO`). Every statement of a session that names a migrated table is scanned here, so the
//! scan reads each byte once through a table of byte classes. Pure.

/// Statements (by their first word) that can change how a name resolves: settings reset wholesale, DDL
/// (a temporary or tenant table created or dropped), and code that can do either (DO, CALL).
const CHANGING_STATEMENTS: &[&str] = &["reset", "discard", "create", "drop", "alter", "import", "do", "call"];

/// What a SET must name to change the resolution: the path itself, or the role behind `"$user"`.
const CHANGING_SETTINGS: &[&str] = &["search_path", "role", "authorization"];

/// Statements that undo what their transaction (or savepoint) changed.
const UNDOING_STATEMENTS: &[&str] = &["rollback", "abort"];

/// What a SQL string may do to the session's name resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    None,
    /// Undoes the changes of its transaction or savepoint, if there were any.
    Undoes,
    MayChange,
}

/// True if `sql` may change which relation an unqualified name resolves to (see [`effect`]).
pub fn may_change_resolution(sql: &str) -> bool {
    effect(sql) != Effect::None
}

/// Byte classes of the scan. A word starts with a [`WORD`] byte and goes on over [`WORD`] and [`DIGIT`]
/// bytes: ASCII letters, `_`, `$` and every byte of a non-ASCII character are word bytes.
const OTHER: u8 = 0;
const WORD: u8 = 1;
const DIGIT: u8 = 2;
const SEMICOLON: u8 = 3;
const DASH: u8 = 4;
const SLASH: u8 = 5;

static CLASSES: [u8; 256] = {
    let mut classes = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        classes[b] = match c {
            b'0'..=b'9' => DIGIT,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'$' | 0x80..=0xff => WORD,
            b';' => SEMICOLON,
            b'-' => DASH,
            b'/' => SLASH,
            _ => OTHER,
        };
        b += 1;
    }
    classes
};

/// Conservative (a false positive costs one probe): a statement starting with a word of
/// [`CHANGING_STATEMENTS`], a SET naming one of [`CHANGING_SETTINGS`], a call of `set_config` anywhere,
/// `SELECT ... INTO` (which creates a table); a rollback undoes. Words are compared whole and without
/// case, comments skipped; statements are split at every `;`, quoted text included.
pub(super) fn effect(sql: &str) -> Effect {
    let bytes = sql.as_bytes();
    let mut statement_start = true;
    let mut first_is_select = false;
    let mut first_is_set = false;
    let mut undoes = false;
    let mut i = 0;
    while i < bytes.len() {
        match CLASSES[bytes[i] as usize] {
            SEMICOLON => {
                statement_start = true;
                i += 1;
            }
            DASH if bytes.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &bytes[i..]).map_or(bytes.len(), |n| i + n);
            }
            SLASH if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            WORD => {
                let start = i;
                i += 1;
                while i < bytes.len() && matches!(CLASSES[bytes[i] as usize], WORD | DIGIT) {
                    i += 1;
                }
                let word = &bytes[start..i];
                let is = |w: &&str| word.eq_ignore_ascii_case(w.as_bytes());
                if statement_start {
                    statement_start = false;
                    if CHANGING_STATEMENTS.iter().any(is) {
                        return Effect::MayChange;
                    }
                    undoes |= UNDOING_STATEMENTS.iter().any(is);
                    first_is_select = is(&"select") || is(&"with");
                    first_is_set = is(&"set");
                } else if is(&"set_config")
                    || (first_is_select && is(&"into"))
                    || (first_is_set && CHANGING_SETTINGS.iter().any(is))
                {
                    return Effect::MayChange;
                }
            }
            _ => i += 1,
        }
    }
    if undoes {
        Effect::Undoes
    } else {
        Effect::None
    }
}

/// The index after the block comment starting at `start` (Postgres nests them).
fn skip_block_comment(bytes: &[u8], start: usize) -> usize {
    let (mut depth, mut i) = (0usize, start);
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan as it was written first, a byte test at a time (before the class table): the table's
    /// scan must answer as it does for every text.
    fn reference_effect(sql: &str) -> Effect {
        let mut statement_start = true;
        let mut first_is_select = false;
        let mut first_is_set = false;
        let mut undoes = false;
        let bytes = sql.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c == b';' {
                statement_start = true;
                i += 1;
                continue;
            }
            if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
                i = bytes[i..].iter().position(|&b| b == b'\n').map_or(bytes.len(), |n| i + n);
                continue;
            }
            if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
                i = skip_block_comment(bytes, i);
                continue;
            }
            if !reference_is_word_byte(c) || c.is_ascii_digit() {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && reference_is_word_byte(bytes[i]) {
                i += 1;
            }
            let word = &sql[start..i];
            let is = |w: &&str| word.eq_ignore_ascii_case(w);
            if statement_start {
                statement_start = false;
                if CHANGING_STATEMENTS.iter().any(is) {
                    return Effect::MayChange;
                }
                undoes |= UNDOING_STATEMENTS.iter().any(is);
                first_is_select = is(&"select") || is(&"with");
                first_is_set = is(&"set");
            } else if is(&"set_config")
                || (first_is_select && is(&"into"))
                || (first_is_set && CHANGING_SETTINGS.iter().any(is))
            {
                return Effect::MayChange;
            }
        }
        if undoes {
            Effect::Undoes
        } else {
            Effect::None
        }
    }

    fn reference_is_word_byte(c: u8) -> bool {
        c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
    }

    #[test]
    fn statements_that_may_change_the_resolution() {
        for sql in [
            "SET search_path = tenant_a, public",
            "set local search_path to tenant_b",
            "RESET search_path",
            "RESET ALL",
            "SET ROLE app_tenant",
            "SET SESSION AUTHORIZATION alice",
            "DISCARD ALL",
            "DISCARD TEMP",
            "CREATE TEMP TABLE users (id int)",
            "create schema tenant_c",
            "DROP TABLE pg_temp.users",
            "ALTER TABLE tenant_a.users RENAME TO people",
            "DO $$ BEGIN PERFORM 1; END $$",
            "CALL refresh_everything()",
            "SELECT pg_catalog.set_config('search_path', 'tenant_a', false)",
            "SELECT * INTO TEMP users FROM accounts",
            "BEGIN; SET search_path = tenant_a",
            "  /* c /* nested */ */ SET search_path = x",
            "-- leading comment\nDROP TABLE t",
        ] {
            assert!(may_change_resolution(sql), "{sql}");
        }
    }

    #[test]
    fn statements_that_cannot_change_the_resolution() {
        for sql in [
            "SELECT * FROM users WHERE created_at > now()",
            "INSERT INTO users (id, name) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET name = 'b'",
            "UPDATE users SET role = 'admin', dropped = true WHERE id = 1",
            "DELETE FROM users WHERE id = 1",
            "BEGIN",
            "COMMIT",
            "SET statement_timeout = 5000",
            "SET LOCAL lock_timeout TO '1s'",
            "SET dualwrite.version = 'v2'",
            "SELECT set_configuration FROM settings",
            "WITH x AS (SELECT 1) SELECT * FROM x",
        ] {
            assert!(!may_change_resolution(sql), "{sql}");
        }
    }

    #[test]
    fn rollbacks_undo() {
        assert_eq!(effect("ROLLBACK"), Effect::Undoes);
        assert_eq!(effect("rollback to savepoint s1"), Effect::Undoes);
        assert_eq!(effect("ABORT; SELECT 1"), Effect::Undoes);
        assert_eq!(effect("SELECT 1; ABORT"), Effect::Undoes);
    }

    proptest::proptest! {
        /// Over texts of characters the scan treats apart (word bytes, digits, separators, comment marks,
        /// a non-ASCII letter) the table's scan answers as the first one.
        #[test]
        fn the_scan_agrees_with_the_byte_by_byte_one_on_any_text(text in "[a-zA-Z0-9_$;/*\\- \n'é]{0,40}") {
            proptest::prop_assert_eq!(effect(&text), reference_effect(&text));
        }

        /// Over statements made of the words that decide, in any case, between separators and comments.
        #[test]
        fn the_scan_agrees_with_the_byte_by_byte_one_on_statements_of_its_words(
            words in proptest::collection::vec(
                "(select|with|set|SET|Into|into|set_config|search_path|role|authorization|rollback|ABORT|create|do|call|reset|discard|drop|alter|import|local|x1|\\$1|é)",
                0..8,
            ),
            separators in proptest::collection::vec("( |;|\n|, |-- c\n|/\\* /\\* n \\*/ \\*/|--|/\\*|\\.|_|1)", 8),
        ) {
            let text: String = words.iter().zip(&separators).flat_map(|(w, s)| [w.as_str(), s.as_str()]).collect();
            proptest::prop_assert_eq!(effect(&text), reference_effect(&text), "{:?}", text);
        }
    }
}
