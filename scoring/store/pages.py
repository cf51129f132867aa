"""The document store: token embeddings kept where the MaxSim kernel reads them, in fixed-size pages of one arena.

One arena a scorer (GPU memory on CUDA, host memory on CPU) of `page_tokens`-row pages; a document takes
ceil(L / page_tokens) pages anywhere in it, so eviction never fragments the arena. Its page numbers sit one after
another in a page list (`log`, host and device copies), and the kernel reads document b as (start in the page list,
length): a stored document costs no gather and no copy when it is scored (`kernels.maxsim.maxsim_paged`).

- Keys: the content key the scorer deployment uses (`scoring.store.cache.content_key`); `None` for a document scored once
  and not kept (the arena still holds it while its call runs).
- LRU over entries, bounded in bytes (`capacity_bytes`, pages × page bytes); the arena has `headroom_bytes` more,
  for documents of calls in flight beyond what is kept. Recency is a stamp an entry (numpy, no Python frame per
  document); eviction takes the least recent entries, in batches, from a queue built in stamp order, skipping
  entries used since (they are newer than all the others).
- Pins: `lookup` and `insert` pin the entries they return and `release` unpins them; a pinned entry is never evicted,
  so a launch never reads a page that was given to another document.
- Writes: one `insert` per batch of encoder outputs: their packed buffers go through a small ring of pinned slots
  into one device staging buffer (one host-to-device copy stream, overlapping the host-side copy; the buffers of
  several encoder calls share a slot) and one kernel writes every page (`kernels.maxsim.write_pages`), quantising
  on the way for compressed storage. The host does not wait for a write: what reads the pages is issued after it.
- Storage dtypes: float16, bfloat16, float32, and float8_e4m3 / int8 with one float32 scale per token (row / scale
  stored, scale = amax|row| / 448 or / 127).

On CUDA every write and every launch runs on the store's one stream (the device's default stream), in the order
the host issues them, and the host issues them under one lock (`lock`), so a page list rewritten by a compaction is
only read by launches issued after it.
"""
from __future__ import annotations

import collections
import itertools
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import torch

from kernels import maxsim as kmaxsim
from scoring.errors import Overloaded
from scoring.store.cache import CacheStats

# The encoders' outputs come out of Ray's object store read-only, and torch warns on wrapping read-only memory
# (writing through the tensor would be undefined). The store and the scorer only read what they wrap: not shown.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning,
                        module=r"scoring\.store\.(pages|maxsim)$")

STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                  "float8_e4m3": torch.float8_e4m3fn, "int8": torch.int8}
PAGE_TOKENS = 16  # rows a page: a 300-token document wastes 4 rows (1.3%), a 1-row one 15
_FIRST_CHUNK_BYTES = 2 << 20  # host staging and the host-to-device copies proceed in chunks: a small first one,
_STAGE_CHUNK_BYTES = 8 << 20  # then chunks of this size
_RING_SLOTS = 4  # pinned staging slots of _STAGE_CHUNK_BYTES, reused round-robin (v8: 3-6 slots within noise)
INTEGER_VIEWS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float8_e4m3fn: torch.uint8, torch.int8: torch.int8}  # same-size integer views, for CPU copies
_CPU_WRITE_ROWS = 8192  # rows a CPU write converts at a time (int8 at d 384: 1,000 documents 1.16 s in one go)
_EVICT_WINDOW = 4096  # queue entries an eviction reads first (a 1,000-document call of 85-512 tokens drops ~1,000)
_MAX_STAGING_THREADS = 16  # more adds no bandwidth on the H100's host (76 MB: 1 thread 10.2 ms, 4 1.9, 16 0.9)


class StoreFull(Overloaded):
    """Every page is pinned by calls in flight: this call's documents do not fit until some finish."""


@dataclass(frozen=True)
class StoredDocuments:
    """Documents in a store, pinned for the caller: entry slots in request order."""

    slots: np.ndarray  # [B] int64


