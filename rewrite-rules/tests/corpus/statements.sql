-- Corpus of statements in the shapes ORMs and people send, each with its expected outcome under the
-- route set by the last `@ <phase> <version> <read version>` line. Outcomes:
--   pass          the proxy forwards the original bytes
--   read          rewritten, reads routed (not a write)
--   write         rewritten as a dual write (or a rename onto the shadow after complete)
--   reject <why>  refused with 0A000; <why> is RejectReason::as_str
-- Rules: examples/users_split_name.toml + examples/orders_amount_numeric.toml. Other tables (posts,
-- comments, accounts, staging, audit) are not migrated. Schema: see CORPUS_SCHEMA in
-- tests/tests/rewrite_roundtrip.rs, where every rewritten statement is also prepared on Postgres.

-- ===================== ActiveRecord (Rails 7) =====================
@ dual_write v1 v1
pass   | SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2
pass   | SELECT "users".* FROM "users" WHERE "users"."email" = $1 LIMIT $2
pass   | SELECT "users".* FROM "users" ORDER BY "users"."id" ASC LIMIT $1
pass   | SELECT "users".* FROM "users" ORDER BY "users"."id" DESC LIMIT $1
pass   | SELECT COUNT(*) FROM "users"
pass   | SELECT 1 AS one FROM "users" WHERE "users"."email" = $1 LIMIT $2
pass   | SELECT "users"."id" FROM "users" WHERE "users"."name" ILIKE $1
pass   | SELECT "users".* FROM "users" WHERE "users"."id" IN ($1, $2, $3)
pass   | SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2 FOR UPDATE
pass   | SELECT "posts".* FROM "posts" INNER JOIN "users" ON "users"."id" = "posts"."user_id" WHERE "users"."email" = $1
pass   | SELECT "users".* FROM "users" WHERE "users"."id" IN (SELECT "posts"."user_id" FROM "posts" WHERE "posts"."published" = $1)
pass   | SELECT "posts".* FROM "posts" WHERE "posts"."user_id" = $1
pass   | SELECT "comments".* FROM "comments" WHERE "comments"."post_id" IN ($1, $2)
write  | INSERT INTO "users" ("name", "email") VALUES ($1, $2) RETURNING "id"
write  | INSERT INTO "users" ("id", "name", "email") VALUES ($1, $2, $3) RETURNING "id"
write  | UPDATE "users" SET "name" = $1 WHERE "users"."id" = $2
write  | UPDATE "users" SET "email" = $1 WHERE "users"."id" = $2
write  | UPDATE "users" SET "name" = $1, "email" = $2 WHERE "users"."id" = $3
write  | DELETE FROM "users" WHERE "users"."id" = $1
write  | DELETE FROM "users" WHERE "users"."email" = $1
write  | UPDATE "users" SET "email" = NULL WHERE "users"."email" LIKE $1
write  | INSERT INTO "users" ("id","name","email") VALUES ($1, $2, $3), ($4, $5, $6) ON CONFLICT ("id") DO UPDATE SET "name"=excluded."name","email"=excluded."email" RETURNING "id"
write  | INSERT INTO "users" ("id","name","email") VALUES ($1, $2, $3) ON CONFLICT  DO NOTHING RETURNING "id"
write  | DELETE FROM "users" WHERE "users"."id" IN (SELECT "posts"."user_id" FROM "posts" WHERE "posts"."published" = $1)
pass   | INSERT INTO "posts" ("user_id", "title", "body", "published", "created_at", "updated_at") VALUES ($1, $2, $3, $4, $5, $6) RETURNING "id"
pass   | UPDATE "posts" SET "title" = $1, "updated_at" = $2 WHERE "posts"."id" = $3
pass   | DELETE FROM "posts" WHERE "posts"."id" = $1
pass   | SELECT "schema_migrations"."version" FROM "schema_migrations" ORDER BY "schema_migrations"."version" ASC
pass   | SELECT "ar_internal_metadata"."value" FROM "ar_internal_metadata" WHERE "ar_internal_metadata"."key" = $1 LIMIT $2
pass   | SELECT pg_try_advisory_lock(4242)
pass   | SHOW search_path
pass   | SET client_min_messages TO 'warning'
pass   | BEGIN
pass   | COMMIT
pass   | ROLLBACK
pass   | SAVEPOINT active_record_1
pass   | RELEASE SAVEPOINT active_record_1
pass   | ROLLBACK TO SAVEPOINT active_record_1
write  | /*application:Blog,controller:users,action:update*/ UPDATE "users" SET "name" = $1 WHERE "users"."id" = $2
pass   | /*application:Blog,controller:users,action:show*/ SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2
reject key_changing_update | UPDATE "users" SET "id" = $1 WHERE "users"."id" = $2

