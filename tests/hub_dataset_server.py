"""A loopback Hub for DATASETS: :class:`FakeHub` plus what ``datasets`` streaming needs.

``datasets.load_dataset("someuser/fmnist-mini", streaming=True)`` and
``huggingface_hub.HfFileSystem`` run unchanged against it, over real HTTP on ``127.0.0.1``
(port 0). Point both clients at it with :func:`point_datasets_at` (``datasets`` copies
``HF_ENDPOINT`` into ``datasets.config`` at import, like ``huggingface_hub`` does).

Example:
    >>> hub = FakeDatasetHub().start()
    >>> hub.add_dataset("someuser/fmnist-mini", fmnist_mini_files(rows_per_shard=8))
    >>> sorted(hub.files("someuser/fmnist-mini", repo_type="dataset"))[:2]
    ['.gitattributes', 'README.md']
    >>> hub.stop()

What it implements, checked against the sources of datasets 5.2 and huggingface_hub 2.4 (the
calls a streaming ``load_dataset`` of a parquet dataset makes, in order):

* everything :class:`hub_server.FakeHub` implements, in particular
  ``GET /api/datasets/{repo}`` and ``/api/datasets/{repo}/revision/{rev}`` (``dataset_info``:
  ``sha``, ``siblings``, ``cardData``), ``GET /api/datasets/{repo}/tree/{rev}[/{path}]``
  (``list_repo_tree``, ``HfFileSystem.ls`` / ``find`` / ``glob``) and
  ``HEAD``/``GET /datasets/{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``,
  ``Content-Length``, ``Accept-Ranges: bytes`` and ``Range: bytes=a-b`` answered
  ``206`` with ``Content-Range`` (``hf_hub_download`` of ``README.md``, then
  ``HfFileSystemFile._fetch_range`` for the parquet footer and row groups);
  a missing file is ``404`` + ``X-Error-Code: EntryNotFound``, a missing repo ``404`` (``401``
  without a token, as the real Hub) + ``X-Error-Code: RepoNotFound``;
* ``POST /api/datasets/{repo}/paths-info/{rev}`` (form fields ``paths`` repeated, ``expand``):
  ``HfFileSystem.info`` / ``exists`` / ``isdir``; unknown paths are left out, as on the Hub;
* private datasets (``add_dataset(..., private=True)``): visible only with the owner's token;
* :meth:`FakeDatasetHub.fail_ranges`: after ``skip`` good ones, the next N ``GET`` requests
  carrying a ``Range`` header (optionally only those whose path contains a string) answer a 5xx; :attr:`range_requests`
  logs them, so a test can prove a failure happened mid-file;
* :func:`fmnist_mini_files`: the repo content, a Hub-style parquet dataset cut from the
  built-in Fashion-MNIST shards (``data/train-0000i-of-00004.parquet``,
  ``data/test-0000i-of-00002.parquet``, small row groups so reads are several ranges) with a
  ``README.md`` whose YAML declares ``configs`` and ``dataset_info`` (features and split sizes).

What it does NOT implement (a client needing it gets a 404/501 or falls back, as noted):
the dataset viewer (``datasets-server.<endpoint host>/info`` and ``/parquet``: that host does
not resolve, ``datasets`` catches the error and uses the card; so ``refs/convert/parquet`` and
``/api/datasets/{repo}/parquet`` are absent too, a 404), dataset scripts, Xet/LFS storage and
CDN redirects (files are served inline), ``expand=True`` metadata (``lastCommit``,
``securityFileStatus``: paths-info ignores ``expand``), gated datasets, pagination, and
``Range`` forms other than ``bytes=a-b`` / ``bytes=a-`` (suffix and multi-ranges are a 416).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
from hub_server import GITATTRIBUTES, FakeHub, Repo, _Handler, git_blob_oid

from hub_cutinit.data import builtin_dataset_dir

__all__ = ["FakeDatasetHub", "fmnist_mini_files", "point_datasets_at", "restore_datasets"]

_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _card(train_rows: int, test_rows: int, sizes: dict[str, int]) -> bytes:
    names = "\n".join(f"          '{i}': {name}" for i, name in enumerate(_CLASSES))
    return f"""---
license: mit
task_categories:
- image-classification
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
dataset_info:
  features:
  - name: image
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
{names}
  - name: id
    dtype: int64
  splits:
  - name: train
    num_bytes: {sizes["train"]}
    num_examples: {train_rows}
  - name: test
    num_bytes: {sizes["test"]}
    num_examples: {test_rows}
  download_size: {sizes["train"] + sizes["test"]}
  dataset_size: {sizes["train"] + sizes["test"]}
---
# fmnist-mini

