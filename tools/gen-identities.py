#!/usr/bin/env python3
"""Independent generator of Chinese patient-registration test records.

Writes a CSV of synthetic registration records for one simulated city (广州市) with a known
truth (person_id) so that the record-linkage matcher (master patient index) can be *measured*.
It was written without looking at the project's own synthetic generator or matcher: the name,
geography and error models here come only from the tables in tools/identity-data/ (see the
provenance notes in each file) and from the rules below.

Python 3.11 standard library only. Deterministic for a given --seed (and --people/--records).

    python3 tools/gen-identities.py --people 10000 --records 18500 --seed 2026 \
        --out crates/mpi/tests/fixtures/independent/identities.csv --truth-summary
"""

from __future__ import annotations

import argparse
import bisect
import collections
import csv
import datetime as dt
import itertools
import os
import random
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent / "identity-data"
REF = dt.date(2026, 1, 1)  # "today" of the simulation: ages are computed against it
COLUMNS = ["record_id", "person_id", "source", "name", "family", "given", "sex",
           "birth_date", "id_number", "phone", "address_line", "district", "city",
           "state", "postcode", "error_kinds"]
ERROR_ORDER = [
    "id_missing", "id_ocr", "id_transposed", "id_parent", "id_15digit",
    "name_homophone", "name_pinyin", "name_traditional", "name_typo", "name_child_placeholder",
    "birth_lunar", "birth_day_month_swapped", "birth_year_typo", "birth_jan1", "birth_missing",
    "phone_changed", "phone_household", "phone_typo", "phone_missing", "phone_landline",
    "address_moved", "address_abbrev", "address_missing",
    "sex_missing", "sex_wrong",
]
CITY, CITY_SHORT, STATE, STATE_SHORT = "广州市", "广州", "广东省", "广东"

# Given-name concentration. A name is drawn from the ranked list of its decade with probability
# P_HEAD (weight of rank r = 1/(r+q)^s), otherwise composed from character pools (the long tail).
# Tuned so that a top name (伟 among 1980s men) holds roughly 1-2 % of its cohort and sex, in line
# with the household-registration name reports; with ~9.5 % 陈 in Guangdong this gives on the order
# of a hundred exact full-name collisions among 10,000 people.
HEAD_ZIPF = (1.0, 10.0)
CHAR_ZIPF = (0.4, 5.0)
P_HEAD = {1930: .15, 1950: .14, 1960: .13, 1970: .12, 1980: .11, 1990: .11, 2000: .10, 2010: .10,
          2020: .10}
P_SINGLE = {"old": .14, "mid": .17, "new": .12, "kids": .05}


# --------------------------------------------------------------------------------------------
# data tables

