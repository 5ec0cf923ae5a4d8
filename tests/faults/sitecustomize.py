"""Fault injection for worker subprocesses in tests (on PYTHONPATH only where a test puts it).

LAUNCHPULSE_TEST_DROP_ROUTED="P:O1,O2": the worker's agent never receives the routed envelopes at
offsets O1, O2 of partition P, the first time they come, as if Faust had fetched and dropped them.
"""
import os

_spec = os.environ.get("LAUNCHPULSE_TEST_DROP_ROUTED")
if _spec:
    import launchpulse.stream.pipeline as _pipeline

    _part, _offsets = _spec.split(":")
    _drops = {(int(_part), int(o)) for o in _offsets.split(",")}

    class _Dropping:
        """The agent's stream, less the envelopes to drop (once each)."""

        def __init__(self, stream):
            self._stream = stream

        def noack(self):
            return _Dropping(self._stream.noack())

        async def events(self):
            async for event in self._stream.events():
                key = (event.message.partition, event.message.offset)
                if key in _drops:
                    _drops.discard(key)
                    continue
                yield event

        def __getattr__(self, name):
            return getattr(self._stream, name)

    _process = _pipeline.Worker._process

    async def _process_dropping(self, stream):
        return await _process(self, _Dropping(stream))

    _pipeline.Worker._process = _process_dropping
