//! Reading `dualwrite.version` from a startup packet: either a parameter of that name, or the `options`
//! parameter parsed as Postgres does (words split at unescaped whitespace, backslash escapes the next
//! character, `-c name=value`, `-cname=value` and `--name=value`; in names `-` means `_`; later wins).

/// The name of the setting, as Postgres compares GUC names (case-insensitive).
pub const VERSION_GUC: &str = "dualwrite.version";

/// The version named by the startup parameters, if any. A direct `dualwrite.version` parameter is applied
/// after `options`, as Postgres applies the packet's own GUCs after the command-line switches in options.
pub fn startup_version<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<String> {
    let mut from_options = None;
    let mut direct = None;
    for (name, value) in params {
        if name.eq_ignore_ascii_case("options") {
            if let Some(v) = version_in_options(value) {
                from_options = Some(v);
            }
        } else if name.eq_ignore_ascii_case(VERSION_GUC) {
            direct = Some(value.to_string());
        }
    }
    direct.or(from_options)
}

/// Split an `options` string into words like Postgres's pg_split_opts.
pub fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_whitespace() {
                break;
            }
            chars.next();
            if c == '\\' {
                // As pg_split_opts: a backslash escapes the next character; a trailing one is itself.
                word.push(chars.next().unwrap_or('\\'));
            } else {
                word.push(c);
            }
        }
        words.push(word);
    }
    words
}

/// The last `dualwrite.version` set in an `options` string.
pub fn version_in_options(options: &str) -> Option<String> {
    let words = split_options(options);
    let mut found = None;
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        let assignment = if let Some(rest) = word.strip_prefix("--") {
            Some(rest.to_string())
        } else if word == "-c" {
            i += 1;
            words.get(i).cloned()
        } else {
            word.strip_prefix("-c").map(str::to_string)
        };
        if let Some((name, value)) = assignment.as_deref().and_then(|a| a.split_once('=')) {
            if name.replace('-', "_").eq_ignore_ascii_case(VERSION_GUC) {
                found = Some(value.to_string());
            }
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_like_postgres() {
        assert_eq!(split_options("  -c a=b   -c\tc=d\\ e "), vec!["-c", "a=b", "-c", "c=d e"]);
        assert_eq!(split_options("x\\\\y"), vec!["x\\y"]);
        assert_eq!(split_options(""), Vec::<String>::new());
    }

    #[test]
    fn version_from_each_form() {
        assert_eq!(version_in_options("-c dualwrite.version=v2").as_deref(), Some("v2"));
        assert_eq!(version_in_options("-cdualwrite.version=v2").as_deref(), Some("v2"));
        assert_eq!(version_in_options("--dualwrite.version=v2").as_deref(), Some("v2"));
        assert_eq!(version_in_options("-c DualWrite.Version=v2").as_deref(), Some("v2"));
        assert_eq!(
            version_in_options("-c statement_timeout=5s -c dualwrite.version=v1 --dualwrite.version=v2").as_deref(),
            Some("v2")
        );
        assert_eq!(version_in_options("-c dualwrite.version=a\\ b").as_deref(), Some("a b"));
        assert_eq!(version_in_options("-c search_path=x"), None);
        assert_eq!(version_in_options("-c"), None);
        assert_eq!(version_in_options("-c dualwrite.version"), None);
    }

    #[test]
    fn direct_parameter_beats_options() {
        let params = [("user", "app"), ("dualwrite.version", "v1"), ("options", "-c dualwrite.version=v2")];
        assert_eq!(startup_version(params).as_deref(), Some("v1"));
        assert_eq!(startup_version([("options", "-c dualwrite.version=v2")]).as_deref(), Some("v2"));
        assert_eq!(startup_version([("user", "app")]), None);
    }
}
