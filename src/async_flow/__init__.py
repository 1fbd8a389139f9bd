"""async_flow: declarative, back-pressured data pipelines.

A source feeds layers of workers through bounded channels; the last layer collects. Each layer runs
on a backend (asyncio tasks, threads, processes or Ray actors) without the pipeline changing::

    import async_flow as af

    report = af.run(read_rows(), af.Layer(parse, 8), af.Layer(score, 2, backend="process"),
                    af.Layer(save))
"""

from . import sinks
from ._autoscale import Auto, ScalingEvent
from ._checkpoint import Checkpoint
from ._diagnosis import Bottleneck
from ._errors import (
    AsyncFlowError,
    CheckpointMismatch,
    ClosedChannelError,
    DuplicateKey,
    Interrupted,
    ItemTimeout,
    SerializationError,
    TooManyFailures,
    WorkerCrashed,
)
from ._helpers import batch, flatten
from ._layer import Layer
from ._limit import Limit
from ._pipeline import Stream, open_stream, pipeline, run
from ._policy import DeadLetter, Policy, Raise, Retry, Skip
from ._progress import (
    CallbackProgress,
    LayerProgress,
    LiveProgress,
    LogProgress,
    ProgressSnapshot,
    ProgressView,
)
from ._report import Failure, Report
from ._source import Merge, merge
from ._stats import LayerStats, SourceStats
from ._timeline import Timeline

__version__ = "0.1.0"

__all__ = (
    "AsyncFlowError",
    "Auto",
    "Bottleneck",
    "CallbackProgress",
    "Checkpoint",
    "CheckpointMismatch",
    "ClosedChannelError",
    "DeadLetter",
    "DuplicateKey",
    "Failure",
    "Interrupted",
    "ItemTimeout",
    "Layer",
    "LayerProgress",
    "LayerStats",
    "Limit",
    "LiveProgress",
    "LogProgress",
    "Merge",
    "Policy",
    "ProgressSnapshot",
    "ProgressView",
    "Raise",
    "Report",
    "Retry",
    "ScalingEvent",
    "SerializationError",
    "Skip",
    "SourceStats",
    "Stream",
    "Timeline",
    "TooManyFailures",
    "WorkerCrashed",
    "__version__",
    "batch",
    "flatten",
    "merge",
    "open_stream",
    "pipeline",
    "run",
    "sinks",
)
