"""Every docstring example in schemas/ and models/ runs (they document the pure code by example), and
those of the stream modules that have them."""
import doctest
import importlib
import pkgutil

import pytest

import launchpulse.models
import launchpulse.schemas

MODULES = sorted(f"{pkg.__name__}.{m.name}" for pkg in (launchpulse.schemas, launchpulse.models)
                 for m in pkgutil.iter_modules(pkg.__path__)) + ["launchpulse.stream.ingest_process"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples failed in {name}"
