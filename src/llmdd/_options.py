"""Initialize's options: LLM-DataDist's string-to-string map, checked and turned into settings.

Keys and their rules are in docs/facts.md section 4. Keys this module does not
know are ignored, as the C++ library ignores them. A malformed value of a known key is
LLM_PARAM_INVALID; a Python value that is not a str is a TypeError.
"""
import os

from . import _desc
from ._limits import INT32, UINT32

# The option keys, each written once: the engine's (Initialize) and those CANN's Python package
# emits (LLMConfig.generate_options), which the drop-in reads.
DEVICE_ID_KEYS = ("llm.DeviceId", "ge.exec.deviceId")
SESSION_DEVICE_ID = "ge.session_device_id"
SYNC_KV_WAIT_TIME = "llm.SyncKvCacheWaitTime"
# The C++ API spells it llm.ListenIpInfo, CANN's Python package llm.listenIpInfo: both are taken.
LISTEN_IP_INFO_KEYS = ("llm.ListenIpInfo", "llm.listenIpInfo")
LISTEN_IP_INFO, PY_LISTEN_IP_INFO = LISTEN_IP_INFO_KEYS
ENABLE_SWITCH_ROLE = "llm.EnableSwitchRole"
ENABLE_CACHE_MANAGER = "llm.EnableCacheManager"
MEM_POOL_CONFIG = "llm.MemPoolConfig"
HOST_MEM_POOL_CONFIG = "llm.HostMemPoolConfig"
BUF_POOL_CFG = "llm.BufPoolCfg"
ENABLE_REMOTE_CACHE_ACCESSIBLE = "llm.EnableRemoteCacheAccessible"
LOCAL_COMM_RES = "llm.LocalCommRes"
TRANSFER_BACKEND = "llm.TransferBackend"
FLOW_GRAPH_MEM_MAX_SIZE = "ge.flowGraphMemMaxSize"
DEPLOY_RES_PATH = "llm.deployResPath"
CLUSTER_INFO = "llm.ClusterInfo"
LINK_TOTAL_TIME = "llm.LinkTotalTime"
LINK_RETRY_COUNT = "llm.LinkRetryCount"
RDMA_TRAFFIC_CLASS = "llm.RdmaTrafficClass"
RDMA_SERVICE_LEVEL = "llm.RdmaServiceLevel"
# What Mooncake's rdma transport takes for them (config.cpp ignores, with a log line, a value
# outside): over llmdd.TransferProtocol rdma, a value outside is LLM_PARAM_INVALID.
RDMA_TRAFFIC_CLASSES = (0, 255)
RDMA_SERVICE_LEVELS = (0, 15)
GLOBAL_RESOURCE_CONFIG = "llm.GlobalResourceConfig"
OUTPUT_MAX_SIZE = "llm.OutputMaxSize"
MEMORY_UTILIZATION = "llm.MemoryUtilization"
# llmdd's own options live in the llmdd namespace.
TENSOR_ALIGNMENT = "llmdd.TensorAlignment"
MALLOC_POLICY = "llmdd.MallocPolicy"
TRANSFER_PROTOCOL = "llmdd.TransferProtocol"   # Mooncake's: "tcp" (default), "rdma", "ascend"
TRANSFER_DEVICE = "llmdd.TransferDevice"       # the device name the protocol needs, if any
TRANSFER_PROTOCOLS = ("tcp", "rdma", "ascend")
# The secret both sides of a link prove they hold (docs/security.md); when the option is absent,
# the environment variable, so that a drop-in user sets it without touching the code.
LINK_SECRET = "llmdd.LinkSecret"
LINK_SECRET_VARIABLE = "LLMDD_LINK_SECRET"
# Which path a transfer's bytes take: "auto" (the runtime's IPC memory when the peer is on this
# host, else Mooncake) or "network" (always Mooncake).
TRANSFER_PATH = "llmdd.TransferPath"
TRANSFER_PATHS = ("auto", "network")
# "1": Mooncake runs in the engine's process rather than in a data-plane helper process, for those
# who accept that its ports then bind every interface and a malformed message to them aborts the
# process (docs/transfer.md, "The data plane").
MOONCAKE_IN_PROCESS = "llmdd.MooncakeInProcess"
# The port of a rank table's rank that has no device_port: this plus its device_id (docs/transfer.md,
# "Rank-table links"). Below Linux's ephemeral ports, so that no outgoing connection holds it.
RANK_TABLE_PORT = "llmdd.RankTablePort"
DEFAULT_RANK_TABLE_PORT = 24600
# How long a rank-table link may take, in seconds: CANN's wait when llm.LinkTotalTime is unset or
# not positive (comm_link_manager.cc).
DEFAULT_LINK_TOTAL_S = 30
LINK_RETRY_COUNTS = (1, 100)
DEFAULT_SYNC_KV_WAIT_MS = 1000                 # LLM-DataDist's default wait for a transfer's peer

