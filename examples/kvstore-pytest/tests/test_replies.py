"""Reply parsing, without a server."""

import pytest

from kvclient import KvError, parse_reply


@pytest.mark.parametrize(
    "line, value",
    [("OK", True), ("VALUE x", "x"), ("VALUE a b", "a b"), ("NONE", None), ("COUNT 3", 3), ("DELETED 0", 0)],
)
def test_replies_parse(line, value):
    assert parse_reply(line + "\n") == value


class TestRefusals:
    def test_err_raises_with_the_message(self):
        with pytest.raises(KvError, match="cannot parse"):
            parse_reply("ERR cannot parse `FLY me`")

    @pytest.mark.parametrize("line", ["", "HELLO", "OK extra", "COUNT many"])
    def test_anything_else_is_not_a_reply(self, line):
        with pytest.raises(ValueError):
            parse_reply(line)
