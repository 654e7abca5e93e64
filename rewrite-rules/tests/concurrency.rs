//! The rewriter is shared by every session: many threads rewriting at once get the same plans as a single
//! thread, the cache counts every lookup once, and it stays within its capacity.

use std::sync::Arc;

use dualwrite_rules::{MigrationRoute, Phase, Rewriter, Route, RuleSet, Side};

#[test]
fn concurrent_sessions_share_one_bounded_cache() {
    fn assert_shareable<T: Send + Sync>() {}
    assert_shareable::<Rewriter>();

    let rules = RuleSet::from_toml(include_str!("../examples/users_split_name.toml"), "users").unwrap();
    let routes: Vec<Route> = [Side::Old, Side::New]
        .into_iter()
        .map(|read_source| {
            Route::uniform(&rules, MigrationRoute { phase: Phase::DualWrite, version: Side::Old, read_source })
        })
        .collect();
    let rewriter = Arc::new(Rewriter::new(Arc::new(rules), 64));
    let statements: Vec<String> = (0..100).map(|i| format!("UPDATE users SET email = $1 WHERE id = {i}")).collect();
    let expected: Vec<_> = statements.iter().map(|s| rewriter.plan(s, &routes[0])).collect();

    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (rewriter, statements, routes, expected) =
                (rewriter.clone(), statements.clone(), routes.clone(), expected.clone());
            std::thread::spawn(move || {
                for round in 0..500 {
                    let i = (round * 7 + t * 13) % statements.len();
                    let plan = rewriter.rewrite(&statements[i], &routes[round % 2]);
                    if round % 2 == 0 {
                        assert_eq!(*plan, expected[i]);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = rewriter.cache_stats();
    assert_eq!(stats.hits + stats.misses, 8 * 500);
    assert!(stats.hits > 0);
    assert!(stats.entries <= 64, "{stats:?}");
}