DEFAULT_TENSOR_ALIGNMENT = 512  # LLM-DataDist v1 aligns every tensor to 512 bytes
MIN_TENSOR_ALIGNMENT = 512
MAX_TENSOR_ALIGNMENT = 1 << 30
# Pool pages: 2**page_shift bytes, page_shift in [10, 31), default 16 (docs/facts.md section 5).
DEFAULT_PAGE_SHIFT = 16
MIN_PAGE_SHIFT = 10
MAX_PAGE_SHIFT = 30
MAX_POOL_PAGES = (1 << 32) - 1
# aclrtMemMallocPolicy values (docs/facts.md section 7), by the names llmdd.MallocPolicy takes.
MALLOC_POLICIES = {"huge_first": 0, "huge_only": 1, "normal_only": 2}
MAX_JSON_OPTION_LENGTH = 65536


class OptionError(Exception):
    """A known option with a malformed value: Initialize answers LLM_PARAM_INVALID."""

    @property
    def status_code(self):
        return _desc.LLMStatusCode.LLM_PARAM_INVALID   # built on first use: the drop-in imports these keys


class EngineOptions:
    """What Initialize takes from its options."""

    __slots__ = ("device_id", "tensor_alignment", "malloc_policy", "device_pool", "host_pool", "cache_manager_mode",
                 "transfer")

    def __init__(self):
        self.device_pool = None  # PoolConfig, or None: one runtime allocation per cache
        self.host_pool = None    # PoolConfig, or None: no host caches
        self.device_id = 0
        self.tensor_alignment = DEFAULT_TENSOR_ALIGNMENT
        self.malloc_policy = MALLOC_POLICIES["huge_first"]
        self.cache_manager_mode = False  # LLM-DataDist v2: cache ids count from 1 in each engine
        self.transfer = TransferOptions()


class TransferOptions:
    """What the engine's transfer service takes (links, pulls and pushes)."""

    __slots__ = ("listen_ip_info", "sync_timeout_ms", "protocol", "device_name", "remote_cache_accessible",
                 "link_secret", "transfer_path", "mooncake_in_process", "link_total_s", "rank_table_port",
                 "rdma_traffic_class", "rdma_service_level")

    def __init__(self):
        self.listen_ip_info = None     # "ip:port" to serve linking peers on, or None
        self.sync_timeout_ms = DEFAULT_SYNC_KV_WAIT_MS
        self.protocol = "tcp"
        self.device_name = ""
        self.remote_cache_accessible = False
        self.link_secret = None        # a str both sides of a link must hold, or None: anyone may link
        self.transfer_path = "auto"    # one of TRANSFER_PATHS
        self.mooncake_in_process = False
        self.link_total_s = DEFAULT_LINK_TOTAL_S   # how long a rank-table link may take
        self.rank_table_port = DEFAULT_RANK_TABLE_PORT
        self.rdma_traffic_class = None   # an int Mooncake's engines take over rdma, or None: Mooncake's own
        self.rdma_service_level = None


class PoolConfig:
    """A memory pool: memory_size bytes in pages of 2**page_shift bytes."""

    __slots__ = ("memory_size", "page_shift")

    def __init__(self, memory_size, page_shift):
        self.memory_size = memory_size
        self.page_shift = page_shift


def parse_json_object(text, key):
    import json  # only when a JSON option is given: keeps `import llmdd` light

    # LLM-DataDist's JSON options are a few fields deep and well under a kilobyte: anything
    # far larger, or nested deeper than the parser's recursion limit, is malformed.
    if len(text) > MAX_JSON_OPTION_LENGTH:
        raise OptionError(f"{key} is {len(text)} characters long; at most {MAX_JSON_OPTION_LENGTH} are accepted")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise OptionError(f"{key}={text[:80]!r} is not JSON") from None
    if not isinstance(value, dict):
        raise OptionError(f"{key} must be a JSON object")
    return value


def json_integer(config, field, key):
    value = config[field]
    if type(value) is not int:
        raise OptionError(f"{key}: {field} must be an integer, got {value!r}")
    return value


def parse_pool_config(text, key):
    """{"memory_size": bytes, "page_shift": n}: page_shift optional, in [10, 31), default 16;
    memory_size >> page_shift in [1, 2**32) (docs/facts.md section 5)."""
    config = parse_json_object(text, key)
    if "memory_size" not in config:
        raise OptionError(f"{key} has no memory_size")
    memory_size = json_integer(config, "memory_size", key)
    page_shift = json_integer(config, "page_shift", key) if "page_shift" in config else DEFAULT_PAGE_SHIFT
    if not MIN_PAGE_SHIFT <= page_shift <= MAX_PAGE_SHIFT:
        raise OptionError(f"{key}: page_shift {page_shift} is outside [{MIN_PAGE_SHIFT}, {MAX_PAGE_SHIFT}]")
    if memory_size <= 0 or not 1 <= memory_size >> page_shift <= MAX_POOL_PAGES:
        raise OptionError(f"{key}: memory_size {memory_size} is not 1 to 2**32-1 pages of {1 << page_shift} bytes")
    return PoolConfig(memory_size, page_shift)


