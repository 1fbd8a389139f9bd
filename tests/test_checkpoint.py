"""Resume: the ledger of finished source items, lineage through fan-out and filters."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

import async_flow as af


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


def ledger(db: Path) -> set[Any]:
    return {k for (k,) in query(db, "SELECT k FROM _af_ledger")}


def fan(i: int) -> Iterator[dict[str, Any]]:
    """0, 1, 2 or 3 rows per item: fan-out and filtering at once."""
    for j in range(i % 4):
        yield {"id": f"{i}-{j}", "source": i}


def test_a_second_run_skips_what_the_first_committed(tmp_path: Path, backend: str) -> None:
    db = tmp_path / "run.db"
    layers = (af.Layer(fan, 3, backend=backend), af.sinks.sqlite(db, commit_every=5))
    first = af.run(range(30), *layers, checkpoint=af.Checkpoint(db, key=int))
    assert first.layers[0].received == 30
    assert ledger(db) == set(range(30))  # filtered items (i % 4 == 0) are finished too
    second = af.run(range(50), *layers, checkpoint=af.Checkpoint(db, key=int))
    assert second.source.produced == 50
    assert second.layers[0].received == 20
    assert ledger(db) == set(range(50))
    stored = query(db, "SELECT id, source FROM results")
    assert sorted(stored) == sorted((f"{i}-{j}", i) for i in range(50) for j in range(i % 4))


def test_lineage_through_several_layers(tmp_path: Path, backend: str) -> None:
    """Fan-out, then a filter, then fan-out again: a key is done only when all of it is stored."""
    db = tmp_path / "run.db"

    def split(i: int) -> Iterator[int]:
        yield from (10 * i + d for d in range(3))

    def odd_only(n: int) -> Iterator[int]:
        if n % 2:
            yield n

    async def to_row(n: int) -> dict[str, int]:
        return {"id": n}

    af.run(
        range(40),
        af.Layer(split, 2, backend=backend),
        af.Layer(odd_only, 2, backend=backend, maxsize=1),
        af.Layer(to_row, 3),
        af.sinks.sqlite(db, commit_every=3),
        checkpoint=af.Checkpoint(db, key=lambda i: f"item{i}"),
    )
    assert ledger(db) == {f"item{i}" for i in range(40)}
    assert sorted(n for (n,) in query(db, "SELECT id FROM results")) == [
        n for i in range(40) for n in (10 * i, 10 * i + 1, 10 * i + 2) if n % 2
    ]
    assert query(db, "SELECT count(*) FROM results WHERE _af_source IS NULL") == [(0,)]


def test_bad_items_survive(tmp_path: Path, backend: str) -> None:
    db = tmp_path / "run.db"
    items: list[Any] = [None, 0, "", [], False, (), {}, 0.0]

    def describe(x: Any) -> dict[str, str]:
        return {"id": repr(x), "type": type(x).__name__, "json": json.dumps(x)}

    af.run(
        items,
        af.Layer(lambda x: x, 2, backend=backend),
        af.Layer(describe, backend=backend),
        af.sinks.sqlite(db),
        checkpoint=af.Checkpoint(db, key=repr),
    )
    stored = {row[0]: row[1:] for row in query(db, "SELECT id, type, json FROM results")}
    assert stored == {repr(x): (type(x).__name__, json.dumps(x)) for x in items}
    assert ledger(db) == {repr(x) for x in items}


def test_a_collector_of_your_own_is_at_least_once(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    seen: list[int] = []
    first = af.run(
        range(10), af.Layer(fan, 2), af.Layer(seen.append), checkpoint=af.Checkpoint(db, key=int)
    )
    assert first.layers[-1].received == sum(i % 4 for i in range(10))
    assert ledger(db) == set(range(10))
    seen.clear()
    af.run(
        range(12), af.Layer(fan, 2), af.Layer(seen.append), checkpoint=af.Checkpoint(db, key=int)
    )
    assert sorted(r["source"] for r in seen) == [10, 10, 11, 11, 11]  # type: ignore[index]


def test_a_different_pipeline_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "run.db"

    def other(i: int) -> dict[str, int]:
        return {"id": i}

    af.run(range(3), af.Layer(fan), af.sinks.sqlite(db), checkpoint=af.Checkpoint(db, key=int))
    changed = (af.Layer(other), af.sinks.sqlite(db))
    with pytest.raises(af.CheckpointMismatch, match="written by a different pipeline"):
        af.run(range(6), *changed, checkpoint=af.Checkpoint(db, key=int))
    assert ledger(db) == {0, 1, 2}  # the refused run touched nothing
    report = af.run(range(6), *changed, checkpoint=af.Checkpoint(db, key=int, resume_changed=True))
    assert report.layers[0].received == 3
    # The forced run took over the checkpoint: the new pipeline resumes without the flag.
    assert af.run(range(6), *changed, checkpoint=af.Checkpoint(db, key=int)).layers[0].received == 0


def test_source_keys_that_collide_are_reported(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with pytest.raises(af.DuplicateKey, match=r"source item 'b2' has key 'b'"):
        af.run(
            ["a1", "b1", "c1", "b2"],
            af.Layer(lambda s: {"id": s}),
            af.sinks.sqlite(db),
            checkpoint=af.Checkpoint(db, key=lambda s: s[0]),
        )


def test_row_keys_that_collide_across_runs_are_reported(tmp_path: Path) -> None:
    """A row stored for one source item is never silently replaced by another item's row."""
    db = tmp_path / "run.db"
    layers = (af.Layer(lambda i: {"id": i % 5, "i": i}), af.sinks.sqlite(db))
    af.run(range(5), *layers, checkpoint=af.Checkpoint(db, key=int))
    with pytest.raises(af.DuplicateKey, match="written for another source item than 7"):
        af.run([7], *layers, checkpoint=af.Checkpoint(db, key=int))
    assert query(db, "SELECT i FROM results WHERE id = 2") == [(2,)]


