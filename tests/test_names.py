"""The rules each written once: what a job id looks like, and what of a file name survives
into a path or a header."""
from __future__ import annotations

import re

from offload.service.api import content_disposition
from offload.service.models import JOB_ID_PATTERN, new_job_id
from offload.service.openapi import build_spec
from offload.workers.filenames import safe_filename
from offload.workers.pdf import invoice_filename
from offload.workers.registry import Registry


def test_every_new_job_id_fits_the_one_pattern_the_api_documents(make_config) -> None:
    assert all(re.fullmatch(JOB_ID_PATTERN, new_job_id()) for _ in range(200))
    assert not re.fullmatch(JOB_ID_PATTERN, "job_" + "a" * 23) and not re.fullmatch(JOB_ID_PATTERN, "job_" + "1" * 24)
    schemas = build_spec(make_config(), Registry.from_modules())["components"]["schemas"]
    patterns = {schema["properties"][key]["pattern"] for schema in schemas.values()
                for key in ("id", "jobId") if key in schema.get("properties", {})}
    assert patterns == {JOB_ID_PATTERN}


def test_one_rule_cleans_file_names_for_paths_and_headers() -> None:
    assert safe_filename("../a b/ü\r\n.pdf") == ".._a_b_.pdf"
    assert safe_filename("../a b/ü.pdf", keep=" ") == ".._a b_.pdf"
    assert invoice_filename("INV/1001 ü") == "invoice-INV_1001.pdf"
    assert content_disposition("a;b c.pdf", "job_x-1.pdf") == 'attachment; filename="a_b c.pdf"; filename*=UTF-8\'\'a%3Bb%20c.pdf'
