"""Fixtures for the dock-widget tests (captured errors; the models are the session's, in tests/conftest.py).

Every test here is ``gui``: ``make test-fast`` leaves them out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    """Every test in this folder drives a viewer or Qt: mark it ``gui`` (``make test-fast`` leaves them out)."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.gui)


@pytest.fixture
def errors(monkeypatch):
    """Messages passed to napari's show_error (and receive_error) while the test runs."""
    from napari.utils import notifications

    seen: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda message: seen.append(str(message)))
    monkeypatch.setattr(notifications.notification_manager, "receive_error",
                        lambda _type, exc, _tb: seen.append(f"{type(exc).__name__}: {exc}"))
    return seen


@pytest.fixture
def warnings_shown(monkeypatch):
    """Messages passed to napari's show_warning while the test runs."""
    from napari.utils import notifications

    seen: list[str] = []
    monkeypatch.setattr(notifications, "show_warning", lambda message: seen.append(str(message)))
    return seen