def parse_decimal(text, key, low, high):
    """A plain decimal integer in [low, high]: ASCII digits only, no sign, no spaces."""
    if not (text.isascii() and text.isdigit()) or len(text) > 20:
        raise OptionError(f"{key}={text!r} is not a decimal integer")
    value = int(text)
    if not low <= value <= high:
        raise OptionError(f"{key}={text!r} is outside [{low}, {high}]")
    return value


def parse_number(text, key, low, high):
    """A decimal integer in [low, high], signed where low < 0: what CANN reads with a C++ stream
    into an int32 or uint32 (llm_utils.h ToNumber), without its leading spaces."""
    digits = text[1:] if low < 0 and text[:1] in ("-", "+") else text
    value = parse_decimal(digits, key, 0, max(high, -low))
    value = -value if text[:1] == "-" else value
    if not low <= value <= high:
        raise OptionError(f"{key}={text!r} is outside [{low}, {high}]")
    return value


def parse_link_options(options, transfer):
    """CANN's link options (comm_link_manager.cc Initialize) into `transfer`, whose protocol is
    parsed already: llm.LinkTotalTime an int32 (seconds; not positive: the default),
    llm.LinkRetryCount one in [1, 100], the RDMA traffic class and service level uint32s, which
    over rdma must also lie in what Mooncake takes (docs/transfer.md); and llmdd.RankTablePort."""
    if LINK_TOTAL_TIME in options:
        total_s = parse_number(options[LINK_TOTAL_TIME], LINK_TOTAL_TIME, *INT32)
        transfer.link_total_s = total_s if total_s > 0 else DEFAULT_LINK_TOTAL_S
    if LINK_RETRY_COUNT in options:
        retry_count = parse_number(options[LINK_RETRY_COUNT], LINK_RETRY_COUNT, *INT32)
        if not LINK_RETRY_COUNTS[0] <= retry_count <= LINK_RETRY_COUNTS[1]:
            raise OptionError(f"{LINK_RETRY_COUNT}={retry_count} is outside {list(LINK_RETRY_COUNTS)}")
    for key, attribute, mooncake_bounds in ((RDMA_TRAFFIC_CLASS, "rdma_traffic_class", RDMA_TRAFFIC_CLASSES),
                                            (RDMA_SERVICE_LEVEL, "rdma_service_level", RDMA_SERVICE_LEVELS)):
        if key in options:
            value = parse_number(options[key], key, 0, UINT32[1])
            if transfer.protocol == "rdma" and not mooncake_bounds[0] <= value <= mooncake_bounds[1]:
                raise OptionError(f"{key}={value} is outside {list(mooncake_bounds)}, what Mooncake's rdma "
                                  "transport takes")
            setattr(transfer, attribute, value)
    if RANK_TABLE_PORT in options:
        transfer.rank_table_port = parse_decimal(options[RANK_TABLE_PORT], RANK_TABLE_PORT, 1, 65535)


def parse_ip_port(text, key):
    """'a.b.c.d:port' with a dotted IPv4 address and a port in [0, 65535]."""
    host, colon, port = text.rpartition(":")
    parts = host.split(".")
    if not colon or len(parts) != 4:
        raise OptionError(f"{key}={text!r} is not 'ip:port'")
    for part in parts:
        if len(part) > 1 and part.startswith("0"):
            raise OptionError(f"{key}={text!r}: an address part has a leading zero")
        parse_decimal(part, key, 0, 255)
    return host, parse_decimal(port, key, 0, 65535)


def parse_link_secret(options):
    """llmdd.LinkSecret, else $LLMDD_LINK_SECRET, else None. An empty option is malformed (a
    secret meant and lost on the way); an empty variable counts as unset, as shells treat it."""
    if LINK_SECRET in options:
        if not options[LINK_SECRET]:
            raise OptionError(f"{LINK_SECRET} is empty")
        return options[LINK_SECRET]
    return os.environ.get(LINK_SECRET_VARIABLE) or None


