#!/usr/bin/env python3
"""Generate the Chinese reference tables that the `cn` crate embeds.

Sources (fetched from the public registries into a cache directory unless given):
  * administrative divisions (GB/T 2260 codes, province/city/district):
    npm package china-division@2.7.0 (MIT), dist/{provinces,cities,areas}.json
  * Mandarin readings of every character: PyPI package pypinyin==0.55.0 (MIT),
    pypinyin/pinyin_dict.json
  * traditional <-> simplified characters: PyPI package opencc-python-reimplemented==0.1.7
    (Apache-2.0), opencc/dictionary/{STCharacters,TSCharacters}.txt

We never type these tables by hand: rerun this script to refresh them.

    python3 tools/gen-cn-data.py [--cache DIR]
"""
import argparse
import glob
import json
import os
import subprocess
import tarfile
import unicodedata
import zipfile

OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "cn", "data")


def fetch(cache):
    os.makedirs(cache, exist_ok=True)
    if not glob.glob(os.path.join(cache, "china-division-*.tgz")):
        subprocess.run(["npm", "pack", "china-division@2.7.0"], cwd=cache, check=True)
    for spec in ["pypinyin==0.55.0", "opencc-python-reimplemented==0.1.7"]:
        name = spec.split("==")[0].replace("-", "_")
        if not glob.glob(os.path.join(cache, name + "-*.whl")):
            subprocess.run(["pip", "download", "--no-deps", spec, "-d", cache], check=True)
    with tarfile.open(glob.glob(os.path.join(cache, "china-division-*.tgz"))[0]) as t:
        t.extractall(os.path.join(cache, "division"))
    for whl in glob.glob(os.path.join(cache, "*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(os.path.join(cache, "py"))


def toneless(s):
    s = unicodedata.normalize("NFD", s).replace("u\u0308", "v")
    return "".join(c for c in s if not unicodedata.combining(c))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="/tmp/hutong-cn-cache")
    a = ap.parse_args()
    fetch(a.cache)
    os.makedirs(OUT, exist_ok=True)

    dist = os.path.join(a.cache, "division", "package", "dist")
    rows = []
    for f, width in [("provinces.json", 2), ("cities.json", 4), ("areas.json", 6)]:
        for r in json.load(open(os.path.join(dist, f), encoding="utf-8")):
            rows.append((r["code"].ljust(6, "0"), r["name"]))
    rows.sort()
    with open(os.path.join(OUT, "divisions.tsv"), "w", encoding="utf-8") as f:
        f.write("# GB/T 2260 administrative divisions, from npm china-division@2.7.0 (MIT)\n")
        for code, name in rows:
            f.write(f"{code}\t{name}\n")

    py = json.load(open(os.path.join(a.cache, "py", "pypinyin", "pinyin_dict.json"), encoding="utf-8"))
    n = 0
    with open(os.path.join(OUT, "pinyin.tsv"), "w", encoding="utf-8") as f:
        f.write("# Toneless Mandarin readings, most common first, from PyPI pypinyin==0.55.0 (MIT)\n")
        for cp in sorted(int(k) for k in py):
            # The Basic Multilingual Plane's CJK blocks cover every character in everyday names.
            if not (0x3400 <= cp <= 0x4DBF or 0x4E00 <= cp <= 0x9FFF or 0xF900 <= cp <= 0xFAFF):
                continue
            readings = []
            for r in py[str(cp)].split(","):
                t = toneless(r)
                if t and t not in readings:
                    readings.append(t)
            f.write(f"{chr(cp)}\t{','.join(readings)}\n")
            n += 1

    occ = os.path.join(a.cache, "py", "opencc", "dictionary")
    for src, dst, note in [("TSCharacters.txt", "t2s.tsv", "traditional -> simplified"),
                           ("STCharacters.txt", "s2t.tsv", "simplified -> traditional")]:
        with open(os.path.join(occ, src), encoding="utf-8") as i, \
                open(os.path.join(OUT, dst), "w", encoding="utf-8") as o:
            o.write(f"# {note}, first choice, from PyPI opencc-python-reimplemented==0.1.7 (Apache-2.0)\n")
            for line in i:
                k, v = line.rstrip("\n").split("\t")
                first = v.split(" ")[0]
                if len(k) == 1 and len(first) == 1 and k != first:
                    o.write(f"{k}\t{first}\n")
    print(f"{len(rows)} divisions, {n} characters with readings -> {OUT}")


if __name__ == "__main__":
    main()
