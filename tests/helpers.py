"""Helpers shared by the tests: real processes with a hard timeout, real JPEG files, odd source files, wandb's
offline run folders, the local SLURM cluster and jobs on it. Test files import from here, never from each other."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds
import yaml
from PIL import Image

from spp_cls.data.stream.corrupt import CorruptBudget, DecodeFailures
from spp_cls.data.stream.jpeg_batch import JpegCrop
from spp_cls.data.stream.pipeline import crop_window
from spp_cls.data.synthetic import render_image, synthetic_classes
from spp_cls.models import CrossChannelLRN, WithinChannelLRN, create
from spp_cls.outcomes import ImageOutcome
from spp_cls.train.augment import InputTransform

REPO = Path(__file__).resolve().parents[1]
TABLE_CONFIG = REPO / "configs" / "table1" / "zf5_spp_multi.yaml"


def cpu_args(shards: Path, runs: Path, *extra: str) -> list[str]:
    """The table config, shrunk to the CPU: thin network, tiny batches, no workers, fp32."""
    return [
        "--config", str(TABLE_CONFIG),
        "--data.root", str(shards), "--runs_dir", str(runs), "--experiment", "t",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", "32-true", "--trainer.deterministic", "true",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.width", "0.125", "--model.init", "kaiming", "--model.channels_last", "false",
        "--model.reference_batch", "8", "--model.lr", "0.005",
        "--data.batch_size", "8", "--data.num_workers", "0", "--data.eval_workers", "0", *extra,
    ]


def read_summary(run: Path) -> list[dict[str, str]]:
    with (run / "summary.csv").open() as handle:
        return list(csv.DictReader(handle))


# ---- results files --------------------------------------------------------------------------------------------
# Measured errors (top-1, top-5) chosen for the tests; not the paper's. Gains come out as round numbers, and
# Overfeat-7 (c) is worse than its no-SPP run, so its gain is negative.
MEASURED: dict[tuple[str, str], tuple[float, float]] = {
    ("zf5", "nospp"): (36.10, 14.90),
    ("zf5", "spp_single"): (35.00, 14.20),
    ("zf5", "spp_multi"): (34.50, 13.70),
    ("convnet5", "nospp"): (35.20, 14.00),
    ("convnet5", "spp_single"): (34.70, 13.80),
    ("convnet5", "spp_multi"): (34.20, 13.50),
    ("overfeat5", "nospp"): (34.40, 13.60),
    ("overfeat5", "spp_single"): (33.10, 12.90),
    ("overfeat5", "spp_multi"): (32.40, 12.40),
    ("overfeat7", "nospp"): (32.30, 12.00),
    ("overfeat7", "spp_single"): (30.50, 11.20),
    ("overfeat7", "spp_multi"): (32.80, 12.10),
    ("overfeat7", "spp_random"): (30.20, 11.00),
}


def write_result(root: Path, backbone: str, variant: str, top1: float, top5: float, **overrides) -> Path:
    """A results.json as the training code writes it, in runs/<experiment>/<backbone>-<variant>/."""
    record = {
        "backbone": backbone, "variant": variant, "experiment": "table1", "test_protocol": "tenview",
        "top1_err": top1, "top5_err": top5, "num_test_images": 50000, "epochs": 70, "train_images_per_s": 1234.5,
        "wall_time_s": 7200.0, "git_commit": "0123456789abcdef", "config_hash": "ab" * 32,
        "finished_at": "2025-06-01T12:00:00+00:00", "logger_version": 3,  # an extra key, tolerated
    }
    record.update(overrides)
    run_dir = root / record["experiment"] / f"{backbone}-{variant}"
    if record["test_protocol"] != "tenview":
        run_dir = run_dir / record["test_protocol"]
    run_dir.mkdir(parents=True)
    record.setdefault("run_dir", str(run_dir))
    path = run_dir / "results.json"
    path.write_text(json.dumps(record, indent=2))
    return path


# ---- processes --------------------------------------------------------------------------------------------------
# what a hung run shows of itself: the end of its output, which holds the stacks of all its Python processes
HUNG_OUTPUT_CHARS = 20_000


def run_hard_timeout(command: list[str], timeout: float, env: dict[str, str],
                     cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run in a new process group, output captured; on timeout fail the test with every process's Python stacks
    (:class:`Launched`, for one process)."""
    with tempfile.TemporaryDirectory() as logs:
        launched = Launched([(command, env)], Path(logs), cwd=cwd)
        [status] = launched.wait(timeout)
        return subprocess.CompletedProcess(command, status, launched.logs[0].read_text())


