"""`pdf` with `data.type = "report"`: through a real server and real worker processes, read
back with pypdf; validation at submission; progress per section; the invoice path untouched."""
from __future__ import annotations

import copy
import io
import re
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from offload.service.config import ConfigError, load_config
from offload.workers.context import Context
from offload.workers.errors import Cancelled
from offload.workers.invoice_data import parse_invoice
from offload.workers.invoice_render import render_invoice
from offload.workers.invoice_text import MissingGlyph
from offload.workers.pdf import pdf
from offload.workers.report_data import ReportSettings, parse_report
from offload.workers.report_render import render_report
from tests.conftest import SAMPLE_INVOICE, wait_status

ROWS = 90


def sample_report() -> dict[str, Any]:
    return {
        "type": "report", "title": "Quarterly Operations", "subtitle": "Kitchens and deliveries",
        "author": "Ops team", "date": "2026-11-28",
        "sections": [
            {"heading": "Summary", "paragraphs": [
                "Orders grew in every region. <b>Not bold</b> & <font name='x'>not a font</font>.",
                "Ελληνικά, Кириллица and 日本語 are set with the fonts offload ships."]},
            {"heading": "Orders by region", "paragraphs": ["One row per region."],
             "table": {"columns": ["Region", "Orders", "Revenue"],
                       "rows": [[f"Region {i}", i * 3, i * 12.5] for i in range(ROWS)]}},
            {"heading": "Units by quarter", "chart": {
                "kind": "bar", "title": "Units sold", "categories": ["Q1", "Q2", "Q3", "Q4"],
                "series": [{"name": "North", "values": [10, 12, 9, 14]},
                           {"name": "South", "values": [7, None, 11, 13]}]}},
            {"heading": "Delivery times", "chart": {
                "kind": "line", "title": "Minutes to door", "categories": ["Jan", "Feb", "Mar", "Apr", "May"],
                "series": [{"name": "Median", "values": [31, 29, 27, 28, 25]},
                           {"name": "Slowest decile", "values": [55, 51, 49, 50, 44]}]}},
        ]}