@ dual_write v1 v2
read   | SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2
read   | SELECT "users".* FROM "users" WHERE "users"."email" = $1 LIMIT $2
read   | SELECT COUNT(*) FROM "users"
read   | SELECT 1 AS one FROM "users" WHERE "users"."email" = $1 LIMIT $2
read   | SELECT "users".* FROM "users" WHERE "users"."id" = $1 LIMIT $2 FOR UPDATE
read   | SELECT "posts".* FROM "posts" INNER JOIN "users" ON "users"."id" = "posts"."user_id" WHERE "users"."email" = $1
read   | SELECT "users".* FROM "users" WHERE "users"."id" IN (SELECT "posts"."user_id" FROM "posts" WHERE "posts"."published" = $1)
pass   | SELECT "posts".* FROM "posts" WHERE "posts"."user_id" = $1
write  | INSERT INTO "users" ("name", "email") VALUES ($1, $2) RETURNING "id"
write  | UPDATE "users" SET "name" = $1 WHERE "users"."id" = $2
write  | DELETE FROM "users" WHERE "users"."id" = $1

-- ===================== Django 4 (psycopg, client-side params inlined) =====================
@ dual_write v1 v1
pass   | SELECT "users"."id", "users"."name", "users"."email" FROM "users" WHERE "users"."id" = 1 LIMIT 21
pass   | SELECT "users"."id", "users"."name", "users"."email" FROM "users" ORDER BY "users"."id" ASC
pass   | SELECT COUNT(*) AS "__count" FROM "users"
pass   | SELECT (1) AS "a" FROM "users" WHERE "users"."email" = 'a@b.c' LIMIT 1
pass   | SELECT "users"."id", "users"."name", "users"."email" FROM "users" WHERE UPPER("users"."email"::text) = UPPER('A@B.C') LIMIT 21
pass   | SELECT "users"."id", "users"."name", "users"."email" FROM "users" WHERE "users"."name"::text LIKE '%Ada%' ESCAPE '\'
pass   | SELECT "users"."id", "users"."name", "users"."email" FROM "users" WHERE "users"."id" = 3 LIMIT 21 FOR UPDATE
pass   | SELECT "users"."id", "users"."name", "users"."email" FROM "users" WHERE "users"."id" = 3 LIMIT 21 FOR UPDATE NOWAIT
pass   | SELECT "users"."id", "users"."name", "users"."email" FROM "users" WHERE "users"."id" = 3 LIMIT 21 FOR UPDATE SKIP LOCKED
pass   | SELECT "users"."id", "users"."name", "users"."email" FROM "users" WHERE "users"."id" = 3 LIMIT 21 FOR NO KEY UPDATE
pass   | SELECT "posts"."id", "posts"."title", "users"."id", "users"."name" FROM "posts" INNER JOIN "users" ON ("posts"."user_id" = "users"."id") WHERE "posts"."published"
pass   | SELECT "users"."id", COUNT("posts"."id") AS "post_count" FROM "users" LEFT OUTER JOIN "posts" ON ("users"."id" = "posts"."user_id") GROUP BY "users"."id"
pass   | SELECT DISTINCT "users"."email" FROM "users" WHERE "users"."email" IS NOT NULL
write  | INSERT INTO "users" ("name", "email") VALUES ('Ada Lovelace', 'ada@x') RETURNING "users"."id"
write  | INSERT INTO "users" ("name", "email") VALUES ('Ada Lovelace', 'ada@x'), ('Alan Turing', 'alan@x') RETURNING "users"."id"
write  | UPDATE "users" SET "name" = 'Ada King', "email" = 'ada@x' WHERE "users"."id" = 1
write  | UPDATE "users" SET "email" = NULL WHERE "users"."id" IN (1, 2, 3)
write  | DELETE FROM "users" WHERE "users"."id" IN (1)
write  | DELETE FROM "users" WHERE "users"."id" IN (SELECT U0."user_id" FROM "posts" U0 WHERE U0."published")
write  | INSERT INTO "users" ("id", "name", "email") VALUES (9, 'Bulk One', NULL), (10, 'Bulk Two', NULL) ON CONFLICT DO NOTHING
write  | INSERT INTO "users" ("id", "name", "email") VALUES (9, 'Bulk One', NULL) ON CONFLICT("id") DO UPDATE SET "name" = EXCLUDED."name"
write  | UPDATE "users" SET "name" = CASE WHEN ("users"."id" = 1) THEN 'One Name' WHEN ("users"."id" = 2) THEN 'Two Name' ELSE NULL END WHERE "users"."id" IN (1, 2)
pass   | INSERT INTO "posts" ("user_id", "title", "body", "published", "created_at", "updated_at") VALUES (1, 'T', 'B', true, now(), now()) RETURNING "posts"."id"
pass   | SELECT "django_migrations"."id", "django_migrations"."app" FROM "django_migrations"
pass   | SELECT "django_session"."session_key" FROM "django_session" WHERE "django_session"."expire_date" > '2024-01-01T00:00:00'::timestamptz
pass   | SELECT c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v') AND n.nspname NOT IN ('pg_catalog', 'pg_toast') AND pg_catalog.pg_table_is_visible(c.oid)
pass   | SET TIME ZONE 'UTC'
pass   | SELECT set_config('search_path', 'public', false)
reject key_changing_update | UPDATE "users" SET "id" = 100 WHERE "users"."id" = 1