def free_port() -> int:
    """A TCP port nothing listens on now (for MASTER_PORT)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Launched:
    """Processes started at once (the "nodes" of a run, each in its own process group, output to its own file), then
    waited for together with a hard timeout: past it, every process (ranks, loader workers: all inherit the
    environment, with PYTHONFAULTHANDLER=1) prints the Python stacks of its threads on SIGABRT, is SIGKILLed, and the
    test fails with the end of each log."""

    def __init__(self, commands: list[tuple[list[str], dict[str, str]]], logs: Path, cwd: Path | None = None) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.logs = [logs / f"node{index}.log" for index in range(len(commands))]
        self.processes = []
        for (command, env), log in zip(commands, self.logs):
            with log.open("w") as handle:
                self.processes.append(subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, text=True,
                                                       env={**env, "PYTHONFAULTHANDLER": "1"},
                                                       start_new_session=True, cwd=cwd))

    def wait(self, timeout: float) -> list[int]:
        """The exit statuses, once every process has ended."""
        deadline = time.monotonic() + timeout
        try:
            return [process.wait(timeout=max(0.0, deadline - time.monotonic())) for process in self.processes]
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGABRT)
            time.sleep(10)
            self.kill(signal.SIGKILL)
            for process in self.processes:
                process.wait()
            pytest.fail(f"still running after {timeout} s; their stacks, then killed:\n{self.outputs()}")

    def kill(self, signum: int) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)

    def outputs(self, tail: int = HUNG_OUTPUT_CHARS) -> str:
        return "\n".join(f"== {log.name}\n{log.read_text()[-tail:]}" for log in self.logs)

    def left_behind(self) -> list[str]:
        """The processes of the launched process groups that are still running (loader workers included), each as
        "pid state command"."""
        groups = {process.pid for process in self.processes}
        return [f"{pid} {state} {command_line(pid)[:200]}" for pid, state, _, group in running_processes()
                if group in groups and state != "Z"]


def wait_for(condition: Callable[[], bool], timeout: float, what: str, launched: Launched) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline or any(process.poll() is not None for process in launched.processes):
            launched.kill(signal.SIGKILL)
            pytest.fail(f"{what} did not happen in time:\n{launched.outputs(5000)}")
        time.sleep(0.1)


def running_processes() -> list[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            found.append((int(stat.parent.name), state, int(parent), int(group)))
    return found


def children_of(pid: int) -> list[int]:
    return [child for child, _, parent, _ in running_processes() if parent == pid]


def command_line(pid: int) -> str:
    """The command line of a process ("" once it has gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
    except OSError:
        return ""


def loader_workers_of(rank_pid: int) -> list[int]:
    """The DataLoader workers of a rank: the children of the forkserver it started."""
    return [worker for child in children_of(rank_pid) if "forkserver" in command_line(child)
            for worker in children_of(child)]


def probe_config(path: Path, probe_dir: Path | None = None, hold: dict[str, object] | None = None) -> Path:
    """A config file at ``path`` that adds tests/fit_probe.py's RankProbe (writing into ``probe_dir``) and, given
    ``hold``, HoldOnce(**hold); the run needs tests/ on PYTHONPATH."""
    callbacks: list[dict[str, object]] = []
    if probe_dir is not None:
        callbacks.append({"class_path": "fit_probe.RankProbe", "init_args": {"out_dir": str(probe_dir)}})
    if hold is not None:
        callbacks.append({"class_path": "fit_probe.HoldOnce",
                          "init_args": {key: str(value) if isinstance(value, Path) else value
                                        for key, value in hold.items()}})
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return path


def probe_records(probe_dir: Path) -> list[dict]:
    """What RankProbe wrote: one record per rank and epoch (stage "fit") or test (stage "test")."""
    return [json.loads(line) for path in sorted(probe_dir.glob("rank*.jsonl"))
            for line in path.read_text().splitlines()]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("spp-cls: error:")]


