"""Metrics: plain snapshots (:class:`Metric`), a few live instruments, and the Prometheus
text exposition format (version 0.0.4) that ``GET /metrics`` serves.

A service exposes what it measures as a list of :class:`Metric` (name, help, type and
samples); the API renders every service's list with :func:`render_exposition`. The live
instruments (:class:`Counter`, :class:`Gauge`, :class:`Histogram`) keep values by label
set and turn them into a :class:`Metric` with ``collect()``. Everything here is
single-threaded (trio) and allocation-light; there is no global registry.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "Gauge",
    "Histogram",
    "Metric",
    "MetricType",
    "Sample",
    "render_exposition",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MetricType = Literal["counter", "gauge", "histogram", "untyped"]
_TYPES = ("counter", "gauge", "histogram", "untyped")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_SUFFIXES = {"counter": ("", "_total"), "gauge": ("",), "untyped": ("",)}
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    """One value of a metric: its label set and, for histograms and ``_total`` counters,
    the suffix after the metric name (``_bucket``, ``_sum``, ``_count``, ``_total``)."""

    value: float
    labels: Mapping[str, str] = field(default_factory=dict)
    suffix: str = ""


@dataclass(frozen=True)
class Metric:
    """A snapshot of one metric family: ``name``, one line of ``help``, ``type``, samples."""

    name: str
    help: str
    type: MetricType
    samples: tuple[Sample, ...]

    @classmethod
    def single(cls, name: str, help: str, type: MetricType, value: float) -> Metric:
        """A family with one unlabelled sample (``up 1``)."""
        return cls(name, help, type, (Sample(value),))

    @classmethod
    def by_label(
        cls, name: str, help: str, type: MetricType, label: str, values: Mapping[str, float]
    ) -> Metric:
        """A family with one sample per value of one label (jobs by state ...)."""
        samples = tuple(Sample(v, {label: k}) for k, v in sorted(values.items()))
        return cls(name, help, type, samples)


def render_exposition(metrics: Iterable[Metric]) -> str:
    """The Prometheus text format of ``metrics``, families in the order given.

    Raises ValueError for an invalid metric or label name, an unknown type or suffix, or
    a family name given twice: a bug in the service that made them, never client input.
    """
    seen: set[str] = set()
    lines: list[str] = []
    for metric in metrics:
        _check_metric(metric, seen)
        lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.type}")
        lines.extend(_sample_line(metric.name, sample) for sample in metric.samples)
    return "\n".join(lines) + "\n" if lines else ""


def _check_metric(metric: Metric, seen: set[str]) -> None:
    if not _NAME.match(metric.name):
        raise ValueError(f"invalid metric name {metric.name!r}")
    if metric.name in seen:
        raise ValueError(f"metric {metric.name!r} is given twice")
    seen.add(metric.name)
    if metric.type not in _TYPES:
        raise ValueError(f"metric {metric.name!r}: unknown type {metric.type!r}")
    allowed = _HISTOGRAM_SUFFIXES if metric.type == "histogram" else _SUFFIXES[metric.type]
    for sample in metric.samples:
        if sample.suffix not in allowed:
            raise ValueError(f"metric {metric.name!r}: suffix {sample.suffix!r} not allowed")
        for name in sample.labels:
            if not _LABEL.match(name) or name.startswith("__"):
                raise ValueError(f"metric {metric.name!r}: invalid label name {name!r}")


def _sample_line(name: str, sample: Sample) -> str:
    labels = ""
    if sample.labels:
        inner = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in sample.labels.items())
        labels = "{" + inner + "}"
    return f"{name}{sample.suffix}{labels} {_format_value(sample.value)}"


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# -- live instruments ------------------------------------------------------------------


class _Family:
    """Values keyed by a fixed tuple of label names."""

    type: MetricType = "untyped"

    def __init__(self, name: str, help: str, label_names: Sequence[str] = ()) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in label_names:
            if not _LABEL.match(label):
                raise ValueError(f"invalid label name {label!r}")
        self.name = name
        self.help = help
        self.label_names = tuple(label_names)

    def _key(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(
                f"{self.name}: labels must be {sorted(self.label_names)}, got {sorted(labels)}"
            )
        return tuple(str(labels[name]) for name in self.label_names)

    def _labels(self, key: tuple[str, ...]) -> dict[str, str]:
        return dict(zip(self.label_names, key, strict=True))


class Counter(_Family):
    """A monotonically increasing count per label set (``requests_total{status="200"}``)."""

    type: MetricType = "counter"

    def __init__(self, name: str, help: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help, label_names)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` (≥ 0; ValueError otherwise) to the label set's count."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up, got {amount}")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0)

    def collect(self) -> Metric:
        samples = tuple(Sample(v, self._labels(k)) for k, v in sorted(self._values.items()))
        return Metric(self.name, self.help, self.type, samples)


class Gauge(Counter):
    """A value per label set that goes up and down (streams open ...)."""

    type: MetricType = "gauge"

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0) + amount

    def dec(self, amount: float = 1, **labels: str) -> None:
        self.inc(-amount, **labels)

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = value


class Histogram(_Family):
    """Observations counted into cumulative buckets (``le``), with their sum and count."""

    type: MetricType = "histogram"

    def __init__(
        self, name: str, help: str, buckets: Sequence[float], label_names: Sequence[str] = ()
    ) -> None:
        super().__init__(name, help, label_names)
        if "le" in self.label_names:
            raise ValueError("'le' is the bucket label of a histogram")
        bounds = sorted(float(b) for b in buckets)
        if not bounds or any(math.isnan(b) for b in bounds) or len(set(bounds)) != len(bounds):
            raise ValueError("buckets must be distinct numbers")
        self.bounds = tuple(b for b in bounds if not math.isinf(b))
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        counts = self._counts.setdefault(key, [0] * (len(self.bounds) + 1))
        counts[bisect.bisect_left(self.bounds, value)] += 1
        self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        return sum(self._counts.get(self._key(labels), ()))

    def collect(self) -> Metric:
        samples: list[Sample] = []
        for key in sorted(self._counts):
            labels = self._labels(key)
            cumulative = 0
            for bound, n in zip((*self.bounds, math.inf), self._counts[key], strict=True):
                cumulative += n
                le = "+Inf" if math.isinf(bound) else _format_value(bound)
                samples.append(Sample(cumulative, {**labels, "le": le}, "_bucket"))
            samples.append(Sample(self._sums[key], labels, "_sum"))
            samples.append(Sample(cumulative, labels, "_count"))
        return Metric(self.name, self.help, self.type, tuple(samples))
