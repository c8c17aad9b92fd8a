"""EngineServices: the Python-side services of one initialization of an engine, each made on
first need: its cache registry (_registry) and its one transfer service (llmdd.transfer).

The engine makes an EngineServices at each Initialize, before it says it is initialized; the
registry and the service are imported and made only when first needed, so `import llmdd` loads
neither. The service is made at Initialize for an engine that listens (llm.ListenIpInfo), else
at the first transfer call of either API (the C++ API's and the drop-in's); SetRole, which starts,
moves or stops the listener, makes it anew.
"""
from _thread import RLock   # threading's own lock, without importing threading
from _weakref import ref as weak_ref

from . import _desc
from ._status import LLMException

# Services of engines abandoned in a forked child: their threads, sockets and Mooncake engines are
# the parent's, which this process must never close (a shutdown would end the parent's links) nor
# destroy (Mooncake's destructor waits for threads this process does not have). Kept to its end.
_kept_in_child = []


class EngineServices:
    """One initialization's registry and transfer service. The engine is held weakly: an engine
    dropped without Finalize is not kept alive by its service."""

    __slots__ = ("options", "initialization", "_engine", "_registry", "_service", "_stopped", "_making")

    def __init__(self, engine, options):
        """options: the initialization's parsed _options.TransferOptions. The engine sets
        `initialization` when it is set up."""
        self.options = options
        self.initialization = None
        self._engine = weak_ref(engine)
        self._registry = None
        self._service = None
        self._stopped = False
        # One registry and one service are made, each once; stop() waits for a service being made.
        # Re-entrant: a Finalize that runs on the making thread (a collection, a signal) must not hang.
        self._making = RLock()

    def _current_engine(self):
        engine = self._engine()
        if (self._stopped or engine is None or not engine.initialized
                or engine._initialization != self.initialization):
            raise LLMException("the engine was finalized", _desc.LLMStatusCode.LLM_FAILED)
        return engine

    def registry(self):
        """The initialization's CacheRegistry."""
        with self._making:
            if self._registry is None:
                from ._registry import CacheRegistry
                self._registry = CacheRegistry(self._current_engine(), self._serves_by_id(),
                                               self.options.remote_cache_accessible)
            return self._registry

    def service(self):
        """The transfer service; LLMException(LLM_FAILED) once the initialization is over."""
        with self._making:
            if self._service is None:
                from .transfer._service import TransferService
                service = TransferService(self._current_engine(), self.options, self.registry())
                if self._stopped:   # a Finalize ran meanwhile, on this thread
                    service.close()
                else:
                    self._service = service
            # A Finalize on another thread waits for the making, then closes the service.
            self._current_engine()
            return self._service

    def listen(self, listen_ip_info):
        """SetRole's status: serve linking peers on listen_ip_info ("ip:port") from now on, or on
        nothing (None). LLM_EXIST_LINK while any link, made either way, is up (docs/facts.md section 1),
        or a rank-table comm is being linked; the same address again changes nothing. A new address
        takes a new service: with no link there is nothing of the old one to keep."""
        with self._making:
            try:
                self._current_engine()
            except LLMException as error:
                return error.status_code
            service = self._service
            if service is not None and (service.agent.linked_clusters() or service.rank_table_links.has_comms()):
                return _desc.LLMStatusCode.LLM_EXIST_LINK
            if listen_ip_info == self.options.listen_ip_info:
                return _desc.LLMStatusCode.LLM_SUCCESS
            self._service = None
            if service is not None:
                service.close()
            self._listen_on(listen_ip_info)
            if listen_ip_info is None:
                return _desc.LLMStatusCode.LLM_SUCCESS
            try:
                self.service()
            except LLMException as error:   # nothing listens then, as after CANN's failed restart
                self._listen_on(None)
                return error.status_code
            return _desc.LLMStatusCode.LLM_SUCCESS

    def _listen_on(self, listen_ip_info):
        """The address the next service listens on, and the registry's rule that follows from it."""
        self.options.listen_ip_info = listen_ip_info
        if self._registry is not None:
            self._registry.serves_by_id = self._serves_by_id()

    def _serves_by_id(self):
        """Whether peers may name the engine's other caches by id: it listens, or opened them to
        remote access."""
        return self.options.listen_ip_info is not None or self.options.remote_cache_accessible

    def act(self, act):
        """act(service)'s status: a C++ API call whose arguments were converted already."""
        try:
            service = self.service()
        except LLMException as error:
            return error.status_code
        return act(service)

    def stop(self):
        """End the links and the listener (transfers under way end first); no service is made after."""
        self._stopped = True
        with self._making:
            service, self._service = self._service, None
        if service is not None:
            service.close()

    def abandon(self):
        """In a forked child: never close nor destroy what the parent's service holds. The lock is
        made anew: a thread of the parent may have held it at the fork."""
        self._making = RLock()
        self._stopped = True
        if self._service is not None:
            self._service.abandon()
            _kept_in_child.append(self._service)
            self._service = None
