//! Microseconds per statement for the paths of `Rewriter::rewrite`: the cheap check that lets a statement
//! naming no migrated table through, a plan-cache hit (by exact text, and by shape for a statement with
//! inlined literals seen for the first time), and an uncached parse + rewrite of
//! typical writes and reads. Run: `cargo bench -p dualwrite-rules --bench rewrite`; results in
//! bench/REWRITE.md.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use dualwrite_rules::{MigrationRoute, Phase, Rewriter, Route, RuleSet, Side};

const RULES: &str = concat!(
    include_str!("../examples/users_split_name.toml"),
    "\n",
    include_str!("../examples/orders_amount_numeric.toml")
);

const UNRELATED: &str = "SELECT \"posts\".* FROM \"posts\" WHERE \"posts\".\"user_id\" = $1 AND \"posts\".\"published\" = $2 ORDER BY \"posts\".\"created_at\" DESC LIMIT $3";
const INSERT: &str = "INSERT INTO \"users\" (\"name\", \"email\") VALUES ($1, $2) RETURNING \"id\"";
const UPDATE: &str = "UPDATE \"users\" SET \"name\" = $1, \"email\" = $2 WHERE \"users\".\"id\" = $3";
const DELETE: &str = "DELETE FROM users WHERE id = $1";
const UPSERT: &str = "INSERT INTO orders (shop_id, id, amount_cents) VALUES ($1, $2, $3) ON CONFLICT (shop_id, id) DO UPDATE SET amount_cents = EXCLUDED.amount_cents RETURNING amount_cents";
const JOIN: &str = "SELECT p.id, p.title, u.id, u.name FROM posts p JOIN users u ON u.id = p.user_id WHERE p.id IN (SELECT post_id FROM comments WHERE user_id = $1) ORDER BY p.id LIMIT 20";

fn bench(c: &mut Criterion) {
    let rules = RuleSet::from_toml(RULES, "examples").unwrap();
    let v1 = Route::uniform(&rules, MigrationRoute::own(Phase::DualWrite, Side::Old));
    let v1_reads_v2 =
        Route::uniform(&rules, MigrationRoute { phase: Phase::DualWrite, version: Side::Old, read_source: Side::New });
    let rewriter = Rewriter::new(Arc::new(rules), 10_000);

    c.bench_function("passthrough_check", |b| b.iter(|| rewriter.mentions_migrated_table(black_box(UNRELATED))));
    c.bench_function("rewrite_unrelated_statement", |b| b.iter(|| rewriter.rewrite(black_box(UNRELATED), &v1)));
    rewriter.rewrite(UPDATE, &v1);
    c.bench_function("cache_hit_update", |b| b.iter(|| rewriter.rewrite(black_box(UPDATE), &v1)));
    // A simple-protocol client inlines its values: every statement is new text of a known shape.
    let mut n = 0u64;
    c.bench_function("shape_cache_hit_inlined_update", |b| {
        b.iter(|| {
            n += 1;
            let sql = format!("UPDATE users SET name = 'user {n}', email = 'u{n}@example.com' WHERE id = {n}");
            rewriter.rewrite(black_box(&sql), &v1)
        })
    });

    let mut uncached = c.benchmark_group("parse_and_rewrite");
    for (name, sql, route) in [
        ("insert_returning", INSERT, &v1),
        ("update", UPDATE, &v1),
        ("delete", DELETE, &v1),
        ("upsert_composite_key", UPSERT, &v1),
        ("join_read_routed", JOIN, &v1_reads_v2),
        ("join_read_own_table", JOIN, &v1),
    ] {
        uncached.bench_function(name, |b| b.iter(|| rewriter.plan(black_box(sql), route)));
    }
    uncached.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
