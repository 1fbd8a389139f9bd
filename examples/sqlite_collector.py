"""Generator -> scaled workers -> SQLite collector, resumable.

Fingerprints a stream of generated documents on four threads and stores one row per document in
SQLite. The run is checkpointed in the same database: stop it at any point (Ctrl-C, or even
``kill -9``) and start it again, and it does only the documents not yet stored, each exactly once.

    python examples/sqlite_collector.py results.db --documents 5000
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator
from typing import Any

import async_flow as af


def documents(count: int) -> Iterator[dict[str, Any]]:
    """The source: a generator, read lazily and back-pressured by the pipeline."""
    for n in range(count):
        words = " ".join(f"w{(n * 7 + k) % 101}" for k in range(20 + n % 30))
        yield {"name": f"doc-{n:06d}", "text": words}


def fingerprint(doc: dict[str, Any]) -> dict[str, Any]:
    """The expensive middle: one result row per document."""
    digest = hashlib.sha256(doc["text"].encode()).hexdigest()
    return {"name": doc["name"], "words": len(doc["text"].split()), "sha256": digest}


def main(argv: list[str] | None = None) -> af.Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", help="SQLite file for the results and the checkpoint")
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)

    report = af.run(
        documents(args.documents),
        af.Layer(fingerprint, args.workers),
        af.sinks.sqlite(args.database, table="documents", key="name"),
        checkpoint=af.Checkpoint(args.database, key=lambda doc: doc["name"]),
    )
    print(report)
    print(f"{report.layers[0].received} new documents, {report.source.produced} in the source")
    return report


if __name__ == "__main__":
    main()
