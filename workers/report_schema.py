"""The rules of `report_data.parse_report` as an OpenAPI 3.0 schema of a report's `data`,
with the configured bounds, for `/api/openapi.json`.

What no schema can say is in the descriptions: a row has at most one cell per column, `align`
at most one entry per column, a series exactly one value per category, and the paragraph and
row counts are bounds on the whole report (the schema bounds each list by the same number).
"""
from __future__ import annotations

from typing import Any

from offload.workers.invoice_data import _NOT_BLANK
from offload.workers.report_data import ALIGNS, KINDS, MAX_VALUE, ReportSettings


def report_schema(limits: ReportSettings) -> dict[str, Any]:
    text = limits.max_text_length

    def string(limit: int = text, required: bool = False) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "maxLength": limit}
        return {**schema, "pattern": _NOT_BLANK} if required else {**schema, "nullable": True}

    def array(items: dict[str, Any], limit: int, *, required: bool = False, **more: Any) -> dict[str, Any]:
        schema = {"type": "array", "maxItems": limit, "items": items, **more}
        return {**schema, "minItems": 1} if required else {**schema, "nullable": True}

    cell = {"nullable": True, "anyOf": [{"type": "string", "maxLength": text}, {"type": "number"}],
            "description": "text, or a number (printed as sent; a column of numbers is right-aligned)"}
    table = {"type": "object", "nullable": True, "required": ["columns"], "properties": {
        "columns": array(string(required=True), limits.max_columns, required=True,
                         description="the header row, repeated on every page the table spans"),
        "rows": array({"type": "array", "maxItems": limits.max_columns, "items": cell}, limits.max_table_rows,
                      description="at most one cell per column (a shorter row is padded with empty cells); "
                                  f"at most {limits.max_table_rows:,} rows in all the report's tables"),
        "align": array({"type": "string", "enum": list(ALIGNS), "nullable": True}, limits.max_columns,
                       description="per column, at most one entry each; default: right for a column of "
                                   "numbers, left for the others"),
    }}
    value = {"type": "number", "minimum": -MAX_VALUE, "maximum": MAX_VALUE, "nullable": True,
             "description": "null: no bar, a gap in the line"}
    series = {"type": "object", "required": ["name", "values"], "properties": {
        "name": string(required=True),
        "values": array(value, limits.max_points, required=True, description="exactly one per category"),
    }}
    chart = {"type": "object", "nullable": True, "required": ["kind", "categories", "series"], "properties": {
        "kind": {"type": "string", "enum": list(KINDS)},
        "title": string(),
        "categories": array(string(), limits.max_points, required=True),
        "series": array(series, limits.max_series, required=True),
    }}
    section = {"type": "object", "required": ["heading"], "properties": {
        "heading": string(required=True),
        "paragraphs": array(string(limits.max_paragraph_length, required=True), limits.max_paragraphs,
                            description="plain text (no markup is read); "
                                        f"at most {limits.max_paragraphs:,} paragraphs in all the report"),
        "table": table,
        "chart": chart,
    }}
    return {"type": "object", "required": ["type", "title", "sections"], "properties": {
        "type": {"type": "string", "enum": ["report"]},
        "title": string(required=True),
        "subtitle": string(),
        "author": string(),
        "date": {"type": "string", "format": "date", "nullable": True,
                 "description": "printed under the title, and the document's creation date"},
        "sections": array(section, limits.max_sections, required=True),
    }}
