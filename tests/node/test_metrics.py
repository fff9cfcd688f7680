"""The Prometheus exposition, checked with prometheus_client's own parser."""

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aipg.node.metrics import Counter, Gauge, Histogram, Metric, Sample, render_exposition


def parse(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_instruments_render_and_parse_back():
    requests = Counter("http_requests_total", "Requests", ("route", "status"))
    requests.inc(route="/v1/models", status="200")
    requests.inc(2, route="/v1/models", status="200")
    requests.inc(route='/we"ird\\path\n', status="404")
    streams = Gauge("streams_open", "Open streams")
    streams.inc()
    streams.inc()
    streams.dec()
    duration = Histogram("duration_seconds", "Durations", (0.1, 1.0), ("route",))
    for value in (0.05, 0.1, 0.5, 3.0):
        duration.observe(value, route="x")
    text = render_exposition([requests.collect(), streams.collect(), duration.collect()])

    families = parse(text)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("http_requests_total", (("route", "/v1/models"), ("status", "200")))] == 3
    assert samples[("http_requests_total", (("route", '/we"ird\\path\n'), ("status", "404")))] == 1
    assert samples[("streams_open", ())] == 1
    buckets = {
        s.labels["le"]: s.value
        for s in families["duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets == {"0.1": 2, "1.0": 3, "+Inf": 4}
    assert samples[("duration_seconds_count", (("route", "x"),))] == 4
    assert samples[("duration_seconds_sum", (("route", "x"),))] == pytest.approx(3.65)
    assert families["duration_seconds"].type == "histogram"


def test_special_values_and_help_escaping():
    metrics = [
        Metric.single("a", "line one\nline two \\ end", "gauge", math.inf),
        Metric.single("b", "nan", "gauge", math.nan),
        Metric.by_label("c", "jobs", "gauge", "state", {"done": 2, "failed": 0}),
    ]
    text = render_exposition(metrics)
    assert "# HELP a line one\\nline two \\\\ end" in text
    families = parse(text)
    assert families["a"].samples[0].value == math.inf
    assert math.isnan(families["b"].samples[0].value)
    assert [(s.labels["state"], s.value) for s in families["c"].samples] == [
        ("done", 2),
        ("failed", 0),
    ]


@pytest.mark.parametrize(
    "metric",
    [
        Metric.single("bad-name", "", "gauge", 1),
        Metric.single("ok", "", "summary", 1),  # type: ignore[arg-type]
        Metric("ok", "", "gauge", (Sample(1, {"bad-label": "x"}),)),
        Metric("ok", "", "gauge", (Sample(1, {"__reserved": "x"}),)),
        Metric("ok", "", "gauge", (Sample(1, {}, "_bucket"),)),
    ],
)
def test_invalid_metrics_are_refused(metric):
    with pytest.raises(ValueError):
        render_exposition([metric])


def test_a_family_given_twice_is_refused():
    with pytest.raises(ValueError, match="twice"):
        render_exposition([Metric.single("x", "", "gauge", 1), Metric.single("x", "", "gauge", 2)])


def test_instrument_misuse_is_refused():
    counter = Counter("c_total", "", ("a",))
    with pytest.raises(ValueError):
        counter.inc(-1, a="x")
    with pytest.raises(ValueError):
        counter.inc(b="x")
    with pytest.raises(ValueError):
        Histogram("h", "", (1.0,), ("le",))
    with pytest.raises(ValueError):
        Histogram("h", "", (1.0, 1.0))