@ dual_write v1 v2
read   | SELECT "users"."id", "users"."name", "users"."email" FROM "users" WHERE "users"."id" = 1 LIMIT 21
read   | SELECT "users"."id", "users"."name", "users"."email" FROM "users" WHERE "users"."id" = 3 LIMIT 21 FOR UPDATE SKIP LOCKED
read   | SELECT "posts"."id", "posts"."title", "users"."id", "users"."name" FROM "posts" INNER JOIN "users" ON ("posts"."user_id" = "users"."id") WHERE "posts"."published"
read   | SELECT "users"."id", COUNT("posts"."id") AS "post_count" FROM "users" LEFT OUTER JOIN "posts" ON ("users"."id" = "posts"."user_id") GROUP BY "users"."id"
reject unparseable | SELECT "users"."id", "users"."name", "users"."email" FROM "users" WHERE "users"."id" = 3 LIMIT 21 FOR NO KEY UPDATE
write  | DELETE FROM "users" WHERE "users"."id" IN (SELECT U0."user_id" FROM "posts" U0 WHERE U0."published")

-- ===================== SQLAlchemy 2 (psycopg2 / asyncpg) =====================
@ dual_write v1 v1
pass   | SELECT users.id, users.name, users.email FROM users WHERE users.id = %(pk_1)s
pass   | SELECT users.id, users.name, users.email FROM users WHERE users.id = $1::INTEGER
pass   | SELECT users.id AS users_id, users.name AS users_name, users.email AS users_email FROM users WHERE users.email = $1::VARCHAR LIMIT $2::INTEGER
pass   | SELECT count(*) AS count_1 FROM (SELECT users.id AS users_id FROM users) AS anon_1
pass   | SELECT users.id, users.name FROM users ORDER BY users.name LIMIT $1::INTEGER OFFSET $2::INTEGER
pass   | SELECT users.id, users.name, posts.title FROM users JOIN posts ON users.id = posts.user_id WHERE posts.published = true
pass   | SELECT users.id FROM users WHERE EXISTS (SELECT 1 FROM posts WHERE posts.user_id = users.id)
pass   | SELECT users.id FROM users WHERE users.id = ANY ($1::INTEGER[])
pass   | SELECT anon_1.users_id FROM (SELECT users.id AS users_id, row_number() OVER (ORDER BY users.id) AS rn FROM users) AS anon_1 WHERE anon_1.rn <= 5
pass   | SELECT users.id, users.name FROM users WHERE users.id = $1::INTEGER FOR UPDATE OF users
write  | INSERT INTO users (name, email) VALUES ($1::VARCHAR, $2::VARCHAR) RETURNING users.id
write  | INSERT INTO users (name, email) SELECT p0::VARCHAR, p1::VARCHAR FROM (VALUES ($1, $2, 0), ($3, $4, 1)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter RETURNING users.id, users.id AS id__1
write  | UPDATE users SET name=$1::VARCHAR WHERE users.id = $2::INTEGER
write  | UPDATE users SET email=$1::VARCHAR WHERE users.id IN ($2::INTEGER, $3::INTEGER) RETURNING users.id, users.email
write  | DELETE FROM users WHERE users.id = $1::INTEGER
write  | DELETE FROM users WHERE users.id = $1::INTEGER RETURNING users.id
write  | INSERT INTO users (id, name, email) VALUES ($1::INTEGER, $2::VARCHAR, $3::VARCHAR) ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email
write  | INSERT INTO users (id, name, email) VALUES ($1::INTEGER, $2::VARCHAR, $3::VARCHAR) ON CONFLICT ON CONSTRAINT users_pkey DO NOTHING
write  | UPDATE users SET name=accounts.email FROM accounts WHERE users.id = accounts.user_id
write  | DELETE FROM users USING accounts WHERE users.id = accounts.user_id AND accounts.balance < $1::INTEGER
write  | TRUNCATE TABLE users
write  | TRUNCATE users RESTART IDENTITY CASCADE
pass   | SELECT pg_catalog.version()
pass   | SELECT current_schema()
pass   | show standard_conforming_strings
pass   | SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid WHERE typname = 'hstore'
pass   | SELECT posts.id, posts.title FROM posts WHERE posts.user_id = $1::INTEGER
pass   | INSERT INTO comments (post_id, user_id, body) VALUES ($1::BIGINT, $2::INTEGER, $3::VARCHAR) RETURNING comments.id
reject unsupported_returning | UPDATE users SET name=accounts.email FROM accounts WHERE users.id = accounts.user_id RETURNING accounts.balance

@ dual_write v1 v2
read   | SELECT users.id, users.name, users.email FROM users WHERE users.id = $1::INTEGER
read   | SELECT count(*) AS count_1 FROM (SELECT users.id AS users_id FROM users) AS anon_1
read   | SELECT users.id FROM users WHERE EXISTS (SELECT 1 FROM posts WHERE posts.user_id = users.id)
read   | SELECT users.id, users.name FROM users WHERE users.id = $1::INTEGER FOR UPDATE OF users
read   | SELECT anon_1.users_id FROM (SELECT users.id AS users_id, row_number() OVER (ORDER BY users.id) AS rn FROM users) AS anon_1 WHERE anon_1.rn <= 5
write  | UPDATE users SET name=accounts.email FROM accounts WHERE users.id = accounts.user_id
write  | TRUNCATE TABLE users

-- ===================== Hibernate 6 (pgjdbc) =====================
@ dual_write v1 v1
pass   | select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=$1
pass   | select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.email=$1
pass   | select u1_0.id,u1_0.email,u1_0.name from users u1_0 order by u1_0.name offset $1 rows fetch first $2 rows only
pass   | select count(u1_0.id) from users u1_0
pass   | select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=$1 for update
pass   | select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=$1 for share
pass   | select p1_0.id,p1_0.title,u1_0.id,u1_0.name from posts p1_0 join users u1_0 on u1_0.id=p1_0.user_id where p1_0.id=$1
pass   | select p1_0.id,p1_0.title from posts p1_0 where p1_0.user_id=$1
pass   | select nextval('posts_id_seq')
write  | insert into users (email,name) values ($1,$2)
write  | insert into users (email,name,id) values ($1,$2,$3)
write  | update users set email=$1,name=$2 where id=$3
write  | delete from users where id=$1
write  | update users set email=$1 where id in ($2,$3)
write  | delete from users u1_0 where u1_0.email like $1
pass   | insert into posts (body,created_at,published,title,updated_at,user_id,id) values ($1,$2,$3,$4,$5,$6,$7)
pass   | update posts set title=$1 where id=$2
pass   | delete from comments where post_id=$1
pass   | SET application_name = 'PostgreSQL JDBC Driver'
pass   | SET extra_float_digits = 3
pass   | select 1
reject key_changing_update | update users set id=$1,name=$2 where id=$3

@ cutover v1 v2
read   | select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=$1
read   | select u1_0.id,u1_0.email,u1_0.name from users u1_0 where u1_0.id=$1 for update
read   | select p1_0.id,p1_0.title,u1_0.id,u1_0.name from posts p1_0 join users u1_0 on u1_0.id=p1_0.user_id where p1_0.id=$1
write  | insert into users (email,name,id) values ($1,$2,$3)
write  | update users set email=$1,name=$2 where id=$3
write  | delete from users where id=$1

-- ===================== Prisma 5 =====================
@ dual_write v1 v1
pass   | SELECT "public"."users"."id", "public"."users"."name", "public"."users"."email" FROM "public"."users" WHERE ("public"."users"."id" = $1 AND 1=1) LIMIT $2 OFFSET $3
pass   | SELECT "public"."users"."id", "public"."users"."name", "public"."users"."email" FROM "public"."users" WHERE 1=1 ORDER BY "public"."users"."id" ASC OFFSET $1
pass   | SELECT COUNT(*) AS "_count._all" FROM (SELECT "public"."users"."id" FROM "public"."users" WHERE 1=1 OFFSET $1) AS "sub"
pass   | SELECT "public"."posts"."id", "public"."posts"."user_id" FROM "public"."posts" WHERE "public"."posts"."user_id" IN ($1,$2) OFFSET $3
pass   | SELECT "t1"."id", "t1"."name" FROM "public"."users" AS "t1" WHERE "t1"."email" = $1 LIMIT $2
write  | INSERT INTO "public"."users" ("name","email") VALUES ($1,$2) RETURNING "public"."users"."id", "public"."users"."name", "public"."users"."email"
write  | UPDATE "public"."users" SET "name" = $1 WHERE ("public"."users"."id" = $2 AND 1=1) RETURNING "public"."users"."id", "public"."users"."name", "public"."users"."email"
write  | UPDATE "public"."users" SET "email" = $1 WHERE ("public"."users"."id" IN ($2,$3) AND 1=1)
write  | DELETE FROM "public"."users" WHERE ("public"."users"."id" = $1 AND 1=1) RETURNING "public"."users"."id", "public"."users"."name", "public"."users"."email"
write  | DELETE FROM "public"."users" WHERE ("public"."users"."id" IN ($1) AND 1=1)
write  | INSERT INTO "public"."users" ("id","name","email") VALUES ($1,$2,$3) ON CONFLICT ("id") DO UPDATE SET "name" = $4 WHERE ("public"."users"."id" = $5 AND 1=1) RETURNING "public"."users"."id"
write  | INSERT INTO "public"."users" ("name","email") VALUES ($1,$2), ($3,$4) ON CONFLICT DO NOTHING
pass   | SELECT "public"."_prisma_migrations"."id" FROM "public"."_prisma_migrations" WHERE 1=1
pass   | INSERT INTO "public"."posts" ("user_id","title","published") VALUES ($1,$2,$3) RETURNING "public"."posts"."id"

@ dual_write v2 v2
read   | SELECT "public"."users"."id", "public"."users"."first_name", "public"."users"."last_name" FROM "public"."users" WHERE ("public"."users"."id" = $1 AND 1=1) LIMIT $2 OFFSET $3
read   | SELECT "t1"."id", "t1"."first_name" FROM "public"."users" AS "t1" WHERE "t1"."email" = $1 LIMIT $2
write  | INSERT INTO "public"."users" ("id","first_name","last_name","email") VALUES ($1,$2,$3,$4) RETURNING "public"."users"."id", "public"."users"."first_name"
write  | UPDATE "public"."users" SET "last_name" = $1 WHERE ("public"."users"."id" = $2 AND 1=1) RETURNING "public"."users"."id", "public"."users"."last_name"
write  | DELETE FROM "public"."users" WHERE ("public"."users"."id" = $1 AND 1=1) RETURNING "public"."users"."id"

-- ===================== sqlx (Rust, hand-written with $n) =====================
@ dual_write v1 v1
pass   | SELECT id, name, email FROM users WHERE id = $1
pass   | SELECT id, name, email FROM users WHERE email = $1
pass   | SELECT id, name FROM users ORDER BY id LIMIT $1 OFFSET $2
pass   | SELECT EXISTS(SELECT 1 FROM users WHERE email = $1)
pass   | SELECT u.id, u.name, count(p.id) AS posts FROM users u LEFT JOIN posts p ON p.user_id = u.id GROUP BY u.id, u.name
pass   | SELECT id, name FROM users WHERE id = $1 FOR UPDATE
pass   | SELECT shop_id, id, amount_cents FROM orders WHERE shop_id = $1 AND id = $2
pass   | SELECT sum(amount_cents) FROM orders WHERE shop_id = $1
pass   | SELECT o.id, u.name FROM orders o JOIN users u ON u.id = o.shop_id WHERE o.placed_at > $1
write  | INSERT INTO users (name, email) VALUES ($1, $2) RETURNING id
write  | INSERT INTO users (id, name, email) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING
write  | INSERT INTO users (id, name, email) SELECT * FROM UNNEST($1::int[], $2::text[], $3::text[])
write  | UPDATE users SET email = $1 WHERE id = $2 RETURNING id, name, email
write  | UPDATE users SET name = $1 WHERE id = ANY($2)
write  | DELETE FROM users WHERE id = $1 RETURNING id
write  | INSERT INTO orders (shop_id, id, amount_cents, meta) VALUES ($1, $2, $3, $4)
write  | INSERT INTO orders (shop_id, id, amount_cents) VALUES ($1, $2, $3) ON CONFLICT (shop_id, id) DO UPDATE SET amount_cents = EXCLUDED.amount_cents RETURNING amount_cents
write  | UPDATE orders SET amount_cents = amount_cents - $1 WHERE shop_id = $2 AND id = $3 RETURNING amount_cents
write  | UPDATE orders SET meta = $1 WHERE shop_id = $2
write  | UPDATE orders SET placed_at = now() WHERE shop_id = $1 AND id = $2
write  | DELETE FROM orders WHERE shop_id = $1 AND id = $2
write  | DELETE FROM orders WHERE placed_at < now() - interval '1 year'
write  | TRUNCATE orders
reject key_changing_update | UPDATE orders SET id = $1 WHERE shop_id = $2 AND id = $3
reject key_changing_update | UPDATE orders SET shop_id = $1 WHERE id = $2
pass   | INSERT INTO accounts (user_id, email, balance) VALUES ($1, $2, $3)
pass   | UPDATE accounts SET balance = balance + $1 WHERE user_id = $2
pass   | SELECT balance FROM accounts WHERE user_id = $1 FOR UPDATE

@ cutover v2 v2
read   | SELECT id, first_name, last_name, email FROM users WHERE id = $1
read   | SELECT id, first_name FROM users WHERE last_name = $1 ORDER BY id
read   | SELECT shop_id, id, amount, attributes FROM orders WHERE shop_id = $1
read   | SELECT sum(amount) FROM orders WHERE attributes ->> 'gift' = 'true'
write  | INSERT INTO users (id, first_name, last_name, email) VALUES ($1, $2, $3, $4)
write  | UPDATE users SET email = $1 WHERE id = $2
write  | UPDATE users SET first_name = $1, last_name = $2 WHERE id = $3 RETURNING id
write  | DELETE FROM users WHERE id = $1
write  | INSERT INTO orders (shop_id, id, amount, attributes, placed_at) VALUES ($1, $2, $3, $4, $5)
write  | UPDATE orders SET amount = $1 WHERE shop_id = $2 AND id = $3
write  | UPDATE orders SET attributes = attributes || $1 WHERE shop_id = $2
write  | DELETE FROM orders WHERE shop_id = $1
reject key_changing_update | UPDATE users SET id = $1 WHERE id = $2
write  | COPY users (id, first_name, last_name, email) FROM STDIN
write  | COPY orders FROM STDIN WITH (FORMAT binary)

@ complete v2 v2
read   | SELECT id, first_name, last_name, email FROM users WHERE id = $1
write  | INSERT INTO users (id, first_name, last_name, email) VALUES ($1, $2, $3, $4)
write  | UPDATE users SET email = $1 WHERE id = $2
write  | DELETE FROM users WHERE id = $1
write  | UPDATE orders SET amount = $1 WHERE shop_id = $2 AND id = $3
write  | TRUNCATE users
write  | COPY users FROM STDIN

@ complete v1 v2
read   | SELECT id, name, email FROM users WHERE id = $1
reject retired_version_write | INSERT INTO users (name, email) VALUES ($1, $2)
reject retired_version_write | UPDATE users SET name = $1 WHERE id = $2
reject retired_version_write | DELETE FROM users WHERE id = $1
reject retired_version_write | TRUNCATE users
reject retired_version_write | COPY users (name, email) FROM STDIN

-- ===================== Hand-written SQL =====================
@ dual_write v1 v1
pass   | SELECT * FROM users
pass   | select * from USERS where ID = 1
pass   | SELECT * FROM public.users u WHERE u.id = 1
pass   | SELECT u.*, a.balance FROM users u LEFT JOIN accounts a ON a.user_id = u.id
pass   | WITH recent AS (SELECT * FROM users WHERE id > 100) SELECT count(*) FROM recent
pass   | SELECT id FROM users UNION SELECT user_id FROM accounts
pass   | SELECT * FROM users WHERE id = (SELECT max(id) FROM users)
pass   | SELECT * FROM users TABLESAMPLE SYSTEM (10)
pass   | SELECT * FROM users FOR KEY SHARE
pass   | SELECT * FROM ONLY users
pass   | SELECT 'users' AS word, 'DELETE FROM users' AS text
pass   | SELECT * FROM accounts -- users are elsewhere
pass   | SELECT power_users.id FROM accounts AS power_users
pass   | COPY users TO STDOUT
pass   | COPY (SELECT * FROM users) TO STDOUT WITH (FORMAT csv)
pass   | EXPLAIN SELECT * FROM users WHERE id = 1
pass   | EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM users
pass   | SELECT * FROM users WHERE email IS NULL FOR NO KEY UPDATE SKIP LOCKED
pass   | DECLARE c CURSOR FOR SELECT * FROM users
pass   | LISTEN users
pass   | NOTIFY users, 'changed'
pass   | SELECT pg_notify('users', 'x')
pass   | SELECT * FROM users_v2
pass   | VALUES (1, 'users')
write  | INSERT INTO users VALUES (1, 'Ada Lovelace', 'ada@x')
write  | INSERT INTO users DEFAULT VALUES
write  | INSERT INTO users (name) SELECT name FROM staging WHERE batch = 1
write  | INSERT INTO users (id, name, email) SELECT id, name, email FROM staging ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email WHERE users.email IS DISTINCT FROM EXCLUDED.email
write  | INSERT INTO users AS u (id, name) VALUES (1, 'x y') ON CONFLICT (id) DO UPDATE SET name = u.name || ' Jr' RETURNING u.*
write  | INSERT INTO users (id, name) OVERRIDING SYSTEM VALUE VALUES (77, 'Over Ride')
write  | UPDATE users SET name = upper(name)
write  | UPDATE users SET email = lower(email) WHERE email <> lower(email) RETURNING *
write  | UPDATE users u SET name = s.name FROM staging s WHERE s.id = u.id
write  | UPDATE users SET name = s.name FROM staging s WHERE s.id = users.id RETURNING users.id, name
write  | UPDATE ONLY users SET email = NULL WHERE id = 1
write  | WITH s AS (SELECT id FROM staging) UPDATE users SET email = NULL WHERE id IN (SELECT id FROM s)
write  | WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) DELETE FROM users WHERE id IN (SELECT n FROM r)
write  | DELETE FROM users
write  | DELETE FROM users WHERE id IN (SELECT id FROM users ORDER BY id LIMIT 10)
write  | DELETE FROM users u USING accounts a WHERE a.user_id = u.id AND a.balance = 0 RETURNING u.id
write  | DELETE FROM ONLY public.users WHERE id = 1
write  | TRUNCATE users, accounts
write  | TRUNCATE TABLE ONLY users CONTINUE IDENTITY RESTRICT
write  | BEGIN; UPDATE users SET email = NULL WHERE id = 1; COMMIT;
write  | INSERT INTO "users" ("id", "name") VALUES (5, 'Quoted Ident')
write  | /* sqlcommenter: route='/users' */ DELETE FROM users WHERE id = 5
write  | UPDATE users SET name = 'a b' WHERE id = 1 -- trailing comment
pass   | INSERT INTO audit (user_id, name) SELECT id, name FROM users
pass   | CREATE TEMP TABLE tmp_x (id int)
pass   | ALTER TABLE posts ADD COLUMN subtitle text
pass   | CREATE INDEX ON posts (user_id)
pass   | DROP TABLE IF EXISTS tmp_x
pass   | VACUUM ANALYZE posts
pass   | UPDATE accounts SET balance = 0 WHERE user_id IN (SELECT id FROM users WHERE email IS NULL)
pass   | DELETE FROM accounts WHERE user_id NOT IN (SELECT id FROM users)
pass   | INSERT INTO accounts (user_id) SELECT id FROM users ON CONFLICT DO NOTHING
pass   | WITH moved AS (DELETE FROM staging RETURNING *) INSERT INTO audit (user_id, name) SELECT id, name FROM moved
reject key_changing_update | UPDATE users SET id = id + 1
reject key_changing_update | UPDATE users SET (id, name) = (2, 'x y') WHERE id = 1
reject key_changing_update | INSERT INTO users (id, name) VALUES (1, 'a b') ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id + 1000
reject merge | MERGE INTO users u USING staging s ON u.id = s.id WHEN MATCHED THEN UPDATE SET name = s.name WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.name)
write  | COPY users FROM STDIN
write  | COPY users (name, email) FROM STDIN WITH (FORMAT csv, HEADER true)
reject copy_from | COPY users (id, name) FROM '/tmp/users.csv' WITH (FORMAT csv)
reject copy_from | COPY users FROM PROGRAM 'cat /tmp/users.csv'
reject ddl | ALTER TABLE users ADD COLUMN age int
reject ddl | ALTER TABLE users RENAME COLUMN name TO full_name
reject ddl | ALTER TABLE public.users DROP COLUMN email
reject ddl | DROP TABLE users
reject ddl | CREATE INDEX users_name_idx ON users (name)
reject ddl | CREATE UNIQUE INDEX CONCURRENTLY ON users (email)
reject ddl | CREATE VIEW v_users AS SELECT * FROM users
-- CREATE TABLE makes another relation; its query is a read, routed like one (here: nothing to route).
pass   | CREATE TABLE users_copy AS SELECT * FROM users
reject ddl | COMMENT ON TABLE users IS 'people'
reject ddl | GRANT SELECT ON users TO PUBLIC
reject ddl | CREATE TRIGGER t BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION f()
reject data_modifying_cte | WITH gone AS (DELETE FROM users WHERE id = 1 RETURNING *) SELECT * FROM gone
reject data_modifying_cte | WITH upd AS (UPDATE users SET name = 'x y' RETURNING id) INSERT INTO audit (user_id) SELECT id FROM upd
reject data_modifying_cte | WITH ins AS (INSERT INTO users (name) VALUES ('a b') RETURNING id) SELECT id FROM ins
reject unsupported_returning | DELETE FROM users USING accounts a WHERE a.user_id = users.id RETURNING *
reject unsupported_returning | UPDATE users SET name = s.name FROM staging s WHERE s.id = users.id RETURNING s.batch
reject unparseable | UPDATE users SET name = 'x y' WHERE CURRENT OF c
reject unparseable | INSERT INTO users (id, name) VALUES (1, 'a b') ON CONFLICT ((lower(name))) DO NOTHING
reject unsupported_write | PREPARE del (int) AS DELETE FROM users WHERE id = $1
pass   | PREPARE sel (int) AS SELECT * FROM users WHERE id = $1
pass   | EXECUTE sel(1)
pass   | DEALLOCATE sel

