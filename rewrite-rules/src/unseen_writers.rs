//! The identifiers of `accept_unseen_writers` (writers of an old table the proxy cannot see): their kinds
//! and the shape check the rules validation runs on each.

/// The kinds of an `accept_unseen_writers` identifier, `<kind>:<object>`: `fk:<constraint>`,
/// `trigger:<schema>.<table>.<trigger>`, `function:<schema>.<name>(<argument types>)`,
/// `procedure:<schema>.<name>(<argument types>)`, `view:<schema>.<view>`, `rule:<schema>.<table>.<rule>`,
/// `inheritance:<schema>.<table>` (a parent or child table: INHERITS or a partition).
pub const UNSEEN_WRITER_KINDS: [&str; 7] = ["fk", "trigger", "function", "procedure", "view", "rule", "inheritance"];

/// Checks the shape of one `accept_unseen_writers` identifier (whether it names a real object is the
/// catalog's to say).
pub(crate) fn check_unseen_writer_id(id: &str) -> Result<(), String> {
    let expected = "expected `fk:<constraint>`, `trigger:<schema>.<table>.<trigger>`, \
        `function:<schema>.<name>(<argument types>)`, `procedure:...`, `view:<schema>.<view>`, \
        `rule:<schema>.<table>.<rule>` or `inheritance:<schema>.<table>`";
    let Some((kind, object)) = id.split_once(':') else {
        return Err(format!("`{id}` has no kind: {expected}"));
    };
    if !UNSEEN_WRITER_KINDS.contains(&kind) {
        return Err(format!("`{id}`: unknown kind `{kind}`: {expected}"));
    }
    let well_formed = !object.is_empty()
        && object.trim() == object
        && match kind {
            "function" | "procedure" => object.contains('(') && object.ends_with(')') && !object.starts_with('('),
            "fk" => true,
            _ => object.contains('.') && !object.starts_with('.') && !object.ends_with('.'),
        };
    if !well_formed {
        return Err(format!("`{id}` is not a well-formed identifier: {expected}"));
    }
    Ok(())
}
