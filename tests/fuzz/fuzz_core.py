# Coverage-guided fuzzing of the sans-I/O core (atheris, libFuzzer's engine). Run by hand, not
# in CI: pytest does not collect this file (no test_ prefix) and atheris is not a dependency.
#
#     pip install atheris
#     python tests/fuzz/fuzz_core.py -atheris_runs=100000           # a bounded run
#     python tests/fuzz/fuzz_core.py corpus/ -max_total_time=600     # grow a corpus for 10 min
#
# One input is split into a max_line, a set of cut points and a payload, so the fuzzer steers
# all three. The checks are the core's contract against hostile bytes: nothing raises, no
# buffer holds more than max_line + 1 bytes after any feed, the output is the same however the
# payload is cut into reads, and every request line can be parsed without an unexpected error.
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

try:
    import atheris
except ImportError:  # keep the checks importable (and replayable) without atheris
    atheris = None

if atheris is not None:
    with atheris.instrument_imports():
        from reactor_mgmt import _protocol
else:
    from reactor_mgmt import _protocol

_TOO_LONG_MARKER = type(_protocol.LINE_TOO_LONG)


def _decode(chunks, max_line):
    decoder = _protocol.RequestDecoder(max_line)
    items = []
    for chunk in chunks:
        items.extend(decoder.feed(chunk))
        assert decoder.buffered <= max_line + 1, (decoder.buffered, max_line)
    items.extend(decoder.feed_eof())
    assert decoder.buffered <= max_line + 1
    return items


def check(data: bytes) -> None:
    if len(data) < 2:
        return
    max_line = 1 + data[0] % 96
    cut_count = data[1] % 8
    cut_bytes, payload = data[2 : 2 + cut_count], data[2 + cut_count :]
    points = sorted({b * len(payload) // 255 for b in cut_bytes})
    chunks, start = [], 0
    for point in points:
        chunks.append(payload[start:point])
        start = point
    chunks.append(payload[start:])

    whole = _decode([payload], max_line)
    assert _decode(chunks, max_line) == whole, "output depends on how the reads were cut"
    assert _decode([payload[i : i + 1] for i in range(len(payload))], max_line) == whole

    lines = _protocol.LineBuffer(max_line)
    for chunk in chunks:
        for line in lines.feed(chunk):
            assert isinstance(line, _TOO_LONG_MARKER) or len(line) <= max_line
        assert lines.buffered <= max_line + 1

    for index, item in enumerate(whole):
        if isinstance(item, str):
            assert item and item == item.strip() and "\n" not in item
            assert len(item.encode()) <= max_line
            try:
                _protocol.split_words(item)
            except _protocol.ParseError:
                pass
            assert _protocol.looks_like_http(item) in (True, False)
        elif isinstance(item, _protocol.EndSession):
            assert index == len(whole) - 1, "END_SESSION must be the last event"
        else:
            assert isinstance(item, (_protocol.LineTooLong, _protocol.BadEncoding)), item


def main() -> None:
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
