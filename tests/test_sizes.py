"""The one ``HxW`` size parser behind every size setting and option."""

import pytest

from tdfusion_core.common.sizes import optional_size, parse_size


def test_every_written_form_gives_height_and_width():
    assert parse_size("480x640") == parse_size("480X640") == parse_size("480×640") == (480, 640)
    assert parse_size((480, 640)) == parse_size(" 480x640 ") == (480, 640)
    assert parse_size(256) == parse_size("256") == parse_size([256, 256]) == (256, 256)
    assert optional_size(None) is None


@pytest.mark.parametrize("bad", ["480x", "x640", "1x2x3", "axb", "", True, [1, 2, 3]])
def test_malformed_sizes_name_the_setting_and_the_form(bad):
    with pytest.raises(ValueError, match="--crop: expected HxW"):
        parse_size(bad, what="--crop")


def test_too_small_sizes_name_the_minimum():
    with pytest.raises(ValueError, match="at least 16x16 pixels, got 8x640"):
        parse_size("8x640", minimum=16)
    with pytest.raises(ValueError, match="at least 1x1"):
        parse_size("0x5")
