from __future__ import annotations

import pytest

from jobs.errors import JobLocked
from jobs.locks import exclusive


@pytest.mark.parametrize("backend", ["sqlite_settings", "pg_settings"])
def test_a_second_holder_is_refused_until_release(request, backend: str) -> None:
    settings = request.getfixturevalue(backend)
    with exclusive(settings, "train_router"):
        with pytest.raises(JobLocked, match="another train_router run"):
            with exclusive(settings, "train_router"):
                pass
        with exclusive(settings, "other"):
            pass
    with exclusive(settings, "train_router"):
        pass
