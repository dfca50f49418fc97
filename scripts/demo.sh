#!/usr/bin/env bash
# The main job, end to end, on a fresh machine: installs what is missing, builds snap, starts a
# throwaway PostgreSQL with a demo database and a demo storage folder, then snapshot, change,
# snapshot, list, restore (database and folder, compared with the originals), export, check.
# Everything lives in a temp folder that is removed at the end (KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

scripts/bootstrap.sh
swift build -c release --product snap
snap="$root/.build/release/snap"

work=$(mktemp -d /tmp/snap-demo.XXXXXX)
chmod 755 "$work"
source scripts/lib/throwaway-postgres.sh
cleanup() {
    pg_stop "$work/pg"
    if [[ "${KEEP:-}" == 1 ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a throwaway PostgreSQL with a demo app database"
pg_start "$work/pg"
psql -q -X -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE app"
psql -q -X -v ON_ERROR_STOP=1 -d app <<'SQL'
CREATE TABLE users (id serial PRIMARY KEY, email text UNIQUE NOT NULL, created timestamptz DEFAULT now());
CREATE TABLE uploads (id serial PRIMARY KEY, user_id int REFERENCES users, path text NOT NULL, meta jsonb);
INSERT INTO users (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 20000) g;
INSERT INTO uploads (user_id, path, meta)
    SELECT 1 + g % 20000, 'uploads/' || g || '.txt', jsonb_build_object('size', g * 10) FROM generate_series(1, 2000) g;
SQL
mkdir -p "$work/storage/uploads"
for i in $(seq 1 2000); do echo "upload $i: $(head -c 300 /dev/urandom | base64 -w0)" > "$work/storage/uploads/$i.txt"; done
head -c 20000000 /dev/urandom > "$work/storage/video.bin"
ln -s uploads/1.txt "$work/storage/latest-upload"

export SNAP_REPO="$work/repo"
step "snap init"
"$snap" init

step "first snapshot (database + storage)"
time first=$("$snap" snapshot --db "dbname=app" --storage "$work/storage" --tag demo)
echo "$first"
pg_dump -Fp --restrict-key=snapdemo app > "$work/app-at-first.sql"
cp -a "$work/storage" "$work/storage-at-first"

step "the app changes: new users, edited rows, a new upload, an edited file"
psql -q -X -v ON_ERROR_STOP=1 -d app <<'SQL'
INSERT INTO users (email) SELECT 'new' || g || '@example.com' FROM generate_series(1, 500) g;
UPDATE users SET email = 'changed' || id || '@example.com' WHERE id % 1000 = 0;
INSERT INTO uploads (user_id, path) VALUES (1, 'uploads/new.txt');
SQL
echo "a new upload" > "$work/storage/uploads/new.txt"
echo "edited" >> "$work/storage/uploads/7.txt"

step "second snapshot: only the changes are stored"
time second=$("$snap" snapshot --db "dbname=app" --storage "$work/storage" --tag demo)
"$snap" show "$second"

step "snap list"
"$snap" list

step "restore the first snapshot into a new database and folder"
createdb app_restored
"$snap" restore "${first:0:8}" --db "dbname=app_restored" --storage-to "$work/restored" --jobs 2
pg_dump -Fp --restrict-key=snapdemo app_restored > "$work/app-restored.sql"
cmp "$work/app-at-first.sql" "$work/app-restored.sql" && echo "database: identical to the first snapshot's (pg_dump -Fp)"
diff -r --no-dereference "$work/storage-at-first" "$work/restored" && echo "storage: identical to the first snapshot's"

step "snap export: the classic backup_YYYYMMDD_HHMMSS.tar.gz, for pg_restore and tar"
archive=$("$snap" export latest -o "$work/")
tar -tzvf "$archive" | sed -n 1,5p
pg_restore -l "$(mkdir -p "$work/x" && tar -xzf "$archive" -C "$work/x" database.dump && echo "$work/x/database.dump")" | sed -n 1,6p

step "snap check --read-data"
"$snap" check --read-data
du -sh "$work/repo" "$work/storage"
