"""The notebooks' size knob (``WORKBENCH_NOTEBOOK_SMALL``, set by ``dev.py test``)."""

import pytest

import workbench as wb
from workbench import notebook


@pytest.mark.parametrize("value, small", [("", False), ("0", False), ("no", False),
                                          ("false", False), ("1", True), ("true", True),
                                          (" YES ", True)])
def test_small_mode_reads_the_environment(monkeypatch, value, small):
    monkeypatch.setenv(notebook.SMALL_ENV, value)
    assert notebook.small_mode() is small
    assert wb.sized(4000, small=400) == (400 if small else 4000)


def test_unset_means_full_size(monkeypatch):
    monkeypatch.delenv(notebook.SMALL_ENV, raising=False)
    assert wb.sized([10, 25, 50, 100], small=[10]) == [10, 25, 50, 100]


def test_a_value_that_is_not_a_switch_is_an_error(monkeypatch):
    monkeypatch.setenv(notebook.SMALL_ENV, "maybe")
    with pytest.raises(ValueError, match="WORKBENCH_NOTEBOOK_SMALL='maybe'"):
        wb.sized(1, small=0)