def parse_listen_ip_info(options):
    """The 'ip:port' an engine serves linking peers on (either spelling of the key), or None."""
    listen_ip_infos = {options[key] for key in LISTEN_IP_INFO_KEYS if key in options}
    if len(listen_ip_infos) > 1:
        raise OptionError(f"{' and '.join(LISTEN_IP_INFO_KEYS)} name different addresses")
    if not listen_ip_infos:
        return None
    # An exact str: SetRole compares it while it holds the engine's services, where a subclass's
    # __eq__ calling back into the engine could start a listener that nothing ever closes.
    listen_ip_info = str.__str__(listen_ip_infos.pop())
    parse_ip_port(listen_ip_info, LISTEN_IP_INFO)
    return listen_ip_info


def _check_option_types(options):
    if not hasattr(options, "items"):
        raise TypeError(f"options must be a dict of str to str, not {type(options).__name__}")
    for key, value in options.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"options must map str to str, got {key!r}: {value!r}")


def parse_role_options(options):
    """SetRole's map: the 'ip:port' to serve linking peers on from then on, or None to serve none;
    OptionError for a malformed address. Its other keys are ignored, as the C++ library ignores them."""
    _check_option_types(options)
    return parse_listen_ip_info(options)


def parse_options(options):
    """EngineOptions from Initialize's map; OptionError for a malformed known value."""
    _check_option_types(options)
    parsed = EngineOptions()
    device_ids = {parse_decimal(options[key], key, 0, INT32[1]) for key in DEVICE_ID_KEYS if key in options}
    if len(device_ids) > 1:
        raise OptionError(f"{' and '.join(DEVICE_ID_KEYS)} name different devices")
    if device_ids:
        parsed.device_id = device_ids.pop()
    if SYNC_KV_WAIT_TIME in options:
        parsed.transfer.sync_timeout_ms = parse_decimal(options[SYNC_KV_WAIT_TIME], SYNC_KV_WAIT_TIME, 1, INT32[1])
    parsed.transfer.listen_ip_info = parse_listen_ip_info(options)
    if TRANSFER_PROTOCOL in options:
        if options[TRANSFER_PROTOCOL] not in TRANSFER_PROTOCOLS:
            raise OptionError(f"{TRANSFER_PROTOCOL}={options[TRANSFER_PROTOCOL]!r} is not one of "
                              f"{', '.join(TRANSFER_PROTOCOLS)}")
        parsed.transfer.protocol = options[TRANSFER_PROTOCOL]
    if TRANSFER_DEVICE in options:
        parsed.transfer.device_name = options[TRANSFER_DEVICE]
    parsed.transfer.link_secret = parse_link_secret(options)
    parse_link_options(options, parsed.transfer)
    if TRANSFER_PATH in options:
        if options[TRANSFER_PATH] not in TRANSFER_PATHS:
            raise OptionError(f"{TRANSFER_PATH}={options[TRANSFER_PATH]!r} is not one of {', '.join(TRANSFER_PATHS)}")
        parsed.transfer.transfer_path = options[TRANSFER_PATH]
    for switch in (ENABLE_SWITCH_ROLE, ENABLE_CACHE_MANAGER, ENABLE_REMOTE_CACHE_ACCESSIBLE, MOONCAKE_IN_PROCESS):
        if switch in options and options[switch] not in ("0", "1"):
            raise OptionError(f"{switch}={options[switch]!r} is not '0' or '1'")
    parsed.cache_manager_mode = options.get(ENABLE_CACHE_MANAGER) == "1"
    parsed.transfer.remote_cache_accessible = options.get(ENABLE_REMOTE_CACHE_ACCESSIBLE) == "1"
    parsed.transfer.mooncake_in_process = options.get(MOONCAKE_IN_PROCESS) == "1"
    if MEM_POOL_CONFIG in options:
        parsed.device_pool = parse_pool_config(options[MEM_POOL_CONFIG], MEM_POOL_CONFIG)
    if HOST_MEM_POOL_CONFIG in options:
        parsed.host_pool = parse_pool_config(options[HOST_MEM_POOL_CONFIG], HOST_MEM_POOL_CONFIG)
    if BUF_POOL_CFG in options:
        # v1's transfer buffer pool: checked for form, unused by allocation.
        parse_json_object(options[BUF_POOL_CFG], BUF_POOL_CFG)
    if TENSOR_ALIGNMENT in options:
        alignment = parse_decimal(options[TENSOR_ALIGNMENT], TENSOR_ALIGNMENT, MIN_TENSOR_ALIGNMENT,
                                  MAX_TENSOR_ALIGNMENT)
        if alignment & (alignment - 1):
            raise OptionError(f"{TENSOR_ALIGNMENT}={alignment} is not a power of two")
        parsed.tensor_alignment = alignment
    if MALLOC_POLICY in options:
        policy = options[MALLOC_POLICY]
        if policy not in MALLOC_POLICIES:
            raise OptionError(f"{MALLOC_POLICY}={policy!r} is not one of {', '.join(MALLOC_POLICIES)}")
        parsed.malloc_policy = MALLOC_POLICIES[policy]
    return parsed
