"""Errors mapped to problem statuses."""

from __future__ import annotations

import errno

from starlette.exceptions import HTTPException

from service.problems import disk_full


def parse_error_caused_by(cause: BaseException) -> HTTPException:
    """As FastAPI reports a body it could not read: a 400 raised from the cause."""
    try:
        try:
            raise cause
        except BaseException as e:
            raise HTTPException(400, "There was an error parsing the body") from e
    except HTTPException as reported:
        return reported


def test_a_body_that_could_not_spool_for_lack_of_space_is_a_full_disk_not_a_bad_request():
    assert disk_full(parse_error_caused_by(OSError(errno.ENOSPC, "No space left on device")))
    assert not disk_full(parse_error_caused_by(OSError(errno.EIO, "I/O error")))
    assert not disk_full(parse_error_caused_by(ValueError("bad multipart")))
