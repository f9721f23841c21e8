"""`FilePattern`: one spec that parses and composes file names."""

from __future__ import annotations

from datetime import datetime

import pytest

from nrt.sources import imerg
from nrt.sources.base import FilePattern

GEOS = FilePattern("GEOS.fp.fcst.{collection}.{init:%Y%m%d_%H}+{valid:%Y%m%d_%H%M}.{version}.nc4",
                   collection=r"tavg1_2d_(?:slv|flx)_Nx", version=r"V\d{2}")


def test_a_composed_name_parses_back_to_its_fields():
    name = GEOS.compose(collection="tavg1_2d_slv_Nx", init=datetime(2024, 6, 1, 6), valid=datetime(2024, 6, 1, 8, 30),
                        version="V01")
    assert name == "GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_06+20240601_0830.V01.nc4"
    assert GEOS.parse(name) == {"collection": "tavg1_2d_slv_Nx", "init": datetime(2024, 6, 1, 6),
                                "valid": datetime(2024, 6, 1, 8, 30), "version": "V01"}


def test_a_datetime_spread_over_fields_and_a_zero_padded_int():
    name = "3B-HHR-E.MS.MRG.3IMERG.20240229-S233000-E235959.1410.V07B.RT-H5"
    fields = imerg.FILE_PATTERN.parse(name)
    assert fields["start"] == datetime(2024, 2, 29, 23, 30) and fields["minutes"] == 1410 and fields["run"] == "-E"
    assert imerg.filename(imerg.parse_name(name).start) == name  # the module composes with the same spec


@pytest.mark.parametrize("name", [
    "GEOS.fp.fcst.tavg1_2d_slv_Nx.20240631_06+20240601_0830.V01.nc4",  # no June 31st
    "GEOS.fp.fcst.tavg1_2d_xyz_Nx.20240601_06+20240601_0830.V01.nc4",  # a collection the regex refuses
    "GEOS.fp.fcst.tavg1_2d_slv_Nx.20240601_06+20240601_0830.V01.nc4.part",
])
def test_names_that_do_not_fit_parse_to_none(name):
    assert GEOS.parse(name) is None


def test_a_repeated_field_must_repeat_its_value():
    pattern = FilePattern("{kind}/{kind}.nc", kind="[a-z]+")
    assert pattern.parse("rain/rain.nc") == {"kind": "rain"}
    assert pattern.parse("rain/snow.nc") is None


def test_a_field_without_a_regex_or_spec_is_refused():
    with pytest.raises(ValueError, match="'what' needs a regex"):
        FilePattern("{what}.nc")