def rows(name):
    with open(DATA / name, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line and not line.startswith("#"):
                yield line.split("\t")


class Weighted:
    """Deterministic weighted choice over a fixed list."""

    def __init__(self, items, weights):
        self.items = list(items)
        self.cum = list(itertools.accumulate(weights))
        self.total = self.cum[-1]

    def pick(self, rng):
        return self.items[bisect.bisect_right(self.cum, rng.random() * self.total)]


def zipf(n, s=1.0, q=2.0):
    return [1.0 / (r + q) ** s for r in range(n)]


def dedupe(seq):
    seen, out = set(), []
    for x in seq:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


class Tables:
    def __init__(self):
        self.surnames = list(rows("surnames.tsv"))
        self.surname_py = {r[0]: r[1] for r in self.surnames}
        # the listed shares do not reach 100 %: the rest of the population (thousands of rarer
        # surnames) is spread evenly over the rows past the first 100 so the mass stays in the tail
        names = [r[0] for r in self.surnames]
        for col, attr in ((2, "surname_nat"), (3, "surname_gd")):
            w = [float(r[col]) for r in self.surnames]
            rest = max(0.0, 100.0 - sum(w)) / max(1, len(w) - 100)
            setattr(self, attr, Weighted(names, [x + (rest if i >= 100 else 0) for i, x in enumerate(w)]))
        self.head = {}
        for era, sex, pool, names in rows("given_names.tsv"):
            lst = dedupe(names.split())
            self.head[(int(era), sex, pool)] = Weighted(lst, zipf(len(lst), *HEAD_ZIPF))
        self.chars = {}
        for group, sex, slot, cs in rows("given_chars.tsv"):
            lst = dedupe(cs.split())
            self.chars[(group, sex, slot)] = Weighted(lst, zipf(len(lst), *CHAR_ZIPF))
        self.pinyin = {c: p for c, p in rows("pinyin.tsv")}
        self.trad = {s: t for s, t in rows("traditional.tsv")}
        self.homo = collections.defaultdict(list)  # char -> [(kind, alternatives)]
        for kind, group in rows("homophones.tsv"):
            g = dedupe(group.split())
            for c in g:
                alts = [x for x in g if x != c]
                if alts:
                    self.homo[c].append((kind, alts))
        self.districts = []
        for code, name, short, w, posts, lcode, luntil, villages in rows("districts.tsv"):
            self.districts.append(dict(code=code, name=name, short=short, w=float(w),
                                       posts=posts.split(","),
                                       legacy=None if lcode == "-" else
                                       (lcode, *map(int, luntil.split(":")[0].split("-")),
                                        float((luntil.split(":") + ["1"])[1])),
                                       villages=villages == "1"))
        self.by_code = {d["code"]: d for d in self.districts}
        self.district_pick = Weighted(self.districts, [d["w"] for d in self.districts])
        self.roads = {code: r.split() for code, r in rows("roads.tsv")}
        est = {k: v.split() for k, v in rows("estates.tsv")}
        self.est_prefix, self.est_suffix, self.villages = est["prefix"], est["suffix"], est["village"]
        mig = list(rows("migrant_origins.tsv"))
        self.migrant_gd = Weighted([m[0] for m in mig if m[3] == "gd"], [float(m[2]) for m in mig if m[3] == "gd"])
        self.migrant_cn = Weighted([m[0] for m in mig if m[3] == "cn"], [float(m[2]) for m in mig if m[3] == "cn"])
        self.inst = collections.defaultdict(list)  # type -> [(code, district)]
        for code, typ, district, _name in rows("institutions.tsv"):
            self.inst[typ].append((code, district))


# --------------------------------------------------------------------------------------------
# resident identity numbers (GB 11643-1999)

ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
ID_CHECK = "10X98765432"


def id_check(body17):
    return ID_CHECK[sum(int(c) * w for c, w in zip(body17, ID_WEIGHTS)) % 11]


def id_valid(s):
    return (len(s) == 18 and s[:17].isdigit() and s[17] in "0123456789X"
            and id_check(s[:17]) == s[17])


# --------------------------------------------------------------------------------------------
# approximate lunar calendar: Chinese New Year dates 2000-2026, earlier years projected back by
# the 19-year Metonic cycle (accurate to about a day; leap months are ignored).

CNY = {2000: (2, 5), 2001: (1, 24), 2002: (2, 12), 2003: (2, 1), 2004: (1, 22), 2005: (2, 9),
       2006: (1, 29), 2007: (2, 18), 2008: (2, 7), 2009: (1, 26), 2010: (2, 14), 2011: (2, 3),
       2012: (1, 23), 2013: (2, 10), 2014: (1, 31), 2015: (2, 19), 2016: (2, 8), 2017: (1, 28),
       2018: (2, 16), 2019: (2, 5), 2020: (1, 25), 2021: (2, 12), 2022: (2, 1), 2023: (1, 22),
       2024: (2, 10), 2025: (1, 29), 2026: (2, 17)}


def cny(year):
    y = year
    while y < 2000:
        y += 19
    while y > 2026:
        y -= 19
    m, d = CNY[y]
    return dt.date(year, m, d)


def safe_date(y, m, d):
    while True:
        try:
            return dt.date(y, m, d)
        except ValueError:
            d -= 1


def lunar_written(birth):
    """The birth date as an elderly patient would give it: lunar month/day (and lunar year)."""
    start = cny(birth.year)
    ly = birth.year
    if birth < start:
        ly -= 1
        start = cny(ly)
    delta = (birth - start).days
    month = 1 + int(delta / 29.53)
    day = 1 + int(delta - (month - 1) * 29.53)
    if month > 12:
        month, day = 12, min(day + 29, 30)
    return safe_date(ly, month, min(day, 30))


# --------------------------------------------------------------------------------------------
# the population

class Person:
    __slots__ = ("pid", "hh", "family", "given", "sex", "birth", "origin", "region", "id18",
                 "seq", "phone", "own_phone", "alt_phone", "alt_addr", "chronic", "mother",
                 "father", "twin", "planted", "nrec")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, None)
        for k, v in kw.items():
            setattr(self, k, v)

    @property
    def name(self):
        return self.family + self.given

    def age(self):
        return REF.year - self.birth.year - ((REF.month, REF.day) < (self.birth.month, self.birth.day))


class Household:
    __slots__ = ("hid", "members", "district", "addr", "landline", "origin", "contact")

    def __init__(self, hid):
        self.hid, self.members, self.landline, self.contact = hid, [], None, None


# Age pyramid (per cent by 5-year band, ages 0-4 ... 90-95), shaped after Guangzhou's 2020 census
# profile (many 25-44 year-olds, few very old); used to sample household heads/singles.
PYRAMID = [6.0, 5.5, 4.5, 4.0, 7.0, 9.5, 10.5, 9.0, 7.5, 7.5, 7.0, 5.5, 4.5, 4.0, 3.2, 2.4, 2.0, 1.2, 0.5]


