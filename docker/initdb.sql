-- The example migration's tables (DESIGN section 2, rewrite-rules/examples/users_split_name.toml) with a
-- few rows, created by the postgres container of docker-compose.yml on its first start.
CREATE TABLE public.users (id serial PRIMARY KEY, name text, email text);
CREATE TABLE public.users_v2 (id int PRIMARY KEY, first_name text, last_name text, email text);
INSERT INTO public.users (name, email) VALUES
  ('Ada Lovelace', 'ada@example.org'),
  ('Alan Turing', 'alan@example.org'),
  ('Grace Hopper', 'grace@example.org');
