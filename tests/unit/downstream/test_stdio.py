"""LineFramer: a stdio server's byte stream cut into lines however its reads split it, with lines
over the limit dropped but measured, and their two ends kept to find the request they answer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent_mcp_gateway.downstream import stdio
from agent_mcp_gateway.downstream.stdio import LineFramer

EDGE = stdio._EDGE


def frame(limit: int, chunks: list[bytes]) -> list[object]:
    framer = LineFramer(limit)
    lines: list[object] = []
    for chunk in chunks:
        lines.extend(framer.feed(chunk))
    return lines


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[start:end] for start, end in zip([0, *points], [*points, len(data)], strict=True)]


def test_lines_come_out_without_their_newline_and_the_unfinished_one_waits() -> None:
    framer = LineFramer(100)
    assert framer.feed(b'{"a": 1}\n{"b"') == [b'{"a": 1}']
    assert framer.feed(b": 2}") == []
    assert framer.feed(b"\n\n") == [b'{"b": 2}', b""]


def test_a_line_of_exactly_the_limit_is_kept_one_byte_more_is_not() -> None:
    assert frame(5, [b"12345\n"]) == [b"12345"]
    (over,) = frame(5, [b"123", b"456\n"])
    assert not isinstance(over, bytes)
    assert over.size == 6 and over.head == b"123456"


def test_an_oversize_line_is_measured_and_keeps_its_ends_not_its_middle() -> None:
    head = b'{"jsonrpc": "2.0", "id": 7, "result": "'
    tail = b'"}'
    line = head + b"x" * (3 * EDGE) + tail
    chunks = split(line + b"\nnext\n", list(range(0, len(line) + 6, 1000)))
    over, following = frame(1000, chunks)
    assert not isinstance(over, bytes)
    assert over.size == len(line)
    assert over.head == line[:2000] and over.head.startswith(head)  # the reads up to the crossing one
    assert over.tail == line[-EDGE:] and over.tail.endswith(tail)
    assert following == b"next"  # the framer is back to normal after it


def test_an_id_that_straddles_the_read_crossing_the_limit_stays_in_the_tail() -> None:
    # Node servers put the id last; the line crosses the limit within `"id": 12}` and ends just
    # after: the tail must still hold the whole id, not only the reads since the crossing.
    line = b'{"result": "' + b"y" * 40 + b'", "id": 12}'
    crossing = line.index(b"12}")
    (over,) = frame(crossing, [line[:crossing], line[crossing:] + b"\n"])
    assert not isinstance(over, bytes)
    assert over.tail == line
    assert stdio._TAIL_ID.search(over.tail) is not None


lines_strategy = st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")), max_size=12)


@settings(max_examples=300, deadline=None)
@given(lines=lines_strategy, cuts=st.lists(st.integers(min_value=0, max_value=800), max_size=30))
def test_any_split_of_the_stream_gives_the_same_lines(lines: list[bytes], cuts: list[int]) -> None:
    limit = 40
    data = b"".join(line + b"\n" for line in lines)
    framed = frame(limit, split(data, cuts))
    assert len(framed) == len(lines)
    for got, line in zip(framed, lines, strict=True):
        if len(line) <= limit:
            assert got == line
        else:
            assert not isinstance(got, bytes)
            assert got.size == len(line) and got.tail == line[-EDGE:]
            assert limit < len(got.head) <= EDGE and line.startswith(got.head)


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(min_value=EDGE, max_value=4 * EDGE), read=st.integers(min_value=1, max_value=3 * EDGE)
)
def test_big_oversize_lines_keep_exactly_their_edges(size: int, read: int) -> None:
    line = (bytes(range(11, 256)) * (size // 245 + 1))[:size]  # no newline in it
    (over,) = frame(100, split(line + b"\n", list(range(read, size + 1, read))))
    assert not isinstance(over, bytes)
    assert over.size == size and over.tail == line[-EDGE:]
    assert 100 < len(over.head) <= EDGE and line.startswith(over.head)