def test_bad_keys_are_named(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with pytest.raises(TypeError, match=r"checkpoint key of item 1\.5 must be a str, int or bytes"):
        af.run([1.5], af.Layer(str), checkpoint=af.Checkpoint(db, key=lambda x: x))
    with pytest.raises(KeyError) as info:
        af.run([{"a": 1}], af.Layer(str), checkpoint=af.Checkpoint(db, key=lambda x: x["id"]))
    assert "key function raised on item {'a': 1}" in "".join(info.value.__notes__)


def test_shapes_it_cannot_track_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with pytest.raises(ValueError, match="reads its whole input"):
        af.run(range(3), af.batch(2), af.Layer(len), checkpoint=af.Checkpoint(db, key=int))
    with pytest.raises(ValueError, match="needs exactly one worker"):
        af.run(
            range(3),
            af.Layer(lambda i: {"id": i}),
            af.Layer(af.sinks.SQLite, 2, args=(db,)),
            checkpoint=af.Checkpoint(db, key=int),
        )


def test_the_collector_raising_leaves_no_item_half_committed(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    bad = {"item": 13}

    def three_rows(i: int) -> Iterator[dict[str, Any]]:
        for j in range(3):
            broken = i == bad["item"] and j == 2
            yield {"id": f"{i}-{j}", "source": i, "v": [j] if broken else j}

    def stored() -> dict[int, int]:
        return dict(query(db, "SELECT source, count(*) FROM results GROUP BY source"))

    layers = (af.Layer(three_rows, 2), af.sinks.sqlite(db, commit_every=4))
    with pytest.raises(TypeError, match="cannot store column 'v' of row '13-2'"):
        af.run(range(40), *layers, checkpoint=af.Checkpoint(db, key=int))
    # Whole transactions only: each item stored is stored entirely, and is in the ledger.
    assert 13 not in ledger(db)
    assert ledger(db)  # items before it were committed
    assert set(stored()) == ledger(db)
    assert set(stored().values()) <= {3}

    bad["item"] = -1
    af.run(range(40), *layers, checkpoint=af.Checkpoint(db, key=int))
    assert ledger(db) == set(range(40))
    assert stored() == {i: 3 for i in range(40)}


def test_envelopes_and_keyed_layers_cross_to_other_processes() -> None:
    """What a process or Ray worker receives under a checkpoint pickles, and unwraps there."""
    import pickle

    import cloudpickle

    from async_flow._calls import open_worker_call_sync, run_batch_sync
    from async_flow._keyed import Keyed, keyed_layer

    env = pickle.loads(pickle.dumps(Keyed("k", [None, 0, ""], final=True)))
    assert (env.key, env.value, env.final) == ("k", [None, 0, ""], True)

    layer = pickle.loads(cloudpickle.dumps(keyed_layer(af.Layer(fan, 2, name="fan"))))
    assert isinstance(layer, af.Layer)
    assert (layer.name, layer.workers) == ("fan", 2)
    wc = open_worker_call_sync(layer, None)
    result = run_batch_sync(wc.call, wc.kind, [Keyed(5, 5), Keyed(4, 4), Keyed(7, 7)])
    assert [(o.key, o.value["id"]) for o in result.outputs] == [
        (5, "5-0"),
        (7, "7-0"),
        (7, "7-1"),
        (7, "7-2"),
    ]


def test_merged_sources_are_keyed_too(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    layers = (af.Layer(lambda i: {"id": i}, 2), af.sinks.sqlite(db))
    af.run(
        af.merge(range(0, 5), iter(range(5, 10))), *layers, checkpoint=af.Checkpoint(db, key=int)
    )
    assert ledger(db) == set(range(10))
    again = af.run(
        af.merge(range(0, 12, 2), range(1, 12, 2)), *layers, checkpoint=af.Checkpoint(db, key=int)
    )
    assert again.layers[0].received == 2
    assert ledger(db) == set(range(12))


def test_an_item_an_error_policy_gave_up_on_is_not_recorded(tmp_path: Path) -> None:
    """The hook error policies call for a skipped item: its source item stays unfinished."""
    from async_flow._checkpoint import Lineage
    from async_flow._keyed import Keyed

    lineage = Lineage(af.Checkpoint(tmp_path / "run.db", key=int), (af.Layer(str), af.Layer(str)))
    envs = lineage.admit([1, 2])
    split = [Keyed(1, "a"), Keyed(1, "b")]
    lineage.after(0, envs[:1], split)
    lineage.after(0, envs[1:], [Keyed(2, "c")])
    lineage.drop(split[0])
    lineage.after(1, split, [])
    lineage.after(1, [Keyed(2, "c")], [])
    assert lineage.finished == {2}
    assert lineage.counts == {1: 1}


@pytest.mark.parametrize("collector", ["sqlite", "own"])
@pytest.mark.parametrize(
    ("policy", "counted"), [(af.Skip(), "skipped"), (af.DeadLetter(), "dead_letters")]
)
def test_items_skipped_or_dead_lettered_stay_unfinished_and_run_again(
    tmp_path: Path, backend: str, collector: str, policy: af.Policy, counted: str
) -> None:
    """Under a real checkpoint, an item the policy gave up on is not recorded as done: the next
    run does it again (here the cause is gone, so it goes through)."""
    db = tmp_path / "run.db"
    flaky = tmp_path / "flaky"  # while this file exists, items 3, 7 and 8 fail
    flaky.touch()
    path = str(flaky)
    seen: list[int] = []

    def row(i: int) -> dict[str, int]:
        if i in (3, 7, 8) and os.path.exists(path):
            raise OSError(f"item {i} is flaky")
        return {"id": i}

    def own(r: dict[str, int]) -> None:
        seen.append(r["id"])

    last = af.sinks.sqlite(db, commit_every=4) if collector == "sqlite" else af.Layer(own)
    layers = (af.Layer(row, 2, backend=backend, on_error=policy, name="row"), last)
    first = af.run(range(12), *layers, checkpoint=af.Checkpoint(db, key=int))
    assert getattr(first.layer("row"), counted) == 3
    assert ledger(db) == set(range(12)) - {3, 7, 8}

    flaky.unlink()
    second = af.run(range(12), *layers, checkpoint=af.Checkpoint(db, key=int))
    assert second.layer("row").received == 3  # only the three given up on are tried again
    assert getattr(second.layer("row"), counted) == 0
    assert ledger(db) == set(range(12))
    if collector == "sqlite":
        assert sorted(i for (i,) in query(db, "SELECT id FROM results")) == list(range(12))
    else:
        assert sorted(seen) == list(range(12))