def new_user_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a new user: no wandb login or settings (no WANDB_* variable, an empty HOME, so no
    ~/.netrc and no ~/.config/wandb), and none of the variables this suite or its runner may set."""
    home.mkdir(parents=True, exist_ok=True)
    kept = {key: value for key, value in os.environ.items()
            if not key.startswith(("WANDB_", "SPP_CLS_")) and key not in ("HOME", "NETRC", "XDG_CONFIG_HOME")}
    return {**kept, "HOME": str(home), **extra}


def shard_keys(split_dir: Path) -> list[str]:
    """The sample keys of every tar shard in ``split_dir``, read from the tar member names, in shard order."""
    keys: list[str] = []
    for shard in sorted(split_dir.glob("*.tar")):
        with tarfile.open(shard) as archive:
            keys += dict.fromkeys(name.split(".", 1)[0] for name in archive.getnames())
    return keys


def lengthen_shard(shard: Path) -> str:
    """Appends one sample to a tar shard (a copy of its first, under a new key), so that it holds one more than its
    manifest lists; returns the new key."""
    with tarfile.open(shard) as archive:
        members = [(member.name, archive.extractfile(member).read()) for member in archive.getmembers()]
    first_key = members[0][0].split(".", 1)[0]
    new_key = f"{first_key}_unlisted"
    with wds.TarWriter(str(shard)) as writer:
        samples: dict[str, dict[str, bytes]] = {}
        for name, data in members:
            key, extension = name.split(".", 1)
            samples.setdefault(key, {"__key__": key})[extension] = data
        for sample in [*samples.values(), {**samples[first_key], "__key__": new_key}]:
            writer.write(sample)
    return new_key


def errors_of(outcomes: list[ImageOutcome]) -> tuple[float, float]:
    """(top-1, top-5) error in percent of per-image outcomes, as a results file rounds them."""
    return (round(100 * (1 - sum(o.top1_correct for o in outcomes) / len(outcomes)), 4),
            round(100 * (1 - sum(o.top5_correct for o in outcomes) / len(outcomes)), 4))


# ---- wandb ------------------------------------------------------------------------------------------------------
def offline_run_ids(run_dir: Path) -> set[str]:
    """The run id of every offline start under ``run_dir/wandb``.

    Each start gets a folder ``offline-run-<time>-<id>`` (with ``-1``, ``-2``... appended when two starts of one run
    fall in the same second), so the id is read from the ``run-<id>.wandb`` file inside, not from the folder name.
    """
    folders = list((run_dir / "wandb").glob("offline-run-*"))
    assert folders, f"no offline wandb run under {run_dir}"
    ids = set()
    for folder in folders:
        (log,) = folder.glob("run-*.wandb")
        ids.add(log.stem.removeprefix("run-"))
    return ids


# ---- SLURM: the local cluster of jobs/slurm/local_cluster.sh, and jobs on it -----------------------------------
SLURM_CLUSTER = REPO / "jobs" / "slurm" / "local_cluster.sh"
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
# the table configs at CPU scale; the scripts add data root, runs dir, experiment, num_nodes, devices and workers
CPU_OVERRIDES = (
    "--trainer.accelerator cpu --trainer.precision 32-true --trainer.enable_progress_bar false "
    "--trainer.enable_model_summary false --model.width 0.125 --model.init kaiming --model.channels_last false "
    "--model.reference_batch 8 --model.lr 0.005 --data.batch_size 8 --data.eval_workers 0"
)


@contextmanager
def local_slurm_cluster(nodes: int) -> Iterator[None]:
    """A SLURM cluster of at least `nodes` nodes that answers: one already running, or one of `nodes` nodes brought
    up by local_cluster.sh (and down afterwards). Skips where neither can be."""
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (it installs packages and starts daemons); CI runs as root")
    already_up = subprocess.run([str(SLURM_CLUSTER), "status"], check=False, capture_output=True,
                                timeout=60).returncode == 0
    if already_up:
        answering = set(subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, check=True,
                                       timeout=30).stdout.split())
        if len(answering) < nodes:
            # not ours to restart: it may be someone else's, with their jobs on it
            pytest.skip(f"a SLURM cluster of {len(answering)} node(s) is up already and this needs {nodes}: "
                        "`jobs/slurm/local_cluster.sh down` it (if that script started it) and run again")
    else:
        up = subprocess.run([str(SLURM_CLUSTER), "up", "--nodes", str(nodes)], check=False, capture_output=True,
                            text=True, timeout=600)
        if up.returncode != 0 and "apt-get" in up.stderr:
            pytest.skip(f"cannot install SLURM here: {up.stderr.strip().splitlines()[-1]}")
        assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield
    finally:
        if not already_up:
            subprocess.run([str(SLURM_CLUSTER), "down"], check=True, timeout=60)


def job_records(job_id: str) -> list[dict[str, str]]:
    """`scontrol show job` as one dict per job (an array job gives one per task)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    return [dict(re.findall(r"(\S+?)=(\S*)", record)) for record in out.split("\n\n") if "JobId=" in record]


