"""What a transfer moves: segments of one batch call, runs of blocks coalesced, every rule
checked before a byte moves (pure arithmetic, no processes)."""
import itertools
import random
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmdd.transfer import _plan
from llmdd.transfer._plan import (
    Layout,
    PlanError,
    Segments,
    blocks_segments,
    cache_segments,
    coalesce,
    entry_to_blocks_segments,
    shares,
    tensor_pairs,
)


def blocks_layout(num_tensors, batch, block_bytes, base=1 << 20):
    return Layout(tuple(base + t * batch * block_bytes for t in range(num_tensors)), batch * block_bytes, batch,
                  block_bytes, True)


def test_consecutive_blocks_are_one_segment_per_tensor():
    src, dst = blocks_layout(4, 16, 64), blocks_layout(4, 16, 64, base=1 << 30)
    pairs = tensor_pairs(src, dst, None, None, 2)
    segments = blocks_segments(src, dst, [3, 4, 5, 9], [0, 1, 2, 10], pairs)
    # Two runs (3..5 -> 0..2, 9 -> 10) in each of 4 tensors.
    assert len(segments.lengths) == 8
    assert segments.lengths[:2] == [3 * 64, 64]
    assert segments.src_addrs[:2] == [src.tensor_addrs[0] + 3 * 64, src.tensor_addrs[0] + 9 * 64]
    assert segments.dst_addrs[:2] == [dst.tensor_addrs[0], dst.tensor_addrs[0] + 10 * 64]
    assert segments.nbytes == 4 * 4 * 64


def test_a_run_breaks_where_either_side_jumps():
    src, dst = blocks_layout(1, 8, 16), blocks_layout(1, 8, 16, base=1 << 30)
    pairs = tensor_pairs(src, dst, None, None, 1)
    assert len(blocks_segments(src, dst, [0, 1, 2], [5, 6, 7], pairs).lengths) == 1
    assert len(blocks_segments(src, dst, [0, 1, 2], [5, 7, 6], pairs).lengths) == 3
    assert len(blocks_segments(src, dst, [0, 2, 3], [5, 6, 7], pairs).lengths) == 2


def test_layer_ranges_map_layers_to_tensor_pairs():
    src, dst = blocks_layout(6, 2, 8), blocks_layout(4, 2, 8)
    assert tensor_pairs(src, dst, range(1, 3), range(0, 2), 2) == [(2, 0), (3, 1), (4, 2), (5, 3)]
    assert tensor_pairs(src, dst, range(2, 3), range(3, 4), 1) == [(2, 3)]


@pytest.mark.parametrize("src_range, dst_range, per_layer", [
    (None, None, 2),               # 3 layers against 2
    (range(0, 5), range(0, 5), 1), # past the end of dst
    (range(1, 1), range(1, 1), 1), # empty
    (range(0, 2, 2), range(0, 1), 1),
    (range(0, 1), range(0, 1), 4), # 4 does not divide 6
    (range(0, 1), range(0, 1), 0),
])
def test_bad_layer_arguments_are_refused(src_range, dst_range, per_layer):
    src, dst = blocks_layout(6, 2, 8), blocks_layout(4, 2, 8)
    with pytest.raises(PlanError):
        tensor_pairs(src, dst, src_range, dst_range, per_layer)


def test_whole_cache_segments_take_one_entry_per_tensor():
    src = Layout((1000, 5000), 400, 4, 100, False)
    dst = Layout((9000, 9500), 300, 2, 150, False)
    segments = cache_segments(src, dst, 3, 1, -1, [(0, 0), (1, 1)])
    assert (segments.src_addrs, segments.dst_addrs, segments.lengths) == ([1300, 5300], [9150, 9650], [100, 100])
    with pytest.raises(PlanError):
        cache_segments(src, dst, 4, 0, -1, [(0, 0)])
    with pytest.raises(PlanError):
        cache_segments(src, dst, 0, 2, -1, [(0, 0)])
    with pytest.raises(PlanError):
        cache_segments(src, dst, 0, 0, 101, [(0, 0)])
    with pytest.raises(PlanError):
        cache_segments(dst, src, 0, 0, -1, [(0, 0)])   # 150 source bytes do not fit 100


