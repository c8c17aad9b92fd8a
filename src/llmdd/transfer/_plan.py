"""What a transfer moves: the (source, destination, length) segments of one batch call.

Pure arithmetic on two layouts, so every rule is checked (and a rejected call refused) before a
byte moves. Runs of consecutive blocks become one segment per tensor: a transfer of many blocks
is one batch call with few segments, never a call per block per tensor.
"""
import bisect
import itertools
from dataclasses import dataclass


class PlanError(ValueError):
    """The arguments do not describe a transfer these two caches allow (LLM_PARAM_INVALID)."""


@dataclass(frozen=True)
class Layout:
    """One side's cache as a transfer sees it (a registry CacheEntry, or a peer's RESOLVE_REPLY)."""
    tensor_addrs: tuple
    tensor_bytes: int
    batch: int
    block_bytes: int
    is_blocks_cache: bool
    regions: tuple = ()   # (addr, nbytes) registered with Mooncake: a segment may not cross one's end

    @classmethod
    def of_entry(cls, entry):
        return cls(tuple(entry.tensor_addrs), entry.tensor_bytes, entry.batch, entry.block_bytes,
                   entry.is_blocks_cache, tuple(tuple(region) for region in entry.regions))

    @property
    def num_tensors(self):
        return len(self.tensor_addrs)


@dataclass
class Segments:
    src_addrs: list
    dst_addrs: list
    lengths: list

    @property
    def nbytes(self):
        return sum(self.lengths)


class _RegionEnds:
    """One side's regions, sorted once, so that finding the region holding an address is a
    binary search (a peer may list MAX_TENSORS regions, and a scattered transfer as many segments)."""

    def __init__(self, regions):
        ordered = sorted(regions)
        self._starts = [start for start, _ in ordered]
        # The furthest end of the regions starting at or before each: with regions that do not
        # overlap, the end of the one holding an address; with ones that do (only a peer's claim
        # may), the furthest end of those holding it.
        self._ends = list(itertools.accumulate((start + nbytes for start, nbytes in ordered), max))

    def end(self, address):
        """The end of the region holding `address`, or `address` itself when none does."""
        last = bisect.bisect_right(self._starts, address) - 1
        return self._ends[last] if last >= 0 and self._ends[last] > address else address


def coalesce(segments, src_regions, dst_regions):
    """Joins segments that continue one another on both sides, as long as the joined segment
    stays inside one region on each side (Mooncake checks each segment against one registered
    buffer). A whole cache of an allocated slab becomes one segment instead of one per tensor."""
    src_ends, dst_ends = _RegionEnds(src_regions), _RegionEnds(dst_regions)
    joined = Segments([], [], [])
    src_end = dst_end = src_limit = dst_limit = None
    for src, dst, length in zip(segments.src_addrs, segments.dst_addrs, segments.lengths):
        if src == src_end and dst == dst_end and src + length <= src_limit and dst + length <= dst_limit:
            joined.lengths[-1] += length
        else:
            joined.src_addrs.append(src)
            joined.dst_addrs.append(dst)
            joined.lengths.append(length)
            src_limit, dst_limit = src_ends.end(src), dst_ends.end(dst)
        src_end, dst_end = src + length, dst + length
    return joined


def _side_tensors(side, layout, layer_range, tensor_num_per_layer):
    """One side's layers as a step-1 range, checked against its layout (docs/facts.md section 1:
    n = tensor_num_per_layer is in [1, num_tensors] and divides num_tensors; layer i is tensors
    [i * n, (i + 1) * n); a range left None is every layer)."""
    if not 1 <= tensor_num_per_layer <= layout.num_tensors or layout.num_tensors % tensor_num_per_layer:
        raise PlanError(f"tensor_num_per_layer {tensor_num_per_layer} does not divide the {side} cache's "
                        f"{layout.num_tensors} tensors")
    num_layers = layout.num_tensors // tensor_num_per_layer
    if layer_range is None:
        layer_range = range(num_layers)
    if layer_range.step != 1 or not 0 <= layer_range.start < layer_range.stop <= num_layers:
        raise PlanError(f"{side}_layer_range {layer_range} is not a step-1 range inside the {side} cache's "
                        f"{num_layers} layers")
    return layer_range


