#!/usr/bin/env python3
"""Storage folder for compare.sh: generate an app's uploads folder, or apply one round of activity.

    storage.py create DIR SCALE      ~10 MB and ~100 files per unit of SCALE (300 MB, 3,000 files at 30)
    storage.py activity DIR ROUND    5 new uploads, one folder renamed, one text file edited
Deterministic (seeded); text is log-like lines with random ids (compressible, not repetitive),
the rest is random bytes (incompressible, like images and videos).
"""
import os, random, sys

WORDS = None

def words(rng):
    global WORDS
    if WORDS is None:
        r = random.Random(7)
        WORDS = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(3, 10))) for _ in range(2000)]
    return WORDS

def text(rng, size):
    w = words(rng)
    out, n = [], 0
    levels = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
    while n < size:
        line = "2024-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s id=%016x n=%d\n" % (
            rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
            rng.randint(0, 999), rng.choice(levels), " ".join(rng.choices(w, k=8)), rng.getrandbits(64),
            rng.randint(0, 10**6))
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]

def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)

def create(root, scale):
    rng = random.Random(42)
    n_small = max(20, round(2900 * scale / 30))
    n_large = max(2, round(100 * scale / 30))
    for i in range(n_small):
        day = "uploads/2024/%02d/%02d" % (1 + i % 12, 1 + (i // 12) % 9)   # ~108 folders
        if rng.random() < 0.6:
            write(os.path.join(root, day, "doc-%05d.txt" % i), text(rng, rng.randint(2_000, 40_000)))
        else:
            write(os.path.join(root, day, "img-%05d.jpg" % i), rng.randbytes(rng.randint(10_000, 150_000)))
    for i in range(n_large):
        size = rng.randint(500_000, 3_000_000)
        if i % 2 == 0:
            write(os.path.join(root, "exports", "export-%03d.csv" % i), text(rng, size))
        else:
            write(os.path.join(root, "media", "video-%03d.mp4" % i), rng.randbytes(size))

def activity(root, rnd):
    rng = random.Random(1000 + rnd)
    new = os.path.join(root, "uploads", "new", "round-%02d" % rnd)
    write(os.path.join(new, "note-a.txt"), text(rng, 50_000))
    write(os.path.join(new, "note-b.txt"), text(rng, 20_000))
    write(os.path.join(new, "photo-a.jpg"), rng.randbytes(200_000))
    write(os.path.join(new, "photo-b.jpg"), rng.randbytes(120_000))
    write(os.path.join(new, "clip.mp4"), rng.randbytes(2_000_000))
    # rename one day folder (its files keep their content)
    base = os.path.join(root, "uploads", "2024")
    months = sorted(d for d in os.listdir(base))
    month = os.path.join(base, months[rnd % len(months)])
    days = sorted(d for d in os.listdir(month) if "-r" not in d)
    if days:
        d = days[rnd % len(days)]
        os.rename(os.path.join(month, d), os.path.join(month, "%s-r%02d" % (d, rnd)))
    # edit one text file in place (append a line)
    texts = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(root, "uploads")) for f in fs if f.endswith(".txt"))
    victim = texts[(rnd * 37) % len(texts)]
    with open(victim, "ab") as f:
        f.write(text(rng, 300))

if __name__ == "__main__":
    cmd, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    create(root, n) if cmd == "create" else activity(root, n)