def test_an_entry_is_cut_into_destination_blocks_with_a_short_last_one():
    src = Layout((1000,), 250, 1, 250, False)
    dst = blocks_layout(1, 8, 100)
    segments = entry_to_blocks_segments(src, dst, 0, [2, 3, 7], [(0, 0)])
    base = dst.tensor_addrs[0]
    assert segments.src_addrs == [1000, 1200] and segments.dst_addrs == [base + 200, base + 700]
    assert segments.lengths == [200, 50]
    with pytest.raises(PlanError):
        entry_to_blocks_segments(src, dst, 0, [1, 2, 3, 4], [(0, 0)])   # more blocks than pieces


def test_an_entry_cut_into_blocks_names_exactly_the_bytes_it_writes():
    # What a push's UNPIN names ("entry_blocks" and the entry's size): the serving side copies
    # these back from a mirror, so the short last block's tail must not be among them.
    dst = blocks_layout(1, 8, 100)
    base = dst.tensor_addrs[0]
    src = Layout((1000,), 250, 1, 250, False)
    extents = _plan.destination_extents(dst, "entry_blocks", 0, 250, [2, 3, 7], None, 1)
    assert extents == [(base + 200, 200), (base + 700, 50)]
    segments = entry_to_blocks_segments(src, dst, 0, [2, 3, 7], [(0, 0)])
    assert extents == list(zip(segments.dst_addrs, segments.lengths))
    assert _plan.destination_extents(dst, "entry_blocks", 0, -1, [2, 3, 7], None, 1) == [(base + 200, 200),
                                                                                        (base + 700, 100)]
    with pytest.raises(PlanError):
        _plan.destination_extents(dst, "entry_blocks", 0, 250, [1, 2, 3, 4], None, 1)   # more blocks than pieces


@pytest.mark.parametrize("src_blocks, dst_blocks", [([0, 1], [0]), ([], []), ([8], [0]), ([0], [-1]), ([0], [8])])
def test_bad_block_lists_are_refused(src_blocks, dst_blocks):
    src, dst = blocks_layout(1, 8, 16), blocks_layout(1, 8, 16)
    with pytest.raises(PlanError):
        blocks_segments(src, dst, src_blocks, dst_blocks, [(0, 0)])


def test_blocks_of_different_sizes_are_refused():
    with pytest.raises(PlanError):
        blocks_segments(blocks_layout(1, 8, 16), blocks_layout(1, 8, 32), [0], [0], [(0, 0)])


def test_segments_join_across_tensors_only_inside_one_region_a_side():
    # Two tensors of 100 bytes back to back on both sides: one slab joins, two regions do not.
    segments = Segments([1000, 1100], [5000, 5100], [100, 100])
    joined = coalesce(segments, ((1000, 200),), ((5000, 200),))
    assert (joined.src_addrs, joined.dst_addrs, joined.lengths) == ([1000], [5000], [200])
    apart = coalesce(segments, ((1000, 100), (1100, 100)), ((5000, 200),))
    assert apart.lengths == [100, 100]
    assert coalesce(segments, (), ()).lengths == [100, 100]   # unknown regions: nothing joins
    gap = Segments([1000, 1150], [5000, 5100], [100, 50])
    assert coalesce(gap, ((1000, 200),), ((5000, 200),)).lengths == [100, 50]