def wait_until_done(job_id: str, timeout: float, logs: Path) -> list[dict[str, str]]:
    """Poll until every task of the job has ended; scancel it and fail past `timeout` (the hard limit of a job)."""
    deadline = time.monotonic() + timeout
    released: set[tuple[str, str]] = set()  # (job, restart count) already given an earlier start time
    while time.monotonic() < deadline:
        records = job_records(job_id)
        if all(r["JobState"] in DONE_STATES for r in records):
            return records
        for record in records:
            restart = (record["JobId"], record["Restarts"])
            if record["JobState"] == "PENDING" and record.get("Reason") == "BeginTime" and restart not in released:
                # A requeued job waits cred_expire (120 s by default) before it may start again: start it sooner,
                # but not within the second of the requeue. slurmd revokes the killed incarnation's credential at
                # whole-second resolution (ctime <= revoke time), so a start in that same second is refused with
                # "Job credential revoked" and the job ends FAILED (SLURM 22.05; seen once in CI).
                subprocess.run(["scontrol", "update", f"JobId={record['JobId']}", "StartTime=now+2"], check=True,
                               timeout=30)
                released.add(restart)
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], check=False, timeout=30)
    pytest.fail(f"job {job_id} still running after {timeout} s; cancelled:\n{tail_of_logs(logs)}")


def tail_of_logs(directory: Path) -> str:
    return "\n".join(f"== {log}\n{log.read_text()[-3000:]}" for log in sorted(directory.glob("*.out")))


def script_env(demo_shards: Path, tmp_path: Path, **settings: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "WANDB_MODE": "offline",
            "SPP_CLS_DATA": str(demo_shards), "SPP_CLS_RUNS": str(tmp_path / "runs"), **settings}


def submit_fit_sbatch(env: dict[str, str], tmp_path: Path, *overrides: str, nodes: int = 1) -> str:
    """Plain sbatch of fit.sbatch on the zf5_spp_multi config at CPU scale: its #SBATCH lines, the shape changed on
    the sbatch line (`nodes` nodes x 2 tasks of 1 CPU, no GPU), the log in tmp_path/fit-<job>.out; returns the job
    id."""
    command = ["sbatch", "--parsable", f"--nodes={nodes}", "--ntasks-per-node=2", "--cpus-per-task=1",
               "--gpus-per-node=0", "--time=10", f"--output={tmp_path}/fit-%j.out", str(REPO / "jobs/slurm/fit.sbatch"),
               "configs/table1/zf5_spp_multi.yaml", *CPU_OVERRIDES.split(), "--trainer.strategy", "ddp", *overrides]
    return subprocess.run(command, capture_output=True, text=True, check=True, env=env, cwd=REPO,
                          timeout=60).stdout.strip()


