"""Uploaded Arrow IPC streams and Parquet files are decoded in a child process with a memory limit.

Compression makes a few kilobytes decode to gigabytes, and the decoded-size cap can only be
checked once a batch is decoded (Parquet's metadata declares the dictionary-encoded size; an Arrow
record batch decompresses whole). So the bytes are written to a private directory and decoded by
`python -m services.ingestion.decode_child` (tables.decode_untrusted) with its address space capped
(RLIMIT_AS) at its size after imports plus a budget derived from the caps: the input (it is
memory-mapped), twice the decoded-size cap (the decoded columns and their text, side by side) and
a fixed slack. A bomb fails an allocation there, or ends that process, and is refused as
RESOURCE_EXHAUSTED (`data`); ingestion's own memory never holds more than the decoded result, which
comes back as an Arrow IPC file that is memory-mapped, not copied.

Every upload gets a fresh child (nothing one file did can touch the next). Its imports take about
0.2 s, so the next child is started as soon as one finishes and waits, imports done, for its job on
stdin: after the first upload, a 100k-row Parquet or Arrow upload takes ~70 ms longer than decoding
it in-process did (files, hand-over, process exit). At most CONCURRENT_DECODES run at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from flywheel.errors import FlywheelError, InvalidArgument, ResourceExhausted, Unavailable
from flywheel.logging import get_logger
from flywheel.v1 import ingestion_pb2
from services.ingestion.tables import DATA_FIELD, ReadLimits

log = get_logger(__name__)
CHILD_MODULE = "services.ingestion.decode_child"
BINARY_FORMATS = (ingestion_pb2.DATA_FORMAT_ARROW_IPC, ingestion_pb2.DATA_FORMAT_PARQUET)
# Room beyond the decoded data: the reader's own buffers, a compressed column chunk, Python objects.
SLACK_BYTES = 128 * 1024 * 1024
CONCURRENT_DECODES = 2
MAX_OUTPUT_BYTES = 64 * 1024  # what is kept of the child's stdout and stderr, each
# The system allocator: mimalloc reserves address space ahead (up to 1 GiB at once), which under the
# cap makes the limit depend on when that happens; one malloc arena: no 64 MiB reservation per thread.
CHILD_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "1"}
_REFUSALS: dict[str, type[FlywheelError]] = {"InvalidArgument": InvalidArgument, "ResourceExhausted": ResourceExhausted}
_FORMAT_NAMES: dict[int, str] = {
    ingestion_pb2.DATA_FORMAT_ARROW_IPC: "Arrow IPC stream",
    ingestion_pb2.DATA_FORMAT_PARQUET: "Parquet",
}


class DecodeGuard:
    def __init__(self, tmp_root: Path, limits: ReadLimits, concurrency: int = CONCURRENT_DECODES) -> None:
        self._tmp_root = tmp_root
        self._limits = limits
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._spare: asyncio.subprocess.Process | None = None  # started, imports done or under way, no job yet

    async def close(self) -> None:
        """Ends the waiting child (it also ends with this process: PR_SET_PDEATHSIG)."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.returncode is None:
            spare.kill()
            await spare.wait()

    def budget(self, input_bytes: int) -> int:
        """Address space the child may add to what its imports took, for an input of this size."""
        return input_bytes + 2 * self._limits.max_decoded_bytes + SLACK_BYTES

    async def decode(self, data: Sequence[bytes] | Path, fmt: int, names: Sequence[str]) -> pa.Table:
        """The named columns of an Arrow IPC stream or Parquet file as text (tables.decode_untrusted),
        decoded in a child process. `data` is the upload's chunks, or a file to read (not copied)."""
        if fmt not in BINARY_FORMATS:
            raise InvalidArgument("ARROW_IPC or PARQUET", field="format")
        async with self._slots:
            workdir = Path(await asyncio.to_thread(_make_dir, self._tmp_root))
            try:
                return await self._decode_in(workdir, data, fmt, names)
            finally:
                await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _decode_in(self, workdir: Path, data: Sequence[bytes] | Path, fmt: int, names: Sequence[str]) -> pa.Table:
        if isinstance(data, Path):
            source, size = data, (await asyncio.to_thread(data.stat)).st_size
        else:
            source, size = workdir / "input", sum(len(chunk) for chunk in data)
            await asyncio.to_thread(_write, source, data)
        output, job_file = workdir / "output.arrow", workdir / "job.json"
        job = {
            "input": str(source),
            "output": str(output),
            "format": fmt,
            "names": list(names),
            "limits": asdict(self._limits),
            "budget_bytes": self.budget(size),
        }
        await asyncio.to_thread(job_file.write_text, json.dumps(job))
        code, outcome = await self._run_child(job_file)
        if code == 0 and outcome.get("ok") is True:
            return await asyncio.to_thread(_map_table, output)
        raise self._refusal(code, outcome, fmt)

    async def _run_child(self, job_file: Path) -> tuple[int, dict[str, Any]]:
        proc = await self._hand_over(job_file)
        try:
            assert proc.stdout is not None and proc.stderr is not None
            out, err, code = await asyncio.gather(_read_capped(proc.stdout), _read_capped(proc.stderr), proc.wait())
        finally:
            if proc.returncode is None:  # the call was cancelled: the child goes with it
                proc.kill()
                await proc.wait()
        await self._replenish()
        outcome = _outcome(out)
        if not outcome and err:
            log.error("decoding child wrote no outcome", exit_code=code, stderr=err[-2000:].decode(errors="replace"))
        return code, outcome

    async def _replenish(self) -> None:
        """Starts the next child once this one is done: its imports run while ingestion validates
        and writes, not while another child decodes."""
        if self._spare is None:
            try:
                self._spare = await _start_child()
            except Unavailable:
                pass  # the next decode tries again

    async def _hand_over(self, job_file: Path) -> asyncio.subprocess.Process:
        """A child working on the job: the waiting one, or a fresh one if there is none or it is gone."""
        proc, self._spare = self._spare, None
        for attempt in range(2):
            if proc is None or proc.returncode is not None:
                proc = await _start_child()
            try:
                assert proc.stdin is not None
                proc.stdin.write(f"{job_file}\n".encode())
                await proc.stdin.drain()
                proc.stdin.close()
                break
            except (BrokenPipeError, ConnectionResetError):  # it died waiting: start another
                if attempt:
                    raise Unavailable("the decoding process exited before its job") from None
                proc = None
        assert proc is not None
        return proc

    def _refusal(self, code: int, outcome: dict[str, Any], fmt: int) -> Exception:
        kind = outcome.get("kind")
        memory = ResourceExhausted(
            f"decoding needs more memory than a decoded size of {self._limits.max_decoded_bytes} bytes allows"
            " (FLYWHEEL_INGESTION_MAX_DECODED_MB)",
            field=DATA_FIELD,
        )
        if kind == "refused":
            cls = _REFUSALS.get(str(outcome.get("error")), InvalidArgument)
            field = outcome.get("field")
            return cls(str(outcome.get("message", "refused")), field=str(field) if field else DATA_FIELD)
        if kind == "memory":
            return memory
        if kind == "unreadable":
            return InvalidArgument(f"unreadable {_FORMAT_NAMES[fmt]} ({outcome.get('error')})", field=DATA_FIELD)
        if code < 0 and -code in (signal.SIGKILL, signal.SIGABRT):
            # SIGABRT: an allocation failed where the reader could not report it; SIGKILL: the
            # machine ran out of memory first.
            log.warning("decoding child stopped by a signal", signal=_signal_name(-code))
            return memory
        if code < 0:
            log.warning("decoding child crashed", signal=_signal_name(-code))
            return InvalidArgument(f"unreadable {_FORMAT_NAMES[fmt]} (the reader crashed)", field=DATA_FIELD)
        log.error("decoding child failed", exit_code=code, kind=kind, error=outcome.get("error"))
        return Unavailable("cannot decode the upload right now; see server logs")


async def _start_child() -> asyncio.subprocess.Process:
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", CHILD_MODULE,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **CHILD_ENV},
        )  # fmt: skip
    except OSError as exc:
        raise Unavailable(f"cannot start the decoding process: {exc.strerror or exc}") from exc


def _make_dir(root: Path) -> str:
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix="decode-", dir=root)


def _write(path: Path, chunks: Sequence[bytes]) -> None:
    with path.open("wb") as out:
        for chunk in chunks:
            out.write(chunk)


def _map_table(path: Path) -> pa.Table:
    """The child's result, its buffers backed by the mapped file (which may then be unlinked)."""
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


async def _read_capped(stream: asyncio.StreamReader) -> bytes:
    """Everything the child writes is read (so it never blocks on a full pipe); the first
    MAX_OUTPUT_BYTES are kept."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < MAX_OUTPUT_BYTES:
            kept += chunk[: MAX_OUTPUT_BYTES - len(kept)]
    return bytes(kept)


def _outcome(out: bytes) -> dict[str, Any]:
    for line in reversed(out.decode(errors="replace").splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