@ dual_write v1 v2
read   | SELECT * FROM users
read   | select * from USERS where ID = 1
read   | SELECT * FROM public.users u WHERE u.id = 1
read   | SELECT u.*, a.balance FROM users u LEFT JOIN accounts a ON a.user_id = u.id
read   | WITH recent AS (SELECT * FROM users WHERE id > 100) SELECT count(*) FROM recent
read   | SELECT id FROM users UNION SELECT user_id FROM accounts
read   | SELECT * FROM users WHERE id = (SELECT max(id) FROM users)
reject unparseable | SELECT * FROM users FOR KEY SHARE
read   | SELECT * FROM ONLY users
read   | COPY users TO STDOUT
read   | COPY users (id, email) TO STDOUT
read   | COPY (SELECT * FROM users) TO STDOUT WITH (FORMAT csv)
read   | EXPLAIN SELECT * FROM users WHERE id = 1
read   | DECLARE c CURSOR FOR SELECT * FROM users
read   | PREPARE sel (int) AS SELECT * FROM users WHERE id = $1
read   | INSERT INTO audit (user_id, name) SELECT id, name FROM users
read   | UPDATE accounts SET balance = 0 WHERE user_id IN (SELECT id FROM users WHERE email IS NULL)
read   | DELETE FROM accounts WHERE user_id NOT IN (SELECT id FROM users)
read   | SELECT a.user_id, l.name FROM accounts a CROSS JOIN LATERAL (SELECT name FROM users WHERE users.id = a.user_id) l
read   | SELECT * FROM users u1 JOIN users u2 ON u1.id = u2.id
read   | SELECT users.name, public.users.email FROM public.users
pass   | SELECT * FROM users(1)
pass   | WITH users AS (SELECT 1 AS id) SELECT * FROM users
pass   | SELECT * FROM users_v2
pass   | SELECT * FROM accounts
reject unparseable | SELECT * FROM users WHERE email IS NULL FOR NO KEY UPDATE SKIP LOCKED
reject unparseable | TABLE users
write  | INSERT INTO users VALUES (1, 'Ada Lovelace', 'ada@x')
write  | UPDATE users SET name = (SELECT name FROM users WHERE id = 2) WHERE id = 1
write  | DELETE FROM users WHERE id IN (SELECT id FROM users ORDER BY id LIMIT 10)

@ dual_write v2 v1
read   | SELECT id, first_name, last_name, email FROM users
read   | SELECT u.first_name FROM users u WHERE u.id = 1 FOR UPDATE OF u
read   | SELECT count(*) FROM users WHERE last_name = 'Turing'
write  | INSERT INTO users (id, first_name, last_name, email) VALUES (1, 'Ada', 'Lovelace', 'ada@x')
write  | UPDATE users SET first_name = 'Augusta' WHERE id = 1
write  | DELETE FROM users WHERE last_name = 'Turing'

@ off v2 v2
pass   | SELECT id, first_name FROM users
pass   | INSERT INTO users (id, first_name) VALUES (1, 'x')
pass   | ALTER TABLE users ADD COLUMN x int
pass   | MERGE INTO users u USING staging s ON u.id = s.id WHEN MATCHED THEN DELETE
pass   | COPY users FROM STDIN
pass   | UPDATE users SET name = 'x' WHERE CURRENT OF c
