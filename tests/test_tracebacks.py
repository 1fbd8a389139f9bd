"""What a user reads when a run fails: their own frames first, the real file of a worker's code,
and one message for one failure."""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path

import pytest

import async_flow as af

PACKAGE = str(Path(af.__file__).resolve().parent)
ASYNCIO = str(Path(asyncio.__file__).resolve().parent)


def parse(x: int) -> int:
    if x == 5:
        raise ValueError(f"bad {x}")
    return x


def _frames(error: BaseException) -> list[traceback.FrameSummary]:
    return list(traceback.extract_tb(error.__traceback__))


def _library_frames(error: BaseException) -> list[str]:
    return [
        f"{f.filename}:{f.name}"
        for f in _frames(error)
        if f.filename.startswith((PACKAGE, ASYNCIO))
    ]


def test_a_fail_fast_error_starts_with_the_callers_frame_then_the_users(backend: str) -> None:
    with pytest.raises(ValueError, match="bad 5") as info:
        af.run(range(10), af.Layer(parse, 2, backend=backend), progress=False)
    error = info.value
    frames = _frames(error)
    assert frames[0].name == "test_a_fail_fast_error_starts_with_the_callers_frame_then_the_users"
    assert frames[0].filename == __file__
    assert _library_frames(error) == []
    if backend != "process":  # a worker process's frames are in its note
        assert [(f.filename, f.name) for f in frames[1:]] == [(__file__, "parse")]
    lines = traceback.format_exception(error)
    # The message, then the note naming the layer and the item.
    message = lines.index("ValueError: bad 5\n")
    assert any("raised in layer 'parse' (#0) on item 5" in line for line in lines[message + 1 :])


def test_the_full_chain_stays_reachable_with_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASYNC_FLOW_FULL_TRACEBACK", "1")
    with pytest.raises(ValueError, match="bad 5") as info:
        af.run(range(10), af.Layer(parse, 2), progress=False)
    names = {Path(f.filename).name for f in _frames(info.value)}
    assert {"_pipeline.py", "_taskgroup.py", "_runtime.py", "runners.py"} <= names


def test_awaiting_pipeline_shows_the_users_frames() -> None:
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return parse(x)

    async def main() -> None:
        await af.pipeline(range(10), af.Layer(fetch, 3), progress=False)

    with pytest.raises(ValueError, match="bad 5") as info:
        asyncio.run(main())
    # asyncio.run's own frames sit above main(); below it, the user's code alone.
    names = [f.name for f in _frames(info.value)]
    assert names[names.index("main") :] == ["main", "fetch", "parse"]
    assert not any(f.filename.startswith(PACKAGE) for f in _frames(info.value))


def test_a_stream_shows_the_users_frames() -> None:
    with (
        pytest.raises(ValueError, match="bad 5") as info,
        af.open_stream(range(10), af.Layer(parse, 2)) as stream,
    ):
        for _ in stream:
            pass
    assert _library_frames(info.value) == []
    assert [f.name for f in _frames(info.value)][-1] == "parse"


def test_a_source_error_shows_the_users_generator() -> None:
    def rows() -> object:
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone") as info:
        af.run(rows(), af.Layer(str), progress=False)  # type: ignore[call-overload]
    assert _library_frames(info.value) == []
    assert [f.name for f in _frames(info.value)][-1] == "rows"


def test_a_process_worker_traceback_names_the_real_file_and_line() -> None:
    # A function defined in a function travels by value (cloudpickle), the case whose code
    # object used to arrive as "<dynamic-code>".
    def check(x: int) -> int:
        if x == 3:
            raise ValueError(f"cannot check {x}")
        return x

    line = check.__code__.co_firstlineno + 2
    with pytest.raises(ValueError, match="cannot check 3") as info:
        af.run(range(10), af.Layer(check, 2, backend="process"), progress=False)
    text = "".join(traceback.format_exception(info.value))
    assert "<dynamic-code>" not in text
    assert f'File "{__file__}", line {line}, in check' in text
    assert 'raise ValueError(f"cannot check {x}")' in text  # the source line, read from the file
    assert "_calls.py" not in text  # the worker loop's own frames are cut too


def test_too_many_failures_is_one_failure_with_one_message() -> None:
    # Four workers fail at once (a barrier lets their items go together), so several of them
    # cross the threshold before the run has stopped them.
    barrier = asyncio.Barrier(4)

    async def fragile(x: int) -> int:
        await barrier.wait()
        raise ValueError(f"bad {x}")

    with pytest.raises(af.TooManyFailures) as info:
        af.run(
            range(40),
            af.Layer(fragile, 4, on_error=af.Skip(max_failures=1)),
            progress=False,
        )
    text = "".join(traceback.format_exception(info.value))
    assert text.count("async_flow._errors.TooManyFailures:") == 1, text
    assert "also raised meanwhile" not in text
    assert "gave up: 2 items failed" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
