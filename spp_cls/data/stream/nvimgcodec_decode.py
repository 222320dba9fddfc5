"""Training batches decoded on the training device by NVIDIA nvImageCodec (``data.decode: device``).

The loader workers ship :class:`~spp_cls.data.stream.jpeg_batch.JpegBatch` values (the JPEG bytes, each file's drawn
224 window and flip); :class:`BatchDecoder` decodes the B windows in one batched nvImageCodec call on the device the
batch was sent to, stacks them and flips the mirrored ones: the CPU path's windows, flips and labels for the same seed.

- Region: each file's 224 x 224 window is decoded as a ``Region`` of its code stream rather than the whole image
  (``region=False`` decodes whole images and crops them). On nvImageCodec's CPU backend (libjpeg-turbo) both give the
  CPU path's pixels exactly (tests/test_nvimgcodec_decode.py); on a GPU backend nvJPEG's inverse DCT and chroma
  upsampling round differently from libjpeg-turbo's (torchvision's nvJPEG path differed by about one level of 255 on
  average; tests/test_cuda.py holds each backend to a stated tolerance).
- Backends: on CUDA, ``"auto"`` lets nvImageCodec pick per file (hardware NVJPG engines where the GPU has them, then
  CUDA, hybrid CPU+GPU, CPU), or one backend is named; on the CPU, the CPU backend alone, so that a CPU-only machine
  runs this very path end to end.
- Streams: on CUDA each batch is decoded on a side stream, so a batch decodes on the GPU while the training step
  queued before it still runs (Lightning transfers batch n+1 right after it has queued step n, and nothing here
  waits for the training stream); the caller's stream waits for the batch's event, and the crops are marked as used on
  the caller's stream (``record_stream``) so that the caching allocator hands their memory back to the side stream
  only after the step that reads them. nvImageCodec's own outputs are stream-ordered allocations on the side stream
  (freed there after the copy out of them); the code streams, and the bytes they read, are kept until the batch's
  event has passed.
- No host sync: nothing here waits for the device in a training step. Labels arrive pinned (the loader pins, see
  :meth:`~spp_cls.data.stream.jpeg_batch.JpegBatch.pin_memory`) and every host-to-device copy is non-blocking from
  pinned memory; finished batches are found with a non-blocking event query, and the host waits for a decode only
  when :data:`MAX_IN_FLIGHT` batches are still decoding. Windows that land in host memory (the ``cpu`` backend, a
  file decoded by the host fallback) are copied to the device the same way.
- Corrupt files: a file nvImageCodec returns None for is decoded on the host by the CPU path's decoder
  (:func:`~spp_cls.data.stream.pipeline.decode_rgb`): if that reads it, its window is used (and the fallback logged and
  counted); if not, it is recorded in the budget with its key, shard and the decoder's reason (the CPU path's hook),
  and its slot is filled by the next good sample of the batch (image and label), so the batch keeps its static shape.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch

from spp_cls.data.stream.corrupt import DecodeFailures, TooManyCorruptSamples
from spp_cls.data.stream.jpeg_batch import JpegBatch
from spp_cls.data.stream.pipeline import CorruptSample, decode_rgb
from spp_cls.view_protocols import CROP

log = logging.getLogger(__name__)

DecodeBackend = Literal["auto", "hardware", "cuda", "hybrid", "cpu"]
BACKEND_KINDS = {"hardware": "HW_GPU_ONLY", "cuda": "GPU_ONLY", "hybrid": "HYBRID_CPU_GPU", "cpu": "CPU_ONLY"}
"""nvImageCodec's ``BackendKind`` of each backend name."""
DECODE_BACKENDS: tuple[str, ...] = ("auto", *BACKEND_KINDS)
INSTALL_HINT = "pip install 'spp-cls[gpu-decode]' (nvidia-nvimgcodec-cu13[nvjpeg]; -cu12 for CUDA 12)"
# nvImageCodec loads every codec extension it ships when imported and prints a few lines for each one whose library is
# not installed; JPEG 2000 and TIFF are never decoded here.
_UNUSED_EXTENSIONS = ("nvjpeg2k", "nvJPEG2000", "nvtiff", "nvTIFF")
MAX_IN_FLIGHT = 4
"""Batches whose decode may still run on the side stream (their code streams kept) before the host waits for the
oldest: in training the previous batch's decode has long finished, so the host never waits."""


class NvImageCodecMissing(ValueError):
    """``data.decode: device`` was asked for where nvImageCodec is not installed."""


@contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Collects what is written to file descriptor 2 (C libraries included) into the yielded list."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines.extend(captured.read().decode(errors="replace").splitlines())


@functools.cache
def load_nvimgcodec() -> ModuleType:
    """The ``nvidia.nvimgcodec`` module, imported once; :class:`NvImageCodecMissing` names the package when absent.

    Its messages about the JPEG 2000 and TIFF extensions are dropped; any other line it prints is passed on.
    """
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "1")  # errors only: a file that fails is logged below, by name
    with _stderr_captured() as printed:
        try:
            nvimgcodec = importlib.import_module("nvidia.nvimgcodec")
        except (ImportError, OSError) as error:  # not installed, or a library of it does not load
            raise NvImageCodecMissing(f"data.decode=device needs NVIDIA nvImageCodec: {INSTALL_HINT} ({error})") \
                from None
    for line in printed:
        if not any(name in line for name in _UNUSED_EXTENSIONS):
            print(line, file=sys.stderr)
    return nvimgcodec


