"""Server metrics: counted in plain attributes while serving, summed across workers by the supervisor,
shown in the Prometheus text format on their own listener (and through an OpenTelemetry meter on
request). The parts, in the order a count travels:

    instruments.py   what is measured: Kestrel's instrument names and OpenTelemetry's HTTP conventions
    recorder.py      Metrics: the per-process counters the protocols update, and its snapshot
    snapshot.py      snapshots as one line of JSON, and the supervisor's sum over its workers
    exposition.py    the Prometheus text format 0.0.4
    listener.py      the /metrics listener: an asyncio one (one server) and a select() one (the supervisor)
    otel.py          the same counts through an OpenTelemetry meter, when opentelemetry-api is installed

Modules of this package import each other directly, never through this file.
"""
