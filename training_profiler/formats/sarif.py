"""SARIF 2.1.0 view (GitHub code scanning)."""

from __future__ import annotations

import json
from typing import Iterable

from ..findings import Finding, Rule, Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def _rule_descriptor(rule: Rule) -> dict:
    desc = {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.message},
        "fullDescription": {"text": rule.why},
        "help": {"text": rule.fix},
        "defaultConfiguration": {"level": _LEVEL[rule.severity]},
    }
    if rule.references:
        desc["helpUri"] = rule.references[0]
    return desc


def findings_to_sarif(findings: Iterable[Finding], rules: Iterable[Rule] = (), tool_name: str = "training-profiler",
                      run_properties: dict | None = None) -> str:
    from .. import __version__

    ordered = sorted(findings, key=Finding.sort_key)
    rule_list = sorted({r.code: r for r in rules}.values(), key=lambda r: r.code)
    index = {r.code: i for i, r in enumerate(rule_list)}
    results = []
    for f in ordered:
        result: dict = {
            "ruleId": f.code,
            "level": _LEVEL[f.severity],
            "message": {"text": f"{f.message} Why: {f.why} Fix: {f.fix}".strip() if f.why else f.message},
        }
        if f.code in index:
            result["ruleIndex"] = index[f.code]
        loc = f.location
        if loc.path:
            region = {}
            if loc.line is not None:
                region["startLine"] = max(1, loc.line)
                if loc.col is not None:
                    region["startColumn"] = max(1, loc.col)
            physical: dict = {"artifactLocation": {"uri": loc.path.replace("\\", "/")}}
            if region:
                physical["region"] = region
            location: dict = {"physicalLocation": physical}
            if loc.module:
                location["logicalLocations"] = [{"fullyQualifiedName": loc.module, "kind": "module"}]
            result["locations"] = [location]
        elif loc.module:
            result["locations"] = [{"logicalLocations": [{"fullyQualifiedName": loc.module, "kind": "module"}]}]
        if f.data:
            result["properties"] = {k: v for k, v in f.data.items() if isinstance(v, (int, float, str, bool))}
        results.append(result)
    doc = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": tool_name,
                        "version": __version__,
                        "informationUri": "https://pypi.org/project/training-profiler/",
                        "rules": [_rule_descriptor(r) for r in rule_list],
                    }
                },
                "results": results,
            }
        ],
    }
    if run_properties:
        doc["runs"][0]["properties"] = run_properties
    return json.dumps(doc, indent=2) + "\n"
