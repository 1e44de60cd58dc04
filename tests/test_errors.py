"""The error classes themselves: every answer that asks a client to come back later says when."""
from __future__ import annotations

import pytest

from offload.service import errors


def _subclasses(cls: type) -> list[type]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _subclasses(child))]


BACK_OFF = [cls for cls in _subclasses(errors.OffloadError) if cls.status in (429, 503)]


def test_the_back_off_errors_are_all_found():
    assert {cls.code for cls in BACK_OFF} >= {"too_many_requests", "unavailable", "shutting_down",
                                              "store_unavailable"}


@pytest.mark.parametrize("cls", BACK_OFF, ids=lambda cls: cls.code)
def test_every_429_and_503_carries_an_integer_retry_after(cls: type[errors.OffloadError]):
    value = cls("try again later").headers["Retry-After"]
    assert value.isdigit() and int(value) >= 1
    assert cls("later", retry_after=30).headers["Retry-After"] == "30"
    assert cls("at once", retry_after=0).headers["Retry-After"] == "1"  # never 0: that invites a hot loop