def cu_seqlens(lengths: np.ndarray) -> np.ndarray:
    """[0, l0, l0+l1, ...]: the offsets of runs of `lengths` laid one after another."""
    cu = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    return cu


def _runs(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """starts[i], starts[i] + 1, ..., starts[i] + counts[i] - 1 for every i, one run after another (int64)."""
    cu = cu_seqlens(counts)
    return np.repeat(starts - cu[:-1], counts) + np.arange(int(cu[-1]), dtype=np.int64)


def _up4(n: int) -> int:
    """n rounded up to a multiple of 4: int32 entries to a 16-byte boundary."""
    return -(-n // 4) * 4


def quantize(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows / scale in `dtype`, float32 scale a row): the CPU's write of compressed pages, the same arithmetic as
    the page-writing kernel."""
    x = x.float()
    qmax = kmaxsim.QMAX[dtype]
    amax = x.abs().amax(1)
    scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
    y = (x / scale[:, None]).clamp_(-qmax, qmax)
    if dtype == torch.int8:
        y = torch.floor(y + 0.5)
    return y.to(dtype), scale


class DocumentStore:
    def __init__(self, dim: int, capacity_bytes: int, device: str | torch.device = "cpu", dtype: str = "float16",
                 headroom_bytes: int | None = None, page_tokens: int = PAGE_TOKENS,
                 staging_threads: int | None = None):
        """`headroom_bytes`: arena beyond `capacity_bytes`, for documents of calls in flight (default 256 MiB on
        CUDA; 512 MiB on CPU, where untouched pages cost no memory). `staging_threads`: CPU threads of the host-side
        staging copy on CUDA; default the cores this process may run on, at most 16."""
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"document dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
        if page_tokens <= 0 or page_tokens & (page_tokens - 1):
            raise ValueError(f"page_tokens must be a power of two, got {page_tokens}")
        self.dim = dim
        self.device = torch.device(device)
        self.dtype = STORAGE_DTYPES[dtype]
        self.compressed = self.dtype in kmaxsim.COMPRESSED
        self.page_tokens = page_tokens
        esize = torch.empty(0, dtype=self.dtype).element_size()
        self.page_bytes = page_tokens * (dim * esize + (4 if self.compressed else 0))
        cuda = self.device.type == "cuda"
        if headroom_bytes is None:
            headroom_bytes = (256 << 20) if cuda else (512 << 20)
        self.capacity_bytes = capacity_bytes
        self._keep_pages = capacity_bytes // self.page_bytes
        n_pages = max(1, (capacity_bytes + headroom_bytes) // self.page_bytes)
        rows = n_pages * page_tokens
        self.arena = torch.empty(rows, dim, dtype=self.dtype, device=self.device)
        self.scales = torch.empty(rows, dtype=torch.float32, device=self.device) if self.compressed else None
        # entries: one slot each (an empty document holds a slot and no page); the per-slot arrays grow on demand
        self._max_slots = n_pages + 1024
        self._index: dict[Hashable, int] = {}
        self._keys = np.empty(0, dtype=object)
        self._length, self._n_pages, self._log_pos, self._stamp, self._pins = (np.zeros(0, dtype=np.int64)
                                                                               for _ in range(5))
        self._tokens = np.zeros(0, dtype=np.int64)  # input tokens of each entry (its rows but for one-row vectors)
        self._live = np.zeros(0, dtype=bool)
        self._kept = np.zeros(0, dtype=bool)  # the entry has a key (a document scored once has none)
        # what the kernel reads of each entry: its first and one-past-last logical row in the page list (int32, so
        # a call's metadata is two takes into the pinned buffer); kept with _log_pos
        self.row_start, self.row_end = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32)
        self._free_slots: list[int] = []
        self._next_slot = 0  # slots from here on were never used
        # pages: a stack of freed ones (the last freed is reused first, so a small working set stays resident) and
        # the ones never used, from `_next_page` on
        self._total_pages = n_pages
        self._free_pages = np.empty(n_pages, dtype=np.int32)
        self._n_free = 0
        self._next_page = 0
        self._clock = 0
        self._queue = (np.zeros(0, np.int64), np.zeros(0, np.int64))  # eviction order: (slots, stamps then)
        self._queue_at = 0
        # the page list: every live entry's pages, one run each; compacted when the end is reached
        self._log = np.zeros(2 * n_pages + 1024, dtype=np.int32)
        self._log_end = 0
        self.compactions = 0
        if self._log.size * page_tokens >= 2**31:
            raise ValueError("arena too large for int32 row offsets at this page size")
        self.log = torch.from_numpy(self._log) if not cuda else torch.zeros(self._log.size, dtype=torch.int32,
                                                                                 device=self.device)
        self.lock = threading.RLock()
        self._hits = self._misses = self._evictions = 0
        # CUDA staging: a ring of pinned slots, one device buffer the staged documents land in, and pinned metadata
        # the device's default stream: the scorer's calls issue on it without a stream switch (12 µs a call on the
        # H200's host), from whichever thread they run in
        self._stream = torch.cuda.default_stream(self.device) if cuda else None
        if cuda:  # the arena was allocated on the caller's stream
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
        self._ring: list[torch.Tensor] = []
        self._ring_done: list[torch.cuda.Event | None] = []  # each slot's last DMA
        self._ring_next = 0  # the slot filled next
        self._staged: torch.Tensor | None = None
        self._meta_host: torch.Tensor | None = None  # int32, pinned
        self._meta_np: np.ndarray | None = None
        self._meta_dev: torch.Tensor | None = None
        self._meta_copied: torch.cuda.Event | None = None  # the last copy from _meta_host
        self.staging_threads = staging_threads or min(_MAX_STAGING_THREADS, len(os.sched_getaffinity(0)))

    @property
    def stream(self) -> torch.cuda.Stream | None:
        return self._stream

    # -- lookups and pins ---------------------------------------------------------------------------------------
    def lookup(self, keys: Sequence[Hashable]) -> np.ndarray:
        """Slot of each key (-1 where absent); the present ones are pinned and marked used."""
        with self.lock:
            slots = np.fromiter(map(self._index.get, keys, [-1] * len(keys)), dtype=np.int64, count=len(keys))
            found = slots[slots >= 0]
            self._pin(found)
            self._hits += found.size
            self._misses += slots.size - found.size
            return slots

    def release(self, slots: np.ndarray) -> None:
        """Unpin entries `lookup` or `insert` returned; entries without a key go, and the store shrinks back to
        `capacity_bytes`."""
        slots = np.asarray(slots, dtype=np.int64)
        slots = slots[slots >= 0]
        with self.lock:
            np.subtract.at(self._pins, slots, 1)
            transient = slots[~self._kept[slots]]
            if transient.size:
                self._drop(np.unique(transient[self._pins[transient] == 0]))
            if self._free_page_count < self._total_pages - self._keep_pages:
                self._evict_until(self._total_pages - self._keep_pages)

    def lengths(self, slots: np.ndarray) -> np.ndarray:
        return self._length[slots]

    def tokens(self, slots: np.ndarray) -> np.ndarray:
        """The input tokens of each entry, as `insert` was told (its rows by default): what usage counts."""
        return self._tokens[slots]

    def rows(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logical start of each document in the page list, its end): what the kernel reads."""
        return self.row_start[slots], self.row_end[slots]

    @property
    def used_pages(self) -> int:
        return self._next_page - self._n_free

    @property
    def _free_page_count(self) -> int:
        return self._n_free + self._total_pages - self._next_page

    def _take_pages(self, n: int) -> np.ndarray:
        reused = min(n, self._n_free)
        pages = np.concatenate([self._free_pages[self._n_free - reused:self._n_free][::-1],
                                np.arange(self._next_page, self._next_page + n - reused, dtype=np.int32)])
        self._n_free -= reused
        self._next_page += n - reused
        return pages

    def _take_slots(self, n: int) -> np.ndarray:
        reused = min(n, len(self._free_slots))
        slots = np.array(self._free_slots[len(self._free_slots) - reused:], dtype=np.int64)
        del self._free_slots[len(self._free_slots) - reused:]
        slots = np.concatenate([slots, np.arange(self._next_slot, self._next_slot + n - reused, dtype=np.int64)])
        self._next_slot += n - reused
        if self._next_slot > self._live.size:  # grow every per-slot array geometrically
            size = min(self._max_slots, max(self._next_slot, 2 * self._live.size, 1024))
            grow = lambda a: np.concatenate([a, np.zeros(size - a.size, dtype=a.dtype)])  # noqa: E731
            self._keys = np.concatenate([self._keys, np.full(size - self._keys.size, None, dtype=object)])
            (self._length, self._n_pages, self._log_pos, self._stamp, self._pins, self._live, self._kept,
             self.row_start, self.row_end, self._tokens) = map(grow, (
                self._length, self._n_pages, self._log_pos, self._stamp, self._pins, self._live, self._kept,
                self.row_start, self.row_end, self._tokens))
        return slots

    def arena_rows(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(arena rows of the documents' tokens, one after another; cu_seqlens [B+1]): the layout read row by row,
        for readers outside the kernel and the CPU path (the tests' float64 references)."""
        lengths = self._length[slots]
        logical = _runs(self.row_start[slots].astype(np.int64), lengths)
        p = self.page_tokens
        return self._log[logical // p].astype(np.int64) * p + logical % p, cu_seqlens(lengths)

    def arena_pages(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the arena pages of the documents, one document's after another, [P] int64; the rows of each page that
        belong to its document, [P]; pages per document [B]): the CPU path's gather, a page at a time."""
        counts = self._n_pages[slots]
        return (self._log[_runs(self._log_pos[slots], counts)].astype(np.int64),
                self._page_rows(self._length[slots], counts)[1], counts)

    def _page_rows(self, lengths: np.ndarray, n_pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For every page of documents of `lengths` taking `n_pages` each: (its index within its document, how
        many of its rows the document fills: page_tokens but for a last page)."""
        within = _runs(np.zeros_like(n_pages), n_pages)
        return within, np.minimum(self.page_tokens, np.repeat(lengths, n_pages) - within * self.page_tokens)

    def stats(self) -> CacheStats:
        with self.lock:
            return CacheStats(hits=self._hits, misses=self._misses, evictions=self._evictions,
                              entries=len(self._index), bytes=self.used_pages * self.page_bytes,
                              capacity_bytes=self.capacity_bytes)

    def _pin(self, slots: np.ndarray) -> None:
        np.add.at(self._pins, slots, 1)
        self._clock += 1
        self._stamp[slots] = self._clock

    # -- eviction ---------------------------------------------------------------------------------------------
    def _drop(self, slots: np.ndarray) -> None:
        """Forget entries: their keys, slots and pages (back on the free stacks)."""
        kept = self._keys[slots[self._kept[slots]]].tolist()
        collections.deque(map(self._index.__delitem__, kept), maxlen=0)  # one C loop, no Python frame a key
        self._keys[slots] = None
        self._kept[slots] = False
        counts = self._n_pages[slots]
        n = int(counts.sum())
        if n:
            self._free_pages[self._n_free:self._n_free + n] = self._log[_runs(self._log_pos[slots], counts)]
            self._n_free += n
        self._live[slots] = False
        self._n_pages[slots] = 0
        self._free_slots.extend(slots.tolist())

    def _evict_until(self, free_pages: int, free_slots: int = 0) -> bool:
        """Drop least recently used unpinned entries until `free_pages` pages and `free_slots` slots are free;
        False when the unpinned entries do not suffice. Entries leave in stamp order from a queue built when it
        runs out; one used (or pinned) since the queue was built is skipped (it is newer than all the others).
        The queue is read a window at a time (doubling while a window does not free enough), so an eviction costs
        what it drops, not the store's size (200,000 entries: 2.4 ms a 1,000-document insert before, on the
        development CPU)."""
        window = _EVICT_WINDOW
        while True:
            need_pages = free_pages - self._free_page_count
            need_slots = free_slots - (len(self._free_slots) + self._max_slots - self._next_slot)
            if need_pages <= 0 and need_slots <= 0:
                return True
            slots, stamps = self._queue
            at = self._queue_at
            if at >= slots.size:  # every entry of the queue was dropped or skipped: rebuild it
                live = np.flatnonzero(self._live & (self._pins == 0))
                if live.size == 0:
                    return False
                order = live[np.argsort(self._stamp[live], kind="stable")]
                self._queue, self._queue_at = (order, self._stamp[order].copy()), 0
                continue
            todo, then = slots[at:at + window], stamps[at:at + window]
            ok = self._live[todo] & (self._stamp[todo] == then) & (self._pins[todo] == 0)
            # the shortest prefix of the window whose evictable entries free enough pages and slots
            pages = np.cumsum(np.where(ok, self._n_pages[todo], 0))
            count = np.cumsum(ok)
            enough = (pages >= need_pages) & (count >= need_slots)
            end = int(np.argmax(enough)) + 1 if enough.any() else todo.size
            victims = todo[:end][ok[:end]]
            self._queue_at += end
            self._drop(victims)
            self._evictions += victims.size
            window *= 2

    # -- writes -----------------------------------------------------------------------------------------------
    def insert(self, keys: Sequence[Hashable | None], parts: Sequence[np.ndarray], lengths: np.ndarray,
               tokens: np.ndarray | None = None) -> np.ndarray:
        """Store documents: `parts` are packed [T_i, d] buffers (one an encoder call) whose rows, one after another,
        are the documents of `lengths`, keyed by `keys` (None: not kept after its call); `tokens`: each document's
        input tokens where they are not its rows (`tokens()`). Returns their slots, pinned. A key already present
        keeps its entry. Raises StoreFull when pinned entries leave too few pages."""
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(keys) != lengths.size or sum(p.shape[0] for p in parts) != int(lengths.sum()):
            raise ValueError("keys, parts and lengths disagree")
        tokens = lengths if tokens is None else np.asarray(tokens, dtype=np.int64)
        if tokens.shape != lengths.shape:
            raise ValueError("tokens and lengths disagree")
        with self.lock:
            slots = np.fromiter(map(self._index.get, keys, itertools.repeat(-1)), np.int64, count=len(keys))
            new = np.flatnonzero(slots < 0)
            # on CUDA the copies to the device go first: the bookkeeping below runs while the last ones are in flight
            staged = self._stage_parts(parts, int(lengths.sum())) if new.size and self._stream is not None else None
            n_pages = -(-lengths[new] // self.page_tokens)
            need = int(n_pages.sum())
            self._pin(slots[slots >= 0])
            ok = self._evict_until(need, new.size)
            if not ok:
                self.release(slots[slots >= 0])
                raise StoreFull(f"the document store is full: {need} pages asked, {self._free_page_count} free and "
                                "every other page is in use by calls in flight")
            taken = self._take_pages(need)
            pos = self._append_log(taken)
            fresh = self._take_slots(new.size)
            doc_log = pos + cu_seqlens(n_pages)[:-1]  # where each new document's pages start in the page list
            self._log_pos[fresh] = doc_log
            self._n_pages[fresh] = n_pages
            self._length[fresh] = lengths[new]
            self._tokens[fresh] = tokens[new]
            self._set_rows(fresh)
            self._live[fresh] = True
            self._pins[fresh] = 0
            self._index_new(keys if new.size == len(keys) else [keys[i] for i in new.tolist()], fresh)
            slots[new] = fresh
            self._pin(fresh)
            try:
                self._write(parts, staged, lengths, new, n_pages, taken, pos, doc_log)
            except BaseException:  # entries whose pages were not written must not be found
                self._pins[fresh] = 0
                self._drop(fresh)
                self.release(slots[np.isin(slots, fresh, invert=True)])
                raise
            return slots

    def _index_new(self, keys: list, fresh: np.ndarray) -> None:
        """Index new entries by key. No key, or the same key twice in one call (the first is kept): an entry
        outside the index, dropped once released. Dict and array work in C loops: no Python frame a document."""
        index, pairs = self._index, zip(reversed(keys), reversed(fresh.tolist()))  # reversed: the first one wins
        before = len(index)  # the keys are new to the index (the caller's lookup, under the lock)
        anonymous = None in keys
        if anonymous:
            index.update((k, s) for k, s in pairs if k is not None)
        else:
            index.update(pairs)
        self._keys[fresh] = np.fromiter(keys, object, count=len(keys))
        if not anonymous and len(index) == before + len(keys):  # every key distinct: every entry kept
            self._kept[fresh] = True
            return
        kept = np.fromiter(map(index.get, keys, itertools.repeat(-1)), np.int64, count=len(keys)) == fresh
        self._kept[fresh] = kept
        if not kept.all():
            self._keys[fresh[~kept]] = None

    def _set_rows(self, slots: np.ndarray) -> None:
        self.row_start[slots] = self._log_pos[slots] * self.page_tokens
        self.row_end[slots] = self.row_start[slots] + self._length[slots]

    def _append_log(self, pages: np.ndarray) -> int:
        """Append a run of page numbers to the page list (compacting it first when it is full): its position."""
        if self._log_end + pages.size > self._log.size:
            live = np.flatnonzero(self._live & (self._n_pages > 0))
            counts = self._n_pages[live]
            new_pos = cu_seqlens(counts)
            src = _runs(self._log_pos[live], counts)
            self._log[:src.size] = self._log[src]
            self._log_pos[live] = new_pos[:-1]
            self._set_rows(live)
            self._log_end = src.size
            self.compactions += 1
            if self.device.type == "cuda":  # after every launch issued so far, on the store's stream
                with torch.cuda.stream(self._stream):
                    self.log[:src.size].copy_(torch.from_numpy(self._log[:src.size]).pin_memory(), non_blocking=True)
                self._stream.synchronize()
        pos = self._log_end
        self._log[pos:pos + pages.size] = pages
        self._log_end += pages.size
        return pos

    def _write(self, parts, staged, lengths, new, n_pages, pages, log_pos, doc_log) -> None:
        """Rows of the new documents (positions `new` of `lengths`) into their pages; the page list's new run (from
        `log_pos`; `doc_log`: where each document's pages start in it). On CUDA the rows come from `staged` (every
        row of `parts`, on the device)."""
        if pages.size == 0:
            return
        cu = cu_seqlens(lengths)
        if self.device.type == "cuda":
            self._write_cuda(staged, cu[new], lengths[new], doc_log, int(n_pages.max()), pages, log_pos)
            return
        # one entry a page: the source row of its first token, how many rows it takes, the page
        within, page_rows = self._page_rows(lengths[new], n_pages)
        self._write_cpu(parts, np.repeat(cu[new], n_pages) + within * self.page_tokens, page_rows, pages)

    def _write_cpu(self, parts, starts, page_rows, pages) -> None:
        data = torch.from_numpy(np.ascontiguousarray(parts[0]) if len(parts) == 1 else np.concatenate(parts))
        within = np.arange(self.page_tokens)
        valid = within[None, :] < page_rows[:, None]
        src = torch.from_numpy((starts[:, None] + within[None, :])[valid])
        dst = torch.from_numpy((pages.astype(np.int64)[:, None] * self.page_tokens + within[None, :])[valid])
        every = src.numel() == data.shape[0]  # every row is new: read in order, no gather
        arena_bits = self.arena.view(INTEGER_VIEWS[self.dtype])  # torch's CPU index_copy has no float8 kernel
        for a in range(0, src.numel(), _CPU_WRITE_ROWS):  # a chunk at a time: the fp32 temporaries stay in cache
            s, d = src[a:a + _CPU_WRITE_ROWS], dst[a:a + _CPU_WRITE_ROWS]
            rows = data[a:a + s.numel()] if every else data.index_select(0, s)
            if self.compressed:
                values, scales = quantize(rows, self.dtype)
                self.scales.index_copy_(0, d, scales)
            else:
                values = rows.to(self.dtype)
            arena_bits.index_copy_(0, d, values.view(INTEGER_VIEWS[self.dtype]))

    def _stage_dtype(self) -> torch.dtype:
        return self.dtype if not self.compressed else torch.float16

    def _stage_parts(self, parts, total_rows: int) -> torch.Tensor:
        """Every row of `parts` copied to the device staging buffer ([total_rows, d], in the staging dtype), the
        copies issued on the store's stream; the host returns before the last ones have finished."""
        dtype = self._stage_dtype()
        row_bytes = self.dim * torch.empty(0, dtype=dtype).element_size()
        if self._staged is None or self._staged.numel() < total_rows * row_bytes:
            size = max(total_rows * row_bytes, 2 * (0 if self._staged is None else self._staged.numel()), 1 << 20)
            self._staged = None
            with torch.cuda.stream(self._stream):
                self._staged = torch.empty(size, dtype=torch.uint8, device=self.device)
        staged = self._staged[:total_rows * row_bytes].view(dtype).view(total_rows, self.dim)
        if torch.get_num_threads() != self.staging_threads:  # a per-thread setting: calls run in worker threads
            torch.set_num_threads(self.staging_threads)
        with torch.cuda.stream(self._stream):
            self._stage(parts, staged, row_bytes)
        return staged

    def _write_cuda(self, staged, doc_src, doc_len, doc_log, max_pages, pages, log_pos) -> None:
        """The new run of the page list and the page writer over the staged rows (a document's: its first row in
        `staged`, its length, where its pages start in the page list), issued on the store's stream and not waited
        for: a launch issued after it reads the pages it writes (stream order), and the pinned buffers it reads are
        reused only once their copies have finished (events). Metadata is written by numpy into the pinned buffer
        (each region 16-byte aligned: one specialisation of the kernel) and goes up in one copy."""
        n, b = pages.size, doc_len.size
        o_src = _up4(n)
        o_len = o_src + _up4(b)
        o_log = o_len + _up4(b)
        size = o_log + b
        with torch.cuda.stream(self._stream):
            meta_np, meta_host, meta_dev = self._metadata(size)
            meta_np[:n] = pages
            meta_np[o_src:o_src + b] = doc_src
            meta_np[o_len:o_len + b] = doc_len
            meta_np[o_log:size] = doc_log
            meta_dev[:size].copy_(meta_host[:size], non_blocking=True)
            self._meta_copied.record(self._stream)
            self.log[log_pos:log_pos + n].copy_(meta_dev[:n])
            kmaxsim.write_pages(staged, self.arena, self.scales, self.log, meta_dev[o_src:o_src + b],
                                meta_dev[o_len:o_len + b], meta_dev[o_log:size], self.page_tokens, max_pages)

    def _metadata(self, count: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """The pinned int32 metadata buffer of at least `count` entries (numpy's view, torch's) and its device copy,
        once the previous call's copy from it has finished."""
        if self._meta_copied is None:
            self._meta_copied = torch.cuda.Event()
        else:
            self._meta_copied.synchronize()
        if self._meta_host is None or self._meta_host.numel() < count:
            size = max(count, 2 * (0 if self._meta_host is None else self._meta_host.numel()), 1 << 14)
            self._meta_host = torch.empty(size, dtype=torch.int32, pin_memory=True)
            self._meta_np = self._meta_host.numpy()
            with torch.cuda.stream(self._stream):
                self._meta_dev = torch.empty(size, dtype=torch.int32, device=self.device)
        return self._meta_np, self._meta_host, self._meta_dev

    def _stage(self, parts, staged: torch.Tensor, row_bytes: int) -> None:
        """The packed buffers through the ring of pinned slots into `staged`: consecutive rows, across buffers, fill
        a slot (the encoder's calls are ~2 MB each), then one DMA copies it, overlapping the host-side copy (and
        dtype conversion) into the next slot. The first slot is filled only `_FIRST_CHUNK_BYTES` deep, so the link
        idles only while that is staged. A slot is refilled once its last DMA has finished (its event, kept across
        calls: nothing waits for a call's last copies)."""
        slot_rows = max(1, _STAGE_CHUNK_BYTES // row_bytes)
        if len(self._ring) != _RING_SLOTS or self._ring[0].numel() < slot_rows * row_bytes:
            for event in self._ring_done:
                if event is not None:
                    event.synchronize()
            self._ring = [torch.empty(slot_rows * row_bytes, dtype=torch.uint8, pin_memory=True)
                          for _ in range(_RING_SLOTS)]
            self._ring_done, self._ring_next = [None] * _RING_SLOTS, 0
        depth = min(slot_rows, max(1, _FIRST_CHUNK_BYTES // row_bytes))  # rows this slot takes before its DMA
        row = filled = 0  # rows of `staged` issued; rows gathered for the slot filled next
        pending: list[torch.Tensor] = []  # those rows: whole buffers, or the pieces of one cut at a slot's end
        for part in parts:
            src = torch.from_numpy(np.ascontiguousarray(part))
            r0 = 0
            while r0 < src.shape[0]:
                n = min(depth - filled, src.shape[0] - r0)
                pending.append(src if n == src.shape[0] else src[r0:r0 + n])
                filled, r0 = filled + n, r0 + n
                if filled == depth:
                    self._fill(pending, staged, row, filled)
                    row, filled, pending, depth = row + filled, 0, [], slot_rows
        if filled:
            self._fill(pending, staged, row, filled)

    def _fill(self, pieces: list[torch.Tensor], staged: torch.Tensor, row: int, n: int) -> None:
        """The next slot, once its previous DMA has finished, filled with `pieces` (n rows, converted to the staging
        dtype) in one torch call (its threads; one cat, not a Python loop over an encoder call's ~2 MB buffers:
        staging 37 of them, H200, three rounds, 2.24 / 2.75 / 2.91 ms against 3.17 / 2.63 / 3.89 a buffer at a
        time; one buffer 2.0-2.1 either way), then sent."""
        k = self._ring_next
        if self._ring_done[k] is not None:
            self._ring_done[k].synchronize()
        slot = self._ring[k].view(staged.dtype)[:n * self.dim].view(n, self.dim)
        if len(pieces) == 1:
            slot.copy_(pieces[0])
        else:
            torch.cat(pieces, out=slot)
        self._send(slot, staged, row, n)

    def _send(self, slot: torch.Tensor, staged: torch.Tensor, row: int, n: int) -> None:
        """DMA of a slot's first n rows to rows row.. of `staged`, its event recorded; the next slot's turn."""
        k = self._ring_next
        staged[row:row + n].copy_(slot[:n], non_blocking=True)
        if self._ring_done[k] is None:
            self._ring_done[k] = torch.cuda.Event()
        self._ring_done[k].record(self._stream)
        self._ring_next = (k + 1) % _RING_SLOTS