def lines_run_in_plan(call):
    """How many lines of _plan.py call() runs: the planning's work, counted without a clock."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != _plan.__file__:
            return None
        count += event == "line"
        return trace
    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(previous)
    return count


def scattered(count, region_bytes=4096):
    """`count` regions a side (a cache of `count` tensors registered one by one) and a segment in
    each, in shuffled order: segments that join none, each in a region found anywhere in the list."""
    src_regions = [((1 << 30) + k * 2 * region_bytes, region_bytes) for k in range(count)]
    dst_regions = [((1 << 40) + k * 2 * region_bytes, region_bytes) for k in range(count)]
    order = list(range(count))
    random.Random(count).shuffle(order)
    segments = Segments([src_regions[k][0] for k in order], [dst_regions[k][0] for k in order],
                        [region_bytes] * count)
    return segments, src_regions, dst_regions


def test_coalescing_work_grows_with_regions_and_segments_not_with_their_product():
    # Before: each segment's region was looked for along the whole list (16,384 regions and as
    # many segments took about 6 s). Doubling both now about doubles the work; quadratic work
    # would take four times as much.
    small, large = scattered(512), scattered(1024)
    assert len(coalesce(*large).lengths) == 1024
    assert lines_run_in_plan(lambda: coalesce(*large)) <= 2.5 * lines_run_in_plan(lambda: coalesce(*small))


def region_end_by_scan(regions, address):
    return next((start + nbytes for start, nbytes in regions if start <= address < start + nbytes), address)


@given(st.lists(st.tuples(st.integers(0, 15), st.integers(1, 4)), max_size=12),
       st.lists(st.tuples(st.integers(0, 63), st.integers(0, 63), st.integers(1, 8)), max_size=20),
       st.randoms(use_true_random=False))
def test_coalescing_joins_a_run_up_to_the_end_of_the_region_holding_its_start(cuts, pieces, shuffle):
    # Regions that never overlap, in any order: (slot, slots) cuts of 16 slots of 4 bytes.
    taken, regions = set(), []
    for slot, slots in cuts:
        if slot + slots <= 16 and not taken & set(range(slot, slot + slots)):
            taken |= set(range(slot, slot + slots))
            regions.append((100 + 4 * slot, 4 * slots))
    shuffle.shuffle(regions)
    segments = Segments([], [], [])
    for src, dst, length in pieces:   # many continue the one before on both sides
        continues = segments.lengths and src % 2
        segments.src_addrs.append(segments.src_addrs[-1] + segments.lengths[-1] if continues else 100 + src)
        segments.dst_addrs.append(segments.dst_addrs[-1] + segments.lengths[-1] if continues else 100 + dst)
        segments.lengths.append(length)
    joined = coalesce(segments, regions, regions)
    expected = Segments([], [], [])
    for src, dst, length in zip(segments.src_addrs, segments.dst_addrs, segments.lengths):
        if (expected.lengths and src == expected.src_addrs[-1] + expected.lengths[-1]
                and dst == expected.dst_addrs[-1] + expected.lengths[-1]
                and src + length <= region_end_by_scan(regions, expected.src_addrs[-1])
                and dst + length <= region_end_by_scan(regions, expected.dst_addrs[-1])):
            expected.lengths[-1] += length
        else:
            expected.src_addrs.append(src)
            expected.dst_addrs.append(dst)
            expected.lengths.append(length)
    assert (joined.src_addrs, joined.dst_addrs, joined.lengths) == \
        (expected.src_addrs, expected.dst_addrs, expected.lengths)


def test_overlapping_regions_join_a_run_only_inside_one_of_them():
    # A peer's claim may overlap: a run goes as far as the furthest region holding its start.
    segments = Segments([1000, 1100, 1200], [5000, 5100, 5200], [100, 100, 100])
    joined = coalesce(segments, ((1000, 150), (1000, 200), (1100, 200)), ((5000, 300),))
    assert (joined.src_addrs, joined.lengths) == ([1000, 1200], [200, 100])


@given(st.lists(st.integers(0, 1 << 20), max_size=40), st.integers(1, 5), st.sampled_from([1, 4096, 1 << 18]))
def test_shares_cover_every_byte_once_in_order_and_balance_bytes(lengths, parts, min_bytes):
    local = list(itertools.accumulate([1 << 40] + lengths))[:-1]
    remote = [address + (1 << 41) for address in local]
    runs = shares(local, remote, lengths, parts, min_bytes)
    pieces = [piece for run in runs for piece in zip(*run)]
    joined = coalesce(Segments([r for _, r, _ in pieces], [l for l, _, _ in pieces], [n for _, _, n in pieces]),
                      [(1 << 41, 1 << 42)], [(1 << 40, 1 << 41)])
    whole = coalesce(Segments(remote, local, list(lengths)), [(1 << 41, 1 << 42)], [(1 << 40, 1 << 41)])
    assert (joined.src_addrs, joined.dst_addrs, joined.lengths) == (whole.src_addrs, whole.dst_addrs, whole.lengths)
    total = sum(lengths)
    if not lengths:
        assert runs == []
    assert len(runs) <= max(1, min(parts, total // min_bytes))
    for _, _, run_lengths in runs:
        assert abs(sum(run_lengths) - total / len(runs)) <= 1


def test_one_large_segment_is_split_between_runs():
    runs = shares([1000], [5000], [64 << 20], 2, 256 << 10)
    assert runs == [([1000], [5000], [32 << 20]), ([1000 + (32 << 20)], [5000 + (32 << 20)], [32 << 20])]
    assert shares([1000], [5000], [4096], 2, 256 << 10) == [([1000], [5000], [4096])]