def check_backend(backend: str, device: torch.device) -> None:
    """Raises ValueError when ``backend`` cannot decode on ``device``."""
    if backend not in DECODE_BACKENDS:
        raise ValueError(f"unknown decode_backend {backend!r}; known: {', '.join(DECODE_BACKENDS)}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"data.decode=device decodes on a CUDA device or the CPU, not on {device}")
    if device.type == "cpu" and backend not in ("auto", "cpu"):
        raise ValueError(f"decode_backend {backend!r} needs a CUDA device; on the CPU only 'cpu' (or 'auto') decodes")


class BatchDecoder:
    """Turns :class:`JpegBatch` values into ``(uint8 [B, 3, 224, 224], int64 [B])`` on ``device`` (module docstring).

    Args:
        device: the training device (``cpu`` or ``cuda[:i]``).
        backend: ``"auto"`` or one of ``hardware``, ``cuda``, ``hybrid``, ``cpu`` (see :data:`BACKEND_KINDS`); only
            ``cpu`` on the CPU.
        budget: where undecodable files are recorded (logged, counted, capped); without one they are only logged.
        region: decode each window as a region of its file (default) rather than the whole image.
        cpu_threads: the decoder's CPU threads (its default, 0, starts one per core of the machine in every rank).

    Attributes:
        cpu_fallbacks: files nvImageCodec did not decode but the host decoder did.
    """

    def __init__(self, device: torch.device | str, backend: DecodeBackend = "auto",
                 budget: DecodeFailures | None = None, region: bool = True, cpu_threads: int = 0) -> None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        check_backend(backend, device)
        nvimgcodec = load_nvimgcodec()
        self.device, self.budget, self.region = device, budget, region
        self.backend = "cpu" if device.type == "cpu" else backend
        kinds = [] if self.backend == "auto" else [getattr(nvimgcodec.BackendKind, BACKEND_KINDS[self.backend])]
        device_id = nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY if device.type == "cpu" else device.index
        self._decoder = nvimgcodec.Decoder(device_id=device_id, max_num_cpu_threads=cpu_threads,
                                           backends=[nvimgcodec.Backend(kind) for kind in kinds] or None)
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                               sample_format=nvimgcodec.SampleFormat.P_RGB)
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._in_flight: deque[tuple[torch.cuda.Event, list[Any]]] = deque()
        self.cpu_fallbacks = 0

    @property
    def description(self) -> str:
        """Library, device and backend, for logs and benchmark reports."""
        backend = "auto: hardware, CUDA, hybrid, CPU" if self.backend == "auto" else self.backend
        window = "224 regions" if self.region else "whole images"
        return f"nvImageCodec {load_nvimgcodec().__version__} on {self.device} ({backend} backend, {window})"

    def __call__(self, batch: JpegBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stream is None:
            crops, source, _ = self._decode(batch)
        else:
            consumer = torch.cuda.current_stream(self.device)
            self._release_finished()
            with torch.cuda.stream(self._stream):
                crops, source, code_streams = self._decode(batch)
                done = torch.cuda.Event()
                done.record(self._stream)
            consumer.wait_event(done)
            crops.record_stream(consumer)
            self._in_flight.append((done, code_streams))
        labels = batch.labels.to(self.device, non_blocking=True)
        if source != list(range(len(batch))):
            labels = labels[on_device(torch.tensor(source), self.device)]
        return crops, labels

    def _release_finished(self) -> None:
        """Drops the code streams of the batches whose decode has finished on the side stream (a non-blocking query);
        waits for the oldest only while :data:`MAX_IN_FLIGHT` are still decoding."""
        while self._in_flight and (len(self._in_flight) >= MAX_IN_FLIGHT or self._in_flight[0][0].query()):
            done, _ = self._in_flight.popleft()
            done.synchronize()

    def _decode(self, batch: JpegBatch) -> tuple[torch.Tensor, list[int], list[Any]]:
        """(crops, source, code streams): ``source[i]`` is the sample whose window fills slot i."""
        nvimgcodec = load_nvimgcodec()
        data = batch.data.numpy()
        code_streams, sizes = [], []
        for (start, stop), (x0, y0) in zip(zip(batch.offsets, batch.offsets[1:]), batch.origins):
            code_stream = nvimgcodec.CodeStream(data[start:stop])
            sizes.append(_size(code_stream))
            if self.region:
                code_stream = code_stream.get_sub_code_stream(region=nvimgcodec.Region(y0, x0, y0 + CROP, x0 + CROP))
            code_streams.append(code_stream)
        cuda_stream = 0 if self._stream is None else self._stream.cuda_stream
        images = self._decoder.decode(code_streams, params=self._params, cuda_stream=cuda_stream)
        windows: list[torch.Tensor | CorruptSample] = []
        on_host = []
        for i, (image, size) in enumerate(zip(images, sizes)):
            if size != batch.sizes[i]:
                windows.append(CorruptSample(f"nvImageCodec reads the size {size[0]}x{size[1]} where the worker "
                                             f"read {batch.sizes[i][0]}x{batch.sizes[i][1]} from its header"))
            elif image is None:
                windows.append(self._host_window(batch, i))
                on_host += [i] if isinstance(windows[-1], torch.Tensor) else []
            else:
                windows.append(self._device_window(image, batch.origins[i]))
        self._log_fallbacks(batch, on_host)
        source = _replacements(batch, windows, self.budget)
        crops = _stacked([windows[j] for j in source], [batch.flips[j] for j in source], self.device)
        return crops, source, code_streams

    def _device_window(self, image: Any, origin: tuple[int, int]) -> torch.Tensor:
        """The 3 x 224 x 224 window of one nvImageCodec output (planar RGB; already the window when decoded as a
        region), where nvImageCodec wrote it: the ``cpu`` backend writes host memory whatever device it was given."""
        if image.buffer_kind == load_nvimgcodec().ImageBufferKind.STRIDED_HOST:
            pixels = torch.from_numpy(np.asarray(image))
        else:  # torch.from_dlpack(image) would first offer DLPack 1.0 keywords this Image refuses: a TypeError each
            pixels = torch.from_dlpack(image.__dlpack__(stream=self._stream.cuda_stream))
        x0, y0 = origin
        return pixels if self.region else pixels[:, y0 : y0 + CROP, x0 : x0 + CROP]

    def _host_window(self, batch: JpegBatch, i: int) -> torch.Tensor | CorruptSample:
        """Sample i's window decoded by the CPU path's decoder (in host memory), or why it does not decode."""
        try:
            whole = decode_rgb(batch.jpegs()[i].numpy().tobytes())
        except CorruptSample as exn:
            return exn
        x0, y0 = batch.origins[i]
        return whole[:, y0 : y0 + CROP, x0 : x0 + CROP]

    def _log_fallbacks(self, batch: JpegBatch, on_host: list[int]) -> None:
        if on_host:
            self.cpu_fallbacks += len(on_host)
            log.warning("%d of %d files of a batch did not decode with %s but did on the host (the first: %s in %s; "
                        "%d so far)", len(on_host), len(batch), self.description, batch.keys[on_host[0]],
                        batch.shards[on_host[0]], self.cpu_fallbacks)


def on_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``: on CUDA copied from pinned memory without blocking (no host sync, and the copy
    is ordered on the current stream)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _stacked(windows: list[torch.Tensor], flips: list[bool], device: torch.device) -> torch.Tensor:
    """The (3, 224, 224) windows as one contiguous uint8 batch on ``device``, the flagged ones mirrored.

    Windows all in host memory are stacked there and copied once. That copy is numpy's, single-threaded: torch's
    multi-threaded copy stalled whenever nvImageCodec's decode threads held the cores (13 to 330 ms for a batch of 32
    on 2 cores, against 1.3 ms with one thread).
    """
    if all(window.device.type == "cpu" for window in windows):
        crops = np.stack([w.numpy()[:, :, ::-1] if f else w.numpy() for w, f in zip(windows, flips)])
        return on_device(torch.from_numpy(crops), device)
    crops = torch.stack([on_device(window, device) if window.device.type == "cpu" else window for window in windows])
    flipped = [i for i, flip in enumerate(flips) if flip]
    if flipped:
        index = on_device(torch.tensor(flipped), device)
        crops[index] = crops[index].flip(-1)
    return crops


def _size(code_stream: Any) -> tuple[int, int]:
    """(width, height) nvImageCodec reads from a code stream; (0, 0) when it cannot parse it."""
    try:
        return code_stream.width, code_stream.height
    except RuntimeError:
        return 0, 0


def _replacements(batch: JpegBatch, windows: list[torch.Tensor | CorruptSample],
                  budget: DecodeFailures | None) -> list[int]:
    """``source[i]``: the sample whose window and label fill slot i (i itself when it decoded)."""
    good = [i for i, window in enumerate(windows) if isinstance(window, torch.Tensor)]
    if not good:
        raise TooManyCorruptSamples(
            f"no file of a training batch of {len(batch)} decodes (the first: {batch.keys[0]} in {batch.shards[0]}: "
            f"{windows[0]}); check the shards with `spp-cls shards --verify ROOT`"
        )
    source = list(range(len(batch)))
    for i, window in enumerate(windows):
        if isinstance(window, torch.Tensor):
            if budget is not None:
                budget.record_good()
            continue
        source[i] = next((j for j in good if j > i), good[0])
        reason = f"{window}; replaced in its batch by {batch.keys[source[i]]}"
        if budget is None:
            log.warning("corrupt sample %s in %s: %s", batch.keys[i], batch.shards[i], reason)
        else:
            budget.record_corrupt(batch.keys[i], batch.shards[i], reason)
    return source
