import pytest

from synthtl.errors import ConfigError
from synthtl.registry import Registry


def test_register_get_and_list():
    r = Registry("widget")

    @r.register("alpha")
    def alpha():
        return 1

    assert r.get("alpha") is alpha and r.names() == ["alpha"] and "alpha" in r


def test_duplicate_registration_raises():
    r = Registry("widget")
    r.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        r.add("a", 2)


def test_unknown_name_lists_what_exists_and_suggests():
    r = Registry("widget")
    r.add("bridged", 1)
    r.add("vanilla", 2)
    with pytest.raises(ConfigError, match=r"unknown widget 'bridgd'.*Did you mean bridged.*Known: bridged, vanilla"):
        r.get("bridgd")
