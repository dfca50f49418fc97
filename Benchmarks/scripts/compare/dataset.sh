# Sourced by compare.sh and chunk-sizes.sh: the benchmark's data set and its activity.
#   make_dataset      database "app" (pgbench at $SCALE plus users, posts, uploads) and the folder
#                     $storage; sets $dataset to a one-line description
#   activity N        one round of app activity (pgbench, new and edited posts, deletes) and of
#                     folder changes, seeded by N
# Needs SCALE, TX, storage, here (this folder) and a running server (PGHOST...).

psqlq() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }

make_dataset() {
    echo "building the data set (SCALE=$SCALE)" >&2
    createdb app
    pgbench -i -s "$SCALE" -q app 2>&1 | tail -n 1 >&2
    psqlq -d app >/dev/null <<SQL
SELECT setseed(0.42);
CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL,
    created_at timestamptz NOT NULL, last_login timestamptz, bio text);
INSERT INTO users (email, name, created_at, last_login, bio)
SELECT 'user' || g || '@example.com', 'User ' || g, now() - g * interval '1 minute',
       now() - (random() * 1000) * interval '1 hour', repeat(md5(g::text) || ' ', 1 + g % 4)
FROM generate_series(1, 5000 * $SCALE) g;
CREATE TABLE posts (id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users,
    title text NOT NULL, body text NOT NULL, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
INSERT INTO posts (user_id, title, body, created_at, updated_at)
SELECT 1 + (random() * (5000 * $SCALE - 1))::int, 'Post ' || g || ' ' || md5(g::text),
       md5(random()::text) || ' ' || repeat('lorem ipsum dolor sit amet ' || (random() * 1e6)::int || ' ', 2 + g % 12),
       now() - (10000 * $SCALE - g) * interval '1 minute', now() - (10000 * $SCALE - g) * interval '1 minute'
FROM generate_series(1, 10000 * $SCALE) g;
CREATE INDEX posts_user_id ON posts (user_id);
CREATE INDEX posts_created_at ON posts (created_at);
CREATE TABLE uploads (id bigserial PRIMARY KEY, post_id bigint NOT NULL REFERENCES posts, path text NOT NULL,
    bytes bigint NOT NULL, sha256 text NOT NULL, created_at timestamptz NOT NULL);
INSERT INTO uploads (post_id, path, bytes, sha256, created_at)
SELECT 1 + (random() * (10000 * $SCALE - 1))::int, 'uploads/2024/' || g || '.jpg', (random() * 1e6)::int,
       encode(sha256(g::text::bytea), 'hex'), now() - g * interval '1 minute'
FROM generate_series(1, 3000 * $SCALE) g;
CREATE INDEX uploads_post_id ON uploads (post_id);
VACUUM ANALYZE;
SQL
    python3 "$here/storage.py" create "$storage" "$SCALE"

    db_bytes=$(psql -XAtc "SELECT pg_database_size('app')" app)
    storage_bytes=$(du -sb "$storage" | cut -f1)
    storage_files=$(find "$storage" -type f | wc -l)
    rows=$(psql -XAtc "SELECT (SELECT count(*) FROM pgbench_accounts) || ' pgbench_accounts, ' ||
        (SELECT count(*) FROM users) || ' users, ' || (SELECT count(*) FROM posts) || ' posts, ' ||
        (SELECT count(*) FROM uploads) || ' uploads'" app)
    dataset="database $((db_bytes / 1000000)) MB ($rows); storage $((storage_bytes / 1000000)) MB in $storage_files files"
    echo "data set: $dataset" >&2
}

activity() {
    local r=$1
    pgbench -n -c 2 -j 2 -t "$TX" --random-seed="$r" app >/dev/null 2>&1
    psqlq -d app >/dev/null <<SQL
SELECT setseed(0.$r);
INSERT INTO posts (user_id, title, body, created_at, updated_at)
SELECT 1 + (random() * (5000 * $SCALE - 1))::int, 'New post ' || g, md5(random()::text) || repeat(' new text', 20), now(), now()
FROM generate_series(1, 100 * $SCALE) g;
UPDATE posts SET body = body || ' (edited)', updated_at = now()
WHERE id IN (SELECT 1 + (random() * (10000 * $SCALE - 1))::int FROM generate_series(1, 50));
UPDATE users SET last_login = now() WHERE id IN (SELECT 1 + (random() * (5000 * $SCALE - 1))::int FROM generate_series(1, 200));
DELETE FROM uploads WHERE id IN (SELECT 1 + (random() * (3000 * $SCALE - 1))::int FROM generate_series(1, 20));
DELETE FROM posts p WHERE id IN (SELECT 1 + (random() * (10000 * $SCALE - 1))::int FROM generate_series(1, 20))
    AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.post_id = p.id);
INSERT INTO uploads (post_id, path, bytes, sha256, created_at)
SELECT (SELECT max(id) FROM posts) - g, 'uploads/new/round-$r/' || g, 100000, md5(g::text), now() FROM generate_series(1, 5) g;
SQL
    python3 "$here/storage.py" activity "$storage" "$r"
}