A few rows of each shard of hub_cutinit's built-in Fashion-MNIST subset (MIT, Zalando SE).
""".encode()


def fmnist_mini_files(rows_per_shard: int = 32, row_group_size: int = 8) -> dict[str, bytes]:
    """The files of a Hub-style parquet dataset: the first ``rows_per_shard`` rows of each
    built-in shard (4 train, 2 test), with row groups of ``row_group_size`` rows."""
    files: dict[str, bytes] = {".gitattributes": GITATTRIBUTES + b"*.parquet filter=lfs -text\n"}
    counts = {"train": 0, "test": 0}
    sizes = {"train": 0, "test": 0}
    for path in sorted(builtin_dataset_dir().glob("*.parquet")):
        table = pq.read_table(path).slice(0, rows_per_shard)
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=row_group_size)
        files[f"data/{path.name}"] = buf.getvalue()
        counts[path.name.split("-")[0]] += table.num_rows
        sizes[path.name.split("-")[0]] += len(buf.getvalue())
    files["README.md"] = _card(counts["train"], counts["test"], sizes)
    return files


@dataclass
class _RangeFailure:
    remaining: int
    status: int
    path_contains: str | None
    skip: int = 0


class _DatasetHandler(_Handler):
    """FakeHub's handler plus ``paths-info`` and injected failures of Range requests."""

    def _dispatch(self, method: str) -> None:
        hub: FakeDatasetHub = self.server_hub  # type: ignore[assignment]
        rng = self.headers.get("Range")
        if method == "GET" and rng:
            with hub.lock:
                hub.range_requests.append((self.path, rng))
                failure = next(
                    (
                        f
                        for f in hub.range_failures
                        if f.remaining > 0 and (f.path_contains or "") in self.path
                    ),
                    None,
                )
                if failure is not None and failure.skip > 0:
                    failure.skip, failure = failure.skip - 1, None
                elif failure is not None:
                    failure.remaining -= 1
            if failure is not None:
                self._status = failure.status
                self._json(failure.status, {"error": "Injected Range failure by FakeDatasetHub"})
                return
        super()._dispatch(method)

    def _route(
        self, method: str, path: str, query: dict[str, str], body: bytes, user: str | None
    ) -> None:
        prefix = "/api/datasets/"
        if method == "POST" and path.startswith(prefix) and "/paths-info/" in path:
            repo_id, _, revision = path[len(prefix) :].partition("/paths-info/")
            repo = self._repo("dataset", repo_id, user)
            return self._paths_info(self._commit(repo, revision), body)
        return super()._route(method, path, query, body, user)

    def _paths_info(self, commit: Any, body: bytes) -> None:
        from urllib.parse import parse_qs

        form = parse_qs(body.decode())
        entries: list[dict[str, Any]] = []
        for wanted in form.get("paths", []):
            wanted = wanted.strip("/")
            if wanted in commit.files:
                content = commit.files[wanted]
                entries.append(
                    {"type": "file", "oid": git_blob_oid(content), "size": len(content),
                     "path": wanted}
                )  # fmt: skip
            elif wanted == "" or any(p.startswith(wanted + "/") for p in commit.files):
                oid = git_blob_oid(wanted.encode())
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": wanted})
        self._json(200, entries)


class FakeDatasetHub(FakeHub):
    """:class:`FakeHub` serving datasets to ``datasets`` / ``HfFileSystem`` (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.range_failures: list[_RangeFailure] = []
        self.range_requests: list[tuple[str, str]] = []

    def start(self) -> FakeDatasetHub:
        import threading
        from http.server import ThreadingHTTPServer

        hub = self

        class Handler(_DatasetHandler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-dataset-hub", daemon=True
        )
        self._thread.start()
        return self

    def add_dataset(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> str:
        """Create dataset ``repo_id`` holding ``files`` in one commit; return the commit id."""
        with self.lock:
            commit = self._new_commit(None, "initial commit", "", dict(files))
            self.repos[("dataset", repo_id)] = Repo(repo_id, "dataset", private, [commit])
            return commit.oid

    def fail_ranges(
        self, n: int = 1, status: int = 500, *, path_contains: str | None = None, skip: int = 0
    ) -> None:
        """Let ``skip`` Range GETs (whose path contains ``path_contains``) pass, then make the
        next ``n`` answer ``status`` (``skip > 0``: the failure comes mid-stream)."""
        with self.lock:
            self.range_failures.append(_RangeFailure(n, status, path_contains, skip))

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.range_failures.clear()
            self.range_requests.clear()


def point_datasets_at(endpoint: str) -> dict[str, Any]:
    """Point the imported ``datasets`` (``config.HF_ENDPOINT``, ``HUB_DATASETS_URL``) at
    ``endpoint``; return the old values for :func:`restore_datasets`."""
    import datasets.config as config

    old = {"HF_ENDPOINT": config.HF_ENDPOINT, "HUB_DATASETS_URL": config.HUB_DATASETS_URL}
    config.HF_ENDPOINT = endpoint.rstrip("/")
    config.HUB_DATASETS_URL = config.HF_ENDPOINT + "/datasets/{repo_id}/resolve/{revision}/{path}"
    return old


def restore_datasets(old: dict[str, Any]) -> None:
    """Undo :func:`point_datasets_at`."""
    import datasets.config as config

    config.HF_ENDPOINT = old["HF_ENDPOINT"]
    config.HUB_DATASETS_URL = old["HUB_DATASETS_URL"]
