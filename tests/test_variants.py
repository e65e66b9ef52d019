"""Variant family expansion: axes, exclude, include (GitHub Actions matrix semantics)."""

from lab.config.variants import expand


def test_cross_product_in_order() -> None:
    got = expand({"a": [1, 2], "b": ["x", "y"]})
    assert got == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


def test_exclude_removes_matching_combinations() -> None:
    got = expand({"a": [1, 2], "b": ["x", "y"]}, exclude=[{"a": 1, "b": "y"}, {"a": 2}])
    assert got == [{"a": 1, "b": "x"}]


def test_include_extends_or_adds() -> None:
    got = expand(
        {"a": [1, 2]},
        include=[{"a": 1, "id": "one"}, {"a": 3, "id": "three"}, {"extra": True}],
    )
    assert got == [
        {"a": 1, "id": "one", "extra": True},
        {"a": 2, "extra": True},
        {"a": 3, "id": "three", "extra": True},
    ]


def test_constants_are_defaults() -> None:
    got = expand({"a": [1]}, include=[{"c": "override"}], constants={"c": "base", "d": 0})
    assert got == [{"c": "override", "d": 0, "a": 1}]


def test_no_axes_gives_include_entries_only() -> None:
    assert expand({}, include=[{"x": 1}, {"x": 2}]) == [{"x": 1}, {"x": 2}]
    assert expand({}) == [{}]