def pages_of(content: bytes) -> list[str]:
    """Each page's text with its whitespace collapsed (pypdf breaks the line at each text object)."""
    return [" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(content)).pages]


async def test_a_report_renders_through_the_server_with_progress_per_section(start_server):
    client = await start_server()
    async with client.ws_connect("/api/ws") as ws:
        await ws.send_json({"op": "subscribe", "all": True})
        response = await client.post("/api/jobs", json={"type": "pdf", "data": sample_report()})
        assert response.status == 201, await response.text()
        job_id = (await response.json())["jobId"]
        events = []
        while not events or events[-1].get("status") not in ("completed", "failed"):
            event = await ws.receive_json(timeout=30)
            if event.get("jobId") == job_id:
                events.append(event)
    assert events[-1]["status"] == "completed", events[-1]
    # Progress follows the sections rendered (writes close together may be coalesced, so
    # not every section need be seen; each one seen says which, at its share of the bar).
    sections = [e for e in events if e["event"] == "progress" and e["message"].startswith("rendered section")]
    assert sections, events
    for event in sections:
        done, count = map(int, re.fullmatch(r"rendered section (\d+) of (\d+)", event["message"]).groups())
        assert count == 4 and event["progress"] == 5 + 90 * done // count
    assert [e["progress"] for e in sections] == sorted(e["progress"] for e in sections)

    job = events[-1]["job"]
    assert job["result"]["filename"] == "report-Quarterly_Operations.pdf"
    download = await client.get(job["result"]["url"])
    assert download.status == 200 and download.content_type == "application/pdf"
    content = await download.read()
    reader = PdfReader(io.BytesIO(content))
    assert reader.metadata.title == "Quarterly Operations" and reader.metadata.author == "Ops team"
    pages = pages_of(content)
    count = len(pages)
    assert count >= 3
    first = pages[0]
    for text in ("Quarterly Operations", "Kitchens and deliveries", "Ops team · 2026-11-28", "Summary",
                 "Orders by region", "Ελληνικά, Кириллица and 日本語", f"Page 1 of {count}"):
        assert text in first, text
    # the user's text is printed as sent, never read as markup
    assert "<b>Not bold</b> & <font name='x'>not a font</font>." in first
    # the table spans pages: page 2 starts with the header again, then the rows that follow
    second = pages[1]
    assert f"Page 2 of {count}" in second
    assert second.startswith("Region Orders Revenue"), second[:80]
    row = next(i for i in range(ROWS) if f"Region {i} " in second)
    assert row > 0 and f"Region {row} {row * 3} {row * 12.5:g}" in second
    assert all(f"Region {i} " in "".join(pages) for i in range(ROWS))
    # the charts: their titles, categories and legends, drawn with rectangles and lines
    text = "\n".join(pages)
    for label in ("Units by quarter", "Units sold", "Q1", "Q4", "North", "South",
                  "Delivery times", "Minutes to door", "Jan", "May", "Median", "Slowest decile"):
        assert label in text, label
    chart_page = next(i for i, page in enumerate(pages) if "Units sold" in page)
    operators = PdfReader(io.BytesIO(content)).pages[chart_page].get_contents().get_data()
    assert operators.count(b" re") >= 7  # a bar for each value given (one is null), and the legend's boxes


def render(data: dict[str, Any], settings: dict[str, Any] | None = None, **kwargs: Any) -> bytes:
    return render_report(parse_report(data, settings or {}), **kwargs)


def test_the_handler_reports_each_section_once_and_stops_between_sections() -> None:
    sent: list[tuple[int, str | None]] = []
    ctx = Context("job_1", 1, {}, lambda percent, message: sent.append((percent, message)))
    output = pdf(sample_report(), ctx)
    assert output.content_type == "application/pdf"
    assert sent == [(0, "laying out report")] + [(5 + 90 * k // 4, f"rendered section {k} of 4") for k in (1, 2, 3, 4)]

    seen: list[str | None] = []
    cancel = Context("job_2", 1, {}, lambda percent, message: seen.append(message),
                     lambda: "rendered section 2 of 4" in seen)
    with pytest.raises(Cancelled):
        pdf(sample_report(), cancel)
    assert seen[-1] == "rendered section 2 of 4"  # stopped before the third section was reported


def test_the_same_report_gives_the_same_bytes() -> None:
    assert render(sample_report()) == render(sample_report())


def test_a_character_no_font_has_fails_naming_its_field() -> None:
    data = sample_report()
    data["sections"][1]["table"]["rows"][3][0] = "\U0010fffd"
    with pytest.raises(MissingGlyph) as caught:
        render(data)
    assert caught.value.field == "sections[1].table.rows[3][0]"


def test_a_tall_cell_and_a_long_paragraph_continue_on_the_next_page() -> None:
    data = {"type": "report", "title": "Long", "sections": [
        {"heading": "Text", "paragraphs": ["word " * 1500]},
        {"heading": "Cells", "table": {"columns": ["a", "b"], "rows": [["x " * 480, "y"]] * 3}}]}
    pages = pages_of(render(data, {"report": {"max_paragraph_length": 10_000}}))
    assert len(pages) >= 3 and all(f"of {len(pages)}" in page for page in pages)


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(data)
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    target: Any = data
    for key in keys[:-1]:
        target = target[key]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


BAD = [
    ("title", KeyError, "data.title: is required"),
    ("title", "   ", "data.title: must not be empty"),
    ("type", "brochure", 'data.type: must be "invoice" or "report"'),
    ("sections", [], "data.sections: must not be empty"),
    ("date", "2026-13-01", "data.date: must be a date as YYYY-MM-DD"),
    ("sections[0].heading", 7, "data.sections[0].heading: must be a string"),
    ("sections[0].paragraphs[1]", None, "data.sections[0].paragraphs[1]: is required"),
    ("sections[1].table.columns", [], "data.sections[1].table.columns: must not be empty"),
    ("sections[1].table.rows[5]", ["a", 1, 2, 3], "data.sections[1].table.rows[5]: must have at most 3 cells"),
    ("sections[1].table.rows[5][1]", True, "data.sections[1].table.rows[5][1]: must be a string"),
    ("sections[1].table.align", ["left", "middle"], 'data.sections[1].table.align[1]: must be "left", "right"'),
    ("sections[2].chart.kind", "pie", 'data.sections[2].chart.kind: must be "bar" or "line"'),
    ("sections[2].chart.series[0].values[3]", "14", "data.sections[2].chart.series[0].values[3]: must be a number"),
    ("sections[2].chart.series[1].values", [1, 2], "data.sections[2].chart.series[1].values: must have one value "
                                                   "per category (4), got 2"),
    ("sections[3].chart.series[0].name", "", "data.sections[3].chart.series[0].name: must not be empty"),
    ("sections[3].chart.categories", None, "data.sections[3].chart.categories: is required"),
]


async def test_bad_reports_are_refused_naming_the_field_and_nothing_is_stored(start_server):
    client = await start_server()
    for path, value, message in BAD:
        response = await client.post("/api/jobs", json={"type": "pdf", "data": _set(sample_report(), path, value)})
        body = await response.json()
        assert response.status == 422 and body["error"]["message"].startswith(message), (path, body)
    assert (await (await client.get("/api/jobs")).json())["jobs"] == []


async def test_the_limits_are_configurable(start_server):
    limits = {"max_sections": 3, "max_table_rows": 50, "max_points": 4, "max_series": 1, "max_text_length": 12,
              "max_paragraph_length": 40, "max_columns": 2, "max_paragraphs": 2}
    client = await start_server(jobs={"settings": {"pdf": {"currency": "EUR", "report": limits}}})
    data = sample_report()
    small = {"type": "report", "title": "Small", "sections": [{"heading": "One"}]}
    cases = [
        (data, "data.sections: must have at most 3 entries (max_sections), got 4"),
        (_set(small, "sections[0].table", {"columns": ["a"], "rows": [["x"]] * 51}),
         "data.sections[0].table.rows: must have at most 50 entries (max_table_rows), got 51"),
        (_set(small, "sections", [{"heading": "a", "table": {"columns": ["a"], "rows": [["x"]] * 30}}] * 2),
         "data.sections[1].table.rows: the report has more than 50 table rows in all (max_table_rows)"),
        (_set(small, "sections[0].table", {"columns": ["a", "b", "c"]}),
         "data.sections[0].table.columns: must have at most 2 entries (max_columns), got 3"),
        (_set(small, "sections[0].chart", {"kind": "bar", "categories": list("abcde"),
                                           "series": [{"name": "s", "values": [1] * 5}]}),
         "data.sections[0].chart.categories: must have at most 4 entries (max_points), got 5"),
        (_set(small, "sections[0].chart", {"kind": "line", "categories": ["a"],
                                           "series": [{"name": "s", "values": [1]}] * 2}),
         "data.sections[0].chart.series: must have at most 1 entries (max_series), got 2"),
        (_set(small, "title", "x" * 13), "data.title: must be at most 12 characters long (max_text_length), got 13"),
        (_set(small, "sections[0].paragraphs", ["p" * 41]),
         "data.sections[0].paragraphs[0]: must be at most 40 characters long (max_paragraph_length), got 41"),
        (_set(small, "sections", [{"heading": "a", "paragraphs": ["p", "q"]}, {"heading": "b", "paragraphs": ["r"]}]),
         "data.sections[1].paragraphs: the report has more than 2 paragraphs in all (max_paragraphs)"),
    ]
    for body, message in cases:
        response = await client.post("/api/jobs", json={"type": "pdf", "data": body})
        answer = await response.json()
        assert response.status == 422 and answer["error"]["message"] == message, (message, answer)
    assert (await client.post("/api/jobs", json={"type": "pdf", "data": small})).status == 201
    # the OpenAPI document states the same bounds
    spec = await (await client.get("/api/openapi.json")).json()
    branch = next(b for b in spec["components"]["schemas"]["Submission"]["oneOf"]
                  if "pdf" in b["properties"]["type"]["enum"])
    invoice, report = branch["properties"]["data"]["oneOf"]
    assert invoice["properties"]["type"]["enum"] == ["invoice"] and report["properties"]["type"]["enum"] == ["report"]
    assert report["properties"]["sections"]["maxItems"] == 3


def test_report_settings_come_from_the_table_or_the_environment_and_bad_ones_stop_start_up(tmp_path: Path) -> None:
    assert ReportSettings.from_settings({"report": {"max_sections": 5}}).max_sections == 5
    assert ReportSettings.from_settings({"report_max_sections": "7"}).max_sections == 7
    config = load_config(None, environ={"OFFLOAD_JOBS_SETTINGS_PDF_REPORT_MAX_POINTS": "9"})
    assert ReportSettings.from_settings(config.jobs.settings["pdf"]).max_points == 9
    for settings, message in (({"report": {"max_rows": 1}}, "report.max_rows: unknown key"),
                              ({"report": {"max_series": 0}}, "report.max_series: must be a whole number")):
        path = tmp_path / "config.toml"
        path.write_text("[jobs.settings.pdf.report]\n" + "".join(f"{k} = {v}\n" for k, v in settings["report"].items()))
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path, environ={})


def test_the_invoice_is_drawn_as_before() -> None:
    """The dispatch leaves the invoice path alone: the handler's bytes are the renderer's."""
    for data in (SAMPLE_INVOICE, {k: v for k, v in SAMPLE_INVOICE.items() if k != "type"}):
        output = pdf(copy.deepcopy(data), Context("job_1", 1, {}, lambda percent, message: None))
        assert output.filename == "invoice-INV-1001.pdf"
        assert output.content == render_invoice(parse_invoice(copy.deepcopy(data)))


async def test_invoice_submissions_are_validated_as_before(start_server):
    client = await start_server()
    bad = _set(SAMPLE_INVOICE, "items[1].quantity", 0)
    response = await client.post("/api/jobs", json={"type": "pdf", "data": bad})
    assert response.status == 422
    assert (await response.json())["error"]["message"] == "data.items[1].quantity: must be a number greater than 0"
    job_id = (await (await client.post("/api/jobs", json={"type": "pdf", "data": SAMPLE_INVOICE})).json())["jobId"]
    job = await wait_status(client, job_id, "completed", "failed")
    assert job["status"] == "completed" and job["result"]["filename"] == "invoice-INV-1001.pdf"