class World:
    def __init__(self, tables, rng):
        self.t, self.rng = tables, rng
        self.people, self.households = [], []
        self.used_phones, self.used_ids = set(), set()
        self.band = Weighted(list(range(len(PYRAMID))), PYRAMID)

    # --- sampling helpers
    def age_in(self, lo, hi):
        """An age in [lo, hi] following the pyramid."""
        rng = self.rng
        for _ in range(200):
            b = self.band.pick(rng)
            a = b * 5 + rng.randrange(5 if b < 18 else 6)
            if lo <= a <= hi:
                return a
        return rng.randint(lo, hi)

    def birth_for_age(self, age):
        rng = self.rng
        last = dt.date(REF.year - age, REF.month, REF.day) - dt.timedelta(days=1)
        return last - dt.timedelta(days=rng.randrange(365))

    def surname(self, origin):
        return (self.t.surname_nat if origin == "cn" else self.t.surname_gd).pick(self.rng)

    def given(self, birth_year, sex, origin):
        t, rng = self.t, self.rng
        y = birth_year + rng.randint(-4, 4)
        era = max(1930, min(2020, (y // 10) * 10))
        if era == 1940:
            era = 1930
        p_head = P_HEAD[era]
        if rng.random() < p_head:
            pool = "gd" if origin in ("local", "gd") and rng.random() < 0.4 else "all"
            return t.head[(era, sex, pool)].pick(rng)
        group = "old" if y < 1960 else "mid" if y < 1990 else "new" if y < 2010 else "kids"
        p_single = P_SINGLE[group]
        if rng.random() < p_single:
            return t.chars[(group, sex, "single")].pick(rng)
        a = t.chars[(group, sex, "first")].pick(rng)
        if sex == "f" and group in ("mid", "new") and rng.random() < 0.05:
            b = t.chars[(group, sex, "single")].pick(rng)
            return b + b  # 婷婷, 丹丹 ...
        for _ in range(10):
            b = t.chars[(group, sex, "second")].pick(rng)
            if b != a:
                return a + b
        return a

    def new_mobile(self):
        rng = self.rng
        prefixes = ("139 138 137 136 135 134 150 151 152 157 158 159 182 183 187 188 178 147 198 "
                    "130 131 132 155 156 185 186 176 166 133 153 180 181 189 177 173 199").split()
        while True:
            p = rng.choice(prefixes) + "".join(rng.choice("0123456789") for _ in range(8))
            if p not in self.used_phones:
                self.used_phones.add(p)
                return p

    def new_landline(self):
        rng = self.rng
        while True:
            p = "020-" + rng.choice("823") + "".join(rng.choice("0123456789") for _ in range(7))
            if p not in self.used_phones:
                self.used_phones.add(p)
                return p

    def new_address(self, district=None):
        t, rng = self.t, self.rng
        d = district or t.district_pick.pick(rng)
        roads = t.roads[d["code"]]
        r = rng.random()
        if d["villages"] and r < 0.22:
            kind = "village"
        elif r < 0.35:
            kind = "old"
        else:
            kind = "estate"
        floors = rng.randint(1, 33 if kind == "estate" else 8)
        return dict(
            district=d["code"], kind=kind, road=rng.choice(roads), num=rng.randint(1, 480),
            estate=rng.choice(t.est_prefix) + rng.choice(t.est_suffix),
            bldg=rng.randint(1, 28), unit=rng.randint(1, 4) if rng.random() < 0.3 else None,
            floor=floors, room=rng.randint(1, 12), lane=rng.randint(1, 30),
            village=rng.choice(t.villages), style=Weighted("ABC", [40, 35, 25]).pick(rng),
            post=rng.choice(d["posts"]))

    # --- households
    def add_person(self, hh, sex, age, family=None, origin=None, birth=None):
        origin = origin or hh.origin
        birth = birth or self.birth_for_age(age)
        p = Person(hh=hh, sex=sex, birth=birth, origin=origin,
                   family=family or self.surname("cn" if origin == "cn" else "gd"))
        p.given = self.given(birth.year, sex, origin)
        age = p.age()
        p.chronic = self.rng.random() < (0.04 if age < 45 else 0.25 if age < 65 else 0.5)
        hh.members.append(p)
        self.people.append(p)
        return p

    def household(self):
        rng = self.rng
        hh = Household(len(self.households))
        self.households.append(hh)
        r = rng.random()
        hh.origin = "local" if r < 0.56 else "gd" if r < 0.78 else "cn"
        hh.district = self.t.district_pick.pick(rng)
        hh.addr = self.new_address(hh.district)
        kind = Weighted(["single", "couple_young", "couple_old", "nuclear", "three_gen", "single_parent"],
                        [0.15, 0.10, 0.16, 0.34, 0.18, 0.07]).pick(rng)
        if kind == "single":
            self.add_person(hh, rng.choice("mf"), self.age_in(18, 95))
        elif kind in ("couple_young", "couple_old"):
            a = self.age_in(22, 42) if kind == "couple_young" else self.age_in(55, 95)
            self.add_person(hh, "m", a)
            self.add_person(hh, "f", max(20, a - round(rng.gauss(2, 2.5))))
        else:
            lo = 22 if kind != "three_gen" else 24
            fa = self.age_in(lo + 2, 58 if kind != "three_gen" else 48)
            ma = max(21, fa - round(rng.gauss(2, 2.5)))
            father = mother = None
            if kind == "single_parent":
                if rng.random() < 0.75:
                    mother = self.add_person(hh, "f", ma)
                else:
                    father = self.add_person(hh, "m", fa)
                fam = (father or mother).family
            else:
                father = self.add_person(hh, "m", fa)
                mother = self.add_person(hh, "f", ma)
                fam = father.family if rng.random() < 0.93 else mother.family
            nk = Weighted([1, 2, 3], [0.60, 0.36, 0.04]).pick(rng)
            if kind == "three_gen":
                nk = min(nk, 2)
            base = ma if mother else fa
            kids = []
            twin_done = False
            at = max(19, min(40, round(rng.gauss(27.5, 4.5))))  # parent's age at first birth
            for i in range(nk):
                ka = base - at
                at += rng.randint(2, 8)
                if ka < 0:
                    if i == 0:  # not born yet: a pregnant couple or a newborn
                        ka = 0 if rng.random() < 0.5 else None
                    else:
                        break
                if ka is None or ka > 30:
                    continue
                kid_origin = hh.origin if hh.origin == "local" or rng.random() < 0.7 else "local"
                if i == 1 and not twin_done and kids and rng.random() < 0.025:
                    twin_done = True
                    k = self.add_person(hh, rng.choice("mf") if rng.random() < 0.35 else kids[0].sex, 0,
                                        family=fam, origin=kids[0].origin, birth=kids[0].birth)
                    self.make_twin(kids[0], k)
                else:
                    k = self.add_person(hh, rng.choice("mf"), ka, family=fam, origin=kid_origin)
                k.mother, k.father = mother, father
                kids.append(k)
            if kind == "three_gen":
                parent = father if (father and rng.random() < 0.7) else mother
                ga = min(95, parent.age() + rng.randint(22, 34))
                if rng.random() < 0.55:
                    gf = self.add_person(hh, "m", ga, family=parent.family, origin=parent.origin)
                    parent.father = gf
                    if rng.random() < 0.6:
                        parent.mother = self.add_person(hh, "f", max(50, ga - rng.randint(0, 5)),
                                                        origin=parent.origin)
                else:
                    parent.mother = self.add_person(hh, "f", ga, origin=parent.origin)
        return hh

    def make_twin(self, a, b):
        """b becomes a's twin: same birth date; given names often share a character."""
        rng = self.rng
        a.twin, b.twin = b, a
        if len(a.given) == 2 and rng.random() < 0.6:
            for _ in range(20):
                g = self.given(a.birth.year, b.sex, b.origin)
                if len(g) == 2 and g != a.given:
                    b.given = a.given[0] + g[1] if g[1] != a.given[0] and g[1] != a.given[1] else b.given
                    break
        while b.given == a.given:
            b.given = self.given(a.birth.year, b.sex, b.origin)

    def build(self, n):
        while len(self.people) < n:
            self.household()
        # trim the last household if it overshot
        while len(self.people) > n:
            p = self.people.pop()
            p.hh.members.remove(p)
            if p.twin:
                p.twin.twin = None
            for q in self.people:
                if q.mother is p:
                    q.mother = None
                if q.father is p:
                    q.father = None
        self.households = [h for h in self.households if h.members]

    # --- planting of hard cases (before identity numbers are issued)
    def twins(self):
        return [p for p in self.people if p.twin and id(p) < id(p.twin)]

    def ensure_twins(self, want):
        rng = self.rng
        pairs = len(self.twins())
        cands = [h for h in self.households
                 if sum(1 for m in h.members if m.age() < 18 and (m.mother or m.father)) >= 2]
        rng.shuffle(cands)
        for h in cands:
            if pairs >= want:
                break
            kids = [m for m in h.members if m.age() < 18 and (m.mother or m.father)]
            a, b = kids[0], kids[1]
            if a.twin or b.twin:
                continue
            b.birth, b.origin = a.birth, a.origin
            self.make_twin(a, b)
            pairs += 1

    def namesake_pairs(self):
        by = collections.defaultdict(list)
        for p in self.people:
            by[(p.name, p.birth)].append(p)
        return sum(len(v) * (len(v) - 1) // 2 for v in by.values())

    def plant_namesakes(self, want):
        """Different people with the same full name and the same birth date."""
        rng = self.rng
        have = self.namesake_pairs()
        by_sur = collections.defaultdict(list)
        for p in self.people:
            by_sur[(p.family, p.sex)].append(p)
        pool = [p for p in self.people if 1 <= p.age() <= 90 and not p.twin]
        rng.shuffle(pool)
        planted = []
        for a in pool:
            if have >= want:
                break
            if a.planted:
                continue
            cands = [b for b in by_sur[(a.family, a.sex)]
                     if b.hh is not a.hh and not b.twin and not b.planted
                     and abs(b.birth.year - a.birth.year) <= 2 and b.given != a.given
                     and not any(k.mother is b or k.father is b for k in b.hh.members if k.age() < 1)]
            if not cands:
                continue
            b = rng.choice(cands)
            b.given, b.birth = a.given, a.birth
            a.planted = b.planted = True
            planted.append((a, b))
            have = self.namesake_pairs()
        return planted

    # --- identity numbers, phones
    def region_for(self, p):
        rng = self.rng
        if p.origin == "gd":
            return self.t.migrant_gd.pick(rng)
        if p.origin == "cn":
            return self.t.migrant_cn.pick(rng)
        d = p.hh.district if rng.random() < 0.7 else self.t.district_pick.pick(rng)
        reg_year = max(p.birth.year, 1985)
        if d["code"] == "440115" and 2000 <= reg_year < 2005:
            return "440113"  # 南沙 was still part of 番禺区
        if d["legacy"]:
            code, start, until, share = d["legacy"]
            if start <= reg_year < until and rng.random() < share:
                return code
        return d["code"]

    def issue_id(self, p, region=None, near=None):
        rng = self.rng
        p.region = region or self.region_for(p)
        ymd = p.birth.strftime("%Y%m%d")
        parity = 1 if p.sex == "m" else 0
        for attempt in range(2000):
            if near is not None and attempt < 50:
                seq = near + 1 + attempt
            else:
                seq = rng.randrange(1000)
            seq = min(seq, 999)
            if seq % 2 != parity:
                seq = seq + 1 if seq < 999 else seq - 1
            body = p.region + ymd + "%03d" % seq
            if body not in self.used_ids:
                break
        self.used_ids.add(body)
        p.seq = seq
        p.id18 = body + id_check(body)

    def share_region(self, pairs):
        """Re-issue b's ID in a's region: the two IDs then differ only in sequence and check."""
        for a, b in pairs:
            if a.region != b.region:
                self.used_ids.discard(b.id18[:17])
                self.issue_id(b, region=a.region)

    def issue_ids(self):
        done = set()
        for p in self.people:
            if id(p) in done:
                continue
            self.issue_id(p)
            done.add(id(p))
            if p.twin and id(p.twin) not in done:
                self.issue_id(p.twin, region=p.region, near=p.seq)
                done.add(id(p.twin))

    def phones(self):
        rng = self.rng
        for p in self.people:
            a = p.age()
            own = (0.0 if a < 10 else 0.35 if a < 16 else 0.97 if a < 70 else
                   0.75 if a < 80 else 0.45 if a < 88 else 0.2)
            p.own_phone = self.new_mobile() if rng.random() < own else None
            if p.own_phone and rng.random() < 0.10:
                p.alt_phone = self.new_mobile()
        for h in self.households:
            elderly = all(m.age() >= 60 for m in h.members)
            if rng.random() < (0.55 if elderly else 0.25):
                h.landline = self.new_landline()
            ad = [m for m in h.members if m.own_phone and m.age() >= 18]
            moms = [m for m in ad if m.sex == "f"]
            h.contact = (moms or ad or [None])[0]
        adults = [p for p in self.people if p.own_phone and 25 <= p.age() <= 65]
        by_sur = collections.defaultdict(list)
        for p in adults:
            by_sur[p.family].append(p)
        for p in self.people:
            if p.own_phone:
                p.phone = p.own_phone
                continue
            h = p.hh
            if p.age() < 18:
                if p.twin and p.twin.phone:
                    p.phone = p.twin.phone  # twins are registered with the same parent's phone
                    continue
                par = p.mother if (p.mother and p.mother.own_phone and rng.random() < 0.7) else p.father
                if par is None or not par.own_phone:
                    par = p.mother if p.mother and p.mother.own_phone else h.contact
                p.phone = par.own_phone if par else (h.landline or None)
                continue
            younger = [m for m in h.members if m.own_phone and 18 <= m.age() <= p.age() - 18]
            if younger:
                p.phone = rng.choice(younger).own_phone
                continue
            kin = [c for c in by_sur.get(p.family, []) if c.hh is not h and 20 <= p.age() - c.age() <= 40]
            if kin and rng.random() < 0.6:
                p.phone = rng.choice(kin).own_phone  # a grown child living elsewhere
            elif h.contact:
                p.phone = h.contact.own_phone
            else:
                if not h.landline:
                    h.landline = self.new_landline()
                p.phone = h.landline

    def moves(self):
        rng = self.rng
        for p in self.people:
            if p.age() >= 18 and rng.random() < 0.08:
                d = p.hh.district if rng.random() < 0.55 else None
                p.alt_addr = self.new_address(d)


# --------------------------------------------------------------------------------------------
# rendering and errors

def render_address(t, a, abbrev=None, rng=None):
    """(address_line, district, city, state, postcode)"""
    d = t.by_code[a["district"]]
    room = "%d%02d" % (a["floor"], a["room"])
    if a["kind"] == "estate":
        unit = "%d单元" % a["unit"] if a["unit"] else ""
        if a["style"] == "A":
            line = "%s%d号%s%d栋%s%s室" % (a["road"], a["num"], a["estate"], a["bldg"], unit, room)
        elif a["style"] == "B":
            line = "%s%s%d座%s房" % (a["road"], a["estate"], a["bldg"], room)
        else:
            line = "%s%d栋%s%s房" % (a["estate"], a["bldg"], unit, room)
    elif a["kind"] == "old":
        if a["style"] != "C":
            line = "%s%d号%s房" % (a["road"], a["num"], room)
        else:
            line = "%s%d巷%d号" % (a["road"], a["lane"], a["num"] % 60 + 1)
    else:
        line = "%s村%d巷%d号" % (a["village"], a["lane"], a["num"] % 60 + 1)
    out = [line, d["name"], CITY, STATE, a["post"]]
    if abbrev is None:
        return out
    form = abbrev
    if form == "dashed" and a["kind"] == "estate":
        parts = [str(a["bldg"])] + ([str(a["unit"])] if a["unit"] else []) + [room]
        out[0] = a["estate"] + "-".join(parts)
    elif form == "dashed":
        out[0] = "%s%d-%s" % (a["road"], a["num"], room)
    elif form == "estate_only" and a["kind"] == "estate":
        out[0] = "%s%d栋%s" % (a["estate"], a["bldg"], room) if a["style"] != "C" else a["estate"]
    elif form == "no_room":
        if a["kind"] == "village":
            out[0] = "%s村" % a["village"]
        else:
            out[0] = "%s%d号" % (a["road"], a["num"])
    elif form == "full_prefix":
        out[0] = STATE + CITY + d["name"] + line
        out[1] = out[2] = out[3] = ""
    else:  # short admin names, postcode dropped
        out[1], out[2], out[3], out[4] = d["short"], CITY_SHORT, STATE_SHORT, ""
        if rng.random() < 0.5:
            out[3] = ""
    if form in ("dashed", "estate_only", "no_room") and rng.random() < 0.4:
        out[4] = ""
    return out


OCR = {"0": "8", "8": "036", "1": "7", "7": "1", "3": "8", "5": "6", "6": "5", "X": "Kx"}


def pinyin_of(t, s):
    return [t.surname_py.get(s) or t.pinyin[s]] if s in t.surname_py else [t.pinyin[c] for c in s]


def uml(s, style):
    return s.replace("ü", {0: "v", 1: "u", 2: "yu"}[style])


class Recorder:
    def __init__(self, world, rng):
        self.w, self.t, self.rng = world, world.t, rng

    def pick_source(self, p, a):
        rng, inst = self.rng, self.t.inst
        if a == 0:
            typ = Weighted("MTDC", [60, 20, 15, 5]).pick(rng)
        elif a < 14:
            typ = Weighted("MTDCE", [35, 20, 27, 15, 3]).pick(rng)
        else:
            wz = [33, 30, 20 if a < 60 else 35, 7, 15 if p.sex == "f" and 20 <= a <= 40 else 0, 4]
            typ = Weighted("TDCZME", wz).pick(rng)
        opts = inst[typ]
        if typ in "DC":
            local = [o for o in opts if o[1] == p.hh.district["code"]]
            if local and rng.random() < 0.8:
                opts = local
        return typ, rng.choice(opts)[0]

    def record(self, p, force=()):
        rng, t = self.rng, self.t
        a = p.age()
        typ, source = self.pick_source(p, a)
        emerg = typ == "E"
        errs = set(force)
        chance = lambda q: rng.random() < q  # noqa: E731

        # ---- identity number
        idn = p.id18
        parents = [x for x in (p.mother, p.father) if x is not None]
        if "id_missing" not in errs and "id_parent" not in errs:
            pm = 0.55 if a < 1 else 0.30 if a < 6 else 0.22 if a < 16 else 0.11
            pm += 0.06 if a >= 80 else 0
            pm += 0.30 if emerg else 0
            pm -= 0.03 if typ == "C" else 0
            r = rng.random()
            if r < pm:
                errs.add("id_missing")
            elif a < 14 and parents and chance(0.10):
                errs.add("id_parent")
            elif p.birth.year < 1956 and chance(0.10):
                errs.add("id_15digit")
            else:
                r = rng.random()
                if r < 0.015:
                    errs.add("id_ocr")
                elif r < 0.023:
                    errs.add("id_transposed")
        if "id_missing" in errs:
            idn = ""
        elif "id_parent" in errs:
            par = p.mother if (p.mother and chance(0.65)) else (p.father or p.mother)
            idn = par.id18
        elif "id_15digit" in errs:
            idn = p.id18[:6] + p.id18[8:14] + p.id18[14:17]
        elif "id_ocr" in errs:
            pos = [i for i, c in enumerate(idn) if c in OCR]
            i = rng.choice(pos)
            idn = idn[:i] + rng.choice(OCR[idn[i]]) + idn[i + 1:]
        elif "id_transposed" in errs:
            pos = [i for i in range(17) if idn[i] != idn[i + 1]]
            i = rng.choice(pos)
            idn = idn[:i] + idn[i + 1] + idn[i] + idn[i + 2:]

        # ---- name
        family, given = p.family, p.given
        name = family + given
        if not errs & {"name_homophone", "name_pinyin", "name_traditional", "name_typo",
                       "name_child_placeholder"}:
            if a == 0 and typ in "MTD" and (p.birth > REF - dt.timedelta(days=120)) and chance(0.45):
                errs.add("name_child_placeholder")
            else:
                r = rng.random()
                ph = 0.05 if emerg else 0.025
                if r < ph:
                    errs.add("name_homophone")
                elif r < ph + 0.013:
                    errs.add("name_pinyin")
                elif r < ph + 0.023:
                    errs.add("name_traditional")
                elif r < ph + 0.033:
                    errs.add("name_typo")
        if "name_child_placeholder" in errs:
            mom = p.mother or p.father
            suffix = "之子" if p.sex == "m" else "之女"
            r = rng.random()
            if p.twin and mom:
                first = p.birth == p.twin.birth and p.seq < p.twin.seq
                name = mom.name + (("大宝" if first else "小宝") if r < 0.5 else
                                   suffix + ("1" if first else "2"))
            elif mom and r < 0.45:
                name = mom.name + suffix
            elif r < 0.65:
                name = p.family + "某" + suffix
            elif mom and r < 0.8:
                name = mom.name + "婴"
            elif r < 0.9:
                name = "婴儿"
            else:
                name = "新生儿"
            if name in ("婴儿", "新生儿"):
                family, given = "", name
            else:
                fl = len(mom.family) if (mom and name.startswith(mom.name)) else len(p.family)
                family, given = name[:fl], name[fl:]
        elif "name_homophone" in errs:
            changed = self.homophone(family, given)
            if changed is None:
                errs.discard("name_homophone")
            else:
                family, given = changed
                name = family + given
        elif "name_pinyin" in errs:
            name, family, given = self.pinyin(family, given)
        elif "name_traditional" in errs:
            tf = "".join(t.trad.get(c, c) for c in family)
            tg = "".join(t.trad.get(c, c) for c in given)
            if tf + tg == family + given:
                errs.discard("name_traditional")
            family, given = tf, tg
            name = family + given
        elif "name_typo" in errs:
            given = self.typo(given)
            name = family + given

        # ---- birth date
        birth = p.birth
        written = birth.isoformat()
        if not errs & {"birth_lunar", "birth_day_month_swapped", "birth_year_typo", "birth_jan1",
                       "birth_missing"}:
            y = birth.year
            pl = 0.06 if y < 1950 else 0.035 if y < 1965 else 0.008 if y < 1980 else 0.0015
            pj = 0.006 + (0.025 if emerg else 0) + (0.015 if a >= 80 else 0)
            pmiss = 0.010 + (0.07 if emerg else 0)
            r = rng.random()
            for kind, q in (("birth_lunar", pl), ("birth_jan1", pj), ("birth_missing", pmiss),
                            ("birth_year_typo", 0.008), ("birth_day_month_swapped", 0.009)):
                if r < q:
                    errs.add(kind)
                    break
                r -= q
        if "birth_lunar" in errs:
            written = lunar_written(birth).isoformat()
        elif "birth_jan1" in errs:
            if (birth.month, birth.day) == (1, 1):
                errs.discard("birth_jan1")
            written = "%04d-01-01" % birth.year
        elif "birth_missing" in errs:
            written = ""
        elif "birth_year_typo" in errs:
            for _ in range(20):
                ys = list(str(birth.year))
                i = 3 if rng.random() < 0.7 else 2
                ys[i] = str((int(ys[i]) + rng.choice([1, -1, 1, -1, 2, 5])) % 10)
                ny = int("".join(ys))
                if 1900 <= ny <= REF.year - 1 and ny != birth.year:
                    written = safe_date(ny, birth.month, birth.day).isoformat()
                    break
            else:
                errs.discard("birth_year_typo")
        elif "birth_day_month_swapped" in errs:
            if birth.day <= 12 and birth.day != birth.month:
                written = dt.date(birth.year, birth.day, birth.month).isoformat()
            else:
                errs.discard("birth_day_month_swapped")

        # ---- phone
        phone = p.phone or ""
        h = p.hh
        others = [m.own_phone for m in h.members if m.own_phone and m.own_phone != phone]
        if not errs & {"phone_changed", "phone_household", "phone_typo", "phone_missing",
                       "phone_landline"}:
            r = rng.random()
            pm = 0.035 + (0.12 if emerg else 0) + (0.04 if a >= 80 else 0)
            for kind, q in (("phone_missing", pm),
                            ("phone_changed", 0.40 if p.alt_phone else 0),
                            ("phone_household", 0.025 if others else 0),
                            ("phone_landline", (0.07 if a >= 60 else 0.015) if h.landline else 0),
                            ("phone_typo", 0.012 if phone else 0)):
                if r < q:
                    errs.add(kind)
                    break
                r -= q
        if "phone_missing" in errs:
            phone = ""
        elif "phone_changed" in errs:
            if not p.alt_phone:
                p.alt_phone = self.w.new_mobile()
            phone = p.alt_phone
        elif "phone_household" in errs:
            if others:
                phone = rng.choice(others)
            else:
                errs.discard("phone_household")
        elif "phone_landline" in errs:
            if h.landline and h.landline != phone:
                phone = h.landline if rng.random() < 0.7 else h.landline.replace("-", "")
            else:
                errs.discard("phone_landline")
        elif "phone_typo" in errs:
            digits = [i for i, c in enumerate(phone) if c.isdigit()][3:]
            i = rng.choice(digits)
            phone = phone[:i] + rng.choice([d for d in "0123456789" if d != phone[i]]) + phone[i + 1:]

        # ---- address
        addr = h.addr
        abbrev = None
        if not errs & {"address_moved", "address_abbrev", "address_missing"}:
            r = rng.random()
            for kind, q in (("address_missing", 0.02 + (0.15 if emerg else 0)),
                            ("address_moved", 0.5 if p.alt_addr else 0),
                            ("address_abbrev", 0.055)):
                if r < q:
                    errs.add(kind)
                    break
                r -= q
        if "address_moved" in errs:
            addr = p.alt_addr or self.w.new_address()
        if "address_abbrev" in errs:
            abbrev = Weighted(["dashed", "estate_only", "no_room", "full_prefix", "short_admin"],
                              [3, 2, 2, 2, 2]).pick(rng)
        if "address_missing" in errs:
            aline = ["", "", CITY if chance(0.5) else "", STATE if chance(0.3) else "", ""]
        else:
            aline = render_address(t, addr, abbrev, rng)

        # ---- sex
        sex = "male" if p.sex == "m" else "female"
        r = rng.random()
        if "sex_missing" in errs or r < 0.012 + (0.03 if emerg else 0):
            errs.add("sex_missing")
            sex = ""
        elif "sex_wrong" in errs or r > 0.997:
            errs.add("sex_wrong")
            sex = "female" if p.sex == "m" else "male"

        return dict(person=p, source=source, name=name, family=family, given=given, sex=sex,
                    birth_date=written, id_number=idn, phone=phone, address_line=aline[0],
                    district=aline[1], city=aline[2], state=aline[3], postcode=aline[4],
                    errors=[e for e in ERROR_ORDER if e in errs])

    # ---- name error helpers
    def homophone(self, family, given):
        rng, t = self.rng, self.t
        spots = []
        for i, c in enumerate(given):
            if c in t.homo:
                spots += [("g", i)] * 4
        if len(family) == 1 and family in t.homo:
            spots.append(("f", 0))
        if not spots:
            return None
        where, i = rng.choice(spots)
        s = given if where == "g" else family
        opts = t.homo[s[i]]
        weights = [{"same": 6, "nl": 1, "zh": 1, "ng": 1, "yue": 1.5}[k] for k, _ in opts]
        kind, alts = Weighted(opts, weights).pick(rng)
        s = s[:i] + rng.choice(alts) + s[i + 1:]
        return (family, s) if where == "g" else (s, given)

    def pinyin(self, family, given):
        rng, t = self.rng, self.t
        fp = t.surname_py[family]
        gps = [t.pinyin[c] for c in given]
        st = rng.randrange(3)
        fp, gps = uml(fp, st), [uml(g, st) for g in gps]
        gp = "".join(gps)
        gp = gp[0].upper() + gp[1:]
        style = Weighted(["fg", "gf", "upper", "nospace", "syll"], [40, 20, 20, 10, 10]).pick(rng)
        if style == "fg":
            return f"{fp} {gp}", fp, gp
        if style == "gf":
            if rng.random() < 0.5:
                return f"{gp} {fp}", fp, gp
            return f"{gp} {fp}", gp, fp  # the system took the first word as the family name
        if style == "upper":
            return f"{fp.upper()} {gp.upper()}", fp.upper(), gp.upper()
        if style == "nospace":
            return fp + gp, fp, gp
        g2 = " ".join(x.capitalize() for x in gps)
        return f"{fp} {g2}", fp, g2

    def typo(self, given):
        rng = self.rng
        r = rng.random()
        if len(given) >= 2 and r < 0.45:
            i = rng.randrange(len(given))  # a character dropped: 张小伟 -> 张伟
            return given[:i] + given[i + 1:]
        if len(given) >= 2 and r < 0.6:
            return given[::-1]  # characters swapped
        if r < 0.8:
            return rng.choice("小阿晓") + given  # extra character
        return given + given[-1]  # doubled last character


# --------------------------------------------------------------------------------------------

def allocate_records(world, total, rng):
    people = world.people
    for p in people:
        p.nrec = 1
    weights = []
    for p in people:
        a = p.age()
        w = 1.0 if a < 5 else 0.3 if a < 18 else 0.5 if a < 45 else 1.0 if a < 65 else 2.0 if a < 80 else 2.5
        if p.sex == "f" and 20 <= a <= 40:
            w += 0.4
        if p.chronic:
            w += 1.5
        weights.append(w)
    pick = Weighted(list(range(len(people))), weights)
    extra = total - len(people)
    guard = 0
    while extra > 0 and guard < total * 50:
        guard += 1
        p = people[pick.pick(rng)]
        if p.nrec < 6:
            p.nrec += 1
            extra -= 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--people", type=int, default=10000)
    ap.add_argument("--records", type=int, default=18500)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", default="-", help="CSV path, '-' for stdout")
    ap.add_argument("--truth-summary", action="store_true", help="print error-kind counts and checks to stderr")
    args = ap.parse_args(argv)
    if args.records < args.people:
        ap.error("--records must be at least --people")

    rng = random.Random(args.seed)
    tables = Tables()
    world = World(tables, rng)
    world.build(args.people)
    world.ensure_twins(max(3, args.people // 700))
    natural_namesakes = world.namesake_pairs()
    planted = world.plant_namesakes(max(30, args.people * 36 // 10000))
    world.issue_ids()
    world.share_region([pr for i, pr in enumerate(planted) if i % 3 == 0])
    world.phones()
    world.moves()

    # persons get opaque ids in random order (household members are not adjacent)
    order = list(range(len(world.people)))
    rng.shuffle(order)
    for n, i in enumerate(order):
        world.people[i].pid = "P%05d" % (n + 1)

    allocate_records(world, args.records, rng)
    rec = Recorder(world, rng)
    records = []
    # hard combined case: homophone + missing ID + changed phone on one of several records
    combo = [p for p in world.people if p.nrec >= 2 and p.own_phone and p.age() >= 16
             and any(c in tables.homo for c in p.given)]
    rng.shuffle(combo)
    combo_ids = {id(p) for p in combo[:max(10, args.people * 25 // 10000)]}
    for p in world.people:
        for k in range(p.nrec):
            force = ()
            if k == p.nrec - 1 and id(p) in combo_ids:
                force = ("name_homophone", "id_missing", "phone_changed")
            records.append(rec.record(p, force))
    rng.shuffle(records)

    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8", newline="")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    width = max(5, len(str(len(records))))
    for n, r in enumerate(records, 1):
        w.writerow(["R%0*d" % (width, n), r["person"].pid, r["source"], r["name"], r["family"], r["given"],
                    r["sex"], r["birth_date"], r["id_number"], r["phone"], r["address_line"],
                    r["district"], r["city"], r["state"], r["postcode"], ";".join(r["errors"])])
    if out is not sys.stdout:
        out.close()

    if args.truth_summary:
        summary(world, records, planted, natural_namesakes, args)


def summary(world, records, planted, natural_namesakes, args):
    e = sys.stderr
    cnt = collections.Counter(k for r in records for k in r["errors"])
    n = len(records)
    dirty = sum(1 for r in records if r["errors"])
    print(f"records {n}  people {len(world.people)}  households {len(world.households)}", file=e)
    print(f"records with >=1 deviation: {dirty} ({100 * dirty / n:.1f} %)", file=e)
    for k in ERROR_ORDER:
        print(f"  {k:26s} {cnt[k]:6d}  {100 * cnt[k] / n:5.2f} %", file=e)
    combos = collections.Counter(len(r["errors"]) for r in records)
    print("deviations per record: " + ", ".join(f"{k}:{combos[k]}" for k in sorted(combos)), file=e)
    hard = sum(1 for r in records if {"name_homophone", "id_missing", "phone_changed"} <= set(r["errors"]))
    print(f"homophone+id_missing+phone_changed records: {hard}", file=e)
    # identity checks
    clean_bad = sum(1 for r in records if not (set(r["errors"]) & {"id_missing", "id_ocr", "id_transposed",
                                                                   "id_15digit"}) and not id_valid(r["id_number"]))
    print(f"records without an id_* error whose ID fails the check digit: {clean_bad}", file=e)
    ocr_valid = sum(1 for r in records if "id_ocr" in r["errors"] and id_valid(r["id_number"]))
    print(f"id_ocr records whose ID still validates: {ocr_valid}", file=e)
    print(f"twin pairs: {len(world.twins())}", file=e)
    by_name = collections.defaultdict(set)
    by_nb = collections.defaultdict(set)
    for p in world.people:
        by_name[p.name].add(p.pid)
        by_nb[(p.name, p.birth)].add(p.pid)
    pairs = sum(len(v) * (len(v) - 1) // 2 for v in by_name.values())
    shared = sum(1 for v in by_name.values() if len(v) > 1)
    print(f"exact full-name collisions (true names): {shared} names shared by {sum(len(v) for v in by_name.values() if len(v) > 1)} people, {pairs} pairs", file=e)
    nb = sum(len(v) * (len(v) - 1) // 2 for v in by_nb.values())
    print(f"same name + same birth date pairs: {nb} (natural {natural_namesakes}, planted {len(planted)})", file=e)
    top = sorted(by_name.items(), key=lambda kv: -len(kv[1]))[:12]
    print("most shared names: " + " ".join(f"{k}×{len(v)}" for k, v in top), file=e)
    ages = collections.Counter(min(p.age() // 10, 9) for p in world.people)
    print("age decades: " + " ".join(f"{10 * k}s:{ages[k]}" for k in sorted(ages)), file=e)
    nrec = collections.Counter(p.nrec for p in world.people)
    print("records per person: " + " ".join(f"{k}:{nrec[k]}" for k in sorted(nrec)), file=e)
    src = collections.Counter(r["source"][:3] for r in records)
    print("records by institution type: " + " ".join(f"{k}:{v}" for k, v in sorted(src.items())), file=e)
    if args.out != "-":
        print(f"file size: {os.path.getsize(args.out)} bytes", file=e)


if __name__ == "__main__":
    main()
