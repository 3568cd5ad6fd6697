"""The one --site parser (sdk.cohort.parse_site): jobs take a role, statistics do not."""

from __future__ import annotations

import pytest

from cleanroom.sdk.cohort import Site, parse_site


def test_a_site_with_a_role_and_a_mapping() -> None:
    assert parse_site("datasets/d2:validate, malignant = dx ,mean_radius=radius_mean") == Site(
        "datasets/d2", {"malignant": "dx", "mean_radius": "radius_mean"}, "validate")
    assert parse_site("datasets/d1") == Site("datasets/d1", {}, "train")


@pytest.mark.parametrize("text", ["", ":train", "datasets/d1:test", "datasets/d1,malignant", "datasets/d1,=dx", "datasets/d1,a= "])
def test_malformed_sites_are_refused_with_the_expected_shape(text: str) -> None:
    with pytest.raises(ValueError, match="expected DATASET|role is train or validate"):
        parse_site(text)


def test_statistics_sites_take_no_role() -> None:
    assert parse_site("datasets/d1,radius=mean_radius", with_role=False) == Site("datasets/d1", {"radius": "mean_radius"})
    with pytest.raises(ValueError, match=r"expected DATASET\[,STUDY=COLUMN...\]"):
        parse_site("datasets/d1:validate", with_role=False)