def tensor_pairs(src, dst, src_layer_range, dst_layer_range, tensor_num_per_layer):
    """(src tensor, dst tensor) index pairs of the layers each side names; the ranges must span
    equal numbers of layers."""
    ranges = [_side_tensors("src", src, src_layer_range, tensor_num_per_layer),
              _side_tensors("dst", dst, dst_layer_range, tensor_num_per_layer)]
    if len(ranges[0]) != len(ranges[1]):
        raise PlanError(f"src_layer_range {ranges[0]} and dst_layer_range {ranges[1]} span different numbers of layers")
    n = tensor_num_per_layer
    return [(s * n + k, d * n + k) for s, d in zip(*ranges) for k in range(n)]


def destination_extents(dst, mode, batch_index, size, dst_blocks, dst_layer_range, tensor_num_per_layer):
    """The (addr, nbytes) extents of `dst` a transfer may write, from the destination's side of it
    alone: in each tensor of dst_layer_range, the batch entry batch_index (mode "cache": `size`
    bytes, -1 the whole entry) or the runs of dst_blocks ("blocks"; "entry_blocks": an entry of
    `size` bytes cut into them, the last one possibly short, or with size -1 whole blocks). No
    extent crosses a tensor. PlanError when the destination's side of the transfer breaks a rule."""
    layers = _side_tensors("dst", dst, dst_layer_range, tensor_num_per_layer)
    n = tensor_num_per_layer
    if mode == "cache":
        _check_index("destination batch index", batch_index, dst.batch)
        nbytes = dst.block_bytes if size == -1 else size
        if type(nbytes) is not int or not 0 < nbytes <= dst.block_bytes:
            raise PlanError(f"{nbytes} bytes do not fit a batch entry of the destination ({dst.block_bytes} bytes)")
        runs = [(batch_index, nbytes)]
    else:
        if not dst_blocks:
            raise PlanError("no destination blocks")
        for block in dst_blocks:
            _check_index("a block of dst_blocks", block, dst.batch)
        if mode == "entry_blocks" and size != -1:
            if type(size) is not int or not 0 < size or len(dst_blocks) > -(-size // dst.block_bytes):
                raise PlanError(f"{len(dst_blocks)} dst_blocks for an entry of {size} bytes")
            # Piece k of the entry lands in dst_blocks[k]; a run of pieces is one extent.
            runs = [(first, min(count * dst.block_bytes, size - piece * dst.block_bytes))
                    for piece, first, count in _block_runs(range(len(dst_blocks)), dst_blocks)]
        else:
            runs = [(first, count * dst.block_bytes) for first, _, count in _block_runs(dst_blocks, dst_blocks)]
    return [(dst.tensor_addrs[layer * n + k] + first * dst.block_bytes, nbytes)
            for layer in layers for k in range(n) for first, nbytes in runs]


def writes_every_extent(mode, size):
    """Whether a transfer that succeeds writes every byte of its destination_extents: blocks do,
    and so does an entry of `size` bytes (whole or cut into blocks); a whole entry (size -1) may be
    shorter than the destination's, and one cut into whole blocks may leave its last one short."""
    return mode == "blocks" or size != -1


def _check_index(name, index, limit):
    if type(index) is not int or not 0 <= index < limit:
        raise PlanError(f"{name} {index!r} is outside [0, {limit})")


def cache_segments(src, dst, src_batch_index, dst_batch_index, size, pairs):
    """One batch entry of each tensor pair: `size` bytes (-1: the whole source entry). Which
    kinds of caches may take part is the caller's rule (TransferAgent)."""
    _check_index("source batch index", src_batch_index, src.batch)
    _check_index("destination batch index", dst_batch_index, dst.batch)
    nbytes = src.block_bytes if size == -1 else size
    if type(nbytes) is not int or nbytes <= 0 or nbytes > src.block_bytes or nbytes > dst.block_bytes:
        raise PlanError(f"{nbytes} bytes do not fit a batch entry of the source ({src.block_bytes} bytes) "
                        f"and of the destination ({dst.block_bytes} bytes)")
    segments = Segments([], [], [])
    for s, d in pairs:
        segments.src_addrs.append(src.tensor_addrs[s] + src_batch_index * src.block_bytes)
        segments.dst_addrs.append(dst.tensor_addrs[d] + dst_batch_index * dst.block_bytes)
        segments.lengths.append(nbytes)
    return segments


def _block_runs(src_blocks, dst_blocks):
    """(first src block, first dst block, count) runs of pairs that advance together by one."""
    runs = []
    for s, d in zip(src_blocks, dst_blocks):
        if runs and s == runs[-1][0] + runs[-1][2] and d == runs[-1][1] + runs[-1][2]:
            runs[-1][2] += 1
        else:
            runs.append([s, d, 1])
    return runs


def blocks_segments(src, dst, src_blocks, dst_blocks, pairs):
    """Block src_blocks[k] to block dst_blocks[k] of each tensor pair (a block: one batch entry)."""
    if not dst_blocks or len(src_blocks) != len(dst_blocks):
        raise PlanError(f"src_blocks ({len(src_blocks)}) and dst_blocks ({len(dst_blocks)}) must be "
                        "non-empty and equally long")
    if src.block_bytes != dst.block_bytes:
        raise PlanError(f"block sizes differ: source {src.block_bytes} bytes, destination {dst.block_bytes}")
    for name, blocks, layout in (("src_blocks", src_blocks, src), ("dst_blocks", dst_blocks, dst)):
        for block in blocks:
            _check_index(f"a block of {name}", block, layout.batch)
    block_bytes = src.block_bytes
    runs = _block_runs(src_blocks, dst_blocks)
    segments = Segments([], [], [])
    for s, d in pairs:
        src_base, dst_base = src.tensor_addrs[s], dst.tensor_addrs[d]
        for src_block, dst_block, count in runs:
            segments.src_addrs.append(src_base + src_block * block_bytes)
            segments.dst_addrs.append(dst_base + dst_block * block_bytes)
            segments.lengths.append(count * block_bytes)
    return segments


def shares(local_addrs, remote_addrs, lengths, parts, min_bytes):
    """The segments cut into at most `parts` runs of about equal bytes, in order, a segment split
    where a run ends: a list of (local_addrs, remote_addrs, lengths) lists, one a run. No run is
    made under `min_bytes` (a small transfer takes fewer runs), and none for no segments."""
    ends = list(itertools.accumulate(lengths))
    if not ends:
        return []
    total = ends[-1]
    parts = max(1, min(parts, total // min_bytes))
    runs = []
    first, offset = 0, 0    # the next run starts `offset` bytes into segment `first`
    for part in range(1, parts + 1):
        end = total * part // parts
        last = len(lengths) - 1 if part == parts else bisect.bisect_left(ends, end)   # the segment it ends in
        inside = end - (ends[last] - lengths[last])     # bytes of that segment before the run's end
        run_local = list(local_addrs[first:last + 1])
        run_remote = list(remote_addrs[first:last + 1])
        run_lengths = list(lengths[first:last + 1])
        run_local[0] += offset
        run_remote[0] += offset
        run_lengths[0] -= offset
        run_lengths[-1] -= lengths[last] - inside
        runs.append((run_local, run_remote, run_lengths))
        first, offset = (last + 1, 0) if inside == lengths[last] else (last, inside)
    return runs


def entry_to_blocks_segments(src, dst, src_batch_index, dst_blocks, pairs):
    """A cache's batch entry into blocks (pull_blocks with a CacheKey): the entry cut into
    destination-sized blocks, piece k into dst_blocks[k]; the last piece may be short. There may
    be fewer destination blocks than pieces (the tail is not moved), never more."""
    _check_index("source batch index", src_batch_index, src.batch)
    pieces = -(-src.block_bytes // dst.block_bytes)
    if not dst_blocks or len(dst_blocks) > pieces:
        raise PlanError(f"{len(dst_blocks)} dst_blocks for an entry of {pieces} blocks")
    for block in dst_blocks:
        _check_index("a block of dst_blocks", block, dst.batch)
    # Pieces are consecutive in the source, so a run of consecutive destination blocks is one segment.
    runs = _block_runs(range(len(dst_blocks)), dst_blocks)
    segments = Segments([], [], [])
    for s, d in pairs:
        entry = src.tensor_addrs[s] + src_batch_index * src.block_bytes
        for first_piece, first_block, count in runs:
            offset = first_piece * dst.block_bytes
            segments.src_addrs.append(entry + offset)
            segments.dst_addrs.append(dst.tensor_addrs[d] + first_block * dst.block_bytes)
            segments.lengths.append(min(count * dst.block_bytes, src.block_bytes - offset))
    return segments
