-- The schema every compatibility driver runs against (DESIGN section 2), created directly on the upstream by
-- tests/tests/compat_matrix.rs before the proxy starts. `users` is under migration to `users_v2` by
-- rewrite-rules/examples/users_split_name.toml; `notes` is an ordinary table (COPY, transactions).
CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
CREATE TABLE public.notes (id int PRIMARY KEY, body text NOT NULL);
