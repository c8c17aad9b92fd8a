"""TransferSlot: where an engine keeps the one transfer service of an initialization.

The engine makes a slot at each Initialize; the service in it (llmdd.transfer's TransferService,
imported then, so `import llmdd` loads no transfer code) is made on first need: at Initialize for
an engine that listens (llm.ListenIpInfo), else at the first transfer call of either API. Making a
service runs Python code (sockets, threads), so another thread may finalize the engine meanwhile:
what happened is looked at after, and a service made too late is closed at once.
"""
from . import _desc
from ._status import LLMException, status_member

# Services of engines abandoned in a forked child: their threads, sockets and Mooncake engines are
# the parent's, which this process must never close (a shutdown would end the parent's links) nor
# destroy (Mooncake's destructor waits for threads this process does not have). Kept to its end.
_kept_in_child = []


class TransferSlot:
    """The transfer service of one initialization of an engine (held weakly: an engine dropped
    without Finalize is not kept alive by its service)."""

    __slots__ = ("options", "_engine", "_initialization", "_service", "_stopped")

    def __init__(self, engine, options):
        """options: the initialization's parsed _options.TransferOptions."""
        import weakref
        self.options = options
        self._engine = weakref.ref(engine)
        self._initialization = engine._initialization
        self._service = None
        self._stopped = False

    def _current(self):
        engine = self._engine()
        return (not self._stopped and engine is not None and engine.initialized
                and engine._initialization == self._initialization)

    def service(self):
        """The service, made on first need; LLMException(LLM_FAILED) once the initialization is over."""
        if self._service is None:
            if not self._current():
                raise LLMException("the engine was finalized", _desc.LLMStatusCode.LLM_FAILED)
            from .transfer._service import TransferService
            service = TransferService(self._engine(), self.options)
            if self._service is not None or not self._current():
                service.close()     # another thread made one, or the engine was finalized meanwhile
            else:
                self._service = service
            if self._service is None:
                raise LLMException("the engine was finalized", _desc.LLMStatusCode.LLM_FAILED)
        return self._service

    def act(self, act):
        """act(service)'s status: a C++ API call whose arguments were converted already."""
        if not self._current():
            return _desc.LLMStatusCode.LLM_FAILED
        try:
            service = self.service()
        except LLMException as error:
            return status_member(error.status_code)
        return act(service)

    def stop(self):
        """End the links and the listener (transfers under way end first); no service is made after."""
        self._stopped = True
        service, self._service = self._service, None
        if service is not None:
            service.close()

    def abandon(self):
        """In a forked child: never close nor destroy what the parent's service holds."""
        self._stopped = True
        if self._service is not None:
            self._service.abandon()
            _kept_in_child.append(self._service)
            self._service = None