# ---- images -----------------------------------------------------------------------------------------------------
def noise_jpeg(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """Uniform random pixels encoded as JPEG (quality 90): a real file whose decoded pixels JPEG has changed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def smooth_jpeg(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """A smooth random image (so JPEG keeps it close), encoded as JPEG (quality 95)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def coordinate_image(width: int, height: int) -> torch.Tensor:
    """uint8 CHW image whose pixels name their position: R = x % 256, G = y % 256, B = x // 256."""
    xs = torch.arange(width).expand(height, width)
    ys = torch.arange(height).unsqueeze(1).expand(height, width)
    return torch.stack([xs % 256, ys % 256, xs // 256]).to(torch.uint8)


def write_shards(directory: Path, counts: list[int], size: tuple[int, int] = (240, 232),
                 extra: dict[int, dict[str, bytes]] | None = None) -> list[str]:
    """Tar shards of tiny JPEGs; sample i (over all shards) has label i. ``extra[i]`` overrides/adds members."""
    paths, index = [], 0
    for shard, count in enumerate(counts):
        path = directory / f"train-{shard:06d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for _ in range(count):
                sample = {"__key__": f"img{index:05d}", "jpg": noise_jpeg(*size, seed=index),
                          "cls": str(index).encode(), "json": b'{"source": "test"}'}
                sample.update((extra or {}).get(index, {}))
                writer.write(sample)
                index += 1
        paths.append(str(path))
    return paths


def with_bogus_huffman_table(data: bytes) -> bytes:
    """A JPEG whose header parses but whose body no decoder reads (its first Huffman table claims 16 x 255 codes)."""
    table = data.index(b"\xff\xc4") + 5
    return data[:table] + bytes([255] * 16) + data[table + 16 :]


def decode_failures(samples: int, max_fraction: float,
                    shard: str = "shard.tar") -> tuple[DecodeFailures, CorruptBudget]:
    """What the datamodule hands a device decoder during a training epoch, and that epoch's budget (over the one
    train shard `shard`), into which the decoder's failures go."""
    budget = CorruptBudget([shard], samples, max_fraction, "the training epoch", "ROOT")
    return DecodeFailures([shard], {"fit": budget}), budget


def crop_of(jpeg: bytes, width: int, height: int, seed: int, label: int, key: str) -> JpegCrop:
    x0, y0, flip = crop_window(width, height, random.Random(seed))
    return JpegCrop(jpeg, (width, height), (x0, y0), flip, label, key, "shard.tar")


# ---- the odd files of a real ImageNet copy ------------------------------------------------------------------------
@dataclass(frozen=True)
class QuirkFile:
    """A file written by `write_quirk_files`.

    Attributes:
        name: file name inside the folder.
        what: what is odd about it.
        readable: whether the converter must turn it into a sample (else it must be skipped and named).
        display_size: (w, h) once its EXIF orientation is applied; None for unreadable files.
    """

    name: str
    what: str
    readable: bool
    display_size: tuple[int, int] | None


def _encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixel data (enough for PIL's size check at open)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def write_quirk_files(folder: str | Path, seed: int = 0) -> list[QuirkFile]:
    """Write the odd files a real ImageNet copy contains into `folder`, all named `quirk_*.JPEG`.

    Readable: CMYK JPEG, greyscale JPEG, a PNG, a palette PNG, a palette GIF with transparency, an RGBA PNG, a 16-bit
    greyscale PNG, a progressive JPEG, a JPEG with EXIF orientation 6 (stored 60x30, left half red and right half
    blue, so it displays 30x60 with red on top), a 10x10 JPEG and a 400x16 JPEG. Unreadable: a truncated JPEG, an
    empty file, a text file and a PNG declaring 20000x10000 pixels (beyond PIL's decompression-bomb limit).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    cls = synthetic_classes(1, seed)[0]

    def picture(width: int, height: int) -> Image.Image:
        return render_image(cls, rng, (min(width, height), min(width, height))).resize((width, height))

    rotated = Image.new("RGB", (60, 30), (230, 20, 20))
    rotated.paste((20, 20, 230), (30, 0, 60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    transparent_gif = picture(64, 64).quantize(16)
    transparent_gif.info["transparency"] = 0
    rgba = picture(80, 80).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((80, 80)))
    grey16 = Image.fromarray(np.asarray(picture(64, 48).convert("L"), np.uint16) * 257)
    truncated = _encoded(picture(200, 150), "JPEG", quality=90)
    files = [
        (QuirkFile("quirk_cmyk.JPEG", "CMYK JPEG", True, (120, 90)),
         _encoded(picture(120, 90).convert("CMYK"), "JPEG", quality=90)),
        (QuirkFile("quirk_grey.JPEG", "greyscale JPEG", True, (100, 80)),
         _encoded(picture(100, 80).convert("L"), "JPEG", quality=90)),
        (QuirkFile("quirk_png.JPEG", "PNG named .JPEG", True, (90, 120)), _encoded(picture(90, 120), "PNG")),
        (QuirkFile("quirk_palette.JPEG", "palette PNG", True, (100, 100)),
         _encoded(picture(100, 100).quantize(64), "PNG")),
        (QuirkFile("quirk_palette_transparent.JPEG", "palette GIF with a transparent colour", True, (64, 64)),
         _encoded(transparent_gif, "GIF", transparency=0)),
        (QuirkFile("quirk_rgba.JPEG", "RGBA PNG", True, (80, 80)), _encoded(rgba, "PNG")),
        (QuirkFile("quirk_grey16.JPEG", "16-bit greyscale PNG", True, (64, 48)), _encoded(grey16, "PNG")),
        (QuirkFile("quirk_progressive.JPEG", "progressive JPEG", True, (100, 70)),
         _encoded(picture(100, 70), "JPEG", quality=90, progressive=True)),
        (QuirkFile("quirk_exif_rotated.JPEG", "EXIF orientation 6 (rotate 90 degrees clockwise)", True, (30, 60)),
         _encoded(rotated, "JPEG", quality=95, exif=exif.tobytes())),
        (QuirkFile("quirk_tiny.JPEG", "10x10 image", True, (10, 10)), _encoded(picture(10, 10), "JPEG", quality=90)),
        (QuirkFile("quirk_wide.JPEG", "400x16 image (aspect 25)", True, (400, 16)),
         _encoded(picture(400, 16), "JPEG", quality=90)),
        (QuirkFile("quirk_truncated.JPEG", "JPEG cut off after 40% of its bytes", False, None),
         truncated[: len(truncated) * 2 // 5]),
        (QuirkFile("quirk_empty.JPEG", "empty file", False, None), b""),
        (QuirkFile("quirk_not_an_image.JPEG", "text file", False, None), b"this is not an image\n"),
        (QuirkFile("quirk_bomb.JPEG", "PNG declaring 20000x10000 pixels", False, None),
         _png_header_only(20_000, 10_000)),
    ]
    for quirk, data in files:
        (folder / quirk.name).write_bytes(data)
    return [quirk for quirk, _ in files]


# ---- LRN: Caffe's formulas in float64, and real activations to hold the ops to ---------------------------------
SETTINGS = {
    "within": (WithinChannelLRN(), 3, 5e-5, 0.75, 1.0),
    "cross": (CrossChannelLRN(), 5, 1e-4, 0.75, 2.0),
}
TRUNK_OF_MODE = {"within": "zf5", "cross": "convnet5"}
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


# ---- the float64 references -----------------------------------------------------------------------------------------
def caffe_lrn_loops(x: torch.Tensor, mode: str, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """Caffe's formulas one output at a time: x / (k + alpha / window size * sum of x^2 over the window)^beta, the
    window n x n pixels of the channel (within) or n channels at the pixel (cross), zero outside the map."""
    n, c, h, w = x.shape
    half = size // 2
    out = torch.empty_like(x)
    for b in range(n):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    if mode == "within":
                        offsets = range(-half, half + 1)
                        window = [(ch, i + di, j + dj) for di in offsets for dj in offsets]
                    else:
                        window = [(ch + dc, i, j) for dc in range(-half, half + 1)]
                    total = sum(float(x[b, cc, ii, jj]) ** 2 for cc, ii, jj in window
                                if 0 <= cc < c and 0 <= ii < h and 0 <= jj < w)
                    out[b, ch, i, j] = x[b, ch, i, j] / (k + alpha / len(window) * total) ** beta
    return out


def caffe_lrn(x: torch.Tensor, mode: str, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The same formulas vectorised, as sums of shifted slices of the zero-padded squares (differentiable)."""
    n, c, h, w = x.shape
    half = size // 2
    if mode == "within":
        padded = F.pad(x * x, (half, half, half, half))
        total = sum(padded[:, :, i:i + h, j:j + w] for i in range(size) for j in range(size))
        count = size * size
    else:
        padded = F.pad(x * x, (0, 0, 0, 0, half, half))
        total = sum(padded[:, i:i + c] for i in range(size))
        count = size
    return x / (k + alpha / count * total) ** beta


def reference_and_gradient(x: torch.Tensor, grad: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and input gradient of `caffe_lrn` in float64 at the (already rounded) values of x and grad."""
    _, size, alpha, beta, k = SETTINGS[mode]
    x64 = x.detach().double().requires_grad_()
    out = caffe_lrn(x64, mode, size, alpha, beta, k)
    (grad_x,) = torch.autograd.grad(out, x64, grad.double())
    return out.detach(), grad_x


def assert_close_to(got: torch.Tensor, expected: torch.Tensor, relative: float) -> None:
    """Equal to `relative` of each value, or of the tensor's largest value where the backward's two terms cancel."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(got.double(), expected, rtol=relative, atol=relative * scale)


# ---- inputs: the first LRN's input of the real trunk on real JPEG pixels ---------------------------------------------
def real_images(folder: Path, count: int = 2, side: int = 224) -> torch.Tensor:
    """uint8 (count, 3, side, side) JPEG images of the synthetic ImageNet folder, resized."""
    paths = sorted((folder / "train").rglob("*.JPEG"))[:count]
    pixels = [torch.from_numpy(np.array(Image.open(path).convert("RGB").resize((side, side))))
              for path in paths]
    return torch.stack(pixels).permute(0, 3, 1, 2).contiguous()


def first_lrn_input(folder: Path, mode: str, layout: str, autocast: bool = False) -> torch.Tensor:
    """conv1 + ReLU of the trunk that uses `mode` (Kaiming init, width 0.25) on real pixels minus the mean: what its
    first LRN receives (bf16 under CPU autocast)."""
    torch.manual_seed(0)
    trunk = create(TRUNK_OF_MODE[mode], init="kaiming", width=0.25).trunk.to(memory_format=LAYOUTS[layout])
    pixels = InputTransform()(real_images(folder)).contiguous(memory_format=LAYOUTS[layout])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return trunk.relu1(trunk.conv1(pixels))


# ---- torch.compile against eager ------------------------------------------------------------------------------------
PAPER_BACKBONES = ("zf5", "convnet5", "overfeat5", "overfeat7")


def compiled_against_eager(backbone: str, device: str, sizes: tuple[int, ...], width: float, batch_size: int,
                           ) -> list[tuple[int, float, float]]:
    """The SPP network compiled whole (fullgraph, static shapes) and eager on the same weights, channels_last, under
    bf16 autocast, at each size in turn: (size, largest logit difference / largest logit, largest gradient
    difference / that parameter's largest gradient). Dropout is off so that both runs compute the same function.
    Dynamo's graph counters start from zero here."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    eager = create(backbone, head="spp", num_classes=10, width=width, init="kaiming", dropout=0.0)
    eager = eager.to(device, memory_format=torch.channels_last)
    twin = create(backbone, head="spp", num_classes=10, width=width, init="kaiming", dropout=0.0)
    twin = twin.to(device, memory_format=torch.channels_last)
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin, fullgraph=True, dynamic=False)
    differences = []
    for size in sizes:
        images = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(size)) * 50
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        logits = {}
        for name, net in (("eager", eager), ("compiled", compiled)):
            with torch.autocast(device, dtype=torch.bfloat16):
                logits[name] = net(images)
            assert logits[name].dtype == torch.bfloat16
            logits[name].float().logsumexp(1).mean().backward()
        scale = logits["eager"].float().abs().max()
        logit_difference = ((logits["compiled"].float() - logits["eager"].float()).abs().max() / scale).item()
        grad_difference = max(((got.grad - want.grad).abs().max() / want.grad.abs().max()).item()
                              for got, want in zip(twin.parameters(), eager.parameters(), strict=True))
        differences.append((size, logit_difference, grad_difference))
        eager.zero_grad(set_to_none=True)
        twin.zero_grad(set_to_none=True)
    return differences
