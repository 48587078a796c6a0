"""The progress bar: a callback a batch (never a packet) from the Pipeline, packets/s and bytes
read against the inputs' total, drawn only on a terminal and never with -q."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

from flowsense.config import CaptureConfig, Config
from flowsense.pipeline import FILE_DONE, Pipeline, ProgressHook
from flowsense.report.progress import ProgressBar, progress_bar

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps" / "corpus"
SMALL = Config(capture=CaptureConfig(batch_packets=16, walk_packets=16))


def _run(paths: list[str], hook: ProgressHook) -> None:
    pipe = Pipeline(SMALL, lambda frame: None)
    pipe.progress = hook
    for p in paths:
        pipe.run_file(p)
    pipe.finish()


def test_called_once_a_batch_with_file_offsets(tmp_path: Path) -> None:
    pcap = PCAPS / "zeek-ssh-on-port-80.pcap"  # 70 packets
    gz = tmp_path / "again.pcap.gz"
    subprocess.run(["gzip", "-c", str(pcap)], stdout=open(gz, "wb"), check=True)
    calls: list[tuple[str, int, int | None]] = []
    _run([str(pcap), str(gz)], lambda *a: calls.append(a))
    mapped = [c for c in calls if c[0] == str(pcap)]
    assert [n for _, n, _ in mapped] == [16, 16, 16, 16, 6, 0]  # batches, then the end
    offsets = [o for _, _, o in mapped]
    assert offsets[-1] == FILE_DONE
    assert offsets[:-1] == sorted(offsets[:-1]) and 0 < offsets[-2] < pcap.stat().st_size
    streamed = [c for c in calls if c[0] == str(gz)]
    assert sum(n for _, n, _ in streamed) == 70
    assert [o for _, _, o in streamed] == [None] * 5 + [FILE_DONE]  # gzip: no offset


def test_bar_shows_rate_bytes_and_escaped_names(tmp_path: Path) -> None:
    hostile = tmp_path / "[bold red]x[blink]\u202e.pcap"
    shutil.copy(PCAPS / "zeek-reverse-ssh.pcap", hostile)
    paths = [str(PCAPS / "zeek-ssh-on-port-80.pcap"), str(hostile)]
    out = io.StringIO()
    bar = ProgressBar(paths, out, show_after_s=0, force_terminal=True)
    _run(paths, bar)
    task = bar.bar.tasks[0]
    assert task.fields["packets"] == 70 + 74
    assert task.total == task.completed == sum(Path(p).stat().st_size for p in paths)
    bar.bar.refresh()
    text = out.getvalue()
    bar.close()
    assert "pkt/s" in text and "kB" in text
    assert "[bold red]x[blink]\\xe2\\x80\\xae.pcap" in text and "\u202e" not in text


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_only_on_a_terminal_and_not_quiet() -> None:
    paths = [str(PCAPS / "ndpi-dns.pcap")]
    with progress_bar(paths, stream=io.StringIO()) as hook:
        assert hook is None
    with progress_bar(paths, quiet=True, stream=_Tty()) as hook:
        assert hook is None
    with progress_bar(paths, stream=_Tty()) as hook:
        assert isinstance(hook, ProgressBar)
    with progress_bar(["-"], stream=_Tty()) as hook:  # stdin: no total, so no ETA
        assert isinstance(hook, ProgressBar) and hook.bar.tasks[0].total is None
    # the CLI on a pipe: stderr stays empty
    r = subprocess.run([sys.executable, "-m", "flowsense", "flows", str(PCAPS)],
                       capture_output=True, cwd=REPO, timeout=300)
    assert r.returncode == 0 and r.stderr == b""


def test_parallel_runs_report_progress_too(tmp_path: Path) -> None:
    """``--jobs 2``: the first partition reports each piece it aggregated (pcap ranges with
    their file offsets, a .gz file's batches without), then each file's end."""
    from flowsense.parallel.engine import ParallelPipeline

    pcap = PCAPS / "zeek-reverse-ssh.pcap"
    gz = tmp_path / "again.pcap.gz"
    subprocess.run(["gzip", "-c", str(pcap)], stdout=open(gz, "wb"), check=True)
    cfg = Config(capture=CaptureConfig(chunk_bytes=4096, batch_packets=16, walk_packets=16))
    calls: list[tuple[str, int, int | None]] = []
    pipe = ParallelPipeline(cfg, lambda frame: None, jobs=2)
    pipe.progress = lambda *a: calls.append(a)
    pipe.run([str(pcap), str(gz)])
    ranges = [c for c in calls if c[0] == str(pcap)]
    assert len(ranges) > 3 and sum(n for _, n, _ in ranges) == 74
    offsets = [o for _, _, o in ranges]
    assert offsets[-1] == FILE_DONE
    assert offsets[:-1] == sorted(offsets[:-1]) and 0 < offsets[-2] < pcap.stat().st_size
    streamed = [c for c in calls if c[0] == str(gz)]
    assert sum(n for _, n, _ in streamed) == 74
    assert {o for _, _, o in streamed[:-1]} == {None} and streamed[-1][2] == FILE_DONE
