"""How a side writes its bytes into memory its peer exposed for one transfer: through the peer's
IPC exports when it sent some (the same-host path, _same_host), else with Mooncake writes. The
serving side of a pull and the pushing side of a push both write this way."""
import contextlib
import logging

from .._desc import LLMStatusCode

log = logging.getLogger("llmdd.transfer")


def write_segments(segments, exported, same_host, engine, peer_engine, source_regions):
    """The status of writing `segments` (_plan.Segments: our addresses -> the peer's). exported:
    the peer's [[start, nbytes, key], ...] or None; same_host: ours (a SameHostMemory) or None;
    engine: our MooncakeEngines, or None once the agent closed."""
    if exported is not None:
        if same_host is None:
            return LLMStatusCode.LLM_PARAM_INVALID   # the peer sent keys to a side that takes none
        status, imported = same_host.imported(exported)
        if imported is None:
            return status
        try:
            destinations = imported.translated(segments.dst_addrs, segments.lengths)
            if destinations is None:
                return LLMStatusCode.LLM_PARAM_INVALID   # a segment beyond what the peer exported
            if not same_host.copy(destinations, segments.src_addrs, segments.lengths):
                log.warning("copying %d bytes into the peer's IPC memory failed", segments.nbytes)
                return LLMStatusCode.LLM_FAILED
        finally:
            imported.close()
        return LLMStatusCode.LLM_SUCCESS
    if engine is None:
        return LLMStatusCode.LLM_LINK_FAILED
    with contextlib.ExitStack() as hold:
        # Over tcp Mooncake reads a local source by address; other transports need it registered.
        if engine.needs_local_registration:
            window = engine.expose(source_regions)
            if window is None:
                return LLMStatusCode.LLM_FAILED
            hold.callback(window.close)
        if engine.write(peer_engine, segments.src_addrs, segments.dst_addrs, segments.lengths) != 0:
            log.warning("Mooncake write of %d bytes to %s failed", segments.nbytes, peer_engine)
            return LLMStatusCode.LLM_LINK_FAILED
    return LLMStatusCode.LLM_SUCCESS
