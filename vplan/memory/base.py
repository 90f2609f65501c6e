"""The one interface of episodic memory, and the background worker that overlaps updates with execution.

A memory lives for a world model across episodes. Per episode:

```python
memory.reset()                                   # the episode starts: the base model, nothing remembered
chunk = memory.generate(history, [subgoal])      # = world_model.generate(memory.condition(history), ...)
memory.update_async(previous_chunk, chunk)       # learn from it on a worker thread ...
execute(chunk)                                   # ... while the chunk runs in the env
history = torch.cat([history, chunk], dim=1)     # the next generate() waits for the update first
```

`condition(history)` is how a memory shapes the next generation: it returns the context latents to hand to
`WorldModel.generate` (the anchor memory prepends the episode's first frame) and puts the weights it learned
in place (Temp-LoRA enables its adapter once it holds something). `update(previous, new)` learns from a chunk
synchronously; `update_async` does the same on one background thread and returns at once; `wait()` blocks
until it is done and re-raises its error, if any.

Threading rule: generation never sees half-updated weights, because `condition`, `generate`, `update`,
`reset`, `state_dict`, `load_state_dict`, `snapshot`, `restore` and `close` all `wait()` first. Calling
`world_model.generate` (or anything else that runs the UNet) directly while an update is in flight is not
allowed; call `wait()` first. A memory's methods are meant to be called from one thread (the caller's); only
the update itself runs on the worker. Each update runs with the intra-op thread count the caller had when
it started it (torch keeps one per thread: a later `torch.set_num_threads` in the caller would not reach a
worker already started); since generation waits for the update, UNet passes never run on two threads at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from vplan.errors import RunError, close_after_block
from vplan.memory.config import MemoryConfig
from vplan.utils.files import readable_as_umask_allows

if TYPE_CHECKING:
    from vplan.worldmodel.model import WorldModel

MEMORY_FORMAT_VERSION = "1"


@dataclass(frozen=True)
class MemorySnapshot:
    """A memory's complete state at one moment (weights, optimizer, noise generator, ...), held in RAM.

    Opaque to callers: take one with `snapshot()`, give it back to the same kind of memory with `restore()`.
    """

    kind: str
    state: dict[str, Any] = field(repr=False)


class EpisodicMemory(ABC):
    """Base of the memory strategies: `reset`, `condition`/`generate`, `update`/`update_async`/`wait`, state."""

    kind: ClassVar[str]

    def __init__(self, config: MemoryConfig, world_model: WorldModel) -> None:
        if config.kind != self.kind:
            raise ValueError(f"expected a MemoryConfig with kind={self.kind!r} for {type(self).__name__}, "
                             f"got kind={config.kind!r}")
        from vplan.worldmodel.config import require_text_conditioned

        require_text_conditioned(world_model.config.conditioning, "world_model", f"the {self.kind} memory")
        self.config = config
        self.world_model = world_model
        self._executor: ThreadPoolExecutor | None = None
        self._future: Future | None = None
        self._closed = False
        self.last_update: dict[str, float] | None = None  # the logs of the latest finished update
        self.last_context: torch.Tensor | None = None  # what the latest `condition` gave a chunk to go on from

    # -- episode ---------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Start an episode: forget everything learned (an in-flight update is waited for, then discarded; one
        that failed is forgotten too, and its error raised)."""
        self._ensure_open()
        self._after_wait(self._forget)

    # -- generation ------------------------------------------------------------------------------------------

    def condition(self, history: torch.Tensor) -> torch.Tensor:
        """Wait for unfinished updates, put the memory's weights in place, and return the context latents for
        the next chunk. `history` is the latents so far (B, T >= 1, C, h, w), whole or its recent window."""
        self._ensure_open()
        self.wait()
        self._check(history, "history")
        context = self._condition(history)
        # what the world model reads; a copy, not a view that would keep the whole history alive (vplan rl stores
        # each chunk's: memory grew with the square of an episode's length)
        self.last_context = context[:, -self.world_model.config.context_frames :].clone()
        return context

    def generate(
        self,
        history: torch.Tensor,
        texts: list[str],
        num_frames: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The next chunk's latents: `world_model.generate` on `condition(history)`; a RunError naming the likely
        cause where they are NaN or infinite (every later chunk would follow them, and decoding refuses them)."""
        chunk = self.world_model.generate(self.condition(history), texts, num_frames=num_frames, generator=generator)
        if not torch.isfinite(chunk).all():
            raise RunError(f"memory {self.kind} drew a chunk of NaN or infinite latents ({self._nonfinite_cause()})")
        return chunk

    def _nonfinite_cause(self) -> str:
        """What most likely made a generated chunk non-finite (a memory that learns names its setting)."""
        return "the world model itself: check the checkpoint"

    # -- learning --------------------------------------------------------------------------------------------

    def update(self, previous: torch.Tensor, new: torch.Tensor) -> dict[str, float]:
        """Learn from a chunk now: `previous` is the chunk (or context) before it, `new` the chunk itself, both
        (B, T, C, h, w) latents (imagined or observed: see `MemoryConfig.update_on`). Returns logs."""
        self._ensure_open()
        self.wait()
        previous, new = self._check_update(previous, new)
        # Inference mode is per thread, as grad mode is: the worker's update never runs in it, and this one must
        # not either, though the caller's loop may (its tensors are copied out of it).
        with torch.inference_mode(False):
            self.last_update = self._update(previous.clone(), new.clone())
        return self.last_update

    def update_async(self, previous: torch.Tensor, new: torch.Tensor) -> None:
        """`update` on the background worker; returns at once. The inputs are copied, so the caller may reuse
        them. An update still in flight is waited for first, so updates apply in call order."""
        self._ensure_open()
        self.wait()
        previous, new = self._check_update(previous, new)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vplan-memory-{self.kind}")
        self._future = self._executor.submit(self._update_with, torch.get_num_threads(), previous.clone(), new.clone())

    def _update_with(self, threads: int, previous: torch.Tensor, new: torch.Tensor) -> dict[str, float]:
        """`_update` on the worker with the caller's intra-op thread count: torch keeps a count per thread, and
        the worker's would stay what it was when the worker started."""
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return self._update(previous, new)

    def wait(self) -> dict[str, float] | None:
        """Block until the in-flight update (if any) is done; its logs, or None when nothing was in flight.
        An error raised by the update is raised here. Interrupted (Ctrl-C), the update stays in flight: the next
        wait, and so every reset, restore or load, still waits for it."""
        future = self._future
        if future is None:
            return None
        try:
            self.last_update = future.result()
        finally:
            if future.done():
                self._future = None
        return self.last_update

    @property
    def pending(self) -> bool:
        """Whether an update is still running on the worker."""
        return self._future is not None and not self._future.done()

    # -- state -----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What the memory holds (tensors only, copies), e.g. Temp-LoRA's adapter weights; see `save`."""
        self._ensure_open()
        self.wait()
        return self._state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put back what `state_dict` returned (exactly); keys and shapes must match. As with `reset`, an update
        that failed in the background is forgotten, and its error raised."""
        self._ensure_open()
        self._after_wait(lambda: self._load_state_dict(dict(state)))

    def snapshot(self) -> MemorySnapshot:
        """Everything needed to continue exactly from here later (more than `state_dict`: optimizer, RNG)."""
        self._ensure_open()
        self.wait()
        return MemorySnapshot(self.kind, self._snapshot())

    def restore(self, snapshot: MemorySnapshot) -> None:
        """Go back to a snapshot taken from a memory of the same kind and world model (as with `reset`, an update
        that failed in the background is forgotten, and its error raised)."""
        self._ensure_open()
        if not isinstance(snapshot, MemorySnapshot) or snapshot.kind != self.kind:
            got = snapshot.kind if isinstance(snapshot, MemorySnapshot) else type(snapshot).__name__
            raise ValueError(f"expected a MemorySnapshot of kind {self.kind!r}, got {got!r}")
        def restore() -> None:
            with torch.inference_mode(False):  # a caller's inference mode would make the optimizer's state
                self._restore(snapshot.state)  # inference tensors, which no later update may step

        self._after_wait(restore)

    def save(self, path: str | Path) -> None:
        """Write `state_dict()` to a safetensors file (the kind goes in its metadata)."""
        from safetensors.torch import save_file

        state = {name: tensor.detach().contiguous().clone() for name, tensor in self.state_dict().items()}
        metadata = {"kind": self.kind, "format_version": MEMORY_FORMAT_VERSION, **self._meaning()}
        save_file(state, str(path), metadata=metadata)
        readable_as_umask_allows(Path(path))

    def load(self, path: str | Path) -> None:
        """Read a file written by `save` of the same kind into this memory."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                state = {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path}: expected a memory safetensors file, got one that does not read ({err})") from err
        if metadata.get("kind") != self.kind or metadata.get("format_version") != MEMORY_FORMAT_VERSION:
            raise ValueError(
                f"{path}: expected a {self.kind!r} memory (format {MEMORY_FORMAT_VERSION}), got kind "
                f"{metadata.get('kind')!r} (format {metadata.get('format_version')})"  # a string, as safetensors keeps
            )
        def load() -> None:  # as `load_state_dict`: after the update in flight, however it ended
            self._check_file(path, state)  # before the settings: a tensor's shape says more (e.g. another rank)
            # settings the tensors' shapes do not show (a file saved before they were recorded is taken as it is)
            differ = [f"{name} {metadata[name]} (this memory's: {value})" for name, value in self._meaning().items()
                      if name in metadata and metadata[name] != value]
            if differ:
                raise ValueError(f"{path}: saved with another {', '.join(differ)}; load it into a memory made so")
            try:
                self._load_state_dict(state)
            except ValueError as err:  # keys or shapes of another memory: which file holds them
                raise ValueError(f"{path}: {err}") from None

        self._ensure_open()
        self._after_wait(load)

    def _check_file(self, path: str | Path, state: dict[str, torch.Tensor]) -> None:
        """Refuse what `load` read before it changes anything: a NaN or inf saved by a diverged memory would
        only show later, as a non-finite generation."""
        for name, tensor in state.items():
            if not torch.isfinite(tensor).all():
                raise ValueError(f"{path}: {name!r} holds non-finite values (NaN or inf), as a diverged memory "
                                 "saves; load another file")

    def _meaning(self) -> dict[str, str]:
        """Settings under which a saved state means what it did (`save` records them, `load` checks them)."""
        return {}

    def close(self) -> None:
        """Wait for the worker, stop it, and give the world model back as it was (e.g. remove the adapter).
        Closing twice does nothing; any other call after `close` raises."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            try:
                if self._executor is not None:
                    self._executor.shutdown(wait=True)
                    self._executor = None
            finally:  # a second Ctrl-C in the shutdown still gives the world model back, once the update is done
                if not self.pending:  # (else a later close does: the worker trains through the adapter)
                    self._close()
                    self._closed = True

    def __enter__(self) -> EpisodicMemory:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        close_after_block(self.close, exc_type is not None, "memory: a background update")

    def _after_wait(self, action: Callable[[], None]) -> None:
        """`wait()`, then `action` however the update ended (a failed one's error raised after it); not while it
        still runs (a Ctrl-C in the wait): its weights are not ours yet."""
        try:
            self.wait()
        finally:
            if not self.pending:
                action()

    def _forget(self) -> None:
        self._reset()
        self.last_update = None

    # -- what each strategy implements ------------------------------------------------------------------------

    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def _condition(self, history: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _update(self, previous: torch.Tensor, new: torch.Tensor) -> dict[str, float]: ...

    @abstractmethod
    def _state_dict(self) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def _snapshot(self) -> dict[str, Any]: ...

    @abstractmethod
    def _restore(self, state: dict[str, Any]) -> None: ...

    def _close(self) -> None:
        """Undo what `__init__` did to the world model; nothing by default."""

    # -- checks ----------------------------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"expected an open {self.kind!r} memory, got one that was closed; make a new one")

    def _check(self, latents: torch.Tensor, name: str) -> None:
        shape = tuple(self.world_model.latent_shape)
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] < 1 \
                or tuple(latents.shape[2:]) != shape:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"expected {name} latents of shape (B, T >= 1, {', '.join(map(str, shape))}), got {got}")
        # learned from, they made a NaN loss that named the lr; generated from, a NaN chunk blamed on the checkpoint
        if not torch.isfinite(latents).all():
            raise ValueError(f"{name}: expected finite latents, got NaN or inf values")

    def _check_update(self, previous: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(previous, "previous")
        self._check(new, "new")
        if previous.shape[0] != new.shape[0]:
            raise ValueError(f"expected previous and new latents with one batch size, got {previous.shape[0]} "
                             f"and {new.shape[0]}")
        return previous.detach(), new.detach()


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], kind: str) -> None:
    """Raise a ValueError naming the keys or shapes of `state` that do not match `expected`."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"expected the {kind} memory's {len(expected)} tensors, got {len(missing)} missing "
                         f"{missing[:3]} and {len(unexpected)} unexpected {unexpected[:3]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(f"expected {name!r} of shape {tuple(expected[name].shape)}, got {tuple(tensor.shape)}")
