"""One line per error: what a user reads when something fails."""
from __future__ import annotations

import pytest

from graft_edge.errors import GraftError, one_line


@pytest.mark.parametrize("text, line", [
    ("Exception from src/inference/src/cpp/core.cpp:117:\nException from src/inference/src/dev/plugin.cpp:54:\n"
     "Check '!getSupportedPrimitiveDescriptors().empty()' failed at src/plugins/intel_cpu/src/node.cpp:345:\n"
     "Supported primitive descriptors list is empty for node: Softmax_6654 type: Softmax\n\n",
     "RuntimeError: Supported primitive descriptors list is empty for node: Softmax_6654 type: Softmax"),
    ("first line\nsecond line", "RuntimeError: first line"),
    ("Exception from src/x.cpp:1:", "RuntimeError: Exception from src/x.cpp:1:"),  # nothing else said: kept
    ("", "RuntimeError"),
])
def test_one_line_skips_the_source_locations_a_runtime_leads_with(text: str, line: str) -> None:
    assert one_line(RuntimeError(text)) == line


def test_one_line_keeps_a_graft_error_as_is_and_cuts_long_text() -> None:
    assert one_line(GraftError("--formats x: unknown")) == "--formats x: unknown"
    assert one_line(GraftError("")) == "failed" and len(one_line(ValueError("y" * 500))) == len("ValueError: ") + 240
